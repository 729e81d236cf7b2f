"""Task.aggregate: corpus-level metrics of one cell from its rows (FLORES chrF++ / spBLEU, confusion LPR / WPR / LCPR)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import sacrebleu

from mlquant.errors import ConfigError
from mlquant.tasks import CorpusScore, CorpusScores, ItemScore, cell_records, get_task
from mlquant.tasks.confusion import LanguageConfusion, confusion_scores
from mlquant.tasks.flores import Flores, flores200_status

HYPS = ["Le chat est assis.", "Il pleut.", "Nous sommes rentrés."]
REFS = ["Le chat est assis sur le tapis.", "Il pleut beaucoup.", "Nous sommes rentrés à la maison."]


def _verdict(line_pass: bool | None, word_pass: bool | None = None, *, subset: str = "crosslingual/okapi",
             skipped: bool = False) -> str:
    return json.dumps({"subset": subset, "skipped": skipped, "line_pass": line_pass, "word_pass": word_pass})


def _mt_rows(lang: str = "fr", direction: str = "en-xx", quant: str = "w4") -> list[dict]:
    extra = json.dumps({"chrf++_signature": "x", "direction": direction})
    return [{"quant": quant, "task": "flores", "lang": lang, "item_id": str(i), "output": f" {h}\nmore", "extracted": h,
             "target": r, "score": 0.0, "extra": extra} for i, (h, r) in enumerate(zip(HYPS, REFS, strict=True))]


# ----- the result types and the base hook ------------------------------------------------------------------------------
def test_base_task_has_no_corpus_metrics() -> None:
    scores = get_task("xcopa").aggregate([{"lang": "tr", "score": 1.0, "extra": "{}"}])
    assert scores == CorpusScores() and not scores and len(scores.to_frame()) == 0


def test_corpus_score_types_are_strict() -> None:
    with pytest.raises(ConfigError):
        CorpusScore("lcpr", 0.5, "sig", -1)
    with pytest.raises(ConfigError):
        CorpusScore("lcpr", "0.5", "sig", 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CorpusScore("", 0.5, "sig", 3)
    with pytest.raises(ConfigError):
        CorpusScores((CorpusScore("a", 1.0, "", 1), CorpusScore("a", 2.0, "", 1)))
    score = CorpusScore("lpr", 0.5, "sig", 2)
    with pytest.raises(AttributeError):
        score.value = 1.0  # type: ignore[misc]
    scores = CorpusScores((score,))
    assert dict(scores) == {"lpr": 0.5, "lpr_signature": "sig"}
    assert scores.to_frame().to_dict("records") == [{"metric": "lpr", "value": 0.5, "signature": "sig", "n": 2, "note": ""}]


def test_cell_records_refuse_rows_of_several_cells() -> None:
    with pytest.raises(ConfigError, match="one language"):
        cell_records([{"lang": "ja"}, {"lang": "de"}])
    with pytest.raises(ConfigError, match="one quant"):
        cell_records(_mt_rows(quant="w4") + _mt_rows(quant="w8"))
    records, lang = cell_records(pd.DataFrame(_mt_rows()))
    assert lang == "fr" and records[0]["extra"] == {"chrf++_signature": "x", "direction": "en-xx"}


# ----- language confusion -----------------------------------------------------------------------------------------------
def test_lcpr_is_the_harmonic_mean_of_lpr_and_wpr() -> None:
    # ja, 4 scored: 2 line failures -> LPR 1/2; both line passes are free of English words -> WPR 1; LCPR 2/3.
    rows = [{"quant": "w4", "task": "confusion", "lang": "ja", "item_id": f"crosslingual/okapi/{i}", "extra": extra}
            for i, extra in enumerate([_verdict(True, True), _verdict(True, True), _verdict(False), _verdict(False),
                                       _verdict(None, skipped=True)])]
    scores = LanguageConfusion().aggregate(pd.DataFrame(rows))
    assert [s.metric for s in scores.scores] == ["lpr", "wpr", "lcpr"]
    assert scores["lpr"] == pytest.approx(0.5) and scores["wpr"] == pytest.approx(1.0)
    assert scores["lcpr"] == pytest.approx(2 / 3)
    assert all(s.n == 4 for s in scores.scores)  # the skipped completion counts nowhere
    assert "detector=" in str(scores["lcpr_signature"]) and str(scores["lcpr_signature"]).endswith("|average:subset")
    # The same rows as dicts with decoded extras, or the language given explicitly: the same numbers.
    again = LanguageConfusion().aggregate([{**r, "extra": json.loads(r["extra"])} for r in rows], "ja")
    assert again["lcpr"] == pytest.approx(scores["lcpr"])


def test_lcpr_of_a_language_without_wpr_is_lpr() -> None:
    rows = [{"lang": "de", "extra": e} for e in (_verdict(True), _verdict(False), _verdict(True), _verdict(True))]
    scores = LanguageConfusion().aggregate(rows)
    by_metric = {s.metric: s for s in scores.scores}
    assert by_metric["lpr"].value == pytest.approx(0.75)
    assert math.isnan(by_metric["wpr"].value) and by_metric["wpr"].signature == "" and "no word-level" in by_metric["wpr"].note
    assert by_metric["lcpr"].value == pytest.approx(0.75)


def test_confusion_aggregate_averages_sub_sets_like_the_benchmark() -> None:
    # okapi: LPR 1/2, WPR 0/1 = 0; native: LPR 1, WPR 1 -> LPR 0.75, WPR 0.5, LCPR 0.6 (not the pooled 2/3, 1/2).
    extras = [_verdict(False), _verdict(True, False), _verdict(True, True, subset="monolingual/native")]
    rows = [{"lang": "ja", "item_id": str(i), "extra": e} for i, e in enumerate(extras)]
    scores = LanguageConfusion().aggregate(rows)
    assert (scores["lpr"], scores["wpr"]) == (pytest.approx(0.75), pytest.approx(0.5))
    assert scores["lcpr"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    table = confusion_scores(rows)
    assert scores["lcpr"] == pytest.approx(table.loc[0, "lcpr"])


# ----- FLORES -----------------------------------------------------------------------------------------------------------
def test_flores_corpus_chrf_equals_sacrebleu() -> None:
    scores = Flores().aggregate(pd.DataFrame(_mt_rows()))
    chrf = next(s for s in scores.scores if s.metric == "chrf++")
    assert chrf.value == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS], word_order=2).score)
    metric = sacrebleu.CHRF(word_order=2)
    metric.corpus_score(HYPS, [REFS])
    assert chrf.signature == str(metric.get_signature()) and "nw:2" in chrf.signature and chrf.n == 3
    spbleu = next(s for s in scores.scores if s.metric == "spbleu")
    if flores200_status() is None:
        assert spbleu.value == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="flores200").score)
    else:  # no flores200 SentencePiece model here: NaN, and why
        assert math.isnan(spbleu.value) and spbleu.signature == ""
        assert spbleu.note == f"not computed: {flores200_status()}"


def test_flores_bleu_with_another_tokenizer_and_direction() -> None:
    scores = Flores(bleu_tokenize="13a").aggregate(_mt_rows())
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="13a").score)
    assert "tok:13a" in str(scores["bleu_signature"]) and "spbleu" not in scores
    # xx-en: the cell is Japanese, the target English, so the language's tokenizer is English's 13a, not ja-mecab.
    into_english = Flores(direction="xx-en", bleu_tokenize="language").aggregate(_mt_rows("ja", "xx-en"))
    assert "tok:13a" in str(into_english["bleu_signature"])
    with pytest.raises(ConfigError, match="one direction"):
        Flores().aggregate(_mt_rows()[:1] + _mt_rows(direction="xx-en")[1:])


def test_flores_hypotheses_fall_back_to_the_output_and_item_scores_work() -> None:
    rows = [{k: v for k, v in r.items() if k != "extracted"} for r in _mt_rows()]
    from_output = Flores(bleu_tokenize="13a").aggregate(rows)
    items = [ItemScore(score=0.0, prompt="", output="", extracted=h, target=r, extra={"direction": "en-xx"})
             for h, r in zip(HYPS, REFS, strict=True)]
    from_items = Flores(bleu_tokenize="13a").aggregate(items, "fr")
    assert from_output["chrf++"] == pytest.approx(from_items["chrf++"])
    assert from_output["bleu"] == pytest.approx(from_items["bleu"])
    with pytest.raises(ConfigError, match="language"):
        Flores().aggregate(items)
