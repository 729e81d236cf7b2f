"""Report: similarity to the baseline (flips, output chrF / ROUGE-L), corpus-level metrics, sections as text and HTML."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import sacrebleu

from mlquant.report import Section, build_report, corpus_table, similarity_table


def _rows(quant: str, task: str, kind: str, scores: list[float], outputs: list[str], lang: str = "ja") -> list[dict]:
    return [
        {"quant": quant, "task": task, "lang": lang, "item_id": str(i), "kind": kind, "score": s, "output": o}
        for i, (s, o) in enumerate(zip(scores, outputs, strict=True))
    ]


def test_similarity_table_flips_and_output_similarity() -> None:
    frame = pd.DataFrame(
        _rows("fp32", "xcopa", "choice", [1, 1, 0, 0], [""] * 4)
        + _rows("w4", "xcopa", "choice", [1, 0, 1, 0], [""] * 4)
        + _rows("fp32", "mgsm", "generate", [1, 0], ["答えは 3", "答えは 5"])
        + _rows("w4", "mgsm", "generate", [1, 0], ["答えは 3", "わからない"])
    )
    table = similarity_table(frame, "fp32")
    xcopa = table.loc[("xcopa", "ja", "w4")]
    assert (xcopa["n"], xcopa["flip_rate"], xcopa["c2w"], xcopa["w2c"]) == (4, 50.0, 25.0, 25.0)
    assert pd.isna(xcopa["chrf"])
    mgsm = table.loc[("mgsm", "ja", "w4")]
    assert mgsm["flip_rate"] == 0.0 and mgsm["n"] == 2
    chrf = sacrebleu.CHRF()
    expected = (100.0 + chrf.sentence_score("わからない", ["答えは 5"]).score) / 2
    assert mgsm["chrf"] == pytest.approx(expected)
    assert 0.0 <= mgsm["rouge_l"] < 1.0
    assert len(table) == 2  # one row per cell, even for a task that is both 0/1-scored and generated


def test_similarity_table_skips_flips_on_continuous_scores() -> None:
    frame = pd.DataFrame(
        _rows("fp32", "flores", "generate", [40.0, 55.5], ["猫がいる", "犬"])
        + _rows("w4", "flores", "generate", [30.0, 55.5], ["猫", "犬"])
    )
    table = similarity_table(frame, "fp32")
    assert "flip_rate" not in table.columns
    assert table.loc[("flores", "ja", "w4"), "chrf"] < 100.0


def test_corpus_table_matches_sacrebleu() -> None:
    hyps, refs = ["Le chat est assis.", "Il pleut."], ["Le chat est assis sur le tapis.", "Il pleut beaucoup."]
    extra = json.dumps({"chrf++_signature": "x", "direction": "en-xx"})
    frame = pd.DataFrame(
        [{"quant": "w4", "task": "flores", "lang": "fr", "item_id": str(i), "extracted": h, "target": r,
          "extra": extra} for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]
        + [{"quant": "w4", "task": "xcopa", "lang": "tr", "item_id": "1", "extracted": "", "target": "", "extra": "{}"}]
    )
    table = corpus_table(frame)
    assert list(table.index) == [("flores", "fr", "w4")]
    row = table.iloc[0]
    assert row["n"] == 2
    assert row["chrf++"] == pytest.approx(sacrebleu.CHRF(word_order=2).corpus_score(hyps, [refs]).score)
    assert "nw:2" in row["chrf++_signature"]  # word n-grams: chrF++, not chrF
    from mlquant.tasks.flores import flores200_status

    if flores200_status() is None:
        assert row["spbleu"] == pytest.approx(sacrebleu.BLEU(tokenize="flores200").corpus_score(hyps, [refs]).score)
    else:
        assert pd.isna(row["spbleu"]) and row["spbleu_signature"].startswith("not computed")


def _signature(task: str, lang: str, label: str = "") -> str:
    custom = f"|label:{label}" if label else ""
    return (f"mlquant:0.1.0|model:m@1|quant:w4|backend:simulate|calib:none|task:{task}{custom}|lang:{lang}|limit:none"
            "|seed:0|torch:2|transformers:5")


def test_corpus_table_rebuilds_the_task_from_the_signature() -> None:
    # A custom label, and options the default task does not have: BLEU with 13a (so "bleu", never "spbleu").
    hyps, refs = ["The cat sat.", "It rains."], ["The cat sat on the mat.", "It rains a lot."]
    sig = _signature("flores@1.0[bleu_tokenize=13a,direction=xx-en,max_new_tokens=256,shots=0]", "ja", "mt-back")
    frame = pd.DataFrame([{"quant": "w4", "task": "mt-back", "lang": "ja", "item_id": str(i), "extracted": h,
                           "target": r, "extra": json.dumps({"direction": "xx-en"}), "signature": sig}
                          for i, (h, r) in enumerate(zip(hyps, refs, strict=True))])
    row = corpus_table(frame).loc[("mt-back", "ja", "w4")]
    assert row["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert "tok:13a" in row["bleu_signature"] and "spbleu" not in row.index


def _confusion_frame() -> pd.DataFrame:
    verdicts = [(True, True), (True, True), (False, None), (False, None)]  # LPR 1/2, WPR 1 -> LCPR 2/3
    sig = _signature("confusion@1.0[detector=lingua:benchmark:0.3,max_new_tokens=100,seed=0,subsets=crosslingual/okapi,"
                     "temperature=0.3,template=qa,top_p=0.75]", "ja")
    rows = []
    for quant in ("fp32", "w4"):
        for i, (line, word) in enumerate(verdicts):
            extra = {"subset": "crosslingual/okapi", "skipped": False, "line_pass": line, "word_pass": word}
            rows.append({"model": "m@1", "quant": quant, "task": "confusion", "lang": "ja", "item_id": f"c/o/{i}",
                         "kind": "generate", "metric": "line_pass", "score": float(line), "weight": 1.0,
                         "output": "答え" if line else "answer", "extracted": "", "target": "ja",
                         "extra": json.dumps(extra), "signature": sig.replace("quant:w4", f"quant:{quant}")})
    return pd.DataFrame(rows)


def test_report_sections_are_built_once_and_rendered_as_text_and_html() -> None:
    report = build_report(_confusion_frame(), "fp32")
    titles = [s.title for s in report.sections]
    assert titles[:2] == ["Scores", "Relative change 100*(q-b)/b, paired by item"]
    corpus = next(s for s in report.sections if s.title == "Corpus-level metrics of confusion")
    assert isinstance(corpus.body, pd.DataFrame)
    assert list(corpus.body.columns) == ["n", "lpr", "wpr", "lcpr"]
    assert corpus.body.loc[("ja", "w4"), "lcpr"] == pytest.approx(2 / 3)  # LCPR reaches the report
    # The task is rebuilt from the cells' signature, with its options: the LCPR signature says which sub-set.
    assert len(corpus.lines) == 1 and corpus.lines[0].startswith("lpr, wpr, lcpr: confusion@1.0[detector=lingua")
    assert "subsets=crosslingual/okapi" in corpus.lines[0]
    text, page = report.to_text(), report.to_html()
    assert text.startswith("Baseline: fp32. Models: m@1.")
    # The same sections, in the same order, in both renderings.
    assert [text.index(s.to_text()) for s in report.sections] == sorted(text.index(s.to_text()) for s in report.sections)
    assert [page.index(s.to_html()) for s in report.sections] == sorted(page.index(s.to_html()) for s in report.sections)
    assert "Corpus-level metrics of confusion (one value per cell; 0-1):" in text and "lcpr" in text
    assert "<h2>Corpus-level metrics of confusion</h2>" in page and ">lcpr</th>" in page
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>")


def test_section_rendering() -> None:
    table = pd.DataFrame({"fp32": [0.123456]}, index=["xcopa"])
    section = Section("Scores", table, "weighted mean per cell", digits=4, lines=("a: <sig>",))
    assert section.to_text() == "Scores (weighted mean per cell):\n         fp32\nxcopa  0.1235\n  a: <sig>"
    assert "<h2>Scores</h2>" in section.to_html() and "0.1235" in section.to_html() and "a: &lt;sig&gt;" in section.to_html()
    empty = Section("Relative change", pd.DataFrame())
    assert "nothing to show" in empty.to_text() and "nothing to show" in empty.to_html()
    text = Section("Statistics", "a < b")
    assert text.to_text() == "Statistics:\na < b" and "<pre>a &lt; b</pre>" in text.to_html()


# ----- the summary in words, against statistics computed here ---------------------------------------------------------
def _binary_frame(labels: dict[str, str] | None = None, model: str = "org/model@1") -> pd.DataFrame:
    """fp32 and w4 on one 0/1 task in three languages; w4 loses 30 of 80 correct answers in th, a few elsewhere."""
    import numpy as np

    names = {"quant": "w4", "task": "xcopa", "model": model, **(labels or {})}
    rng = np.random.default_rng(3)
    rows = []
    for lang, script in (("en", "Latn"), ("th", "Thai"), ("ja", "Jpan")):
        base = (rng.random(100) < 0.8).astype(float)
        quant = np.where(rng.random(100) < 0.04, 1 - base, base)
        if lang == "th":
            quant[np.flatnonzero(base == 1)[:30]] = 0.0
        for label, scores in (("fp32", base), (names["quant"], quant)):
            rows += [{"model": names["model"], "quant": label, "task": names["task"], "lang": lang,
                      "item_id": str(i), "score": s, "weight": 1.0, "metric": "accuracy", "kind": "choice",
                      "higher_is_better": True, "script": script, "resource_class": 3, "family": "f", "output": "",
                      "signature": f"mlquant:0.1.0|model:{names['model']}|quant:{label}|backend:simulate|calib:none|"
                                   f"task:{names['task']}@1.0|lang:{lang}|limit:none|seed:0|torch:2|transformers:5"}
                     for i, s in enumerate(scores)]
    return pd.DataFrame(rows)


def test_summary_sentence_matches_independent_statistics() -> None:
    import numpy as np
    from scipy.stats import binomtest

    import mlquant as mq

    frame = _binary_frame()
    report = build_report(frame, "fp32")
    assert report.findings is not None and report.findings.n_cells == 3
    # Computed here: paired difference, exact McNemar (binomial on the discordant pairs), Holm over the 3 cells.
    p, diff, n_items = {}, {}, {}
    for lang in ("en", "th", "ja"):
        b = frame.query("quant == 'fp32' and lang == @lang").sort_values("item_id")["score"].to_numpy()
        q = frame.query("quant == 'w4' and lang == @lang").sort_values("item_id")["score"].to_numpy()
        worse, better = int(((b == 1) & (q == 0)).sum()), int(((b == 0) & (q == 1)).sum())
        p[lang] = binomtest(worse, worse + better, 0.5).pvalue if worse + better else 1.0
        diff[lang], n_items[lang] = 100 * (q.mean() - b.mean()), len(b)
    order = sorted(p, key=p.get)
    holm, running = {}, 0.0
    for rank, lang in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[lang]))
        holm[lang] = running
    significant = [lang for lang in order if holm[lang] < 0.05]
    assert significant == ["th"]  # the data are built so; the rest of the test checks the words
    ci = mq.stats.paired_bootstrap(frame, "fp32", seed=0, n_resamples=10_000).to_frame().set_index("lang")
    lo, hi = -100 * ci.loc["th", "diff_hi"], -100 * ci.loc["th", "diff_lo"]
    expected = (f"w4 lowers xcopa accuracy in th by {abs(diff['th']):.1f} points (95 % CI {lo:.1f} – {hi:.1f}; "
                f"McNemar p {_p(p['th'])}, Holm p {_p(holm['th'])}; n = {n_items['th']} items)")
    assert [f.sentence() for f in report.findings.significant] == [expected]
    # What did not survive: 2 cells, with the MDD of McNemar's test at each cell's discordance (Connor 1987).
    mdd = []
    for lang in ("en", "ja"):
        b = frame.query("quant == 'fp32' and lang == @lang").sort_values("item_id")["score"].to_numpy()
        q = frame.query("quant == 'w4' and lang == @lang").sort_values("item_id")["score"].to_numpy()
        mdd.append(100 * float(mq.stats.minimum_detectable_difference(len(b), max((b != q).mean(), 3 / len(b)))))
    [line] = report.findings.absent()
    assert line.startswith("w4: 2 cells without a significant change (Holm p ≥ 0.05)")
    assert f"xcopa accuracy {min(mdd):.1f} – {max(mdd):.1f} points" in line
    text, page = report.to_text(), report.to_html()
    assert expected in text and "Family of the Holm correction: all 3 cells" in text
    assert expected.replace("<", "&lt;") in page
    assert np.isclose(report.statistics.set_index("lang").loc["th", "diff"], diff["th"])


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def test_raises_and_lower_is_better_are_said_as_such() -> None:
    from mlquant.report_summary import Finding

    bpb = Finding("rtn-w4", "flores_ppl", "ja", "bits_per_byte", False, False, 0.0275, 0.0146, 0.0404, 0.0004, 0.006,
                  "permutation", 20)
    assert bpb.sentence() == ("rtn-w4 raises flores_ppl bits_per_byte (lower is better) in ja by 0.0275 (95 % CI "
                              "0.0146 – 0.0404; permutation p < 0.001, Holm p = 0.006; n = 20 items)")


def test_no_significant_change_is_said_with_what_could_be_detected() -> None:
    frame = _binary_frame()
    frame = frame[frame["lang"] != "th"]
    report = build_report(frame, "fp32")
    assert report.findings is not None and report.findings.significant == ()
    page = report.to_html()
    assert "No cell changes significantly after Holm correction." in page
    assert "2 cells without a significant change" in page and "could detect" in page


def test_every_string_from_the_run_is_escaped() -> None:
    evil = "<script>alert('x')</script>"
    frame = _binary_frame({"quant": "w4&<b>", "task": "t<i>"}, model=f"m{evil}@1")
    frame["output"] = evil
    page = build_report(frame, "fp32").to_html()
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "w4&amp;&lt;b&gt;" in page and "t&lt;i&gt;" in page and "&lt;script&gt;" in page


def test_baseline_note_for_a_quantized_gguf_baseline() -> None:
    report = build_report(_binary_frame(model="google/gemma-3-270m:Q4_K_M@ab12"), "fp32")
    assert report.info is not None and "Q4_K_M" in report.info.note and "itself a quantized model" in report.info.note
    assert "itself a quantized model" in report.to_text()
    assert build_report(_binary_frame(), "fp32").info.note == ""  # type: ignore[union-attr]


def test_page_shell_tables_and_jupyter_fragment() -> None:
    report = build_report(_binary_frame(), "fp32")
    page, fragment = report.to_html(), report._repr_html_()
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>")
    assert page.index('id="summary"') < page.index('id="figures"') < page.index('id="statistics"')
    assert "position:sticky" in page and '<td class="num">' in page and "<details>" in page
    assert "<html" not in fragment and 'id="summary"' in fragment and fragment.startswith('<div class="mlquant-report">')
    assert ".mlquant-report thead th{position:sticky" in fragment  # the page's CSS, scoped to the report's div


def test_without_matplotlib_the_report_says_so_and_renders_the_rest(tmp_path) -> None:
    import subprocess
    import sys

    frame_file = tmp_path / "frame.parquet"
    _binary_frame().to_parquet(frame_file)
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # import matplotlib now raises ImportError
            "import pandas as pd\nfrom mlquant.report import build_report\n"
            f"print(build_report(pd.read_parquet({str(frame_file)!r}), 'fp32').to_html())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    page = done.stdout
    assert '<p class="note" id="no-figures">No figures: ' in page and "pip install &#x27;mlquant[plot]&#x27;" in page
    assert "<figure" not in page and 'id="summary"' in page and 'id="statistics"' in page
