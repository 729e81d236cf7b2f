"""Results: the tidy per-item table of a study, stored as one Parquet file per finished cell.

A run directory holds ``study.yaml`` (the resolved study), ``cells/<quant>/<task>/<lang>.parquet`` (one row per
item, written atomically: temp file then rename), ``quant/<quant>.parquet`` (per-layer quantization reports),
and ``cache.sqlite`` (the request cache). :func:`read_results` loads every finished cell into one DataFrame.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> df = mq.read_results("runs/demo")  # doctest: +SKIP
    >>> df.groupby(["quant", "task", "lang"]).score.mean()  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from mlquant.errors import DataError

__all__ = [
    "COLUMNS",
    "ResultRow",
    "Results",
    "aggregate",
    "cell_file_signature",
    "cell_path",
    "default_baseline",
    "read_cell",
    "read_results",
    "safe_name",
    "write_cell",
    "write_judged",
    "write_table",
]

@dataclass(frozen=True)
class ResultRow:
    """One row of the tidy results table: one item of one cell. Its fields are the columns, in order.

    Attributes:
        model: ``<model id>@<revision or file hash>``.
        quant, method, backend, calibration: the quant spec's label and fields (calibration ``""`` for none).
        task, task_version, kind, metric, higher_is_better, difficulty: the task (``task`` is the study entry's label).
        lang, script, resource_class, family: the language.
        item_id, group: the item and its group (``""`` for none).
        prompt, output, extracted, target: what the model saw and said, the extracted answer and the reference.
        score, weight: the item's score (NaN for an unscored open-ended item) and its weight in the mean.
        extra: task-specific values as a JSON object string.
        signature: the cell's :class:`~mlquant.cells.Signature`, formatted.
    """

    model: str
    quant: str
    method: str
    backend: str
    calibration: str
    task: str
    task_version: str
    kind: str
    metric: str
    higher_is_better: bool
    difficulty: str
    lang: str
    script: str
    resource_class: int
    family: str
    item_id: str
    group: str
    prompt: str
    output: str
    extracted: str
    target: str
    score: float
    weight: float
    extra: str
    signature: str


#: Columns of the tidy results table, in order (the fields of :class:`ResultRow`).
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))


def safe_name(label: str) -> str:
    """A file-system-safe name for a label (``gptq-w4g128@flores:ja:128`` -> ``gptq-w4g128@flores_ja_128``)."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", label)


def cell_path(run_dir: str | os.PathLike[str], quant: str, task: str, lang: str) -> Path:
    """Where the Parquet file of one cell lives."""
    return Path(run_dir) / "cells" / safe_name(quant) / safe_name(task) / f"{safe_name(lang)}.parquet"


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_cell(path: str | os.PathLike[str], rows: Sequence[ResultRow | Mapping[str, Any]]) -> pd.DataFrame:
    """Write one finished cell atomically (a reader never sees a half-written file).

    Raises:
        DataError: a mapping row lacks one of :data:`COLUMNS`.
    """
    records: list[Mapping[str, Any]] = []
    for i, row in enumerate(rows):
        record = asdict(row) if isinstance(row, ResultRow) else row
        missing = [c for c in COLUMNS if c not in record]
        if missing:
            raise DataError(f"write_cell({path}): row {i} lacks column {missing[0]!r}.")
        records.append(record)
    frame = pd.DataFrame([{c: row[c] for c in COLUMNS} for row in records], columns=list(COLUMNS))
    frame["extra"] = frame["extra"].map(lambda e: e if isinstance(e, str) else json.dumps(e, ensure_ascii=False))
    _atomic_parquet(frame, Path(path))
    return frame


def write_quant_report(run_dir: str | os.PathLike[str], quant: str, report: pd.DataFrame) -> Path:
    """Store a per-layer quantization report beside the results."""
    path = Path(run_dir) / "quant" / f"{safe_name(quant)}.parquet"
    frame = report.copy()
    if "quant" in frame.columns:
        frame["quant"] = quant
    else:
        frame.insert(0, "quant", quant)
    _atomic_parquet(frame, path)
    return path


def write_judged(run_dir: str | os.PathLike[str], judge: str, judged: pd.DataFrame) -> Path:
    """Store the pairwise verdicts of one judge beside the results (``judged/<judge>.parquet``, atomically)."""
    return write_table(Path(run_dir) / "judged" / f"{safe_name(judge)}.parquet", judged)


def write_table(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write a frame as Parquet atomically (a reader never sees a half-written file); the file's name is made safe."""
    path = Path(path)
    path = path.parent / safe_name(path.name)
    _atomic_parquet(frame, path)
    return path


def read_results(
    run_dir: str | os.PathLike[str], what: Literal["items", "quantization", "judged", "kl"] = "items"
) -> pd.DataFrame:
    """Load a run directory.

    Args:
        run_dir: the folder given to ``Study.run``.
        what: ``items`` for the per-item results (one row per item x quant), ``quantization`` for the per-layer
            quantization reports of every quantized model, ``judged`` for the pairwise verdicts of ``mlquant judge``,
            ``kl`` for the per-sentence KL divergences of ``mlquant kl`` (empty frames when there are none).

    Raises:
        DataError: the folder has no results.

    Example:
        >>> df = read_results("runs/demo")  # doctest: +SKIP
        >>> sorted(df.quant.unique())  # doctest: +SKIP
        ['fp32', 'rtn-w4', 'rtn-w4g128', 'rtn-w8']
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"read_results: {root} is not a folder.")
    subs = {"items": "cells", "quantization": "quant", "judged": "judged", "kl": "kl"}
    if what not in subs:
        raise DataError(f"read_results: what={what!r}; expected one of {sorted(subs)}.")
    sub = subs[what]
    files = sorted((root / sub).rglob("*.parquet")) if (root / sub).is_dir() else []
    if not files:
        if what != "items":
            return pd.DataFrame()
        raise DataError(f"read_results: no finished cells under {root / 'cells'}.")
    parts = [part for f in files if (part := _read_part(f, root, what)) is not None]
    if not parts:
        if what != "items":
            return pd.DataFrame()
        raise DataError(f"read_results: no readable cells under {root / 'cells'} (damaged ones are in {root / '.corrupt'}).")
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs["run_dir"] = str(root)
    return frame


#: Columns a cell file must have to be read (and to be skipped on resume).
REQUIRED_CELL_COLUMNS = ("quant", "task", "lang", "item_id", "score", "signature")


def read_cell(path: Path) -> pd.DataFrame:
    """One cell file, checked: readable Parquet with the columns a cell needs.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on a truncated or foreign file
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}).") from exc
    missing = [c for c in REQUIRED_CELL_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: not a cell file: it lacks the column(s) {missing}.")
    return frame


def cell_file_signature(path: Path) -> str:
    """The signature stored in a cell file, reading only its footer and signature column (cheap on resume).

    Raises:
        DataError: the file is not readable Parquet, lacks a cell's columns, or holds no row.
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        missing = [c for c in REQUIRED_CELL_COLUMNS if c not in names]
        if missing:
            raise DataError(f"{path}: not a cell file: it lacks the column(s) {missing}.")
        col = pf.read(columns=["signature"]).column("signature")
    except DataError:
        raise
    except Exception as exc:  # truncated footer, foreign bytes, ...
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}).") from exc
    if len(col) == 0:
        raise DataError(f"{path}: a cell file with no row.")
    return str(col[0])


def _read_part(path: Path, root: Path, what: str) -> pd.DataFrame | None:
    """A file of a run folder, or None after setting a damaged one aside (with a warning) so that it is recomputed."""
    from mlquant.rundir import set_aside

    try:
        if what == "items":
            return read_cell(path)
        return pd.read_parquet(path)
    except Exception as exc:
        try:
            where = f"set aside as {set_aside(path, root, str(exc))}"
        except OSError as move_error:  # a read-only run folder: leave the file, read the others
            where = f"left in place ({move_error.strerror or move_error})"
        warnings.warn(f"{path} is damaged ({exc}); {where}. Run the study again to recompute it.", stacklevel=3)
        return None


def default_baseline(frame: pd.DataFrame) -> str:
    """The baseline of a results frame, the one default every comparison uses: fp32, else bf16, else fp16
    (:func:`mlquant.stats.default_baseline`).

    Raises:
        ConfigError: no baseline label is present.

    Example:
        >>> default_baseline(pd.DataFrame({"quant": ["rtn-w8", "bf16"]}))
        'bf16'
    """
    from mlquant.stats import default_baseline as default

    return default(frame)


def aggregate(frame: pd.DataFrame, by: Sequence[str] = ("quant", "task", "lang")) -> pd.DataFrame:
    """Weighted mean score per group (``sum(score * weight) / sum(weight)``) and the count of scored items.

    Rows without a score (open-ended generations before judging) are left out; a group with none scores NaN.

    Example:
        >>> df = pd.DataFrame({"quant": ["a", "a"], "task": ["t", "t"], "lang": ["en", "en"],
        ...                    "score": [1.0, 0.0], "weight": [1.0, 3.0]})
        >>> aggregate(df).score.tolist()
        [0.25]
    """
    scored = frame["score"].notna()
    weight = frame["weight"].where(scored)
    g = frame.assign(_sw=frame["score"] * weight, _w=weight).groupby(list(by), sort=True)
    out = (g["_sw"].sum(min_count=1) / g["_w"].sum(min_count=1)).rename("score").to_frame()
    out["n"] = g["score"].count()
    return out.reset_index()


class Results:
    """The per-item results of a run, read once, with the item pairing of the statistics computed once.

    Every function of :mod:`mlquant.stats` accepts a ``Results`` as well as a tidy DataFrame. On a DataFrame each
    call pairs every quantized item with its baseline item again (about half a second for 1.6 M rows); on a
    ``Results`` the pairing is made on the first call per baseline and reused. Treat :attr:`frame` as read-only:
    to change rows, build a new ``Results`` from the changed frame.

    Args:
        frame: the tidy per-item frame (one row per item x quant, :data:`COLUMNS`).
        run_dir: the run folder it came from, if any.

    Example:
        >>> res = Results(pd.DataFrame({"quant": ["fp32", "w4"], "task": "t", "lang": "en", "item_id": "1",
        ...                             "score": [1.0, 0.0]}))
        >>> len(res), res.quants
        (2, ['fp32', 'w4'])
        >>> res.paired("fp32") is res.paired("fp32")
        True
    """

    def __init__(self, frame: pd.DataFrame, run_dir: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"Results: expected a pandas DataFrame, got {type(frame).__name__}.")
        self._frame = frame
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._pairings: dict[str, Any] = {}

    @classmethod
    def read(cls, run_dir: str | os.PathLike[str]) -> Results:
        """The finished cells of a run folder (see :func:`read_results`)."""
        return cls(read_results(run_dir), run_dir)

    @property
    def frame(self) -> pd.DataFrame:
        """The tidy per-item frame."""
        return self._frame

    @property
    def quants(self) -> list[str]:
        """The quant labels, in order of appearance."""
        return [str(q) for q in dict.fromkeys(self._frame["quant"])]

    def paired(self, baseline: str | None = None) -> Any:
        """The items of every quantized cell paired with its baseline items (:func:`mlquant.stats.pair`), cached.

        ``baseline`` defaults to the run's (:func:`default_baseline`)."""
        baseline = baseline or default_baseline(self._frame)
        if baseline not in self._pairings:
            from mlquant.stats import pair

            self._pairings[baseline] = pair(self._frame, baseline)
        return self._pairings[baseline]

    def quantization(self) -> pd.DataFrame:
        """The per-layer quantization reports of the run (empty without a run folder)."""
        return read_results(self.run_dir, what="quantization") if self.run_dir is not None else pd.DataFrame()

    def judged(self) -> pd.DataFrame:
        """The verdicts of ``mlquant judge`` stored in the run (empty without a run folder)."""
        return read_results(self.run_dir, what="judged") if self.run_dir is not None else pd.DataFrame()

    def aggregate(self, by: Sequence[str] = ("quant", "task", "lang")) -> pd.DataFrame:
        """Weighted mean score per group (:func:`aggregate`)."""
        return aggregate(self._frame, by)

    def __len__(self) -> int:
        return len(self._frame)

    def __repr__(self) -> str:
        cells = self._frame.groupby(["quant", "task", "lang"]).ngroups if len(self._frame) else 0
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir is not None else ""
        return f"Results({len(self._frame)} rows, {cells} cells, quants={self.quants}{where})"

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.aggregate().to_html(max_rows=60)
