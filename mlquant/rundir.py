"""Run-directory integrity: one writer at a time, one study per folder, damaged files set aside (never lost).

* :class:`RunLock` — an exclusive ``flock`` on ``<run>/run.lock`` holding the owner's pid, host and start time. A
  second process refuses with :class:`RunLockedError` naming the holder. The kernel drops the lock when its process
  dies (even by ``kill -9``), so a stale lock from a dead process is simply taken over. ``flock`` is per machine: on
  a network file system shared by several machines, give each machine its own run folder (or use the Ray executor,
  whose driver holds the lock).
* :func:`check_study_file` — a study whose resolved spec differs from the folder's ``study.yaml`` is refused, unless
  ``add=True`` extends it: then ``study.yaml`` records the union (quants and task entries of both), so ``mlquant kl``
  and ``mlquant judge`` still see every earlier quant.
* :func:`set_aside` — moves a damaged file under ``<run>/.corrupt/`` (same relative path, a timestamp suffix) so
  that it is recomputed and can still be inspected.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, RunLock(d) as lock:
    ...     lock.holder()["pid"] == os.getpid()
    True
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from mlquant.errors import ConfigError, DataError

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "StudyMismatchError", "check_study_file", "set_aside"]

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
CORRUPT_DIR = ".corrupt"


class RunLockedError(ConfigError):
    """Another process is running into the same run folder."""


class StudyMismatchError(ConfigError):
    """The run folder holds a different study."""


class RunLock:
    """Exclusive lock of a run folder for the lifetime of a run (a context manager).

    Args:
        run_dir: the run folder (created if missing).

    Raises:
        RunLockedError: another live process holds the lock; the message names its pid, host and start time.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"run folder {self.path.parent} is not writable ({exc.strerror or exc}); a run writes its cells, cache "
                "and lock there: give a writable --out folder (reading a finished run, e.g. mlquant report, needs no "
                "write access)."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = (
                f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, running since {holder.get('since', '?')}"
                if holder
                else "another process"
            )
            raise RunLockedError(
                f"run folder {self.path.parent} is in use by {who} ({self.path}); wait for it to finish, stop it, or "
                "give another --out folder."
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder (empty when it says nothing readable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def set_aside(path: Path, run_dir: Path, reason: str) -> Path:
    """Move a damaged file of a run folder to ``<run>/.corrupt/<relative path>.<timestamp>``; the caller warns.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> _ = (run / "cache.sqlite").write_bytes(b"junk")
        >>> set_aside(run / "cache.sqlite", run, "not a database").parent == run / ".corrupt"
        True
    """
    rel = path.resolve().relative_to(run_dir.resolve())
    target = run_dir / CORRUPT_DIR / rel.parent / f"{rel.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    log.info("%s set aside as %s (%s)", path, target, reason)
    return target


def _entries(resolved: dict[str, Any], key: str, ident: str) -> dict[str, Any]:
    return {str(e.get(ident)): e for e in resolved.get(key) or [] if isinstance(e, dict)}


def check_study_file(run_dir: Path, resolved: dict[str, Any], *, add: bool = False) -> dict[str, Any]:
    """The ``study.yaml`` to write into ``run_dir`` for a study whose resolved form is ``resolved``.

    A new folder gets ``resolved``. A folder holding the same study, or a larger one (re-running a part of it), keeps
    its own. A study that adds quants, tasks or languages is refused (its cells would be mixed in and ``study.yaml``
    overwritten) unless ``add`` is True; the result is then the union: the earlier quants and task entries are kept
    and the new ones appended. Model, seed, item limit and device must agree, and an entry present in both must have
    the same settings (else its cells would be mixed); neither can be added.

    Raises:
        StudyMismatchError: naming the first difference and ``--add``.
        DataError: the folder's ``study.yaml`` cannot be read.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> old = {"model": "m", "seed": 0, "quant": [{"label": "fp32"}], "tasks": [{"name": "xcopa", "languages": ["tr"]}]}
        >>> _ = (run / "study.yaml").write_text(yaml.safe_dump(old))
        >>> new = {**old, "quant": [{"label": "fp32"}, {"label": "rtn-w8"}]}
        >>> check_study_file(run, new)
        Traceback (most recent call last):
        ...
        mlquant.rundir.StudyMismatchError: ... this one adds quant 'rtn-w8'. Run with --add ...
        >>> [q["label"] for q in check_study_file(run, new, add=True)["quant"]]
        ['fp32', 'rtn-w8']
    """
    path = run_dir / "study.yaml"
    if not path.is_file():
        return resolved
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the run's study file: {exc}") from exc
    if not isinstance(old, dict):
        raise DataError(f"{path}: expected a mapping of study keys, got {type(old).__name__}.")
    if old == resolved:
        return resolved
    fixed = [k for k in ("model", "seed", "limit", "device", "device_map") if k in old and old.get(k) != resolved.get(k)]
    if fixed:
        k = fixed[0]
        raise StudyMismatchError(
            f"{run_dir} holds a study with {k}={old.get(k)!r}, this one has {k}={resolved.get(k)!r}; a run folder holds "
            "one model, seed, item limit and device: give another --out folder."
        )
    old_q, new_q = _entries(old, "quant", "label"), _entries(resolved, "quant", "label")
    old_t, new_t = _entries(old, "tasks", "label"), _entries(resolved, "tasks", "label")
    old_t = old_t if "None" not in old_t else _entries(old, "tasks", "name")
    new_t = new_t if "None" not in new_t else _entries(resolved, "tasks", "name")
    changed = [f"quant {q!r}" for q in old_q.keys() & new_q.keys() if old_q[q] != new_q[q]]
    changed += [f"task {t!r}" for t in old_t.keys() & new_t.keys() if _task_core(old_t[t]) != _task_core(new_t[t])]
    if changed:
        raise StudyMismatchError(
            f"{run_dir} already holds {changed[0]} with other settings; a changed entry would mix results: give another "
            "--out folder or another label."
        )
    extra = [f"quant {q!r}" for q in new_q.keys() - old_q.keys()] + [f"task {t!r}" for t in new_t.keys() - old_t.keys()]
    extra += [
        f"languages {sorted(set(e.get('languages', [])) - set(old_t[t].get('languages', [])))} of task {t!r}"
        for t, e in new_t.items()
        if t in old_t and set(e.get("languages", [])) - set(old_t[t].get("languages", []))
    ]
    if extra and not add:
        raise StudyMismatchError(
            f"{run_dir} holds another study: this one adds {', '.join(sorted(extra))}. Run with --add "
            "(Study.run(..., add=True)) to extend the folder's study with it, or give another --out folder."
        )
    union = dict(old)
    union["quant"] = list(old_q.values()) + [new_q[q] for q in new_q if q not in old_q]
    tasks = {t: dict(e) for t, e in old_t.items()}
    for t, e in new_t.items():
        if t in tasks:
            tasks[t]["languages"] = list(dict.fromkeys([*tasks[t].get("languages", []), *e.get("languages", [])]))
        else:
            tasks[t] = e
    union["tasks"] = list(tasks.values())
    return union


def _task_core(entry: dict[str, Any]) -> dict[str, Any]:
    """A task entry without its languages (adding languages to a task is an extension, not a change)."""
    return {k: v for k, v in entry.items() if k != "languages"}
