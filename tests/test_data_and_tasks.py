"""Data resolution (local files, hub schema, errors) and the foundation tasks' prompts and scores."""

from __future__ import annotations

import json
import math

import pytest

import mlquant as mq
from mlquant.data import load_rows, read_jsonl
from mlquant.errors import ConfigError, DataError
from mlquant.models import FakeModel
from mlquant.requests import LoglikelihoodResult, RollingResult
from mlquant.tasks._scoring import extract_number


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_malformed_json_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "xcopa" / "test" / "tr.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"premise": "a"}\n{not json}\n')
    with pytest.raises(DataError, match=r"tr.jsonl, line 2: not valid JSON"):
        read_jsonl(path)


def test_missing_field_names_file_line_and_field(tmp_path) -> None:
    row = {"premise": "P.", "choice1": "a", "choice2": "b", "question": "cause", "label": 0}
    write_jsonl(tmp_path / "xcopa" / "test" / "tr.jsonl", [row, {k: v for k, v in row.items() if k != "choice2"}])
    with pytest.raises(DataError, match=r"tr.jsonl, line 2: missing field 'choice2'"):
        mq.get_task("xcopa", source=str(tmp_path)).items("tr")


def test_wrong_value_is_named(tmp_path) -> None:
    row = {"premise": "P.", "choice1": "a", "choice2": "b", "question": "why", "label": 0}
    write_jsonl(tmp_path / "xcopa" / "test" / "tr.jsonl", [row])
    with pytest.raises(DataError, match=r"line 1: field 'question' is 'why'; expected 'cause' or 'effect'"):
        mq.get_task("xcopa", source=str(tmp_path)).items("tr")


def test_no_data_anywhere_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLQUANT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="no data for mgsm/test/xx"):
        load_rows("mgsm", "test", "xx")


def test_hub_schema_belebele_loads_like_local(tmp_path) -> None:
    """A local dataset in the hub's layout and schema (facebook/belebele) read through `datasets`."""
    local = mq.get_task("belebele").items("en", limit=3, seed=0)
    hub_rows = []
    for item in local:
        link, qn = item.id.rsplit("#", 1)
        d = item.data
        hub_rows.append(
            {"link": link, "question_number": int(qn), "flores_passage": d["passage"], "question": d["question"],
             **{f"mc_answer{i + 1}": c for i, c in enumerate(d["choices"])}, "correct_answer_num": str(d["label"] + 1),
             "dialect": "eng_Latn", "ds": "2023-05-03"}
        )
    root = tmp_path / "belebele-hub"
    write_jsonl(root / "data" / "eng_Latn.jsonl", hub_rows)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: eng_Latn\n  data_files:\n  - split: test\n    path: data/eng_Latn.jsonl\n---\n"
    )
    task = mq.get_task("belebele", source=f"hub:{root}")
    items = task.items("en")
    assert [i.id for i in items] == [i.id for i in local]
    assert [dict(i.data) for i in items] == [dict(i.data) for i in local]
    assert items[0].group == local[0].group


def test_task_language_error_lists_languages() -> None:
    with pytest.raises(ConfigError, match=r"task 'belebele' has no data for language 'qu'; it has: .*en"):
        mq.get_task("belebele").check_language("qu")


def test_sample_is_fixed_by_seed_and_paired() -> None:
    task = mq.get_task("xcopa")
    a = [i.id for i in task.items("zh", limit=10, seed=3)]
    assert a == [i.id for i in task.items("zh", limit=10, seed=3)]
    assert a != [i.id for i in task.items("zh", limit=10, seed=4)]
    with pytest.raises(ConfigError):
        task.items("zh", limit=0)


def test_xcopa_prompts_from_language_files() -> None:
    task = mq.get_task("xcopa")
    tr, zh = mq.get_language("tr"), mq.get_language("zh")
    item = task.items("tr")[0]
    assert task.context(item, tr) == "Ürün balonlu naylonla paketlenmişti " + tr.prompt.therefore
    assert task.choices(item, tr) == [" kırılgandı.", " küçüktü."]
    zitem = task.items("zh")[0]
    assert not task.context(zitem, zh).endswith(" " + zh.prompt.because) and " " not in task.choices(zitem, zh)[0][:1]


def test_choice_score_from_loglikelihoods() -> None:
    task = mq.get_task("belebele")
    lang = mq.get_language("zh")
    item = task.items("zh")[0]
    outs = [LoglikelihoodResult(lp, False, 1) for lp in (-3.0, -1.0, -2.0, -5.0)]
    s = task.score(item, lang, outs)
    assert s.extracted == "1" and s.score == float(item.data["label"] == 1)
    assert json.loads(json.dumps(s.extra))["logprobs"] == [-3.0, -1.0, -2.0, -5.0]
    assert task.context(item, lang).startswith(lang.label("passage"))


@pytest.mark.parametrize(
    ("lang", "text", "expected"),
    [
        ("en", "She earns 9 + 9 = 18 dollars. The answer is 18.", "18"),
        ("en", "The answer is 1,234.", "1234"),
        ("de", "Die Antwort ist 1.234.", "1234"),
        ("ja", "５+６=１１。答えは１１です。", "11"),
        ("bn", "উত্তর হল ১৮।", "18"),
        ("th", "คำตอบคือ ๑๘", "18"),
        ("zh", "没有数字", None),
        ("fr", "La réponse est 3,5.", "3.5"),
    ],
)
def test_mgsm_extraction(lang: str, text: str, expected: str | None) -> None:
    assert extract_number(text, mq.get_language(lang)) == expected


def test_mgsm_prompt_and_score() -> None:
    task = mq.get_task("mgsm", shots=2)
    ja = mq.get_language("ja")
    item = task.items("ja")[0]
    prompt = task.prompt(item, ja)
    assert prompt.count("問題：") == 3 and prompt.endswith("ステップごとの答え：")
    good = task.score(item, ja, [f"答えは{item.data['answer_number']}です。"])
    bad = task.score(item, ja, ["答えは0です。"])
    assert (good.score, bad.score) == (1.0, 0.0)
    with pytest.raises(ConfigError, match="shots=9"):
        mq.get_task("mgsm", shots=9)


def test_flores_ppl_bits_per_byte() -> None:
    task = mq.get_task("flores_ppl")
    item = task.items("th", limit=1)[0]
    n = len(item.data["text"].encode("utf-8"))
    s = task.score(item, mq.get_language("th"), [RollingResult(-n * math.log(2), 10, n)])
    assert s.score == pytest.approx(1.0) and s.weight == n
    assert len(task.languages(where="local")) == 33


def test_fake_model_end_to_end_mgsm(tmp_path) -> None:
    model = FakeModel(generate=lambda ctx: "… 答えは18です。\n\n問題：")
    df = mq.Study(model, quant=["fp32"], tasks=[{"name": "mgsm", "shots": 0}], languages=["ja"], limit=4).run(
        tmp_path, progress=False
    ).frame
    assert (df.output == "… 答えは18です。").all()
    assert df.extracted.tolist() == ["18"] * 4
