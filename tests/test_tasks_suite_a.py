"""Tests of the task suite A: flores (translation), xwinograd, xstorycloze, xnli, mmlu, xquad.

Fast tests run the tasks on fixture data written here (local layout, or the Hugging Face hub's file layout
loaded through ``datasets`` with ``source="hub:<folder>"``) against a scripted FakeModel, and compare prompts and
scores with values computed by hand. The chrF++ of the flores task is compared with the ``sacrebleu`` command
line. Slow tests (``-m slow``) run the real Gemma 3 270M on three items of one language per task.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from mlquant.errors import BackendUnavailableError, ConfigError, DataError
from mlquant.languages import get_language
from mlquant.models import FakeModel
from mlquant.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
from mlquant.tasks import ItemScore, Task, get_task, list_tasks
from mlquant.tasks.flores import Flores, corpus_scores, flores200_status, sentence_chrf
from mlquant.tasks.mmlu import MMLU
from mlquant.tasks.xquad import answer_tokens, normalize_answer, squad_exact_match, squad_f1

SUITE = ("flores", "xwinograd", "xstorycloze", "xnli", "mmlu", "xquad")
DATA_DIR = os.environ.get("MLQUANT_DATA_DIR")
SACREBLEU_CLI = Path(sys.executable).parent / "sacrebleu"


# ------------------------------------------------------------------------------------------------------ helpers
def run_task(task: Task, lang: str, model: Any, items: Sequence[Any] | None = None) -> list[ItemScore]:
    """Send every item's requests to ``model`` and score them (what the study runner does, unbatched)."""
    language = get_language(lang)
    items = task.items(language) if items is None else items
    scores = []
    for item in items:
        reqs = task.requests(item, language)
        if all(isinstance(r, LoglikelihoodRequest) for r in reqs):
            outs: list[Any] = model.loglikelihood(reqs)
        elif all(isinstance(r, GenerateRequest) for r in reqs):
            outs = model.generate(reqs)
        elif all(isinstance(r, RollingRequest) for r in reqs):
            outs = model.loglikelihood_rolling(reqs)
        else:  # pragma: no cover - no task mixes kinds
            raise AssertionError(reqs)
        scores.append(task.score(item, language, outs))
    return scores


def scripted_ll(table: Mapping[tuple[str, str], float], default: float = -100.0) -> Callable[[str, str], float]:
    return lambda ctx, cont: table.get((ctx, cont), default)


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_hub_dataset(folder: Path, configs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> Path:
    """A dataset in the hub's file layout: README.md with ``configs`` front matter and one JSONL file per split."""
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines += [f"- config_name: {config}", "  data_files:"]
        for split, rows in splits.items():
            rel = f"{config}/{split}.jsonl"
            lines += [f"  - split: {split}", f"    path: {rel}"]
            write_jsonl(folder / rel, rows)
    lines += ["---", "", "Fixture in the hub's schema, written by tests/test_tasks_suite_a.py.", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return folder


@pytest.fixture
def offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets`` offline, with its cache in tmp_path."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


# --------------------------------------------------------------------------------------------- common contract
@pytest.mark.parametrize("name", SUITE)
def test_every_task_declares_its_contract(name: str) -> None:
    task = get_task(name)
    assert name in list_tasks()
    assert task.name == name
    assert task.kind in ("choice", "generate", "perplexity")
    assert task.difficulty in ("easy", "medium", "hard")
    assert isinstance(task.metric, str) and task.metric
    assert isinstance(task.version, str) and task.version
    assert task.higher_is_better is True
    assert task.signature().startswith(f"{name}@{task.version}")


@pytest.mark.parametrize(
    ("name", "missing", "has"),
    [
        ("xwinograd", "de", "ja"),
        ("xstorycloze", "ja", "zh"),
        ("xnli", "ja", "zh"),
        ("mmlu", "qu", "ja"),
        ("xquad", "ja", "th"),
        ("flores", "en", "ja"),
    ],
)
def test_language_without_data_is_a_clear_error(name: str, missing: str, has: str) -> None:
    task = get_task(name)
    if name != "flores":
        assert task.hub_source(get_language(missing), "test") is None
        assert task.hub_source(get_language(has), "test") is not None
    with pytest.raises(ConfigError) as err:
        task.check_language(missing)
    msg = str(err.value)
    assert f"no data for language {missing!r}" in msg and has in msg.split("it has:")[1]


def test_hub_codes_come_from_the_language_files() -> None:
    ja, zh, en = get_language("ja"), get_language("zh"), get_language("en")
    assert get_task("xwinograd").hub_source(ja, "test").name == "jp"  # type: ignore[union-attr]
    src = get_task("xstorycloze").hub_source(zh, "test")
    assert (src.path, src.name, src.split) == ("juletxara/xstory_cloze", "zh", "eval")  # type: ignore[union-attr]
    src = get_task("xquad").hub_source(zh, "test")
    assert (src.path, src.name, src.split) == ("google/xquad", "xquad.zh", "validation")  # type: ignore[union-attr]
    src = get_task("xnli").hub_source(en, "test")
    assert (src.path, src.name, src.split) == ("facebook/xnli", "en", "test")  # type: ignore[union-attr]
    src = get_task("mmlu").hub_source(ja, "dev")
    assert (src.path, src.name, src.split) == ("CohereForAI/Global-MMLU", "ja", "dev")  # type: ignore[union-attr]
    src = get_task("mmlu", dataset="m_mmlu").hub_source(get_language("ru"), "dev")
    assert (src.path, src.name, src.split) == ("alexandrainst/m_mmlu", "ru", "train")  # type: ignore[union-attr]
    assert get_task("mmlu", dataset="m_mmlu").hub_source(ja, "test") is None  # Okapi has no Japanese


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("flores", {"direction": "en-fr"}),
        ("flores", {"shots": -1}),
        ("flores", {"bleu_tokenize": "moses"}),
        ("mmlu", {"shots": 6}),
        ("mmlu", {"dataset": "mmmlu"}),
        ("mmlu", {"split": "dev", "shots": 5}),
        ("xquad", {"max_new_tokens": 0}),
        ("xnli", {"shots": 3}),
    ],
)
def test_bad_options_raise_config_error(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        get_task(name, **options)


# ------------------------------------------------------------------------------------------------------- flores
FLORES_TEXT = {
    "en": ["The cat sat on the mat.", "It rained all day.", "She reads books.", "We went home."],
    "ja": ["猫がマットの上に座った。", "一日中雨が降った。", "彼女は本を読む。", "私たちは家に帰った。"],
    "ru": ["Кошка сидела на коврике.", "Весь день шёл дождь.", "Она читает книги.", "Мы пошли домой."],
}


@pytest.fixture
def flores_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for code, texts in FLORES_TEXT.items():
        write_jsonl(root / "flores200" / "devtest" / f"{code}.jsonl", [{"id": i + 1, "text": t} for i, t in enumerate(texts)])
    return root


def test_flores_zero_shot_prompts_both_directions(flores_dir: Path) -> None:
    en_ja = get_task("flores", direction="en-xx", source=str(flores_dir))
    items = en_ja.items("ja")
    assert [it.id for it in items] == ["1", "2", "3", "4"]
    ja = get_language("ja")
    assert en_ja.prompt(items[0], ja) == "English: The cat sat on the mat.\nJapanese:"
    (req,) = en_ja.requests(items[0], ja)
    assert isinstance(req, GenerateRequest) and req.stop == ("\n",) and req.temperature == 0.0
    ru_en = get_task("flores", direction="xx-en", source=str(flores_dir))
    ru_items = ru_en.items("ru")
    assert ru_en.prompt(ru_items[1], get_language("ru")) == "Russian: Весь день шёл дождь.\nEnglish:"
    assert ru_items[1].data["target"] == "It rained all day."


def test_flores_shots_are_fixed_by_seed_and_never_scored(flores_dir: Path) -> None:
    task = get_task("flores", shots=1, shot_seed=0, source=str(flores_dir))
    # random.Random("flores|shots|0").sample(["1", "2", "3", "4"], 1) == ["2"]: the same id for every language.
    assert [it.id for it in task.shot_items("ja")] == ["2"]
    assert [it.id for it in task.shot_items("ru")] == ["2"]
    assert [it.id for it in task.items("ja")] == ["1", "3", "4"]
    ja = get_language("ja")
    assert task.prompt(task.items("ja")[0], ja) == (
        "English: It rained all day.\nJapanese: 一日中雨が降った。\n\nEnglish: The cat sat on the mat.\nJapanese:"
    )
    ru_en = get_task("flores", direction="xx-en", shots=2, source=str(flores_dir))
    assert [it.id for it in ru_en.shot_items("ru")] == ["2", "3"]
    assert ru_en.prompt(ru_en.items("ru")[0], get_language("ru")) == (
        "Russian: Весь день шёл дождь.\nEnglish: It rained all day.\n\n"
        "Russian: Она читает книги.\nEnglish: She reads books.\n\n"
        "Russian: Кошка сидела на коврике.\nEnglish:"
    )
    assert "shot_seed=0" in ru_en.signature() and "direction=xx-en" in ru_en.signature()


def test_flores_scores_sentence_chrf_and_corpus_metrics(flores_dir: Path) -> None:
    task = get_task("flores", direction="en-xx", bleu_tokenize="char", source=str(flores_dir))
    outputs = {
        "English: The cat sat on the mat.\nJapanese:": " 猫がマットの上に座った。\nEnglish: more",  # exact, then a new line
        "English: It rained all day.\nJapanese:": " 猫が座った。",
        "English: She reads books.\nJapanese:": "",
        "English: We went home.\nJapanese:": "私たちは家に帰った。",
    }
    model = FakeModel(generate=lambda ctx: outputs[ctx])
    scores = run_task(task, "ja", model)
    assert scores[0].extracted == "猫がマットの上に座った。"
    assert scores[0].score == pytest.approx(100.0)
    assert scores[2].score == 0.0 and scores[2].extracted == ""
    assert scores[3].score == pytest.approx(100.0)
    # Hand-computed with sacrebleu.CHRF(word_order=2).sentence_score("猫が座った。", ["一日中雨が降った。"])
    assert scores[1].score == pytest.approx(sentence_chrf("猫が座った。", "一日中雨が降った。")[0])
    assert sentence_chrf("猫が座った。", "猫がマットの上に座った。")[0] == pytest.approx(18.872811828553353)
    assert scores[0].extra["chrf++_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:")
    corpus = task.aggregate(scores, "ja")  # type: ignore[attr-defined]
    assert set(corpus) == {"bleu", "bleu_signature", "chrf++", "chrf++_signature"}  # not spBLEU: tok is char
    assert "tok:char" in corpus["bleu_signature"]
    assert 0.0 < corpus["chrf++"] < 100.0 and 0.0 < corpus["bleu"] < 100.0


def _cli_json(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([str(SACREBLEU_CLI), *args, "-w", "6", "-f", "json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not SACREBLEU_CLI.exists(), reason="sacrebleu command line not installed beside python")
def test_chrf_and_bleu_equal_the_sacrebleu_command_line(tmp_path: Path) -> None:
    refs = ["猫がマットの上に座った。", "Весь день шёл дождь.", "She reads books about the sea.", "Мы пошли домой."]
    hyps = ["猫はマットに座った。", "Дождь шёл весь день.", "She read a book about seas.", "Мы пошли домой!"]
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    chrf = _cli_json([str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-m", "chrf", "--chrf-word-order", "2"])
    bleu = _cli_json([str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-m", "bleu", "-tok", "char"])
    ours = corpus_scores(hyps, refs, "ja", bleu_tokenize="char")
    assert chrf["name"] == "chrF2++"
    assert ours["chrf++"] == pytest.approx(float(chrf["score"]), abs=1e-6)
    assert ours["chrf++_signature"] == chrf["signature"]
    assert ours["bleu"] == pytest.approx(float(bleu["score"]), abs=1e-6)
    assert ours["bleu_signature"] == bleu["signature"]


def test_spbleu_uses_flores200_or_says_why_not() -> None:
    status = flores200_status()
    if status is None:  # the tokenizer's model is cached here: real spBLEU
        s = corpus_scores(["猫が座った。"], ["猫が座った。"], "ja")
        assert s["spbleu"] == pytest.approx(100.0) and "tok:flores200" in s["spbleu_signature"]
        return
    assert "flores200" in status or "sentencepiece" in status
    with pytest.raises(BackendUnavailableError) as err:
        corpus_scores(["猫が座った。"], ["猫が座った。"], "ja")
    assert "bleu_tokenize='char'" in str(err.value) and "spbleu" in str(err.value)


def test_corpus_scores_checks_lengths() -> None:
    with pytest.raises(ConfigError):
        corpus_scores(["a"], ["a", "b"], "en", bleu_tokenize="13a")
    with pytest.raises(ConfigError):
        corpus_scores([], [], "en", bleu_tokenize="13a")


def test_flores_translation_needs_aligned_files(flores_dir: Path) -> None:
    write_jsonl(flores_dir / "flores200" / "devtest" / "ru.jsonl", [{"id": 9, "text": "x"}])
    with pytest.raises(DataError, match="not aligned"):
        get_task("flores", source=str(flores_dir)).items("ru")


def test_flores_ppl_still_works(flores_dir: Path) -> None:
    task = get_task("flores_ppl", source=str(flores_dir))
    (score,) = run_task(task, "ja", FakeModel(), task.items("ja")[:1])
    assert score.score == pytest.approx(1 / math.log(2))  # FakeModel: log P = -bytes
    assert "flores" in list_tasks() and "flores_ppl" in list_tasks()


# ---------------------------------------------------------------------------------------------------- xwinograd
XWINO_LOCAL = {
    "ja": [
        {
            "id": 0, "lang": "jp", "source": "test", "english_original": "The sniper shot the terrorist because he was a bad guy.",
            "sentence": "狙撃兵はテロリストを撃った。彼は悪漢だったからだ。",
            "tokens": ["狙撃兵", "は", "テロリスト", "を撃った。", "彼", "は悪漢だったからだ。"],
            "pronoun": ["彼", [4, 5], ["彼"]],
            "candidates": [["狙撃兵", [0, 1], ["狙撃兵"], False], ["テロリスト", [2, 3], ["テロリスト"], True]],
            "label": 1,
        }
    ],
    "ru": [
        {
            "id": 0, "lang": "ru", "source": "superglue.train", "english_original": "?",
            "sentence": "Фред хотел посмотреть телевизор, поэтому он включил его.",
            "tokens": ["Фред", "хотел", "посмотреть", "телевизор", ",", "поэтому", "он", "включил", "его", "."],
            "pronoun": ["его.", [8, 10], ["его", "."]],
            "candidates": [["Фред", [0, 1], ["Фред"], False], ["телевизор", [3, 4], ["телевизор"], True]],
            "label": 1,
        }
    ],
    "en": [
        {
            "id": 7, "lang": "en", "source": "original", "english_original": "?",
            "sentence": 'Dan took the seat because his "Dibs!" was fast.',
            "tokens": ["Dan", "took", "the", "seat", "because", "his", "``", "Dibs", "!", "''", "was", "fast", "."],
            "pronoun": ["his", [5, 6], ["his"]],
            "candidates": [["Dan", [0, 1], ["Dan"], True], ["Bill", [9, 10], ["Bill"], False]],
            "label": 0,
        }
    ],
}


@pytest.fixture
def xwino_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for code, rows in XWINO_LOCAL.items():
        write_jsonl(root / "xwinograd" / "test" / f"{code}.jsonl", rows)
    return root


def test_xwinograd_partial_scoring_cjk_and_cyrillic(xwino_dir: Path) -> None:
    task = get_task("xwinograd", source=str(xwino_dir))
    ja, ru = get_language("ja"), get_language("ru")
    (item,) = task.items("ja")
    assert task.requests(item, ja) == [
        LoglikelihoodRequest("狙撃兵はテロリストを撃った。狙撃兵", "は悪漢だったからだ。"),
        LoglikelihoodRequest("狙撃兵はテロリストを撃った。テロリスト", "は悪漢だったからだ。"),
    ]
    (ru_item,) = task.items("ru")
    # The span "его." takes the final stop along; the stop goes back to the rest.
    assert task.requests(ru_item, ru) == [
        LoglikelihoodRequest("Фред хотел посмотреть телевизор, поэтому он включил Фред", "."),
        LoglikelihoodRequest("Фред хотел посмотреть телевизор, поэтому он включил телевизор", "."),
    ]
    table = {
        ("狙撃兵はテロリストを撃った。狙撃兵", "は悪漢だったからだ。"): -9.0,
        ("狙撃兵はテロリストを撃った。テロリスト", "は悪漢だったからだ。"): -4.5,
        ("Фред хотел посмотреть телевизор, поэтому он включил Фред", "."): -2.0,
        ("Фред хотел посмотреть телевизор, поэтому он включил телевизор", "."): -3.0,
    }
    model = FakeModel(loglikelihood=scripted_ll(table))
    (s_ja,) = run_task(task, "ja", model)
    assert (s_ja.score, s_ja.extracted, s_ja.target, s_ja.output) == (1.0, "1", "1", "テロリスト")
    assert s_ja.prompt == "狙撃兵はテロリストを撃った。_は悪漢だったからだ。"
    assert s_ja.extra["logprobs"] == [-9.0, -4.5]
    (s_ru,) = run_task(task, "ru", model)
    assert (s_ru.score, s_ru.extracted) == (0.0, "0")


def test_xwinograd_ptb_quotes_are_found_in_the_sentence(xwino_dir: Path) -> None:
    task = get_task("xwinograd", source=str(xwino_dir))
    (item,) = task.items("en")
    assert item.id == "7"
    assert task.requests(item, get_language("en"))[0] == LoglikelihoodRequest(
        "Dan took the seat because Dan", ' "Dibs!" was fast.'
    )


def test_xwinograd_malformed_row_names_file_line_field(tmp_path: Path) -> None:
    row = dict(XWINO_LOCAL["ja"][0], tokens=["違う"])
    write_jsonl(tmp_path / "xwinograd" / "test" / "ja.jsonl", [row])
    with pytest.raises(DataError, match=r"ja\.jsonl, line 1: field 'pronoun'"):
        get_task("xwinograd", source=str(tmp_path)).items("ja")


def test_xwinograd_hub_schema_fixture(tmp_path: Path, offline_datasets: None) -> None:
    hub = write_hub_dataset(
        tmp_path / "xwinograd_hub",
        {
            "zh": {"test": [{"sentence": "市政府拒绝给示威者颁发许可证，因_担心暴力。", "option1": "市政府", "option2": "示威者", "answer": "1"}]},
            "jp": {"test": [{"sentence": "狙撃兵はテロリストを撃った。_は悪漢だったからだ。", "option1": "狙撃兵", "option2": "テロリスト", "answer": "2"}]},
        },
    )
    task = get_task("xwinograd", source=f"hub:{hub}")
    (item,) = task.items("zh")
    assert task.requests(item, get_language("zh")) == [
        LoglikelihoodRequest("市政府拒绝给示威者颁发许可证，因市政府", "担心暴力。"),
        LoglikelihoodRequest("市政府拒绝给示威者颁发许可证，因示威者", "担心暴力。"),
    ]
    assert item.data["label"] == 0
    (ja_item,) = task.items("ja")  # the hub config of Japanese is "jp" (languages/ja.yaml)
    assert ja_item.data["label"] == 1 and ja_item.data["rest"] == "は悪漢だったからだ。"
    model = FakeModel(loglikelihood=scripted_ll({("市政府拒绝给示威者颁发许可证，因市政府", "担心暴力。"): -1.0}))
    (s,) = run_task(task, "zh", model)
    assert s.score == 1.0 and s.prompt == "市政府拒绝给示威者颁发许可证，因_担心暴力。"


@pytest.mark.skipif(not DATA_DIR, reason="MLQUANT_DATA_DIR not set")
def test_xwinograd_reads_every_shared_file() -> None:
    task = get_task("xwinograd")
    counts = {code: len(task.items(code)) for code in task.languages("local")}
    assert counts == {"en": 2325, "fr": 83, "ja": 959, "pt": 263, "ru": 315, "zh": 16}


# -------------------------------------------------------------------------------------------------- xstorycloze
def _story(story_id: str, sentences: list[str], endings: list[str], right: int) -> dict[str, Any]:
    row: dict[str, Any] = {"story_id": story_id}
    for i, s in enumerate(sentences, start=1):
        row[f"input_sentence_{i}"] = s
    row.update(sentence_quiz1=endings[0], sentence_quiz2=endings[1], answer_right_ending=right)
    return row


@pytest.fixture
def storycloze_hub(tmp_path: Path) -> Path:
    return write_hub_dataset(
        tmp_path / "xstory_cloze",
        {
            "zh": {
                "eval": [_story("s1", ["小明饿了。", "他打开冰箱。", "冰箱是空的。", "他去了商店。"], ["他买了面包。", "他睡着了。"], 1)],
                "train": [_story("t1", ["a", "b", "c", "d"], ["e", "f"], 2)],
            },
            "ar": {
                "eval": [_story("s1", ["كان علي جائعا.", "فتح الثلاجة.", "كانت فارغة.", "ذهب إلى المتجر."], ["اشترى خبزا.", "نام."], 2)],
            },
        },
    )


def test_xstorycloze_hub_fixture_prompts_and_scores(storycloze_hub: Path, offline_datasets: None) -> None:
    task = get_task("xstorycloze", source=f"hub:{storycloze_hub}")
    zh, ar = get_language("zh"), get_language("ar")
    (item,) = task.items("zh")  # the "eval" split, not "train"
    assert item.id == "s1"
    assert task.context(item, zh) == "小明饿了。他打开冰箱。冰箱是空的。他去了商店。"  # no spaces in Chinese
    assert task.choices(item, zh) == ["他买了面包。", "他睡着了。"]
    (ar_item,) = task.items("ar")
    assert task.context(ar_item, ar) == "كان علي جائعا. فتح الثلاجة. كانت فارغة. ذهب إلى المتجر."
    assert task.choices(ar_item, ar) == [" اشترى خبزا.", " نام."]
    table = {
        ("小明饿了。他打开冰箱。冰箱是空的。他去了商店。", "他买了面包。"): -3.0,
        ("小明饿了。他打开冰箱。冰箱是空的。他去了商店。", "他睡着了。"): -5.0,
        ("كان علي جائعا. فتح الثلاجة. كانت فارغة. ذهب إلى المتجر.", " اشترى خبزا."): -3.0,
        ("كان علي جائعا. فتح الثلاجة. كانت فارغة. ذهب إلى المتجر.", " نام."): -5.0,
    }
    model = FakeModel(loglikelihood=scripted_ll(table))
    (s_zh,) = run_task(task, "zh", model)
    (s_ar,) = run_task(task, "ar", model)
    assert (s_zh.score, s_zh.extracted, s_zh.target) == (1.0, "0", "0")
    assert (s_ar.score, s_ar.extracted, s_ar.target) == (0.0, "0", "1")


def test_xstorycloze_bad_hub_row(tmp_path: Path, offline_datasets: None) -> None:
    hub = write_hub_dataset(tmp_path / "bad", {"zh": {"eval": [_story("s1", ["a", "b", "c", "d"], ["e", "f"], 3)]}})
    with pytest.raises(DataError, match="answer_right_ending"):
        get_task("xstorycloze", source=f"hub:{hub}").items("zh")


# ------------------------------------------------------------------------------------------------------- xnli
@pytest.fixture
def xnli_hub(tmp_path: Path) -> Path:
    return write_hub_dataset(
        tmp_path / "xnli",
        {
            "zh": {"test": [{"premise": "他坐着。", "hypothesis": "他站着。", "label": 2}]},
            "ar": {"test": [{"premise": "جلس الرجل.", "hypothesis": "الرجل جالس.", "label": 0}]},
            "en": {"test": [{"premise": "He sat.", "hypothesis": "He is seated.", "label": 1}]},
        },
    )


def test_xnli_hub_fixture_prompts_and_scores(xnli_hub: Path, offline_datasets: None) -> None:
    task = get_task("xnli", source=f"hub:{xnli_hub}")
    zh, ar = get_language("zh"), get_language("ar")
    (item,) = task.items("zh")
    assert task.requests(item, zh) == [
        LoglikelihoodRequest("他坐着。, 正确?", " 是的, 他站着。"),
        LoglikelihoodRequest("他坐着。, 正确?", " 所以, 他站着。"),
        LoglikelihoodRequest("他坐着。, 正确?", " 不是的, 他站着。"),
    ]
    (ar_item,) = task.items("ar")
    assert task.context(ar_item, ar) == "جلس الرجل., صحيح?"
    assert task.choices(ar_item, ar) == [" نعم, الرجل جالس.", " لذا, الرجل جالس.", " لا, الرجل جالس."]
    (en_item,) = task.items("en")
    assert task.choices(en_item, get_language("en"))[1] == " Also, He is seated."
    table = {("他坐着。, 正确?", " 是的, 他站着。"): -4.0, ("他坐着。, 正确?", " 所以, 他站着。"): -6.0, ("他坐着。, 正确?", " 不是的, 他站着。"): -3.5}
    (s,) = run_task(task, "zh", FakeModel(loglikelihood=scripted_ll(table)))
    assert (s.score, s.extracted, s.target, s.output) == (1.0, "2", "2", " 不是的, 他站着。")
    assert s.extra["logprobs"] == [-4.0, -6.0, -3.5]
    (s_ar,) = run_task(task, "ar", FakeModel(loglikelihood=lambda c, x: -len(x)))  # shortest continuation: "لا"
    assert (s_ar.score, s_ar.extracted) == (0.0, "2")


def test_xnli_bad_label(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "xnli" / "test" / "zh.jsonl", [{"premise": "a", "hypothesis": "b", "label": 3}])
    with pytest.raises(DataError, match=r"zh\.jsonl, line 1: field 'label' is 3"):
        get_task("xnli", source=str(tmp_path)).items("zh")


# ------------------------------------------------------------------------------------------------------- mmlu
def _gmmlu(sample_id: str, subject: str, question: str, options: list[str], answer: str) -> dict[str, Any]:
    row = {"sample_id": sample_id, "subject": subject, "subject_category": "STEM", "question": question, "answer": answer}
    row.update({f"option_{k}": v for k, v in zip("abcd", options)})
    return row


@pytest.fixture
def mmlu_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "global_mmlu"
    write_jsonl(
        root / "dev" / "ja.jsonl",
        [
            _gmmlu("astronomy/dev/0", "astronomy", "太陽は何ですか?", ["惑星", "恒星", "衛星", "彗星"], "B"),
            _gmmlu("astronomy/dev/1", "astronomy", "月は何ですか?", ["衛星", "恒星", "惑星", "彗星"], "A"),
            _gmmlu("virology/dev/0", "virology", "ウイルスは生物ですか?", ["はい", "いいえ", "議論がある", "不明"], "C"),
        ],
    )
    write_jsonl(
        root / "test" / "ja.jsonl",
        [_gmmlu("astronomy/test/0", "astronomy", "地球は何ですか?", ["恒星", "衛星", "惑星", "彗星"], "C")],
    )
    write_jsonl(
        root / "test" / "ar.jsonl",
        [_gmmlu("virology/test/0", "virology", "ما هو الفيروس؟", ["خلية", "جسيم", "نبات", "حيوان"], "B")],
    )
    write_jsonl(
        root / "dev" / "ar.jsonl",
        [_gmmlu("virology/dev/0", "virology", "هل الفيروس حي؟", ["نعم", "لا", "جدل", "مجهول"], "C")],
    )
    return tmp_path / "data"


def test_mmlu_zero_shot_prompt_and_one_shared_context(mmlu_dir: Path) -> None:
    task = get_task("mmlu", source=str(mmlu_dir))
    ja = get_language("ja")
    (item,) = task.items("ja")
    reqs = task.requests(item, ja)
    prompt = "問題：地球は何ですか?\nA. 恒星\nB. 衛星\nC. 惑星\nD. 彗星\n答え："
    assert reqs == [LoglikelihoodRequest(prompt, f" {letter}") for letter in "ABCD"]
    assert len({r.context for r in reqs}) == 1  # one shared context: one forward pass per item
    table = {(prompt, " A"): -2.0, (prompt, " B"): -3.0, (prompt, " C"): -1.0, (prompt, " D"): -4.0}
    (s,) = run_task(task, "ja", FakeModel(loglikelihood=scripted_ll(table)))
    assert (s.score, s.extracted, s.target, s.output) == (1.0, "2", "2", " C")


def test_mmlu_shots_come_from_the_dev_split_of_the_same_subject(mmlu_dir: Path) -> None:
    task = get_task("mmlu", shots=2, source=str(mmlu_dir))
    (item,) = task.items("ja")
    assert task.context(item, get_language("ja")) == (
        "問題：太陽は何ですか?\nA. 惑星\nB. 恒星\nC. 衛星\nD. 彗星\n答え： B\n\n"
        "問題：月は何ですか?\nA. 衛星\nB. 恒星\nC. 惑星\nD. 彗星\n答え： A\n\n"
        "問題：地球は何ですか?\nA. 恒星\nB. 衛星\nC. 惑星\nD. 彗星\n答え："
    )
    ar_task = get_task("mmlu", shots=1, source=str(mmlu_dir))
    (ar_item,) = ar_task.items("ar")
    assert ar_task.context(ar_item, get_language("ar")) == (
        "سؤال: هل الفيروس حي؟\nA. نعم\nB. لا\nC. جدل\nD. مجهول\nإجابة: C\n\n"
        "سؤال: ما هو الفيروس؟\nA. خلية\nB. جسيم\nC. نبات\nD. حيوان\nإجابة:"
    )
    # Scoring the dev split itself: an item is never its own shot.
    dev = get_task("mmlu", shots=1, split="dev", source=str(mmlu_dir))
    first = dev.items("ja")[0]
    assert dev.shot_items(first, get_language("ja"))[0].id == "astronomy/dev/1"
    with pytest.raises(DataError, match="virology"):
        dev.context(dev.items("ja")[2], get_language("ja"))  # virology has a single dev question


def test_mmlu_m_mmlu_hub_fixture(tmp_path: Path, offline_datasets: None) -> None:
    def row(i: str, q: str, opts: list[str], ans: str) -> dict[str, Any]:
        return {"id": i, "instruction": q, "option_a": opts[0], "option_b": opts[1], "option_c": opts[2], "option_d": opts[3], "answer": ans}

    hub = write_hub_dataset(
        tmp_path / "m_mmlu",
        {
            "ru": {
                "test": [row("astronomy/test/0", "Что такое Земля?", ["звезда", "спутник", "планета", "комета"], "C")],
                "train": [
                    row("virology/train/0", "Вирус живой?", ["да", "нет", "спорно", "неизвестно"], "C"),
                    row("astronomy/train/0", "Что такое Солнце?", ["планета", "звезда", "спутник", "комета"], "B"),
                ],
            }
        },
    )
    task = get_task("mmlu", dataset="m_mmlu", shots=1, source=f"hub:{hub}")
    assert task.signature() == "mmlu@1.0[dataset=m_mmlu,shots=1,split=test]"
    (item,) = task.items("ru")
    assert item.id == "astronomy/test/0" and item.data["subject"] == "astronomy" and item.data["label"] == 2
    assert task.context(item, get_language("ru")) == (
        "Задача: Что такое Солнце?\nA. планета\nB. звезда\nC. спутник\nD. комета\nОтвет: B\n\n"
        "Задача: Что такое Земля?\nA. звезда\nB. спутник\nC. планета\nD. комета\nОтвет:"
    )


def test_mmlu_bad_answer_letter(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "global_mmlu" / "test" / "ja.jsonl", [_gmmlu("x/test/0", "x", "q", ["a", "b", "c", "d"], "E")])
    with pytest.raises(DataError, match=r"ja\.jsonl, line 1: field 'answer' is 'E'"):
        get_task("mmlu", source=str(tmp_path)).items("ja")


@pytest.mark.skipif(not DATA_DIR, reason="MLQUANT_DATA_DIR not set")
def test_mmlu_reads_the_shared_dev_split() -> None:
    task = get_task("mmlu", split="dev", shots=4)
    assert task.languages("local") == ["en", "ja"]
    en, ja = task.items("en"), task.items("ja")
    assert len(en) == len(ja) == 285 and [i.id for i in en] == [i.id for i in ja]
    assert len(task.shot_items(ja[0], get_language("ja"))) == 4


# ------------------------------------------------------------------------------------------------------ xquad
def test_squad_normalization_per_language() -> None:
    en, zh, th, ar, ru = (get_language(c) for c in ("en", "zh", "th", "ar", "ru"))
    assert normalize_answer("The  Eiffel-Tower!", en) == "eiffel tower"
    assert normalize_answer("The Beatles", ru) == "the beatles"  # articles are English only
    assert normalize_answer("«Москва»", ru) == "москва"  # Unicode punctuation (Pi/Pf)
    assert normalize_answer("“北京”。", zh) == "北京"
    assert answer_tokens("北京 大学", zh) == ["北", "京", "大", "学"]
    assert answer_tokens("กรุงเทพ", th) == list("กรุงเทพ")
    assert answer_tokens("في عام 1999،", ar) == ["في", "عام", "1999"]  # Arabic comma is punctuation
    # F1 by hand: pred {an, old, tower} vs gold {the, tower} -> en: pred [old, tower], gold [tower]: P=1/2, R=1, F1=2/3
    assert squad_f1("an old tower", ["the tower"], en) == pytest.approx(2 / 3)
    # zh: chars 北京市 vs 北京 -> common 2, P=2/3, R=1, F1=0.8
    assert squad_f1("北京市", ["北京"], zh) == pytest.approx(0.8)
    assert squad_f1("上海", ["北京", "上海。"], zh) == 1.0  # best gold
    assert squad_exact_match("北 京", ["北京"], zh) == 1.0
    assert squad_exact_match("the tower.", ["Tower"], en) == 1.0
    assert squad_exact_match("tower block", ["tower"], en) == 0.0
    assert squad_f1("", ["x"], en) == 0.0


@pytest.fixture
def xquad_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "xquad" / "test"
    write_jsonl(
        root / "zh.jsonl",
        [
            {
                "id": "0-0", "title": "T", "context": "黑豹队的防守只丢了 308分。",
                "qas": [
                    {"id": "q1", "question": "黑豹队的防守丢了多少分？", "answers": [{"text": "308", "answer_start": 10}]},
                    {"id": "q2", "question": "谁防守？", "answers": [{"text": "黑豹队", "answer_start": 0}]},
                ],
            }
        ],
    )
    write_jsonl(
        root / "ar.jsonl",
        [
            {
                "id": "0-0", "title": "T", "context": "سجل الفريق 308 نقاط.",
                "qas": [{"id": "q1", "question": "كم نقطة؟", "answers": [{"text": "308 نقاط", "answer_start": 11}]}],
            }
        ],
    )
    return tmp_path / "data"


def test_xquad_prompts_and_scores(xquad_dir: Path) -> None:
    task = get_task("xquad", source=str(xquad_dir))
    zh = get_language("zh")
    items = task.items("zh")
    assert [(i.id, i.group) for i in items] == [("q1", "0-0"), ("q2", "0-0")]
    (req,) = task.requests(items[0], zh)
    assert req.context == "文章：黑豹队的防守只丢了 308分。\n\n问题：黑豹队的防守丢了多少分？\n\n答案："
    assert req.stop == ("\n",) and req.max_new_tokens == 32
    outputs = {req.context: " 308分\n问题：", task.prompt(items[1], zh): "黑豹"}
    scores = run_task(task, "zh", FakeModel(generate=lambda ctx: outputs[ctx]))
    # q1: chars 3,0,8,分 vs 3,0,8: P=3/4, R=1 -> F1=6/7; q2: 黑豹 vs 黑豹队: P=1, R=2/3 -> 0.8
    assert scores[0].extracted == "308分" and scores[0].score == pytest.approx(6 / 7)
    assert scores[0].extra["exact_match"] == 0.0
    assert scores[1].score == pytest.approx(0.8)
    ar_task_scores = run_task(task, "ar", FakeModel(generate=lambda ctx: "308 نقاط."))
    assert ar_task_scores[0].prompt == "النص: سجل الفريق 308 نقاط.\n\nسؤال: كم نقطة؟\n\nإجابة:"
    assert ar_task_scores[0].score == 1.0 and ar_task_scores[0].extra["exact_match"] == 1.0


def test_xquad_hub_schema_fixture(tmp_path: Path, offline_datasets: None) -> None:
    hub = write_hub_dataset(
        tmp_path / "xquad_hub",
        {
            "xquad.th": {
                "validation": [
                    {"id": "q1", "context": "กรุงเทพเป็นเมืองหลวง", "question": "เมืองหลวงคืออะไร",
                     "answers": {"text": ["กรุงเทพ"], "answer_start": [0]}},
                    {"id": "q2", "context": "กรุงเทพเป็นเมืองหลวง", "question": "อะไรเป็นเมืองหลวง",
                     "answers": {"text": ["กรุงเทพ"], "answer_start": [0]}},
                ]
            }
        },
    )
    task = get_task("xquad", source=f"hub:{hub}")
    items = task.items("th")
    assert [i.id for i in items] == ["q1", "q2"]
    assert items[0].group == items[1].group  # same paragraph, same cluster
    assert task.prompt(items[0], get_language("th")) == "ข้อความ: กรุงเทพเป็นเมืองหลวง\n\nโจทย์: เมืองหลวงคืออะไร\n\nคำตอบ:"
    (s,) = run_task(task, "th", FakeModel(generate=lambda ctx: " กรุง"), items[:1])
    assert s.score == pytest.approx(2 * (4 / 4) * (4 / 7) / (1 + 4 / 7))  # chars: 4 of 4 predicted, 4 of 7 gold


def test_xquad_question_without_answers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "xquad" / "test" / "zh.jsonl", [{"id": "0-0", "context": "c", "qas": [{"id": "q", "question": "?", "answers": []}]}])
    with pytest.raises(DataError, match=r"zh\.jsonl, line 1: question 'q' has no 'answers'"):
        get_task("xquad", source=str(tmp_path)).items("zh")


# ------------------------------------------------------------------------------------- real model (slow tests)
@pytest.fixture(scope="module")
def gemma() -> Any:
    from mlquant.models import load_model

    try:
        return load_model("gemma3-270m")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Gemma 3 270M not loadable here: {exc}")


needs_data = pytest.mark.skipif(not DATA_DIR, reason="MLQUANT_DATA_DIR not set")


def _check_choice(scores: Sequence[ItemScore], n_options: int) -> None:
    assert len(scores) == 3
    for s in scores:
        assert s.score in (0.0, 1.0)
        lps = s.extra["logprobs"]
        assert len(lps) == n_options and all(math.isfinite(x) and x < 0 for x in lps)


@pytest.mark.slow
@needs_data
def test_slow_flores_gemma(gemma: Any) -> None:
    task = Flores(direction="en-xx", shots=1, max_new_tokens=32, bleu_tokenize="char")
    scores = run_task(task, "ja", gemma, task.items("ja", limit=3))
    assert all(0.0 <= s.score <= 100.0 for s in scores)
    corpus = task.aggregate(scores, "ja")
    assert 0.0 <= corpus["chrf++"] <= 100.0 and 0.0 <= corpus["bleu"] <= 100.0


@pytest.mark.slow
@needs_data
def test_slow_xwinograd_gemma(gemma: Any) -> None:
    task = get_task("xwinograd")
    _check_choice(run_task(task, "ja", gemma, task.items("ja", limit=3)), 2)


@pytest.mark.slow
def test_slow_xstorycloze_gemma(gemma: Any, storycloze_hub: Path, offline_datasets: None) -> None:
    task = get_task("xstorycloze", source=f"hub:{storycloze_hub}")
    items = task.items("zh") + task.items("zh") + task.items("zh")  # the fixture has one story
    _check_choice(run_task(task, "zh", gemma, items), 2)


@pytest.mark.slow
def test_slow_xnli_gemma(gemma: Any, xnli_hub: Path, offline_datasets: None) -> None:
    task = get_task("xnli", source=f"hub:{xnli_hub}")
    items = task.items("zh") * 3
    _check_choice(run_task(task, "zh", gemma, items), 3)


@pytest.mark.slow
@needs_data
def test_slow_mmlu_gemma_one_forward_pass_per_item(gemma: Any) -> None:
    task = MMLU(shots=1, split="dev")
    ja = get_language("ja")
    items = task.items("ja", limit=3)
    reqs = [r for item in items for r in task.requests(item, ja)]
    before = gemma.n_forward
    results = gemma.loglikelihood(reqs)
    assert gemma.n_forward - before == 1  # 3 contexts in one batch, one-token letters: no continuation pass
    assert all(r.n_tokens == 1 for r in results)
    scores = [task.score(item, ja, results[4 * i : 4 * i + 4]) for i, item in enumerate(items)]
    _check_choice(scores, 4)


@pytest.mark.slow
@needs_data
def test_slow_xquad_gemma(gemma: Any) -> None:
    task = get_task("xquad")
    scores = run_task(task, "zh", gemma, task.items("zh", limit=3))
    assert len(scores) == 3
    assert all(0.0 <= s.score <= 1.0 and s.extra["exact_match"] in (0.0, 1.0) for s in scores)
