"""Bootstrap settings, point estimates, the BCa jackknife and interval computation for :mod:`mlquant.stats`.

The resampling itself (vectorized over cells) lives in :mod:`mlquant.stats._resample`; this module turns sums
into statistics and replicates into intervals:

* a cell's statistics come from three sums over its items: ``D = sum w(q-b)``, ``B = sum w b``, ``W = sum w``:
  ``diff = D / W``, ``rel_change = 100 D / B``, ``recovery = 100 + rel_change``;
* group statistics are means of cell statistics (``weighting="language"``: each (task, language) cell weighs
  the same) or pooled sums (``weighting="item"``);
* intervals: percentile, or BCa (bias from the replicates, acceleration from the leave-one-unit-out jackknife),
  computed as :func:`scipy.stats.bootstrap` computes them (linear interpolation between order statistics).

Example:
    >>> import numpy as np
    >>> spec = Bootstrap(n_resamples=1000)
    >>> reps = np.random.default_rng(0).normal(size=(1, 1000))
    >>> lo, hi = intervals(reps, np.array([0.0]), spec)[0]
    >>> bool(-2.2 < lo < -1.7 and 1.7 < hi < 2.2)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from mlquant.errors import ConfigError
from mlquant.stats._frame import Paired, Weighting

__all__ = ["Bootstrap", "GroupCI", "cell_stats", "intervals", "jackknife_accel", "point_estimates"]


@dataclass(frozen=True)
class Bootstrap:
    """How to bootstrap: number of resamples, interval method, confidence level and seed.

    Attributes:
        n_resamples: bootstrap replicates (10,000 by default).
        method: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated; Efron & Tibshirani 1993, 14.3).
        confidence: two-sided confidence level.
        seed: seed of the random draws; the same data and seed give the same intervals.

    Example:
        >>> Bootstrap(n_resamples=2000, method="bca").method
        'bca'
    """

    n_resamples: int = 10_000
    method: Literal["percentile", "bca"] = "percentile"
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.n_resamples, (int, np.integer)) or self.n_resamples < 100:
            raise ConfigError(f"n_resamples must be an integer >= 100, got {self.n_resamples!r}.")
        if self.method not in ("percentile", "bca"):
            raise ConfigError(f"method must be 'percentile' or 'bca', got {self.method!r}.")
        if not 0.5 <= float(self.confidence) < 1:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence!r}.")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")


@dataclass(frozen=True)
class GroupCI:
    """Bootstrap intervals of each group (rows) for ``diff`` and ``rel_change`` (columns lo, hi)."""

    diff: np.ndarray
    rel: np.ndarray
    replicates: dict[str, np.ndarray] | None


def cell_stats(paired: Paired) -> dict[str, np.ndarray]:
    """Per-cell baseline, quantized, diff, rel_change and rel_drop (direction-aware, positive = worse)."""
    d, b, w = paired.cell_sums()
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(b != 0, 100.0 * d / b, np.nan)
    sign = np.where(paired.cells["higher_is_better"].to_numpy(dtype=bool), -1.0, 1.0)
    return {
        "D": d,
        "B": b,
        "W": w,
        "baseline": b / w,
        "quantized": (b + d) / w,
        "diff": d / w,
        "rel_change": rel,
        "rel_drop": sign * rel,
    }


def _first(group_of_cell: np.ndarray, n_groups: int) -> np.ndarray:
    """Index of the first cell of each group."""
    first = np.full(n_groups, len(group_of_cell), dtype=np.int64)
    np.minimum.at(first, group_of_cell, np.arange(len(group_of_cell)))
    return first


def _varies(code: np.ndarray, group_of_cell: np.ndarray, n_groups: int) -> np.ndarray:
    """Whether an integer code takes more than one value within each group."""
    lo = np.full(n_groups, np.iinfo(np.int64).max)
    hi = np.full(n_groups, np.iinfo(np.int64).min)
    np.minimum.at(lo, group_of_cell, code)
    np.maximum.at(hi, group_of_cell, code)
    varies: np.ndarray = lo != hi
    return varies


def point_estimates(paired: Paired, group_of_cell: np.ndarray, n_groups: int, weighting: Weighting) -> pd.DataFrame:
    """Group estimates: n, n_units, baseline, quantized, diff, rel_change, recovery, rel_drop, metric, direction."""
    cs = cell_stats(paired)
    cells = paired.cells
    cnt = np.bincount(group_of_cell, minlength=n_groups).astype(float)

    def gsum(x: np.ndarray) -> np.ndarray:
        return np.bincount(group_of_cell, weights=x, minlength=n_groups)

    out: pd.DataFrame = pd.DataFrame(  # annotated: pandas-stubs' Self is Any under python 3.10
        {
            "n": gsum(cells["n"].to_numpy(float)).astype(int),
            "n_units": gsum(cells["n_units"].to_numpy(float)).astype(int),
            "weighting": weighting,
        }
    )
    if weighting == "language":
        for col in ("baseline", "quantized", "diff", "rel_change", "rel_drop"):
            out[col] = gsum(cs[col]) / cnt
    else:
        D, B, W = gsum(cs["D"]), gsum(cs["B"]), gsum(cs["W"])
        out["baseline"], out["quantized"], out["diff"] = B / W, (B + D) / W, D / W
        with np.errstate(divide="ignore", invalid="ignore"):
            out["rel_change"] = np.where(B != 0, 100.0 * D / B, np.nan)
        hib_first = cells["higher_is_better"].to_numpy(bool)[_first(group_of_cell, n_groups)]
        out["rel_drop"] = np.where(hib_first, -1.0, 1.0) * out["rel_change"]
    out["recovery"] = 100.0 + out["rel_change"]
    metric_code, metric_names = pd.factorize(cells["metric"].astype(str))
    mixed_metric = _varies(metric_code, group_of_cell, n_groups)
    first = _first(group_of_cell, n_groups)
    out["metric"] = np.where(mixed_metric, "mixed", np.asarray(metric_names, dtype=object)[metric_code[first]])
    hib = cells["higher_is_better"].to_numpy(bool)
    mixed_hib = _varies(hib.astype(np.int64), group_of_cell, n_groups)
    hib_of_group = hib[first].astype(object)
    hib_of_group[mixed_hib] = None  # a group mixing directions has no single direction
    out["higher_is_better"] = hib_of_group
    return out


def _accel(jack: np.ndarray, group_of_unit: np.ndarray, n_groups: int) -> np.ndarray:
    cnt = np.bincount(group_of_unit, minlength=n_groups).astype(float)
    ok = np.isfinite(jack)
    g, j = group_of_unit[ok], jack[ok]
    mean = np.bincount(g, weights=j, minlength=n_groups) / np.maximum(np.bincount(g, minlength=n_groups), 1)
    dev = mean[g] - j
    num = np.bincount(g, weights=dev**3, minlength=n_groups)
    den = 6.0 * np.bincount(g, weights=dev**2, minlength=n_groups) ** 1.5
    with np.errstate(divide="ignore", invalid="ignore"):
        a = num / den
    a[~np.isfinite(a) | (cnt == 0)] = 0.0
    return a


def jackknife_accel(
    paired: Paired, group_of_cell: np.ndarray, n_groups: int, weighting: Weighting
) -> tuple[np.ndarray, np.ndarray]:
    """BCa acceleration of each group for diff and rel_change, from the leave-one-unit-out jackknife."""
    ud, ub, uw = paired.unit_sums()
    uc = paired.unit_cell
    gu = group_of_cell[uc]
    cs = cell_stats(paired)
    with np.errstate(divide="ignore", invalid="ignore"):
        if weighting == "language":
            cnt = np.bincount(group_of_cell, minlength=n_groups).astype(float)[gu]
            jd = ((cs["D"][uc] - ud) / (cs["W"][uc] - uw) - cs["diff"][uc]) / cnt
            jr = (100.0 * (cs["D"][uc] - ud) / (cs["B"][uc] - ub) - cs["rel_change"][uc]) / cnt
        else:
            D = np.bincount(group_of_cell, weights=cs["D"], minlength=n_groups)[gu]
            B = np.bincount(group_of_cell, weights=cs["B"], minlength=n_groups)[gu]
            W = np.bincount(group_of_cell, weights=cs["W"], minlength=n_groups)[gu]
            jd = (D - ud) / (W - uw)
            jr = 100.0 * (D - ud) / (B - ub)
    return _accel(jd, gu, n_groups), _accel(jr, gu, n_groups)


def _counted_order_stats(x: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Order statistics of integer-valued rows by counting (no sort): ``ranks`` (rows x k, 0-based)."""
    n_rows, n_res = x.shape
    lo = x.min(axis=1)
    span = (x.max(axis=1) - lo).astype(np.int64) + 1
    offs = np.r_[0, np.cumsum(span)[:-1]]
    idx = (x - lo[:, None]).astype(np.int64) + offs[:, None]
    cum = np.cumsum(np.bincount(idx.ravel(), minlength=int(span.sum())))
    # Every row holds n_res replicates, so the counts before row r sum to r * n_res.
    target = ranks + 1 + (np.arange(n_rows) * n_res)[:, None]
    pos = np.searchsorted(cum, target)
    stats: np.ndarray = lo[:, None] + (pos - offs[:, None])
    return stats


def intervals(
    reps: np.ndarray,
    theta: np.ndarray,
    spec: Bootstrap,
    accel: np.ndarray | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Percentile or BCa interval of each row of ``reps`` (rows x replicates); returns rows x (lo, hi).

    With ``scale``, ``reps`` are integers and the statistic is ``reps / scale`` (row-wise): order statistics are
    then counted instead of sorted. Otherwise replicates are sorted in single precision, so endpoints carry 7
    significant digits. Rows holding a non-finite replicate (a relative change over a resampled baseline of 0)
    get NaN.
    """
    n_rows, n_res = reps.shape
    alpha = (1.0 - spec.confidence) / 2.0
    if scale is None:
        r = np.array(reps, dtype=np.float32)  # a copy: sorted / partitioned in place
        th = theta.astype(np.float32)[:, None]
    else:
        r = np.rint(reps).astype(np.int64)
        th = (theta * scale)[:, None]
    finite = np.isfinite(r).all(axis=1) if scale is None else np.ones(n_rows, dtype=bool)
    if spec.method == "percentile":
        p = np.broadcast_to(np.array([alpha, 1.0 - alpha]), (n_rows, 2))
    else:
        frac = (np.count_nonzero(r < th, axis=1) + np.count_nonzero(r <= th, axis=1)) / (2.0 * n_res)
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = ndtri(frac)[:, None]
            za = ndtri(np.array([alpha, 1.0 - alpha]))[None, :]
            a = (np.zeros(n_rows) if accel is None else accel)[:, None]
            num = z0 + za
            p = ndtr(z0 + num / (1.0 - a * num))
    ok = np.isfinite(p)
    h = (n_res - 1) * np.where(ok, p, 0.0)
    lo = np.clip(np.floor(h).astype(np.int64), 0, n_res - 1)
    hi = np.minimum(lo + 1, n_res - 1)
    if scale is not None:
        stats = _counted_order_stats(r, np.concatenate([lo, hi], axis=1)) / scale[:, None]
        low, high = stats[:, :2], stats[:, 2:]
    elif spec.method == "percentile":
        # Only four order statistics are needed: a partition is cheaper than a sort.
        r.partition(np.unique(np.r_[lo[0], hi[0]]), axis=1)
        rows = np.arange(n_rows)[:, None]
        low, high = r[rows, lo].astype(np.float64), r[rows, hi].astype(np.float64)
    else:
        r.sort(axis=1)
        rows = np.arange(n_rows)[:, None]
        low, high = r[rows, lo].astype(np.float64), r[rows, hi].astype(np.float64)
    with np.errstate(invalid="ignore"):
        out = low + (h - lo) * (high - low)
    out[~ok] = np.nan
    out[~finite | ~np.isfinite(theta)] = np.nan
    return _single_precision(out)


def _single_precision(x: np.ndarray) -> np.ndarray:
    """Round to the 7 significant digits the float32 replicates carry (-0.06400000304 -> -0.064)."""
    out: np.ndarray = x.copy()
    ok = np.isfinite(out) & (out != 0)
    mag = np.floor(np.log10(np.abs(out[ok])))
    scale = 10.0 ** (6 - mag)
    out[ok] = np.round(out[ok] * scale) / scale
    return out
