"""Input handling for :mod:`mlquant.stats`: the tidy per-item frame, its validation, and pairing by item.

Every statistic in this package is *paired by item*: a quantized cell (quant x task x lang) is compared with the
baseline cell of the same task and language on the items present in both. This module owns that pairing and
the per-cell metadata (metric, direction, difficulty, script, resource class, family) that groupings use.

The internal :class:`Paired` object holds the paired items as flat numpy arrays sorted by cell, then by
resampling unit (the item's ``group`` when it has one, else the item itself), so that the other modules can
aggregate with ``np.add.reduceat`` / ``np.bincount`` instead of pandas group-bys.

Example:
    >>> import pandas as pd
    >>> from mlquant.stats._frame import pair
    >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "t", "lang": "en",
    ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 0.0, 1.0, 1.0]})
    >>> p = pair(df, "fp32")
    >>> p.cells[["quant", "task", "lang", "n"]].to_dict("records")
    [{'quant': 'w4', 'task': 't', 'lang': 'en', 'n': 2}]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["Paired", "Weighting", "as_frame", "binary_cells", "default_baseline", "pair", "subset"]

Weighting = Literal["language", "item"]

REQUIRED: tuple[str, ...] = ("quant", "task", "lang", "item_id", "score")
LANG_META: tuple[str, ...] = ("script", "resource_class", "family")
#: Per-cell columns copied from the baseline rows (with their defaults when the frame lacks them).
CELL_META: dict[str, Any] = {
    "metric": "score",
    "higher_is_better": True,
    "difficulty": "unknown",
    "kind": "unknown",
}


def as_frame(results: Any) -> pd.DataFrame:
    """The tidy per-item DataFrame of ``results`` (a DataFrame, or an object with a ``.frame`` DataFrame).

    Raises:
        ConfigError: ``results`` is neither.
    """
    if isinstance(results, pd.DataFrame):
        return results
    frame = getattr(results, "frame", None)
    if isinstance(frame, pd.DataFrame):
        return frame
    raise ConfigError(
        "mlquant.stats expects a pandas DataFrame of per-item results (one row per item x quant) or an object "
        f"with a .frame DataFrame such as mlquant.Results; got {type(results).__name__}."
    )


@dataclass(frozen=True, eq=False)
class Paired:
    """Items of every quantized cell paired with the same items of its baseline cell.

    Attributes:
        baseline: the baseline quant label.
        keys: the cell key columns: ``("quant", "task", "lang")``, with ``"model"`` first when the frame holds
            several models.
        cells: one row per quantized cell: the keys, the cell metadata, ``n`` (paired items), ``n_units``
            (resampling units), ``start``/``stop`` (slice into the item arrays) and ``ustart``/``ustop``
            (slice into the unit arrays).
        cell: cell index of each paired item (items sorted by cell, then unit label, then item id).
        item_code: code of each paired item's id (``item_labels[item_code]`` is the id; see :attr:`item_id`).
        item_labels: the item ids, by code.
        unit: global unit index of each paired item (contiguous within a cell).
        b: baseline score of each paired item.
        q: quantized score of each paired item.
        w: weight of each paired item (the baseline row's weight).
        rows_b: position of the baseline row in :attr:`frame`.
        rows_q: position of the quantized row in :attr:`frame`.
        unit_label: label code of each unit (equal codes = the same item or group label across cells).
        unit_cell: cell index of each unit.
        frame: the input frame (not copied).
    """

    baseline: str
    keys: tuple[str, ...]
    cells: pd.DataFrame
    cell: np.ndarray
    item_code: np.ndarray
    item_labels: np.ndarray
    unit: np.ndarray
    b: np.ndarray
    q: np.ndarray
    w: np.ndarray
    rows_b: np.ndarray
    rows_q: np.ndarray
    unit_label: np.ndarray
    unit_cell: np.ndarray
    frame: pd.DataFrame

    @property
    def item_id(self) -> np.ndarray:
        """Item id (str) of each paired item."""
        ids: np.ndarray = self.item_labels[self.item_code]
        return ids

    @property
    def n_cells(self) -> int:
        """Number of quantized cells."""
        return len(self.cells)

    def unit_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-unit sums ``(sum w*(q-b), sum w*b, sum w)``, in unit order."""
        n_units = int(self.unit_cell.shape[0])
        d = np.bincount(self.unit, weights=self.w * (self.q - self.b), minlength=n_units)
        b = np.bincount(self.unit, weights=self.w * self.b, minlength=n_units)
        w = np.bincount(self.unit, weights=self.w, minlength=n_units)
        return d, b, w

    def cell_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-cell sums ``(sum w*(q-b), sum w*b, sum w)``, in cell order."""
        c = self.n_cells
        d = np.bincount(self.cell, weights=self.w * (self.q - self.b), minlength=c)
        b = np.bincount(self.cell, weights=self.w * self.b, minlength=c)
        w = np.bincount(self.cell, weights=self.w, minlength=c)
        return d, b, w

    def select(self, **values: Any) -> Paired:
        """The cells whose columns take the given values (a value or a list of values per column).

        Example:
            >>> import pandas as pd
            >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": ["a", "b", "a", "b"],
            ...                    "lang": "en", "item_id": "1", "score": [1.0, 1.0, 0.0, 1.0]})
            >>> pair(df).select(task="b").cells["task"].tolist()
            ['b']

        Raises:
            ConfigError: a column is not in :attr:`cells`.
            DataError: no cell matches.
        """
        mask = np.ones(self.n_cells, dtype=bool)
        for col, want in values.items():
            if col not in self.cells.columns:
                raise ConfigError(f"cannot select on {col!r}; columns: {list(self.cells.columns)}.")
            wanted = list(want) if isinstance(want, (list, tuple, set)) else [want]
            mask &= self.cells[col].isin(wanted).to_numpy()
        return subset(self, mask)

    def clustered(self) -> np.ndarray:
        """Boolean per cell: True when some unit holds more than one item (a cluster bootstrap)."""
        return (self.cells["n_units"] < self.cells["n"]).to_numpy()


def _codes(frame: pd.DataFrame, col: str, sort: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a key column and its labels (as str); codes follow the sorted labels when ``sort``."""
    values = frame[col]
    try:
        codes, uniques = pd.factorize(values, sort=sort)
    except TypeError:  # mixed types that do not sort together
        codes, uniques = pd.factorize(values.astype(str), sort=sort)
    if len(codes) and codes.min() < 0:
        bad = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"column {col!r} has a missing value (row {bad}); every row needs a {col}.")
    labels = np.array([str(u) for u in uniques], dtype=object)
    return codes.astype(np.int64), labels


def _float_column(frame: pd.DataFrame, col: str) -> np.ndarray:
    try:
        return pd.to_numeric(frame[col], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"column {col!r} must be numeric: {exc}") from None


def _bool_values(values: pd.Series) -> np.ndarray:
    """A boolean column (True / False, 'true' / 'false', 1 / 0); missing values count as True."""
    if values.dtype == bool:
        return values.to_numpy(dtype=bool)
    codes, uniques = pd.factorize(values)
    parsed = np.array(
        [u if isinstance(u, (bool, np.bool_)) else str(u).strip().lower() in {"true", "1", "1.0"} for u in uniques]
        + [True],
        dtype=bool,
    )
    return parsed[codes]


def _check_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(
            f"the results frame lacks column(s) {missing}; mlquant.stats needs {list(REQUIRED)} "
            f"(present: {list(frame.columns)})."
        )


def combine_codes(codes: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    key = np.zeros(codes[0].shape[0], dtype=np.int64)
    for code, size in zip(codes, sizes, strict=True):
        key = key * np.int64(max(size, 1)) + code.astype(np.int64)
    return key


def default_baseline(frame: pd.DataFrame) -> str:
    """The baseline of a results frame, the one default every comparison uses: fp32, else bf16, else fp16.

    Raises:
        ConfigError: no baseline label is present.

    Example:
        >>> default_baseline(pd.DataFrame({"quant": ["rtn-w8", "bf16"]}))
        'bf16'
    """
    present = set(frame["quant"].unique()) if "quant" in frame.columns else set()
    for label in ("fp32", "bf16", "fp16"):
        if label in present:
            return label
    raise ConfigError(f"no baseline (fp32, bf16 or fp16) among the quant labels {sorted(present)}; pass baseline=.")


def pair(results: Any, baseline: str | None = None) -> Paired:
    """Pair every quantized cell with its baseline cell, item by item.

    Items present in only one of the two cells are left out; a warning says which cells lost items. Items whose
    score is missing in either cell are left out with a warning too.

    Args:
        results: the tidy per-item frame (or an object with a ``.frame``), or a :class:`Paired` (returned as is
            when its baseline is ``baseline``).
        baseline: the quant label of the reference model (default: :func:`default_baseline`).

    Raises:
        ConfigError: no row has ``quant == baseline`` (the message lists the labels present), or no other label.
        DataError: a required column is missing, a key is missing, an item appears twice in one cell, a score or
            weight is not numeric, a weight is not positive, or a cell mixes metric directions.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32", "w4"], "task": "t", "lang": "en", "item_id": "1",
        ...                    "score": [1.0, 0.0]})
        >>> pair(df, "fp32").q.tolist()
        [0.0]
    """
    if isinstance(results, Paired):
        if baseline is not None and results.baseline != baseline:
            raise ConfigError(
                f"these results were paired against baseline {results.baseline!r}, not {baseline!r}; "
                f"pass baseline={results.baseline!r} or pair them again."
            )
        return results
    cached = getattr(results, "paired", None)
    if callable(cached) and isinstance(getattr(results, "frame", None), pd.DataFrame):  # mlquant.Results: pair once
        paired = cached(baseline)
        if not isinstance(paired, Paired):
            raise ConfigError(
                f"{type(results).__name__}.paired({baseline!r}) returned {type(paired).__name__}; expected a Paired."
            )
        return paired
    frame = as_frame(results)
    _check_columns(frame)
    if len(frame) == 0:
        raise DataError("the results frame is empty.")
    if baseline is None:
        baseline = default_baseline(frame)
    q_code, q_labels = _codes(frame, "quant", sort=False)
    labels = [str(x) for x in q_labels]
    if baseline not in labels:
        raise ConfigError(
            f"no rows with quant == {baseline!r} (the baseline); labels present: {labels}. Pass baseline= one of these."
        )
    if len(labels) < 2:
        raise ConfigError(f"only the baseline {baseline!r} is present; there is nothing to compare it with.")
    multi_model = "model" in frame.columns and frame["model"].nunique(dropna=False) > 1
    keys: tuple[str, ...] = (("model",) if multi_model else ()) + ("quant", "task", "lang")

    score = _float_column(frame, "score")
    weight = _float_column(frame, "weight") if "weight" in frame.columns else np.ones(len(frame))
    weight = np.where(np.isnan(weight), 1.0, weight)
    if np.any(weight <= 0) or not np.all(np.isfinite(weight)):
        bad = int(np.flatnonzero((weight <= 0) | ~np.isfinite(weight))[0])
        raise DataError(f"column 'weight' must be positive and finite; row {bad} has {weight[bad]!r}.")

    # Integer codes: quant in order of appearance, the rest sorted.
    base_code = labels.index(baseline)
    pair_cols = (["model"] if multi_model else []) + ["task", "lang", "item_id"]
    coded = [_codes(frame, c) for c in pair_cols]
    codes = [c for c, _ in coded]
    uniques = [u for _, u in coded]
    sizes = [len(u) for u in uniques]
    item_key = combine_codes(codes, sizes)
    full_key = item_key * np.int64(len(labels)) + q_code
    space = float(np.prod(np.array(sizes, dtype=float))) * len(labels)
    if space <= 5e7:
        seen = np.bincount(full_key, minlength=int(space))
        dup_key = np.flatnonzero(seen > 1)[:1]
    else:
        sorted_keys = np.sort(full_key)
        dup_key = sorted_keys[np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])[:1]]
    if len(dup_key):
        dup = int(np.flatnonzero(full_key == dup_key[0])[0])
        where = ", ".join(f"{c}={u[code[dup]]!r}" for c, code, u in zip(pair_cols, codes, uniques, strict=True))
        raise DataError(
            f"item appears twice in one cell: quant={labels[q_code[dup]]!r}, {where}; each item needs one row."
        )

    is_base = q_code == base_code
    base_rows = np.flatnonzero(is_base)
    other_rows = np.flatnonzero(~is_base)
    key_space = float(np.prod(np.array(sizes, dtype=float)))
    if key_space <= 5e7:  # a lookup table: O(rows)
        table = np.full(int(key_space), -1, dtype=np.int64)
        table[item_key[base_rows]] = base_rows
        found = table[item_key[other_rows]]
        matched = found >= 0
        rows_q, rows_b = other_rows[matched], found[matched]
    else:
        order = np.argsort(item_key[base_rows], kind="stable")
        base_sorted_keys = item_key[base_rows][order]
        pos = np.minimum(np.searchsorted(base_sorted_keys, item_key[other_rows]), len(base_sorted_keys) - 1)
        matched = base_sorted_keys[pos] == item_key[other_rows]
        rows_q, rows_b = other_rows[matched], base_rows[order][pos[matched]]

    cell_codes = [code for code in codes[:-1]]  # (model,) task, lang
    cell_sizes = sizes[:-1]
    _warn_item_sets(frame, keys, q_code, base_code, is_base, cell_codes, cell_sizes, other_rows, matched, labels)

    b = score[rows_b]
    q = score[rows_q]
    ok = ~(np.isnan(b) | np.isnan(q))
    if not ok.all():
        warnings.warn(
            f"{int((~ok).sum())} paired item(s) have a missing score in the baseline or the quantized cell and "
            "are left out.",
            stacklevel=3,
        )
        rows_b, rows_q, b, q = rows_b[ok], rows_q[ok], b[ok], q[ok]
    if len(rows_q) == 0:
        raise DataError(f"no item of any quantized cell is also in its baseline ({baseline!r}) cell.")
    return _build(frame, baseline, keys, multi_model, rows_b, rows_q, b, q, weight, q_code, codes, uniques[-1])


def _warn_item_sets(
    frame: pd.DataFrame,
    keys: tuple[str, ...],
    q_code: np.ndarray,
    base_code: int,
    is_base: np.ndarray,
    cell_codes: list[np.ndarray],
    cell_sizes: list[int],
    other_rows: np.ndarray,
    matched: np.ndarray,
    labels: list[str],
) -> None:
    cell_key = combine_codes(cell_codes, cell_sizes)
    n_cellkeys = int(np.prod([max(s, 1) for s in cell_sizes]))
    n_base = np.bincount(cell_key[is_base], minlength=n_cellkeys)
    qc = cell_key[other_rows] * len(labels) + q_code[other_rows]
    n_q_all = np.bincount(qc, minlength=n_cellkeys * len(labels))
    n_m_all = np.bincount(qc, weights=matched.astype(float), minlength=n_cellkeys * len(labels)).astype(int)
    uq = np.flatnonzero(n_q_all)
    n_q, n_m = n_q_all[uq], n_m_all[uq]
    inv = np.searchsorted(uq, qc)
    ck = uq // len(labels)
    n_b = n_base[ck]
    differ = (n_q != n_m) | (n_b != n_m)
    if not differ.any():
        return
    first = np.array([other_rows[np.flatnonzero(inv == i)[0]] for i in np.flatnonzero(differ)[:6]])
    key_frame = frame.iloc[first][list(keys)].astype(str)
    idx = np.flatnonzero(differ)[:6]
    no_base = int((differ & (n_b == 0)).sum())
    extras = [f": {n_m[i]} paired of {n_b[i]} baseline / {n_q[i]} quantized items" for i in idx]
    detail = "; ".join(f"({', '.join(r)}){e}" for r, e in zip(key_frame.itertuples(index=False), extras, strict=True))
    more = f" and {int(differ.sum()) - len(idx)} more" if differ.sum() > len(idx) else ""
    msg = (
        f"{int(differ.sum())} quantized cell(s) have item sets that differ from their baseline cell's; each is "
        f"compared on the intersection of item ids: {detail}{more}."
    )
    if no_base:
        msg += f" {no_base} of them have no baseline rows at all and are left out."
    warnings.warn(msg, stacklevel=4)


def _build(
    frame: pd.DataFrame,
    baseline: str,
    keys: tuple[str, ...],
    multi_model: bool,
    rows_b: np.ndarray,
    rows_q: np.ndarray,
    b: np.ndarray,
    q: np.ndarray,
    weight: np.ndarray,
    q_code: np.ndarray,
    codes: list[np.ndarray],
    item_labels: np.ndarray,
) -> Paired:
    # Cell order: (model), quant (order of appearance), task, lang; then unit label, then item id.
    ncode = len(codes)
    model_c = codes[0][rows_q] if multi_model else np.zeros(len(rows_q), dtype=np.int64)
    task_c, lang_c, item_c = (codes[ncode - 3][rows_q], codes[ncode - 2][rows_q], codes[ncode - 1][rows_q])
    unit_code = item_c
    if "group" in frame.columns:
        grp = frame["group"].to_numpy(dtype=object)[rows_b]
        has_grp = pd.notna(grp) & (grp != "")
        if has_grp.any():
            # Group labels first (codes 0..G-1), then ungrouped items: the same label gets the same code everywhere.
            gcode, guniq = pd.factorize(pd.Series(grp[has_grp]).astype(str), sort=True)
            unit_code = item_c.astype(np.int64) + len(guniq)
            unit_code[has_grp] = gcode
    cell_parts = [model_c, q_code[rows_q], task_c, lang_c]
    cell_sizes = [int(x.max()) + 1 for x in cell_parts]
    within = [unit_code] if unit_code is item_c else [unit_code, item_c]
    within_sizes = [int(x.max()) + 1 for x in within]
    if float(np.prod(np.array(cell_sizes + within_sizes, dtype=float))) < 2.0**62:
        key = combine_codes(cell_parts + within, cell_sizes + within_sizes)
        order = np.argsort(key)
        cell_key = key[order] // np.int64(np.prod(within_sizes))
    else:  # pragma: no cover - astronomically many keys
        order = np.lexsort(tuple(reversed(cell_parts + within)))
        cell_key = combine_codes([x[order] for x in cell_parts], cell_sizes)
    rows_b, rows_q, b, q = rows_b[order], rows_q[order], b[order], q[order]
    unit_code, item_code = unit_code[order], item_c[order]
    change = np.r_[True, cell_key[1:] != cell_key[:-1]]
    cell = np.cumsum(change) - 1
    ustart = np.r_[True, (cell[1:] != cell[:-1]) | (unit_code[1:] != unit_code[:-1])]
    unit = np.cumsum(ustart) - 1
    unit_first = np.flatnonzero(ustart)
    starts = np.flatnonzero(change)
    stops = np.r_[starts[1:], len(cell)]
    n_units = np.bincount(cell[unit_first], minlength=len(starts))
    cells = frame.iloc[rows_q[starts]][list(keys)].astype(str).reset_index(drop=True)
    base_first = rows_b[starts]
    for col, default in CELL_META.items():
        if col in frame.columns:
            vals = frame[col].iloc[base_first].to_numpy(dtype=object)
            vals = np.where(pd.isna(vals), default, vals)
        else:
            vals = np.full(len(starts), default, dtype=object)
        cells[col] = vals
    cells["higher_is_better"] = _bool_values(cells["higher_is_better"])
    for col in LANG_META:
        if col in frame.columns:
            cells[col] = frame[col].iloc[base_first].to_numpy(dtype=object)
    if "higher_is_better" in frame.columns:
        hib = _bool_values(frame["higher_is_better"])[rows_b]
        per_cell_min = np.minimum.reduceat(hib.astype(int), starts)
        per_cell_max = np.maximum.reduceat(hib.astype(int), starts)
        if np.any(per_cell_min != per_cell_max):
            i = int(np.flatnonzero(per_cell_min != per_cell_max)[0])
            raise DataError(f"cell {tuple(cells.loc[i, list(keys)])} mixes higher_is_better True and False rows.")
    w = weight[rows_b]
    cells["n"] = (stops - starts).astype(int)
    cells["n_units"] = n_units.astype(int)
    cells["start"], cells["stop"] = starts, stops
    ucell = cell[unit_first]
    cells["ustart"] = np.searchsorted(ucell, np.arange(len(starts)), side="left")
    cells["ustop"] = np.searchsorted(ucell, np.arange(len(starts)), side="right")
    return Paired(
        baseline=baseline,
        keys=keys,
        cells=cells,
        cell=cell,
        item_code=item_code,
        item_labels=item_labels,
        unit=unit,
        b=b,
        q=q,
        w=w,
        rows_b=rows_b,
        rows_q=rows_q,
        unit_label=unit_code[unit_first],
        unit_cell=ucell,
        frame=frame,
    )


def subset(paired: Paired, cell_mask: np.ndarray) -> Paired:
    """The paired items of the cells where ``cell_mask`` is True (cell and unit indices renumbered).

    Raises:
        DataError: no cell is selected.
    """
    cell_mask = np.asarray(cell_mask, dtype=bool)
    if cell_mask.all():
        return paired
    if not cell_mask.any():
        raise DataError("no cell is left to analyse.")
    keep_item = cell_mask[paired.cell]
    keep_unit = cell_mask[paired.unit_cell]
    new_cell = np.cumsum(cell_mask) - 1
    new_unit = np.cumsum(keep_unit) - 1
    cells = paired.cells[cell_mask].reset_index(drop=True)
    cell = new_cell[paired.cell[keep_item]]
    starts = np.searchsorted(cell, np.arange(len(cells)), side="left")
    cells["start"], cells["stop"] = starts, np.searchsorted(cell, np.arange(len(cells)), side="right")
    unit_cell = new_cell[paired.unit_cell[keep_unit]]
    cells["ustart"] = np.searchsorted(unit_cell, np.arange(len(cells)), side="left")
    cells["ustop"] = np.searchsorted(unit_cell, np.arange(len(cells)), side="right")
    return Paired(
        baseline=paired.baseline,
        keys=paired.keys,
        cells=cells,
        cell=cell,
        item_code=paired.item_code[keep_item],
        item_labels=paired.item_labels,
        unit=new_unit[paired.unit[keep_item]],
        b=paired.b[keep_item],
        q=paired.q[keep_item],
        w=paired.w[keep_item],
        rows_b=paired.rows_b[keep_item],
        rows_q=paired.rows_q[keep_item],
        unit_label=paired.unit_label[keep_unit],
        unit_cell=unit_cell,
        frame=paired.frame,
    )


def binary_cells(paired: Paired) -> np.ndarray:
    """Boolean per cell: every baseline and quantized score is 0 or 1 (accuracy-like)."""
    is_bin = ((paired.b == 0) | (paired.b == 1)) & ((paired.q == 0) | (paired.q == 1))
    bad = np.bincount(paired.cell, weights=(~is_bin).astype(float), minlength=paired.n_cells)
    binary: np.ndarray = bad == 0
    return binary
