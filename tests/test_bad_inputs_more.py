"""Further bad inputs a researcher produces, each a named error before any model is loaded.

Every case runs a study file (or a call) whose model is a hub id that cannot be reached here: had a model load been
attempted, the error would be the hub's ("cannot load ... from the Hugging Face hub") instead of the named one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import mlquant as mq
from mlquant.cli import app

DATA = Path(os.environ.get("MLQUANT_DATA_DIR", ""))
pytestmark = pytest.mark.skipif(not (DATA / "xcopa").is_dir(), reason="needs MLQUANT_DATA_DIR with xcopa")

BASE = "model: nosuch-org/nosuch-model\nquant: [fp32]\ntasks: [xcopa]\nlanguages: [tr]\nlimit: 4\n"

# (case, study file text, words the error must contain)
STUDY_CASES = [
    ("yaml syntax", "model: x\nquant: [fp32\n", ["cannot read the study file"]),
    ("a list, not a mapping", "- fp32\n- rtn-w8\n", ["expected a mapping of study keys"]),
    ("an empty file", "", ["expected a mapping of study keys"]),
    ("unknown key", BASE + "quants: [rtn-w8]\n", ["line 6", "unknown key 'quants'", "Did you mean 'quant'"]),
    ("quant label typo", BASE.replace("[fp32]", "[fp32, rtn-w4g12B]"), ["cannot parse quant label 'rtn-w4g12B'"]),
    ("bits out of range", BASE.replace("[fp32]", "[fp32, rtn-w1]"), ["w_bits=1", "2-8"]),
    ("no baseline", BASE.replace("[fp32]", "[rtn-w8]"), ["has no baseline", "fp32, bf16 or fp16"]),
    ("a quant twice", BASE.replace("[fp32]", "[fp32, rtn-w8, rtn-w8]"), ["'rtn-w8' is listed twice"]),
    ("empty quant list", BASE.replace("[fp32]", "[]"), ["'quant' is empty"]),
    ("language code typo", BASE.replace("[tr]", "[jp]"), ["'jp'", "ja"]),
    ("limit zero", BASE.replace("limit: 4", "limit: 0"), ["limit=0", "positive integer"]),
    ("limit as words", BASE.replace("limit: 4", "limit: ten"), ["limit='ten'", "positive integer"]),
    ("seed as text", BASE + "seed: abc\n", ["seed='abc'", "integer"]),
    ("batch size zero", BASE + "batch_size: 0\n", ["batch_size=0", "positive integer"]),
    ("task option of the wrong type", BASE.replace("[xcopa]", "[{name: mgsm, shots: two}]"), ["shots"]),
    ("unknown task option", BASE.replace("[xcopa]", "[{name: xcopa, shot: 2}]"), ["shot"]),
    ("task without name", BASE.replace("[xcopa]", "[{shots: 2}]"), ["missing key 'name'"]),
    ("calibration language unknown", BASE.replace("[fp32]", "[fp32, {label: gptq-w4g128, calibration: 'flores:xx:128'}]"),
     ["calibration", "xx"]),
    ("calibration of zero texts", BASE.replace("[fp32]", "[fp32, {label: gptq-w4g128, calibration: 'flores:ja:0'}]"),
     ["calibration", "0"]),
    ("calibration file missing", BASE.replace("[fp32]", "[fp32, {label: gptq-w4g128, calibration: /no/such/file.txt}]"),
     ["/no/such/file.txt"]),
    ("device typo", BASE + "device: gpu\n", ["device", "'gpu'"]),
    ("task explicit language it lacks", BASE.replace("[xcopa]", "[{name: xcopa, languages: [fr]}]"), ["xcopa", "fr"]),
]


@pytest.mark.parametrize(("case", "text", "words"), STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_bad_study_files_are_named_errors_before_any_model(tmp_path: Path, case: str, text: str, words: list[str]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(mq.MlquantError) as info:
        mq.Study.from_yaml(path).run(tmp_path / "run", progress=False)
    message = str(info.value)
    assert "Hugging Face hub" not in message, f"{case}: a model load was attempted"
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


def _data_copy(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(DATA / "xcopa", root / "xcopa")
    return root


def _rewrite_first_row(root: Path, change: dict[str, object], drop: str | None = None) -> None:
    path = root / "xcopa" / "test" / "tr.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row.update(change)
    if drop:
        row.pop(drop)
    lines[0] = json.dumps(row, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "drop", "words"),
    [
        ({}, "premise", ["tr.jsonl, line 1", "missing field 'premise'"]),
        ({"label": "one"}, None, ["tr.jsonl, line 1", "'label'"]),
    ],
    ids=["row without a field", "field of the wrong type"],
)
def test_bad_rows_name_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict[str, object], drop: str | None, words: list[str]
) -> None:
    root = _data_copy(tmp_path)
    _rewrite_first_row(root, change, drop)
    monkeypatch.setenv("MLQUANT_DATA_DIR", str(root))
    with pytest.raises(mq.DataError) as info:
        mq.get_task("xcopa").items(mq.get_language("tr"))
    for word in words:
        assert word in str(info.value)


def test_a_utf8_bom_and_crlf_line_ends_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _data_copy(tmp_path)
    path = root / "xcopa" / "test" / "tr.jsonl"
    clean = mq.get_task("xcopa").items(mq.get_language("tr"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    monkeypatch.setenv("MLQUANT_DATA_DIR", str(root))
    assert [i.data for i in mq.get_task("xcopa").items(mq.get_language("tr"))] == [i.data for i in clean]


def test_data_dir_that_does_not_exist_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLQUANT_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(mq.MlquantError, match="nowhere"):
        mq.get_task("xcopa").items(mq.get_language("tr"))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: (p / "weights.bin").write_bytes(b"x") and p / "weights.bin", ["weights.bin"]),
        (lambda p: p, ["config.json"]),
    ],
    ids=["a file that is not a model", "a folder without config.json"],
)
def test_model_paths_that_are_not_models(tmp_path: Path, make, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    target = make(tmp_path)
    with pytest.raises(mq.MlquantError) as info:
        mq.load_model(str(target))
    for word in words:
        assert word in str(info.value)


def test_report_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished cells" in result.output
