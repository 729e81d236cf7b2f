"""Executors: ``Study.run(executor=...)`` local and Ray give the same results; either resumes the other's run."""

from __future__ import annotations

import builtins
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import mlquant as mq
from mlquant.cli import app
from mlquant.errors import BackendUnavailableError, ConfigError
from mlquant.executors import EXECUTORS, LocalExecutor, RayExecutor, get_executor, worker_cache_path
from mlquant.models import FakeModel

QUANT = ["fp32", "rtn-w8", "rtn-w4g32"]


def tiny_study(model_dir: Path) -> mq.Study:
    return mq.Study(str(model_dir), quant=QUANT, tasks=["xcopa"], languages=["tr", "zh"], limit=4)


def study_file(folder: Path, model_dir: Path) -> Path:
    """The YAML form of :func:`tiny_study`."""
    path = folder / "s.yaml"
    path.write_text(f"model: {model_dir}\nquant: [{', '.join(QUANT)}]\ntasks: [xcopa]\nlanguages: [tr, zh]\nlimit: 4\n")
    return path


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["quant", "task", "lang", "item_id"]).reset_index(drop=True)


def cached_rows(path: Path) -> int:
    db = sqlite3.connect(str(path))
    try:
        return int(db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
    finally:
        db.close()


# ----- choosing an executor -----------------------------------------------------------------------------------------


def test_unknown_executor_names_the_value_and_the_choices(tmp_path) -> None:
    study = mq.Study(FakeModel(), quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=2)
    with pytest.raises(ConfigError, match=r"executor 'dask'.*local, ray"):
        study.run(tmp_path, executor="dask")
    assert not (tmp_path / "study.yaml").exists()
    assert EXECUTORS == ("local", "ray")
    assert isinstance(get_executor("local"), LocalExecutor)


def test_missing_ray_is_refused_before_any_model_loads(tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    model = FakeModel()
    study = mq.Study(model, quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=2)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'mlquant\[ray\]'"):
        study.run(tmp_path, executor="ray")
    assert model.calls == 0 and not (tmp_path / "study.yaml").exists()


def test_cli_executor_option_errors(tmp_path, tiny_llama_dir) -> None:
    path = study_file(tmp_path, tiny_llama_dir)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--executor", "dask"])
    assert result.exit_code == 2 and "executor 'dask'" in result.output and "local, ray" in result.output
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--address", "auto"])
    assert result.exit_code == 2 and "--address applies to --executor ray" in result.output
    assert not out.exists()


def test_ray_options_default_to_one_gpu_on_cuda_else_one_cpu() -> None:
    assert RayExecutor().task_options("cpu") == {"num_cpus": 1, "num_gpus": 0}
    assert RayExecutor().task_options("cuda") == {"num_cpus": 1, "num_gpus": 1}
    assert RayExecutor().task_options("cuda:1")["num_gpus"] == 1
    custom = RayExecutor(num_cpus=4, num_gpus=0.5, resources={"H100": 1})
    assert custom.task_options("cuda") == {"num_cpus": 4, "num_gpus": 0.5, "resources": {"H100": 1}}


def test_bad_ray_resources_are_refused() -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match=r"num_gpus=-1"):
        get_executor(RayExecutor(num_gpus=-1))


def test_importing_mlquant_does_not_import_ray() -> None:
    code = "import sys, mlquant, mlquant.study; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_local_run_absorbs_worker_caches_left_by_a_killed_ray_run(tmp_path, tiny_llama_dir) -> None:
    """A killed Ray run leaves caches/<label>.sqlite: the next local run merges it and recomputes nothing."""
    study = mq.Study(str(tiny_llama_dir), quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=3)
    first = study.run(tmp_path, progress=False).frame
    # pretend the answers were written by a Ray worker that was killed before the driver merged them
    worker = worker_cache_path(tmp_path, "fp32")
    worker.parent.mkdir()
    (tmp_path / "cache.sqlite").rename(worker)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'cache.sqlite'}{suffix}").unlink(missing_ok=True)
    import shutil

    shutil.rmtree(tmp_path / "cells")
    second = study.run(tmp_path, progress=False).frame
    assert study.last_run.requests_computed == 0 and study.last_run.cache_hits > 0
    assert study.last_run.forward_passes == 0
    assert not worker.exists()
    pd.testing.assert_frame_equal(first, second)


def test_a_failing_cell_comes_back_in_the_group_outcome_with_the_counts(tmp_path, tiny_llama_dir) -> None:
    """The body of a Ray task, run here: an error stops its group and is returned with the counts, not lost."""
    from mlquant._runner import PlannedCell
    from mlquant.executors import run_group

    study = mq.Study(str(tiny_llama_dir), quant=["fp32"], tasks=["xcopa"], languages=["tr", "zh"], limit=2)
    pool = study.model_pool(tmp_path)
    plan = [PlannedCell(c, study.limit_for(c), study.seed, study.signature(c, pool.signature())) for c in study.cells]

    task = plan[0].cell.task
    score = task.score

    def broken(item, lang, answers):
        if lang.code == "zh":
            raise RuntimeError("scorer broke")
        return score(item, lang, answers)

    object.__setattr__(task, "score", broken)  # the task object of this test's plan only
    outcome = run_group(pool, plan, str(tmp_path), str(worker_cache_path(tmp_path, "fp32")), 32)
    assert isinstance(outcome.error, RuntimeError) and "scorer broke" in str(outcome.error)
    assert "fp32 | xcopa | zh" in str(outcome.error)
    assert outcome.stats.cells_computed == 1 and outcome.stats.failed == ["fp32 | xcopa | zh"]
    assert outcome.stats.requests_computed > 0 and worker_cache_path(tmp_path, "fp32").is_file()


# ----- Ray: same results as the local executor ----------------------------------------------------------------------


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow  # 21-42 s on the loaded 2-core dev machine: starting Ray (~10 s) and torch in each worker
def test_ray_run_equals_the_local_run_and_resumes_both_ways(tmp_path, tiny_llama_dir, ray_cluster) -> None:
    study = tiny_study(tiny_llama_dir)

    start = time.perf_counter()
    local = study.run(tmp_path / "local", progress=False).frame
    local_s = time.perf_counter() - start
    local_stats = study.last_run

    start = time.perf_counter()
    remote = study.run(tmp_path / "ray", progress=False, executor="ray").frame
    ray_s = time.perf_counter() - start
    stats = study.last_run
    print(f"local {local_s:.1f} s, ray (2 workers) {ray_s:.1f} s")

    # same rows, same scores, same signatures
    pd.testing.assert_frame_equal(sorted_frame(local), sorted_frame(remote))
    pd.testing.assert_frame_equal(local, remote)  # Results.read orders the rows by file, whichever wrote them
    # the workers' counts, summed
    assert stats.cells_total == local_stats.cells_total == 6
    assert stats.cells_computed == 6 and stats.cells_skipped == 0 and stats.failed == []
    assert stats.requests_computed == local_stats.requests_computed > 0
    assert stats.forward_passes == local_stats.forward_passes
    assert stats.models_loaded == 3  # each worker loads the base model once (the local run: once in all)
    # the workers' caches were merged into the run's cache.sqlite, then removed
    assert not (tmp_path / "ray" / "caches").exists()
    assert cached_rows(tmp_path / "ray" / "cache.sqlite") == cached_rows(tmp_path / "local" / "cache.sqlite")
    assert (tmp_path / "ray" / "quant" / "rtn-w8.parquet").is_file()

    # a second Ray run: every cell is finished, nothing is sent
    study.run(tmp_path / "ray", progress=False, executor="ray")
    assert study.last_run.cells_skipped == 6 and study.last_run.cells_computed == 0
    assert study.last_run.models_loaded == 0

    # cells deleted: a local run over the Ray folder answers everything from the cache
    import shutil

    shutil.rmtree(tmp_path / "ray" / "cells" / "rtn-w8")
    again = study.run(tmp_path / "ray", progress=False).frame
    assert study.last_run.cells_computed == 2 and study.last_run.requests_computed == 0
    assert study.last_run.forward_passes == 0
    pd.testing.assert_frame_equal(local, again)

    # and a Ray run over the local folder too: the driver seeds each worker's cache from cache.sqlite
    shutil.rmtree(tmp_path / "local" / "cells" / "rtn-w4g32")
    again = study.run(tmp_path / "local", progress=False, executor="ray").frame
    assert study.last_run.cells_computed == 2 and study.last_run.cells_skipped == 4
    assert study.last_run.requests_computed == 0 and study.last_run.cache_hits > 0
    assert study.last_run.forward_passes == 0
    pd.testing.assert_frame_equal(local, again)

    # the command line: mlquant run STUDY --executor ray (on the cluster this process is connected to)
    shutil.rmtree(tmp_path / "ray" / "cells" / "fp32")
    result = CliRunner().invoke(
        app, ["run", str(study_file(tmp_path, tiny_llama_dir)), "--out", str(tmp_path / "ray"), "--quiet",
              "--executor", "ray", "--cpus-per-group", "1"],
    )
    assert result.exit_code == 0, result.output
    assert "cells: 2 computed, 4 already finished" in result.output and "forward passes: 0" in result.output
    pd.testing.assert_frame_equal(local, mq.read_results(tmp_path / "ray"))


def test_ray_refuses_a_model_object(tmp_path) -> None:
    pytest.importorskip("ray")
    study = mq.Study(FakeModel(), quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=2)
    with pytest.raises(ConfigError, match=r"model object.*executor='local'"):
        study.run(tmp_path, executor="ray")


# ----- batches across cells -------------------------------------------------------------------------------------------


def test_requests_batched_across_cells_give_the_same_results_and_counts(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    """engine_options.batch_requests sends the requests of all cells of a quant in large calls (as vLLM wants);
    the cells, their rows and the run's counts equal a cell-by-cell run, and a rerun computes nothing."""
    from mlquant.cache import CachedModel

    calls: list[int] = []
    real = CachedModel.loglikelihood

    def counting(self: CachedModel, requests: list) -> list:  # type: ignore[type-arg]
        calls.append(len(requests))
        return real(self, requests)

    plain = tiny_study(tiny_llama_dir).run(tmp_path / "plain", progress=False).frame
    monkeypatch.setattr(CachedModel, "loglikelihood", counting)
    study = mq.Study(str(tiny_llama_dir), quant=QUANT, tasks=["xcopa"], languages=["tr", "zh"], limit=4,
                     engine_options={"batch_requests": 1000})
    batched = study.run(tmp_path / "batched", progress=False, chunk_items=2).frame
    # per quant: one call of all 16 requests (2 cells x 4 items x 2 choices), then 2 re-reads per cell from the cache
    assert calls[0] == 16 and max(calls) == 16 and calls.count(16) == len(QUANT)
    a, b = sorted_frame(batched), sorted_frame(plain)
    # the same rows and scores; log-likelihoods equal up to padding noise (other rows share the forward pass)
    pd.testing.assert_frame_equal(a.drop(columns=["signature", "extra"]), b.drop(columns=["signature", "extra"]))
    lp_a = [json.loads(e)["logprobs"] for e in a["extra"]]
    lp_b = [json.loads(e)["logprobs"] for e in b["extra"]]
    assert max(abs(x - y) for ra, rb in zip(lp_a, lp_b) for x, y in zip(ra, rb)) < 1e-4
    assert study.last_run.requests_computed == 3 * 16 and study.last_run.cache_hits == 0
    again = mq.Study(str(tiny_llama_dir), quant=QUANT, tasks=["xcopa"], languages=["tr", "zh"], limit=4,
                     engine_options={"batch_requests": 1000})
    again.run(tmp_path / "batched", progress=False)
    assert again.last_run.cells_computed == 0 and again.last_run.requests_computed == 0


def test_batch_requests_must_be_a_non_negative_integer(tmp_path) -> None:
    from mlquant._runner import ModelPool

    with pytest.raises(ConfigError, match=r"batch_requests=-1 is invalid"):
        _ = ModelPool("x", engine_options={"batch_requests": -1}).cross_cell_requests
    assert ModelPool("x").cross_cell_requests == 0 and ModelPool("x", engine="vllm").cross_cell_requests == 4096
