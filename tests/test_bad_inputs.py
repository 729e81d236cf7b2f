"""Bad input gets a named error (file, line, what was expected) before any model loads; Ctrl-C keeps what is done."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlquant as mq
from mlquant.data import read_jsonl

DATA = Path(os.environ.get("MLQUANT_DATA_DIR", ""))
needs_data = pytest.mark.skipif(not (DATA / "xcopa").is_dir(), reason="needs MLQUANT_DATA_DIR with xcopa")


def _data_copy(tmp_path: Path, benchmark: str = "xcopa") -> Path:
    root = tmp_path / "data"
    shutil.copytree(DATA / benchmark, root / benchmark)
    return root


def test_empty_data_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "zh.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(mq.DataError, match=r"zh\.jsonl: the file has no rows \(it is empty\)"):
        read_jsonl(empty)
    blank = tmp_path / "tr.jsonl"
    blank.write_text("\n\n  \n")
    with pytest.raises(mq.DataError, match="no rows"):
        read_jsonl(blank)


def test_latin1_bytes_name_the_file_line_and_byte(tmp_path: Path) -> None:
    bad = tmp_path / "tr.jsonl"
    bad.write_bytes(b'{"premise": "ok"}\n{"premise": "caf\xe9"}\n')
    with pytest.raises(mq.DataError, match=r"tr\.jsonl, line 2, byte 17: not UTF-8 .*iconv"):
        read_jsonl(bad)


@needs_data
def test_empty_task_file_fails_the_study_before_any_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _data_copy(tmp_path)
    (root / "xcopa" / "test" / "zh.jsonl").write_bytes(b"")
    monkeypatch.setenv("MLQUANT_DATA_DIR", str(root))
    study = mq.Study(mq.FakeModel(), quant=["fp32"], tasks=["xcopa"], languages=["zh"], limit=4)
    with pytest.raises(mq.DataError, match=r"xcopa/test/zh\.jsonl: the file has no rows"):
        study.run(tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").rglob("*.parquet"))


def test_truncated_gguf_is_a_named_error(tmp_path: Path) -> None:
    from mlquant._loading import check_gguf, default_model_source

    src = default_model_source()
    full = Path(src.path) / str(src.gguf_file) if src.gguf_file and not src.path.endswith(".gguf") else Path(src.path)
    cut = tmp_path / "cut.gguf"
    with full.open("rb") as fh:
        cut.write_bytes(fh.read(4096))
    with pytest.raises(mq.DataError, match=r"cut\.gguf \(4,096 bytes\) is not a complete GGUF file.*fetch it again"):
        check_gguf(cut)
    with pytest.raises(mq.DataError, match="not a complete GGUF file"):
        mq.load_model(str(cut))


def test_unreachable_hub_id_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(mq.ConfigError, match=r"cannot load 'nosuch-org/nosuch-model' from the Hugging Face hub.*HF_HUB_OFFLINE"):
        mq.load_model("nosuch-org/nosuch-model")


def _mlquant(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from mlquant.cli import main; main()", *args],
        capture_output=True, text=True, timeout=300, check=False, **kwargs,  # type: ignore[call-overload]
    )


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    plain = _mlquant("run", str(missing))
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [f"error: {missing}: cannot read the study file: "
                                                 f"[Errno 2] No such file or directory: '{missing}'"]
    debug = _mlquant("--debug", "run", str(missing))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    usage = _mlquant("nosuch-command")
    assert usage.returncode == 2 and "No such command" in usage.stderr and "Traceback" not in usage.stderr


@needs_data
def test_ctrl_c_keeps_finished_cells_and_exits_130(tmp_path: Path, tiny_llama_dir: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(
        f"model: {tiny_llama_dir}\nquant: [fp32, rtn-w8, rtn-w4g32]\ntasks: [{{name: mgsm, max_new_tokens: 64}}]\n"
        "languages: [en, ja, zh, ru]\nlimit: 6\nbatch_size: 1\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from mlquant.cli import main; main()", "run", str(study), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # A test worker (pytest-xdist) ignores SIGINT, and an ignored signal stays ignored across exec: give the run
        # the default disposition a terminal gives it, so that Python turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.rglob("*.parquet")) and proc.poll() is None:
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"the run ended before it could be interrupted: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    kept = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert kept, "finished cells were lost"
    resumed = mq.Study.from_yaml(study)
    resumed.run(out, progress=False)
    assert resumed.last_run.cells_skipped >= len(kept)  # what was finished before Ctrl-C is not recomputed
    assert resumed.last_run.cells_skipped + resumed.last_run.cells_computed == 12
