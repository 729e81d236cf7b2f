"""Report tables: similarity to the baseline (flips, output chrF / ROUGE-L) and corpus-level translation scores."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import sacrebleu

from mlquant.report import corpus_table, similarity_table


def _rows(quant: str, task: str, kind: str, scores: list[float], outputs: list[str], lang: str = "ja") -> list[dict]:
    return [
        {"quant": quant, "task": task, "lang": lang, "item_id": str(i), "kind": kind, "score": s, "output": o}
        for i, (s, o) in enumerate(zip(scores, outputs))
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
          "extra": extra} for i, (h, r) in enumerate(zip(hyps, refs))]
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
