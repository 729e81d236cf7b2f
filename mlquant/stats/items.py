"""Item-level analysis of choice tasks: which items flip, in which direction, and how the drop depends on margin.

A *flip* is an item whose correctness changes under quantization: correct -> wrong (a loss) or wrong -> correct
(a gain). The net accuracy change is ``(gains - losses) / n``, so two methods with the same accuracy can differ
a lot in how many answers they change. The *margin* of an item is the baseline's log-likelihood of the gold
choice minus its best wrong choice (from ``extra["logprobs"]`` and ``target``, the gold index): items the
baseline barely gets right are the ones quantization noise tips over.

Example:
    >>> import pandas as pd
    >>> import mlquant as mq
    >>> df = pd.DataFrame({"quant": ["fp32"] * 3 + ["w4"] * 3, "task": "t", "lang": "en",
    ...                    "item_id": list("abc") * 2, "score": [1.0, 1, 0, 0, 1, 1]})
    >>> mq.stats.flips(df).to_frame()[["n", "correct_to_wrong", "wrong_to_correct"]].values.tolist()
    [[3, 1, 1]]
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, DataError
from mlquant.stats._frame import Paired, binary_cells, pair, subset
from mlquant.stats._groups import group_cells
from mlquant.stats._types import FrameResult, format_frame

__all__ = ["FlipTable", "choice_margin", "flips"]


def choice_margin(extra: Any, target: Any) -> float:
    """Log-likelihood of the gold choice minus the best wrong choice; NaN when it cannot be computed.

    Args:
        extra: the ``extra`` field of a row (a JSON string or a mapping) holding ``{"logprobs": [...]}``.
        target: the gold choice index (an int or a string of one).

    Example:
        >>> choice_margin('{"logprobs": [-1.0, -2.5, -0.5]}', "0")
        -0.5
    """
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            return math.nan
    if not isinstance(extra, dict):
        return math.nan
    raw = extra.get("logprobs")
    if raw is None:
        return math.nan
    try:
        gold = int(str(target).strip())
        lps = [float(x) for x in raw]
    except (TypeError, ValueError):
        return math.nan
    if not 0 <= gold < len(lps) or len(lps) < 2:
        return math.nan
    return lps[gold] - max(lp for j, lp in enumerate(lps) if j != gold)


@dataclass(frozen=True, eq=False)
class FlipTable(FrameResult):
    """Flip rates per cell or group; ``flipped_items()`` and ``by_margin()`` give the item-level frames.

    Attributes:
        baseline: the baseline quant label.
        by: the grouping (besides quant).
        bins: number of margin bins of :meth:`by_margin`.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 2 + ["w4"] * 2, "task": "t", "lang": "en",
        ...                    "item_id": list("ab") * 2, "score": [1.0, 1, 0, 1]})
        >>> flips(df).flipped_items()[["item_id", "direction"]].values.tolist()
        [['a', 'correct->wrong']]
    """

    baseline: str = "fp32"
    by: tuple[str, ...] = ("task", "lang")
    bins: int = 5
    _items: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    _margins: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def flipped_items(self) -> pd.DataFrame:
        """One row per flipped item: keys, item_id, direction, baseline/quantized margin, target, answers."""
        items: pd.DataFrame = self._items.copy()  # annotated: pandas-stubs' Self is Any under python 3.10
        return items

    def by_margin(self) -> pd.DataFrame:
        """Accuracy drop and flip rates per quant and baseline-margin bin (quantile bins; empty without logprobs)."""
        margins: pd.DataFrame = self._margins.copy()  # annotated: pandas-stubs' Self is Any under python 3.10
        return margins

    def __str__(self) -> str:
        text = f"flips vs {self.baseline!r}\n" + format_frame(self._frame, digits=4, max_rows=200)
        if len(self._margins):
            text += "\n\nby baseline margin (log-likelihood gold - best wrong)\n" + format_frame(self._margins, 4)
        return text


def flips(
    results: Any, baseline: str | None = None, by: str | Sequence[str] = ("task", "lang"), *, bins: int = 5
) -> FlipTable:
    """Flip rates in both directions, the flipped items, and the drop as a function of the baseline's margin.

    Only cells with binary (0/1) scores are analysed (others are skipped with a warning).

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        by: grouping columns besides quant; a group pools its items.
        bins: number of quantile bins of the baseline margin for :meth:`FlipTable.by_margin`.

    Returns:
        A :class:`FlipTable` whose frame has ``n``, ``baseline_correct``, ``correct_to_wrong``,
        ``wrong_to_correct``, ``flip_rate`` ((losses + gains) / n), ``loss_rate`` (losses / baseline-correct
        items), ``gain_rate`` (gains / baseline-wrong items) and ``net`` ((gains - losses) / n).

    Raises:
        DataError: no cell has binary scores.
        ConfigError: ``bins`` < 1.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 2 + ["w4"] * 2, "task": "t", "lang": "en",
        ...                    "item_id": list("ab") * 2, "score": [1.0, 1, 0, 1],
        ...                    "target": "0",
        ...                    "extra": ['{"logprobs": [-0.1, -0.2]}', '{"logprobs": [-0.1, -3.0]}'] * 2})
        >>> flips(df).flipped_items()["baseline_margin"].round(2).tolist()
        [0.1]

    References:
        Dutta, A., et al. (2024). Accuracy is Not All You Need. arXiv:2407.09141 (flips as a quantization metric).
    """
    if not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}.")
    paired = pair(results, baseline)
    baseline = paired.baseline
    is_bin = binary_cells(paired)
    if not is_bin.any():
        raise DataError("flips needs binary (0/1) scores, and no cell has them.")
    if not is_bin.all():
        warnings.warn(f"flips: {int((~is_bin).sum())} cell(s) with non-binary scores are skipped.", stacklevel=2)
        paired = subset(paired, is_bin)
    g, groups = group_cells(paired, by)
    n_g = len(groups)
    gi = g[paired.cell]
    loss = (paired.b == 1) & (paired.q == 0)
    gain = (paired.b == 0) & (paired.q == 1)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(gi, weights=mask.astype(float), minlength=n_g).astype(int)

    n = np.bincount(gi, minlength=n_g)
    correct = count(paired.b == 1)
    frame = groups.drop(columns=["n_cells", "n_langs"]).copy()
    frame["n"], frame["baseline_correct"] = n, correct
    frame["correct_to_wrong"], frame["wrong_to_correct"] = count(loss), count(gain)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["flip_rate"] = (frame["correct_to_wrong"] + frame["wrong_to_correct"]) / n
        frame["loss_rate"] = frame["correct_to_wrong"] / correct
        frame["gain_rate"] = frame["wrong_to_correct"] / (n - correct)
    frame["net"] = (frame["wrong_to_correct"] - frame["correct_to_wrong"]) / n
    margin_b = _margins(paired.frame, paired.rows_b)
    items = _flipped(paired, loss | gain, loss, margin_b)
    table = _by_margin(paired, margin_b, bins)
    return FlipTable(_frame=frame, baseline=baseline, by=_by(by), bins=bins, _items=items, _margins=table)


def _by(by: str | Sequence[str]) -> tuple[str, ...]:
    return (by,) if isinstance(by, str) else tuple(by)


def _margins(frame: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    if "extra" not in frame.columns or "target" not in frame.columns:
        return np.full(len(rows), np.nan)
    uniq, inv = np.unique(rows, return_inverse=True)
    extra = frame["extra"].to_numpy(dtype=object)[uniq]
    target = frame["target"].to_numpy(dtype=object)[uniq]
    vals = np.array([choice_margin(e, t) for e, t in zip(extra, target, strict=True)], dtype=float)
    return vals[inv]


def _flipped(paired: Paired, flipped: np.ndarray, loss: np.ndarray, margin_b: np.ndarray) -> pd.DataFrame:
    idx = np.flatnonzero(flipped)
    cells = paired.cells
    keys = list(paired.keys)
    out: pd.DataFrame = cells.iloc[paired.cell[idx]][keys].reset_index(drop=True)
    out["item_id"] = paired.item_id[idx]
    out["direction"] = np.where(loss[idx], "correct->wrong", "wrong->correct")
    out["baseline_margin"] = margin_b[idx]
    out["quantized_margin"] = _margins(paired.frame, paired.rows_q[idx])
    for col in ("target", "extracted"):
        if col in paired.frame.columns:
            values = paired.frame[col].to_numpy(dtype=object)
            if col == "target":
                out["target"] = values[paired.rows_b[idx]]
            else:
                out["baseline_extracted"] = values[paired.rows_b[idx]]
                out["quantized_extracted"] = values[paired.rows_q[idx]]
    return out


def _by_margin(paired: Paired, margin_b: np.ndarray, bins: int) -> pd.DataFrame:
    ok = np.isfinite(margin_b)
    if not ok.any():
        empty: pd.DataFrame = pd.DataFrame()  # annotated: pandas-stubs' Self is Any under python 3.10
        return empty
    _, edges = pd.qcut(np.unique(margin_b[ok]), q=bins, retbins=True, duplicates="drop")
    if len(edges) < 2:
        edges = np.array([margin_b[ok].min(), margin_b[ok].max()])
    lead = [k for k in paired.keys if k in ("model", "quant")]
    df: pd.DataFrame = paired.cells.iloc[paired.cell[ok]][lead].reset_index(drop=True)
    # edges as a list: pandas-stubs' cut() does not accept an ndarray of bins (pandas does, and converts either alike)
    df["bin"] = pd.cut(margin_b[ok], bins=edges.tolist(), include_lowest=True)
    df["b"], df["q"] = paired.b[ok], paired.q[ok]
    df["loss"] = (df["b"] == 1) & (df["q"] == 0)
    df["gain"] = (df["b"] == 0) & (df["q"] == 1)
    grp = df.groupby([*lead, "bin"], observed=True, sort=False)
    out: pd.DataFrame = grp.agg(  # annotated: pandas-stubs type this groupby as Any
        n=("b", "size"), baseline=("b", "mean"), quantized=("q", "mean"), losses=("loss", "sum"), gains=("gain", "sum")
    ).reset_index()
    out["margin_lo"] = [iv.left for iv in out["bin"]]
    out["margin_hi"] = [iv.right for iv in out["bin"]]
    out["drop_points"] = 100.0 * (out["baseline"] - out["quantized"])
    out["flip_rate"] = (out["losses"] + out["gains"]) / out["n"]
    out = out.drop(columns=["bin"]).sort_values([*lead, "margin_lo"], kind="stable").reset_index(drop=True)
    table: pd.DataFrame = out[  # annotated: pandas-stubs type frame[list] as Any
        [*lead, "margin_lo", "margin_hi", "n", "baseline", "quantized", "drop_points", "losses", "gains", "flip_rate"]
    ]
    return table
