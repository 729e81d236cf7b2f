"""Power of the paired comparisons: the minimum detectable difference (MDD) of a cell, and the n a drop needs.

A null result means little unless the cell could have detected a drop that matters. For binary scores the
paired test is McNemar's, whose power depends on the *discordance* psi (the share of items whose correctness
changes) and the difference delta (Connor 1987, normal approximation):

    n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2

so the MDD at a given n is the positive root
``|delta| = sqrt(psi) (z_a sqrt(n) + z_b sqrt(n - z_a^2 + z_b^2)) / (n + z_b^2)``.
:func:`power` reports it twice: at the cell's *observed* discordance (what this paired design can detect; a
discordance of 0 is floored at the rule-of-three bound 3/n) and at the worst case ``psi = 2p(1-p)`` that depends
only on n and the baseline accuracy p (a quantized model whose errors were independent of the baseline's).
For continuous or weighted or clustered scores it uses the paired z-approximation
``MDD = (z_a + z_b) * SE(mean difference)``, with the SE of the weighted mean over resampling units.

Example:
    >>> round(float(minimum_detectable_difference(1000, 0.1)), 4)
    0.028
    >>> int(required_n(0.02, 0.1))
    1960
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri

from mlquant.errors import ConfigError
from mlquant.stats._frame import binary_cells, pair
from mlquant.stats._groups import group_cells
from mlquant.stats._types import FrameResult, format_frame

__all__ = ["PowerTable", "minimum_detectable_difference", "power", "required_n"]


def _z(alpha: float, target: float) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < target < 1:
        raise ConfigError(f"alpha and target power must be in (0, 1), got alpha={alpha!r}, target={target!r}.")
    return float(ndtri(1 - alpha / 2)), float(ndtri(target))


def minimum_detectable_difference(
    n: float | np.ndarray, discordance: float | np.ndarray, alpha: float = 0.05, target: float = 0.8
) -> np.ndarray:
    """Smallest |accuracy difference| a two-sided paired McNemar test detects with power ``target``.

    Args:
        n: paired items.
        discordance: share of items whose correctness differs between the two models (psi).
        alpha: two-sided level.
        target: power.

    Example:
        >>> round(float(minimum_detectable_difference(500, 0.2)), 4)
        0.0559

    References:
        Connor, R. J. (1987). Sample size for testing differences in proportions for the paired-sample design.
        Biometrics 43(1), 207-211.
    """
    za, zb = _z(alpha, target)
    n = np.asarray(n, dtype=float)
    psi = np.asarray(discordance, dtype=float)
    inner = np.maximum(n - za**2 + zb**2, 0.0)
    out = np.sqrt(psi) * (za * np.sqrt(n) + zb * np.sqrt(inner)) / (n + zb**2)
    mdd: np.ndarray = np.minimum(out, psi)
    return mdd


def required_n(
    drop: float | np.ndarray, discordance: float | np.ndarray, alpha: float = 0.05, target: float = 0.8
) -> np.ndarray:
    """Paired items a McNemar test needs to detect an accuracy difference ``drop`` with power ``target``.

    ``discordance`` below ``|drop|`` is impossible and is raised to ``|drop|``.

    Example:
        >>> int(required_n(0.05, 0.1))
        312

    References:
        Connor, R. J. (1987). Biometrics 43(1), 207-211.
    """
    za, zb = _z(alpha, target)
    d = np.abs(np.asarray(drop, dtype=float))
    if np.any(d <= 0):
        raise ConfigError("drop must be non-zero (in score units: 0.02 = 2 accuracy points).")
    psi = np.maximum(np.asarray(discordance, dtype=float), d)
    needed: np.ndarray = np.ceil((za * np.sqrt(psi) + zb * np.sqrt(psi - d**2)) ** 2 / d**2)
    return needed


@dataclass(frozen=True, eq=False)
class PowerTable(FrameResult):
    """MDD per cell or group (and the n a given drop needs).

    Attributes:
        baseline: the baseline quant label.
        alpha: two-sided level.
        target: power.
        drop: the drop asked about (score units), or None.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "t", "lang": "en",
        ...                    "item_id": list("abcd") * 2, "score": [1., 1, 0, 1, 1, 0, 0, 1]})
        >>> power(df).to_frame()["method"].iloc[0]
        'mcnemar'
    """

    baseline: str = "fp32"
    alpha: float = 0.05
    target: float = 0.8
    drop: float | None = None

    def __str__(self) -> str:
        head = f"minimum detectable difference (two-sided alpha {self.alpha}, power {self.target:.0%})"
        return head + "\n" + format_frame(self._frame, digits=4, max_rows=200)


def power(
    results: Any,
    baseline: str | None = None,
    by: str | Sequence[str] = ("task", "lang"),
    *,
    drop: float | None = None,
    alpha: float = 0.05,
    target: float = 0.8,
) -> PowerTable:
    """Minimum detectable difference of every cell or group at its n, and the n needed to detect ``drop``.

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        by: grouping columns besides quant; a group pools its items.
        drop: a difference in score units (``0.02`` = 2 accuracy points) for the ``n_needed`` column.
        alpha: two-sided level (use the Holm/Bonferroni level ``alpha / m`` to plan for m adjusted tests).
        target: power.

    Returns:
        A :class:`PowerTable` with ``n``, ``baseline``, ``method`` (``mcnemar`` for unclustered unit-weight 0/1
        scores, else ``z``), ``discordance`` (binary only), ``mdd`` (score units, at the observed discordance or
        SE), ``mdd_rel`` (in % of the baseline: the smallest detectable relative change), ``mdd_worst`` (binary
        only: at discordance 2p(1-p), from n and the baseline accuracy alone) and, with ``drop``, ``n_needed``.

    Example:
        >>> import numpy as np, pandas as pd
        >>> b = np.r_[np.ones(700), np.zeros(300)]
        >>> q = b.copy(); q[:50] = 0; q[700:720] = 1
        >>> df = pd.DataFrame({"quant": ["fp32"] * 1000 + ["w4"] * 1000, "task": "t", "lang": "en",
        ...                    "item_id": [str(i) for i in range(1000)] * 2, "score": np.r_[b, q]})
        >>> t = power(df, drop=0.02).to_frame()
        >>> round(float(t.mdd.iloc[0]), 4), int(t.n_needed.iloc[0])
        (0.0234, 1372)

    References:
        Connor, R. J. (1987). Biometrics 43(1), 207-211. Bloom, H. S. (1995). Minimum detectable effects.
        Evaluation Review 19(5).
    """
    za, zb = _z(alpha, target)
    paired = pair(results, baseline)
    baseline = paired.baseline
    g, groups = group_cells(paired, by)
    n_g = len(groups)
    cell_bin = binary_cells(paired) & ~paired.clustered()
    gi = g[paired.cell]
    unit_w = np.bincount(gi, weights=(paired.w != 1).astype(float), minlength=n_g) == 0
    is_bin = (np.bincount(g, weights=(~cell_bin).astype(float), minlength=n_g) == 0) & unit_w
    n = np.bincount(gi, minlength=n_g).astype(float)
    wsum = np.bincount(gi, weights=paired.w, minlength=n_g)
    base = np.bincount(gi, weights=paired.w * paired.b, minlength=n_g) / wsum
    disc = np.bincount(gi, weights=(paired.b != paired.q).astype(float), minlength=n_g) / n
    psi = np.maximum(disc, 3.0 / n)
    mdd_bin = minimum_detectable_difference(n, psi, alpha, target)
    # z approximation on units: SE of the ratio estimator sum(d_u) / sum(w_u).
    ud, _, uw = paired.unit_sums()
    gu = g[paired.unit_cell]
    m = np.bincount(gu, minlength=n_g).astype(float)
    t_hat = np.bincount(gu, weights=ud, minlength=n_g) / wsum
    resid2 = np.bincount(gu, weights=(ud - t_hat[gu] * uw) ** 2, minlength=n_g)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(resid2 * m / np.maximum(m - 1, 1)) / wsum
    mdd_z = (za + zb) * se
    mdd = np.where(is_bin, mdd_bin, mdd_z)
    frame = groups.drop(columns=["n_cells", "n_langs"]).copy()
    frame["n"] = n.astype(int)
    frame["n_units"] = m.astype(int)
    frame["baseline"] = base
    frame["method"] = np.where(is_bin, "mcnemar", "z")
    frame["discordance"] = np.where(is_bin, disc, np.nan)
    frame["mdd"] = mdd
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["mdd_rel"] = 100.0 * mdd / np.abs(base)
    worst = minimum_detectable_difference(n, np.where(is_bin, 2 * base * (1 - base), 0.0), alpha, target)
    frame["mdd_worst"] = np.where(is_bin, worst, np.nan)
    if drop is not None:
        n_bin = required_n(drop, psi, alpha, target)
        sd_item = se * np.sqrt(n)
        with np.errstate(divide="ignore", invalid="ignore"):
            n_z = np.ceil(((za + zb) * sd_item / abs(drop)) ** 2)
        frame["n_needed"] = np.where(is_bin, n_bin, n_z)
    return PowerTable(_frame=frame, baseline=baseline, alpha=alpha, target=target, drop=drop)
