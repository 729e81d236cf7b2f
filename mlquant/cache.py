"""The request cache: SQLite, keyed by (model fingerprint including its quantization, request hash).

Unlike a cache keyed by the request alone, two models (or one model quantized two ways) never share an entry.
Every batch of answers is committed as soon as it is computed, so a killed run loses at most one batch.

Example:
    >>> from mlquant.cache import RequestCache
    >>> from mlquant.models import FakeModel
    >>> from mlquant.requests import GenerateRequest
    >>> cache = RequestCache(":memory:")
    >>> model = CachedModel(FakeModel(generate=lambda c: "hi"), cache)
    >>> model.generate([GenerateRequest("x")]), model.generate([GenerateRequest("x")])
    (['hi'], ['hi'])
    >>> model.computed, model.hits
    (1, 1)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mlquant.errors import ConfigError
from mlquant.requests import (
    GenerateRequest,
    LanguageModel,
    LoglikelihoodRequest,
    Request,
    RollingRequest,
    result_from_json,
    result_to_json,
)

__all__ = ["CachedModel", "RequestCache"]

log = logging.getLogger(__name__)


class RequestCache:
    """A persistent map (fingerprint, request key) -> serialised result."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:":
                raise
            # A damaged cache loses only answers that can be recomputed: the finished cells are Parquet files.
            from mlquant.rundir import set_aside

            path = Path(self.path)
            moved = set_aside(path, path.parent, f"sqlite: {exc}")
            for suffix in ("-wal", "-shm"):
                side = Path(self.path + suffix)
                if side.exists():
                    set_aside(side, path.parent, "sidecar of a damaged cache")
            log.warning(
                "request cache %s could not be read (%s): set aside as %s and started empty; finished cells are intact",
                path, exc, moved,
            )
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS requests (fingerprint TEXT NOT NULL, key TEXT NOT NULL, result TEXT NOT NULL,"
                " PRIMARY KEY (fingerprint, key))"
            )
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get_many(self, fingerprint: str, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, result FROM requests WHERE fingerprint = ? AND key IN ({marks})", [fingerprint, *chunk]
                ).fetchall()
                found.update(rows)
        return found

    def put_many(self, fingerprint: str, items: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO requests (fingerprint, key, result) VALUES (?, ?, ?)",
                [(fingerprint, k, v) for k, v in items],
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedModel:
    """Answers requests from the cache and sends only the misses to the model.

    Args:
        model: the model, or a zero-argument function that builds it (called on the first miss only, so a
            fully cached study never loads or quantizes a model).
        cache: the request cache.
        fingerprint: the model's fingerprint; required when ``model`` is a function.
    """

    def __init__(
        self, model: LanguageModel | Callable[[], LanguageModel], cache: RequestCache, fingerprint: str | None = None
    ) -> None:
        self._model: LanguageModel | None = model if isinstance(model, LanguageModel) else None
        self._factory: Callable[[], LanguageModel] | None = None if isinstance(model, LanguageModel) else model
        if fingerprint is None:
            if self._model is None:
                raise ConfigError("CachedModel: give the fingerprint of the model that the factory will build.")
            fingerprint = self._model.fingerprint()
        self.cache = cache
        self._fingerprint = fingerprint
        self.hits = 0
        self.computed = 0

    def fingerprint(self) -> str:
        """The fingerprint its answers are cached under (the model's, known before the model is built)."""
        return self._fingerprint

    @property
    def name(self) -> str:
        """The model's name (builds the model when only a factory was given)."""
        return self.model.name

    @property
    def model(self) -> LanguageModel:
        """The model, built by the factory on first use."""
        if self._model is None:
            if self._factory is None:  # unreachable: __init__ sets one of the two
                raise ConfigError("CachedModel: neither a model nor a factory.")
            self._model = self._factory()
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _run(self, requests: Sequence[Request], method: str) -> list[Any]:
        keys = [r.key() for r in requests]
        found = self.cache.get_many(self._fingerprint, keys)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        if missing:
            answers = getattr(self.model, method)([requests[i] for i in missing])
            blobs = [(keys[i], result_to_json(a)) for i, a in zip(missing, answers)]
            self.cache.put_many(self._fingerprint, blobs)
            found.update(blobs)
        self.computed += len(missing)
        self.hits += len(keys) - len(missing)
        return [result_from_json(found[k]) for k in keys]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[Any]:
        return self._run(requests, "loglikelihood")

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[Any]:
        return self._run(requests, "loglikelihood_rolling")

    def generate(self, requests: Sequence[GenerateRequest]) -> list[Any]:
        return self._run(requests, "generate")
