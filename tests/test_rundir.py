"""Nothing lost, nothing mixed: the run folder's lock, its one study, damaged files set aside, kill -9 and disk full."""

from __future__ import annotations

import errno
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

import mlquant as mq
from mlquant.rundir import RunLock, RunLockedError, StudyMismatchError

DATA = Path(os.environ.get("MLQUANT_DATA_DIR", ""))
pytestmark = pytest.mark.skipif(not (DATA / "xcopa").is_dir(), reason="needs MLQUANT_DATA_DIR with xcopa")


def choice_by_length(ctx: str, cont: str) -> float:
    return -float(len(cont))


def fake_study(**kwargs: object) -> mq.Study:
    options: dict[str, object] = {"quant": ["fp32"], "tasks": ["xcopa"], "languages": ["tr", "zh"], "limit": 4}
    options.update(kwargs)
    return mq.Study(mq.FakeModel(loglikelihood=choice_by_length), **options)  # type: ignore[arg-type]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["quant", "task", "lang", "item_id"]).reset_index(drop=True)


# ----- the lock ---------------------------------------------------------------------------------------------------------
HOLD = textwrap.dedent(
    """
    import sys, time
    from mlquant.rundir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _holder(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on host .*, running since"):
            fake_study().run(tmp_path, progress=False)
        assert not list(tmp_path.rglob("*.parquet"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fake_study().run(tmp_path, progress=False)  # the dead holder's lock is taken over
    assert RunLock(tmp_path).holder()["pid"] == os.getpid()


def test_an_unwritable_run_folder_is_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root (CI), chmod does not stop writes; refuse the lock file's creation the way a read-only mount does.
    real_open = os.open

    def read_only(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        if str(path).endswith("run.lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(mq.ConfigError, match=r"is not writable \(Read-only file system\).*mlquant report"):
        fake_study().run(tmp_path, progress=False)


# ----- one study per folder ---------------------------------------------------------------------------------------------
def test_another_study_is_refused_unless_added_and_study_yaml_records_the_union(tmp_path: Path) -> None:
    fake_study().run(tmp_path, progress=False)
    first = yaml.safe_load((tmp_path / "study.yaml").read_text())
    more = fake_study(tasks=["xcopa", "belebele"], languages=["tr", "zh"])
    with pytest.raises(StudyMismatchError, match=r"adds task 'belebele'.*--add"):
        more.run(tmp_path, progress=False)
    assert yaml.safe_load((tmp_path / "study.yaml").read_text()) == first  # not overwritten
    with pytest.raises(StudyMismatchError, match=r"seed=0, this one has seed=1"):
        fake_study(seed=1).run(tmp_path, progress=False)
    more.run(tmp_path, progress=False, add=True)
    union = yaml.safe_load((tmp_path / "study.yaml").read_text())
    assert [t["name"] for t in union["tasks"]] == ["xcopa", "belebele"]
    fake_study().run(tmp_path, progress=False)  # a part of the folder's study: allowed, the union is kept
    assert yaml.safe_load((tmp_path / "study.yaml").read_text()) == union
    assert sorted(mq.read_results(tmp_path)["task"].unique()) == ["belebele", "xcopa"]


# ----- damaged files ----------------------------------------------------------------------------------------------------
def test_a_truncated_cell_is_set_aside_and_recomputed(tmp_path: Path) -> None:
    clean = fake_study().run(tmp_path, progress=False).frame
    cell = next(tmp_path.rglob("cells/**/zh.parquet"))
    cell.write_bytes(cell.read_bytes()[:50])
    with pytest.warns(UserWarning, match=r"zh\.parquet is damaged .*set aside as .*\.corrupt"):
        partial = mq.read_results(tmp_path)
    assert set(partial["lang"]) == {"tr"}
    again = fake_study()
    frame = again.run(tmp_path, progress=False).frame
    assert again.last_run.cells_computed == 1 and again.last_run.cells_skipped == 1
    pd.testing.assert_frame_equal(_sorted(frame), _sorted(clean))
    assert len(list((tmp_path / ".corrupt").rglob("zh.parquet.*"))) == 1


def test_a_foreign_file_in_place_of_a_cell_is_set_aside_on_resume(tmp_path: Path) -> None:
    fake_study().run(tmp_path, progress=False)
    cell = next(tmp_path.rglob("cells/**/tr.parquet"))
    pd.DataFrame({"x": [1]}).to_parquet(cell)
    again = fake_study()
    again.run(tmp_path, progress=False)
    assert again.last_run.cells_computed == 1
    assert list((tmp_path / ".corrupt").rglob("tr.parquet.*"))


def test_a_corrupt_cache_is_set_aside_and_finished_cells_are_kept(tmp_path: Path) -> None:
    clean = fake_study().run(tmp_path, progress=False).frame
    (tmp_path / "cache.sqlite").write_bytes(b"this is not a database" * 100)
    again = fake_study(languages=["tr", "zh", "th"])
    frame = again.run(tmp_path, progress=False, add=True).frame
    assert again.last_run.cells_skipped == 2 and again.last_run.cells_computed == 1
    pd.testing.assert_frame_equal(_sorted(frame[frame.lang != "th"]), _sorted(clean))
    assert list((tmp_path / ".corrupt").glob("cache.sqlite.*"))
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] > 0


def test_disk_full_while_writing_a_cell_keeps_the_earlier_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pd.DataFrame.to_parquet
    calls = {"n": 0}

    def full_on_second(self: pd.DataFrame, path: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            Path(str(path)).write_bytes(b"PAR1 half")  # what a full disk leaves in the temp file
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_on_second)
    with pytest.raises(OSError, match="No space left"):
        fake_study().run(tmp_path, progress=False)
    cells = list(tmp_path.rglob("cells/**/*.parquet"))
    assert len(cells) == 1 and mq.read_results(tmp_path)["lang"].nunique() == 1
    assert not [p for p in tmp_path.rglob("*.tmp")], "the half-written temp file is removed"
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    again = fake_study()
    again.run(tmp_path, progress=False)
    assert again.last_run.cells_skipped == 1 and again.last_run.cells_computed == 1


def _progress(out: Path) -> tuple[object, ...]:
    """What changes when a run makes progress: its cell files and the size/mtime of its answer cache."""
    cells = sorted(p.name for p in out.glob("cells/**/*.parquet"))
    # sizes only: opening the cache touches its -shm file without storing anything
    sizes = [(p.name, p.stat().st_size) for p in out.glob("cache.sqlite*") if p.name != "cache.sqlite-shm"]
    return (tuple(cells), tuple(sizes))


def _wait_for_progress(proc: subprocess.Popen[bytes], out: Path, before: tuple[object, ...]) -> bool:
    """True once the run folder changed; False if the process ended first."""
    import time

    while proc.poll() is None:
        try:
            if _progress(out) != before:
                return True
        except FileNotFoundError:  # a file vanished between glob and stat (SQLite's WAL)
            pass
        time.sleep(0.02)
    return False


# ----- kill -9 ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path: Path, tiny_llama_dir: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(
        f"model: {tiny_llama_dir}\nquant: [fp32, rtn-w8, rtn-w4g32]\n"
        "tasks: [xcopa, {name: mgsm, max_new_tokens: 24, limit: 3}]\nlanguages: [zh, th]\nlimit: 6\nbatch_size: 2\n"
    )
    clean = mq.Study.from_yaml(study).run(tmp_path / "clean", progress=False).frame
    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from mlquant.cli import main; main()", "run", str(study), "--out", str(out), "--quiet"]
    rng = random.Random(0)
    kills = 0
    # Each kill lands at a random moment *after* the process has visibly started work (a cell file or the cache
    # changed), so no kill is wasted on interpreter start-up, and every kill interrupts computing or writing.
    for _attempt in range(12):
        before = _progress(out)
        log = (tmp_path / f"attempt{_attempt}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if kills >= 6 or not _wait_for_progress(proc, out, before):
            rc = proc.wait(timeout=300)
            assert rc == 0, (tmp_path / f"attempt{_attempt}.log").read_text()[-3000:]
            break
        try:
            proc.wait(timeout=rng.uniform(0.0, 0.6))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    else:
        pytest.fail("the run never finished between kills")
    assert kills >= 5, f"only {kills} kills: the study finished too fast to test anything"
    resumed = mq.Study.from_yaml(study)
    frame = resumed.run(out, progress=False).frame
    assert resumed.last_run.cells_computed == 0
    pd.testing.assert_frame_equal(_sorted(frame), _sorted(clean))
