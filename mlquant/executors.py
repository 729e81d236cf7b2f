"""Executors: where a study's planned cells run — here (``local``) or on a Ray cluster (``ray``).

The grid is embarrassingly parallel. The expensive step is building a quantized model, so the unit of work is a
*group*: the cells of one quant spec (:func:`mlquant._runner.group_by_quant`). The local executor runs the groups one
after the other in this process with one :class:`~mlquant._runner.Runner`. The Ray executor sends each group that has
an unfinished cell to the cluster as one task (``num_gpus=1`` when the study's device is cuda, else ``num_cpus=1``;
both configurable); each worker builds its own :class:`~mlquant._runner.ModelPool` and Runner on its group, writes
its cell files into the shared run folder (atomically) and returns its :class:`~mlquant.cells.RunStats`, which the
driver sums. Finished cells are never sent.

The request cache. ``cache.sqlite`` in the run folder stays the run's one cache (the local executor and
``mlquant judge`` use it). SQLite must never be written by several machines at once, so a Ray worker writes a file of
its own, ``caches/<quant label>.sqlite`` (one writer per file: one group per quant spec). Before sending a group, the
driver copies that spec's entries (its fingerprint's rows) from ``cache.sqlite`` into the worker file; when the run
ends, even when a worker failed, the driver merges every worker file back into ``cache.sqlite`` and deletes it. Every
run (local or Ray) first merges worker files left over by a run that was killed, so no answered request is computed
twice, whichever executor resumes.

Example:
    >>> get_executor("local")
    LocalExecutor()
    >>> get_executor("dask")
    Traceback (most recent call last):
    ...
    mlquant.errors.ConfigError: executor 'dask' is not an executor; expected one of: local, ray.
    >>> study.run("runs/demo", executor="ray")  # doctest: +SKIP
    >>> study.run("runs/demo", executor=RayExecutor(address="ray://head:10001", num_gpus=0.5))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mlquant._loading import device_kind, resolve_device
from mlquant._runner import ModelPool, PlannedCell, Runner, group_by_quant, is_finished
from mlquant.cache import RequestCache
from mlquant.cells import RunStats
from mlquant.errors import BackendUnavailableError, ConfigError
from mlquant.results import safe_name

__all__ = [
    "EXECUTORS",
    "Executor",
    "GroupOutcome",
    "LocalExecutor",
    "RayExecutor",
    "absorb_worker_caches",
    "add_stats",
    "get_executor",
    "run_group",
    "worker_cache_path",
]

log = logging.getLogger(__name__)

#: The executor names :meth:`~mlquant.study.Study.run` and ``mlquant run --executor`` accept.
EXECUTORS: tuple[str, ...] = ("local", "ray")

RAY_HINT = "pip install 'mlquant[ray]'"


@runtime_checkable
class Executor(Protocol):
    """Runs a plan into a run folder and adds what it did to ``stats``."""

    @property
    def remote(self) -> bool:
        """Whether the cells run elsewhere: the study's device is then checked where the models load, not here."""
        ...

    def check(self) -> None:
        """Refuse early (before any model loads) what cannot run, e.g. a missing backend."""
        ...

    def run(
        self, pool: ModelPool, plan: Sequence[PlannedCell], root: Path, stats: RunStats, *, progress: bool,
        chunk_items: int,
    ) -> None:
        """Run every unfinished cell of ``plan`` with the models of ``pool``, writing into ``root``."""
        ...


def get_executor(executor: str | Executor) -> Executor:
    """The executor of a name (``local``, ``ray``) or the executor object itself, checked.

    Raises:
        ConfigError: an unknown name, naming it and the choices.
        BackendUnavailableError: ``ray`` without Ray installed (with the install hint).
    """
    if isinstance(executor, str):
        if executor == "local":
            chosen: Executor = LocalExecutor()
        elif executor == "ray":
            chosen = RayExecutor()
        else:
            raise ConfigError(f"executor {executor!r} is not an executor; expected one of: {', '.join(EXECUTORS)}.")
    elif isinstance(executor, Executor):
        chosen = executor
    else:
        raise ConfigError(
            f"executor {executor!r} is not an executor; expected one of: {', '.join(EXECUTORS)}, or an Executor object."
        )
    chosen.check()
    return chosen


def add_stats(total: RunStats, part: RunStats) -> None:
    """Add a part's counts to ``total`` (``cells_total`` is the caller's: the whole plan)."""
    for f in fields(RunStats):
        if f.name == "cells_total":
            continue
        if f.name == "failed":
            total.failed.extend(part.failed)
        else:
            setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))


# ----- the request cache of workers ---------------------------------------------------------------------------------
# These helpers read and write the table of mlquant.cache.RequestCache (requests: fingerprint, key, result) with
# sqlite3 directly, so that whole fingerprints are copied inside SQLite without going through Python.


def worker_cache_path(root: Path, quant_label: str) -> Path:
    """The request cache file of the Ray worker that runs one quant spec's group."""
    return root / "caches" / f"{safe_name(quant_label)}.sqlite"


def _copy_rows(source: Path, target: Path, fingerprint: str | None) -> int:
    """Copy the rows of ``source`` (only ``fingerprint``'s when given) into ``target``; both must exist."""
    db = sqlite3.connect(str(target))
    try:
        db.execute("ATTACH DATABASE ? AS src", (str(source),))
        where, args = ("WHERE fingerprint = ?", (fingerprint,)) if fingerprint is not None else ("", ())
        cur = db.execute(
            f"INSERT OR IGNORE INTO main.requests SELECT fingerprint, key, result FROM src.requests {where}", args
        )
        db.commit()
        db.execute("DETACH DATABASE src")
        return int(cur.rowcount)
    finally:
        db.close()


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def absorb_worker_caches(root: Path) -> int:
    """Merge every worker cache file (``caches/*.sqlite``) into the run's ``cache.sqlite`` and delete it; the number
    of requests merged. Every run calls it first, so a killed Ray run's answers serve whichever executor resumes."""
    folder = root / "caches"
    files = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    if not files:
        return 0
    RequestCache(root / "cache.sqlite").close()  # creates the file and its table when there is none yet
    merged = 0
    for path in files:
        RequestCache(path).close()  # a clean open and close folds a killed worker's WAL into the file
        merged += _copy_rows(path, root / "cache.sqlite", None)
        _remove_sqlite(path)
    try:
        folder.rmdir()
    except OSError:
        pass
    if merged:
        log.info("merged %d cached requests of Ray workers into %s", merged, root / "cache.sqlite")
    return merged


def _seed_worker_cache(root: Path, quant_label: str, fingerprint: str) -> Path:
    """The worker cache file of one group, holding the entries ``cache.sqlite`` has for its fingerprint."""
    path = worker_cache_path(root, quant_label)
    RequestCache(path).close()
    main = root / "cache.sqlite"
    if main.is_file():
        _copy_rows(main, path, fingerprint)
    return path


# ----- executors ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalExecutor:
    """Runs every group here, one after the other, baselines first, with the run's ``cache.sqlite``."""

    @property
    def remote(self) -> bool:
        return False

    def check(self) -> None:
        return None

    def run(
        self, pool: ModelPool, plan: Sequence[PlannedCell], root: Path, stats: RunStats, *, progress: bool,
        chunk_items: int,
    ) -> None:
        absorb_worker_caches(root)
        runner = Runner(pool, plan, root, progress=progress, chunk_items=chunk_items)
        try:
            runner.run()
        finally:
            runner.close()
            add_stats(stats, runner.stats)


@dataclass(frozen=True)
class GroupOutcome:
    """What one worker sends back: its counts, and the error that stopped it (None when it finished)."""

    stats: RunStats
    error: BaseException | None = None


def run_group(pool: ModelPool, plan: Sequence[PlannedCell], root: str, cache_path: str, chunk_items: int) -> GroupOutcome:
    """Run one group of cells on this machine (the body of a Ray task): the device is resolved here, where the model
    loads; the pool is the driver's, not yet loaded. Errors come back in the outcome, with the counts so far."""
    if pool.device is not None:
        # Ray gives a task its GPUs as CUDA_VISIBLE_DEVICES: a task's GPU is always cuda:0 in the task.
        pool.device = resolve_device("cuda" if pool.device.startswith("cuda") else pool.device)
    runner = Runner(pool, plan, Path(root), progress=False, chunk_items=chunk_items, cache_path=Path(cache_path))
    error: BaseException | None = None
    try:
        runner.run()
    except Exception as exc:
        error = exc
    finally:
        runner.close()
    if error is not None:
        try:
            pickle.dumps(error)
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
    return GroupOutcome(runner.stats, error)


@dataclass(frozen=True)
class RayExecutor:
    """Sends each quant spec's group of unfinished cells to a Ray cluster as one task.

    Args:
        address: the cluster (``auto``, ``ray://head:10001``, ...); None: the cluster this process is already
            connected to, else ``RAY_ADDRESS``, else a local instance started for the run (and shut down after it).
        num_cpus: CPUs per group (default 1 when the study runs on the CPU).
        num_gpus: GPUs per group (default 1 when the study's device is cuda; a fraction shares a GPU).
        resources: custom Ray resources per group (e.g. ``{"H100": 1}``).

    The run folder must be a folder every worker sees at the same path (a shared file system). The model must be a
    name, hub id, folder or ``.gguf`` file that every worker can load.
    """

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return True

    def check(self) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError(f"executor 'ray' needs Ray, which is not installed: {RAY_HINT}") from exc
        for name, value in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus), *self.resources.items()):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"executor 'ray': {name}={value!r}; expected a number >= 0.")

    def task_options(self, device: str | None) -> dict[str, Any]:
        """The Ray resources of one group: the configured ones, else one GPU on cuda and one CPU otherwise."""
        cuda = device_kind(device or "cpu") == "cuda"
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus if self.num_cpus is not None else 1,
            "num_gpus": self.num_gpus if self.num_gpus is not None else (1 if cuda else 0),
        }
        if self.resources:
            options["resources"] = dict(self.resources)
        return options

    def run(
        self, pool: ModelPool, plan: Sequence[PlannedCell], root: Path, stats: RunStats, *, progress: bool,
        chunk_items: int,
    ) -> None:
        if not isinstance(pool.model, str):
            raise ConfigError(
                "executor 'ray': the study's model is a model object; each worker loads its own model, so give a "
                "name, hub id, folder or .gguf file (or use executor='local')."
            )
        absorb_worker_caches(root)
        groups: list[list[PlannedCell]] = []
        for group in group_by_quant(plan):
            todo = [p for p in group if not is_finished(root, p)]
            stats.cells_skipped += len(group) - len(todo)
            if todo:
                groups.append(todo)
        if not groups:
            return
        import ray

        started = False
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=progress)
            started = True
        elif self.address is not None:
            log.info("Ray is already initialized; address %r is not used", self.address)
        errors: list[BaseException] = []
        try:
            options = self.task_options(pool.device)
            remote = ray.remote(run_group)
            refs: dict[Any, str] = {}
            for group in groups:
                spec = group[0].cell.quant
                cache = _seed_worker_cache(root, spec.label, pool.fingerprint(spec))
                ref = remote.options(**options, name=f"mlquant:{spec.label}").remote(
                    pool, group, str(root), str(cache), chunk_items
                )
                refs[ref] = spec.label
            log.info("sent %d groups of cells to Ray (%s each)", len(refs), options)
            pending = list(refs)
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    label = refs[done[0]]
                    try:
                        outcome: GroupOutcome = ray.get(done[0])
                    except Exception as exc:  # the worker itself died (out of memory, node lost, ...)
                        stats.failed.append(f"{label} (worker lost: {type(exc).__name__})")
                        errors.append(exc)
                        continue
                    add_stats(stats, outcome.stats)
                    if outcome.error is not None:
                        errors.append(outcome.error)
                    log.info("group %s: %s", label, "failed" if outcome.error is not None else "finished")
            except BaseException:
                # The driver stops (Ctrl-C): stop the workers too, before their cache files are merged and removed
                # (every answer they committed is merged; their finished cells are kept).
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        finally:
            absorb_worker_caches(root)
            if started:
                ray.shutdown()
        if errors:
            raise errors[0]
