"""Benchmark data: where a task's rows come from.

Resolution order for (benchmark, split, language):

1. an explicit ``source``: a folder in the layout below, or ``"hub:<id-or-path>"`` to read a dataset in the
   Hugging Face hub's schema from another repository id or a local folder;
2. ``$MLQUANT_DATA_DIR/<benchmark>/<split>/<lang>.jsonl`` (the layout of ``shared/data/MANIFEST.md``);
3. the Hugging Face hub through ``datasets.load_dataset`` with the task's real dataset id, its rows converted to
   the local schema by the task.

Nothing touches the network at import time. Malformed rows raise :class:`~mlquant.errors.DataError` naming
file, line and field.

Example:
    >>> import os
    >>> rows = load_rows("xcopa", "test", "tr")  # doctest: +SKIP
    >>> rows[0]["premise"], rows[0]["_line"]  # doctest: +SKIP
    ('Ürün balonlu naylonla paketlenmişti.', 1)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlquant.errors import DataError

__all__ = [
    "CALIBRATION_IDS",
    "EVAL_IDS",
    "REPORT_IDS",
    "HubSource",
    "available_languages",
    "data_dir",
    "is_evaluation_id",
    "load_rows",
    "local_file",
    "read_jsonl",
    "require",
]

log = logging.getLogger(__name__)

HUB_PREFIX = "hub:"

# The FLORES-200 devtest split, partitioned so that no quantizer is calibrated on a sentence it is scored on (only
# devtest exists locally; see mlquant.quantize.calibration). Evaluation tasks and calibration both read these.
#: FLORES-200 devtest ids reserved for evaluation tasks (never sampled for calibration).
EVAL_IDS = range(1, 813)
#: FLORES-200 devtest ids that calibration samples from.
CALIBRATION_IDS = range(813, 1005)
#: FLORES-200 devtest ids of the held-out report text (layer output errors).
REPORT_IDS = range(1005, 1013)


def is_evaluation_id(sentence_id: int) -> bool:
    """True for FLORES devtest ids that evaluation may use (``1..812``); False for calibration/report ids.

    Example:
        >>> is_evaluation_id(5), is_evaluation_id(900)
        (True, False)
    """
    return int(sentence_id) in EVAL_IDS


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub and how its rows map to the local schema.

    Attributes:
        path: dataset id (``facebook/belebele``) or a local folder holding a dataset in the hub's layout.
        name: configuration name (``jpn_Jpan``), or None.
        split: split name on the hub.
        convert: turns one hub row into one row of the local schema (identity when None).
        revision: a commit or tag, for reproducibility.
    """

    path: str
    name: str | None
    split: str
    convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    revision: str | None = None

    def describe(self) -> str:
        return f"hub:{self.path}" + (f"/{self.name}" if self.name else "") + f"[{self.split}]"


def data_dir() -> Path | None:
    """``$MLQUANT_DATA_DIR`` as a Path, or None when unset.

    Raises:
        DataError: the variable names a folder that does not exist.
    """
    env = os.environ.get("MLQUANT_DATA_DIR")
    if not env:
        return None
    path = Path(env).expanduser()
    if not path.is_dir():
        raise DataError(f"MLQUANT_DATA_DIR={env!r} is not a folder.")
    return path


def local_file(benchmark: str, split: str, lang: str, source: str | os.PathLike[str] | None = None) -> Path | None:
    """The local JSONL file for (benchmark, split, lang) under ``source`` or MLQUANT_DATA_DIR, if it exists."""
    root: Path | None
    if source is not None and not str(source).startswith(HUB_PREFIX):
        root = Path(source)
        if not root.is_dir():
            raise DataError(f"data source {str(source)!r} is not a folder.")
    else:
        root = data_dir()
    if root is None:
        return None
    path = root / benchmark / split / f"{lang}.jsonl"
    return path if path.is_file() else None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file; each row gets ``_file`` and ``_line`` (1-based) for error messages.

    Raises:
        DataError: naming the file (and line) of an unreadable or empty file, of bytes that are not UTF-8, or of a
            line that is not a JSON object.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc.strerror or exc}).") from exc
    rows: list[dict[str, Any]] = []
    for lineno, blob in enumerate(raw.splitlines(), start=1):
        try:
            line = blob.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}, line {lineno}, byte {exc.start + 1}: not UTF-8 ({blob[exc.start : exc.start + 1]!r}); data "
                "files must be UTF-8 (re-encode it, e.g. iconv -f latin1 -t utf-8)."
            ) from exc
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as some editors write
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}.")
        row["_file"] = str(path)
        row["_line"] = lineno
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: the file has no rows (it is empty); expected one JSON object per line.")
    return rows


def require(row: Mapping[str, Any], field: str, kind: type | tuple[type, ...] = str) -> Any:
    """``row[field]``, checked to exist and be of ``kind``.

    Raises:
        DataError: naming file, line and field, the value found and the type expected.

    Example:
        >>> require({"q": "x", "_file": "f.jsonl", "_line": 3}, "q")
        'x'
    """
    where = f"{row.get('_file', '<rows>')}, line {row.get('_line', '?')}"
    if field not in row:
        raise DataError(f"{where}: missing field {field!r}.")
    value = row[field]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {field!r} is {value!r}; expected {names}.")
    return value


def _load_hub(hub: HubSource, override: str | None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise DataError("reading from the Hugging Face hub needs `pip install datasets`.") from exc
    path = override or hub.path
    where = hub.describe() if override is None else f"hub:{path}" + (f"/{hub.name}" if hub.name else "")
    try:
        ds = datasets.load_dataset(path, hub.name, split=hub.split, revision=hub.revision)
    except Exception as exc:
        raise DataError(
            f"could not load {where}: {type(exc).__name__}: {exc}. Set MLQUANT_DATA_DIR to a folder in the "
            "layout of shared/data/MANIFEST.md to read local files instead."
        ) from exc
    rows: list[dict[str, Any]] = []
    for i, raw in enumerate(ds, start=1):
        row = dict(raw)
        row["_file"] = where
        row["_line"] = i
        if hub.convert is not None:
            converted = hub.convert(row)
            converted.setdefault("_file", where)
            converted.setdefault("_line", i)
            row = converted
        rows.append(row)
    return rows


def load_rows(
    benchmark: str,
    split: str,
    lang: str,
    *,
    source: str | os.PathLike[str] | None = None,
    hub: HubSource | None = None,
) -> list[dict[str, Any]]:
    """Rows of (benchmark, split, lang) from ``source``, MLQUANT_DATA_DIR, or the hub, in that order.

    Args:
        benchmark: folder name (``xcopa``).
        split: split folder (``test``).
        lang: ISO 639-1 code (the file name).
        source: a folder in the local layout, or ``"hub:<id-or-path>"`` to read the hub schema from elsewhere.
        hub: the task's hub dataset for this language (None when it has none).

    Raises:
        DataError: no local file and no hub dataset, or a file or row is malformed.
    """
    src = None if source is None else str(source)
    if src is not None and src.startswith(HUB_PREFIX):
        if hub is None:
            raise DataError(f"{benchmark}/{split}/{lang}: source {src!r} asks for the hub, but the task has no hub dataset.")
        return _load_hub(hub, src[len(HUB_PREFIX) :])
    path = local_file(benchmark, split, lang, src)
    if path is not None:
        return read_jsonl(path)
    if hub is None:
        root = src or os.environ.get("MLQUANT_DATA_DIR") or "<MLQUANT_DATA_DIR unset>"
        raise DataError(
            f"no data for {benchmark}/{split}/{lang}: {root}/{benchmark}/{split}/{lang}.jsonl does not exist "
            "and the task has no hub dataset for this language."
        )
    log.info("reading %s/%s/%s from %s", benchmark, split, lang, hub.describe())
    return _load_hub(hub, None)


def available_languages(
    benchmark: str, split: str, *, hub_codes: Iterable[str] = (), where: str = "any"
) -> list[str]:
    """Language codes with data: local files (under MLQUANT_DATA_DIR), the hub's, or both (``where='any'``)."""
    local: set[str] = set()
    root = data_dir()
    if root is not None and (root / benchmark / split).is_dir():
        local = {p.stem for p in (root / benchmark / split).glob("*.jsonl")}
    if where == "local":
        return sorted(local)
    if where == "hub":
        return sorted(set(hub_codes))
    return sorted(local | set(hub_codes))
