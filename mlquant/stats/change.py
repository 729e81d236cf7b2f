"""Relative change (Marchisio et al. 2024), recovery (Kurtic et al. 2024) and their paired bootstrap CIs.

Conventions (also in ``docs/statistics.md``):

* ``diff = quantized - baseline`` in score units, ``rel_change = 100 * (quantized - baseline) / baseline`` and
  ``recovery = 100 * quantized / baseline`` are reported as the formulas say, whatever the metric's direction.
* ``rel_drop`` is the direction-aware degradation in percent: ``-rel_change`` where higher is better (accuracy,
  chrF), ``+rel_change`` where lower is better (bits per byte). Positive ``rel_drop`` always means *worse*.
* Every comparison is on the item ids present in both the baseline cell and the quantized cell.
* ``weighting`` says how cells are combined when ``by`` is coarser than a (quant, task, lang) cell: ``"language"``
  averages the cell statistics (each (task, language) cell weighs the same -- the papers' averages), ``"item"``
  pools the items (each item weighs its ``weight``). The output always has a ``weighting`` column.

Example:
    >>> import pandas as pd
    >>> import mlquant as mq
    >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "xcopa", "lang": "ja",
    ...                    "item_id": [str(i) for i in range(4)] * 2,
    ...                    "score": [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]})
    >>> mq.stats.relative_change(df).to_frame()[["quant", "baseline", "quantized", "rel_change"]]
      quant  baseline  quantized  rel_change
    0    w4      0.75        0.5  -33.333333
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlquant.stats._engine import Bootstrap, point_estimates
from mlquant.stats._frame import Weighting, pair
from mlquant.stats._groups import check_group_metrics, check_weighting, group_cells
from mlquant.stats._resample import bootstrap_cells, bootstrap_groups
from mlquant.stats._types import FrameResult, format_frame

__all__ = ["ChangeTable", "change_table", "paired_bootstrap", "recovery", "relative_change"]


@dataclass(frozen=True, eq=False)
class ChangeTable(FrameResult):
    """Relative change / recovery per cell or group, with bootstrap CIs when requested.

    Attributes:
        baseline: the baseline quant label.
        by: the grouping (besides quant, and model when several).
        weighting: ``"language"`` or ``"item"`` (see the module docstring).
        measure: ``"rel_change"`` or ``"recovery"`` (the column the function was asked for; both are present).
        ci: the bootstrap settings, or None when the table has no CI columns.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "t", "lang": "en",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 1.0, 1.0, 0.0]})
        >>> recovery(df).to_frame()["recovery"].tolist()
        [50.0]
    """

    baseline: str = "fp32"
    by: tuple[str, ...] = ("task", "lang")
    weighting: Weighting = "language"
    measure: Literal["rel_change", "recovery"] = "rel_change"
    ci: Bootstrap | None = None

    def __str__(self) -> str:
        head = f"{self.measure} vs {self.baseline!r}, by {list(self.by)}, weighting per {self.weighting}"
        if self.ci is not None:
            head += f"; {self.ci.confidence:.0%} {self.ci.method} bootstrap CI ({self.ci.n_resamples} resamples)"
        cols = [c for c in self._frame.columns if c not in ("n_units", "n_langs", "weighting", "higher_is_better")]
        return head + "\n" + format_frame(self._frame[cols], digits=3, max_rows=200)


def _as_by(by: str | Sequence[str]) -> tuple[str, ...]:
    return (by,) if isinstance(by, str) else tuple(by)


def change_table(
    results: Any,
    baseline: str | None,
    by: str | Sequence[str],
    weighting: str,
    ci: Bootstrap | None,
    measure: Literal["rel_change", "recovery"] = "rel_change",
) -> ChangeTable:
    """The shared implementation of :func:`relative_change`, :func:`recovery` and :func:`paired_bootstrap`."""
    by = _as_by(by)
    weighting = check_weighting(weighting)
    paired = pair(results, baseline)
    baseline = paired.baseline
    group_of_cell, groups = group_cells(paired, by)
    check_group_metrics(paired, group_of_cell, weighting)
    est = point_estimates(paired, group_of_cell, len(groups), weighting)
    # a grouping key that is also an estimate column (by=("metric",)) is kept once, as the key
    frame = pd.concat([groups, est.drop(columns=[c for c in est.columns if c in groups.columns])], axis=1)
    if ci is not None:
        if len(groups) == paired.n_cells and np.array_equal(group_of_cell, np.arange(paired.n_cells)):
            res = bootstrap_cells(paired, ci)
        else:
            res = bootstrap_groups(paired, [(group_of_cell, len(groups))], weighting, ci)[0]
        frame["diff_lo"], frame["diff_hi"] = res.diff[:, 0], res.diff[:, 1]
        frame["rel_change_lo"], frame["rel_change_hi"] = res.rel[:, 0], res.rel[:, 1]
        frame["recovery_lo"], frame["recovery_hi"] = 100.0 + res.rel[:, 0], 100.0 + res.rel[:, 1]
    lead = [c for c in groups.columns if c not in ("n_cells", "n_langs")]
    order = [*lead, "n_cells", "n_langs", "n", "n_units", "weighting", "metric", "higher_is_better"]
    order += ["baseline", "quantized", "diff"]
    order += ["diff_lo", "diff_hi"] if ci is not None else []
    main = ["rel_change", "recovery"] if measure == "rel_change" else ["recovery", "rel_change"]
    for col in main:
        order += [col] + ([f"{col}_lo", f"{col}_hi"] if ci is not None else [])
    order += ["rel_drop"]
    order = list(dict.fromkeys(order))
    return ChangeTable(
        _frame=frame[order].reset_index(drop=True),
        baseline=baseline,
        by=by,
        weighting=weighting,
        measure=measure,
        ci=ci,
    )


def _ci_arg(ci: Bootstrap | bool | None) -> Bootstrap | None:
    if ci is True:
        return Bootstrap()
    if ci is None or ci is False:
        return None
    if not isinstance(ci, Bootstrap):
        from mlquant.errors import ConfigError

        raise ConfigError(f"ci must be None, True or a mlquant.stats.Bootstrap, got {type(ci).__name__}.")
    return ci


def relative_change(
    results: Any,
    baseline: str | None = None,
    by: str | Sequence[str] = ("task", "lang"),
    *,
    weighting: Weighting = "language",
    ci: Bootstrap | bool | None = None,
) -> ChangeTable:
    """Relative change ``100 * (quantized - baseline) / baseline`` of every quant, per cell or group.

    The formula of Marchisio et al. (2024). Each quantized cell is compared with its baseline cell on the items
    present in both (a warning names the cells whose item sets differ).

    Args:
        results: the tidy per-item frame, or an object with a ``.frame`` (:class:`mlquant.results.Results`).
        baseline: the quant label of the reference (``"fp32"``, ``"bf16"``, ...).
        by: grouping columns besides quant: ``task``, ``lang``, ``metric``, ``kind``, ``difficulty``, ``script``,
            ``latin`` (Latin vs non-Latin), ``resource_class``, ``family``. ``("task", "lang")`` = one row per cell.
        weighting: how cells are combined in a group: ``"language"`` (mean of the cells' relative changes) or
            ``"item"`` (pooled items). Stated in the output's ``weighting`` column.
        ci: None (no CI), True (95 % percentile bootstrap, 10,000 resamples, seed 0) or a :class:`Bootstrap`.

    Returns:
        A :class:`ChangeTable`; its frame has the keys, n, baseline, quantized, diff, rel_change, recovery,
        rel_drop (positive = worse, direction-aware) and, with ``ci``, ``*_lo`` / ``*_hi`` columns.

    Raises:
        ConfigError: the baseline label is absent (the message lists the labels present), or ``by`` or
            ``weighting`` is unknown.
        DataError: the frame lacks a column, has duplicate items in a cell, or non-numeric scores.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "t", "lang": "en",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 1.0, 1.0, 0.0]})
        >>> relative_change(df).to_frame()["rel_change"].tolist()
        [-50.0]

    References:
        Marchisio, K., et al. (2024). How Does Quantization Affect Multilingual LLMs? arXiv:2407.03211.
    """
    return change_table(results, baseline, by, weighting, _ci_arg(ci), "rel_change")


def recovery(
    results: Any,
    baseline: str | None = None,
    by: str | Sequence[str] = ("task", "lang"),
    *,
    weighting: Weighting = "language",
    ci: Bootstrap | bool | None = None,
) -> ChangeTable:
    """Recovery ``100 * quantized / baseline`` of every quant, per cell or group (Kurtic et al. 2024).

    Same arguments, pairing and output as :func:`relative_change` (``recovery = 100 + rel_change``); the
    recovery columns come first. For metrics where lower is better (bits per byte), a recovery above 100 is a
    degradation; ``rel_drop`` states the direction-aware change.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w8", "w8"], "task": "t", "lang": "en",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [0.5, 1.0, 0.5, 0.7]})
        >>> round(float(recovery(df).to_frame()["recovery"].iloc[0]), 2)
        80.0

    References:
        Kurtic, E., et al. (2024). "Give Me BF16 or Give Me Death"? Accuracy-Performance Trade-Offs in LLM
        Quantization. arXiv:2411.02355.
    """
    return change_table(results, baseline, by, weighting, _ci_arg(ci), "recovery")


def paired_bootstrap(
    results: Any,
    baseline: str | None = None,
    by: str | Sequence[str] = ("task", "lang"),
    *,
    seed: int = 0,
    n_resamples: int = 10_000,
    method: Literal["percentile", "bca"] = "percentile",
    confidence: float = 0.95,
    weighting: Weighting = "language",
) -> ChangeTable:
    """Paired bootstrap CIs of the difference and of the relative change, for every cell or group at once.

    Items are resampled with replacement within each cell, keeping each item's baseline and quantized scores
    together (paired). Items that share a ``group`` (a Belebele passage, a shared context) are resampled as one
    cluster (the cluster bootstrap). Cells with the same task and the same item ids (parallel data in several
    languages) draw the same items, so the CI of a group of languages reflects their shared items. Vectorized
    over all cells (one matrix product per cell size); the same data and ``seed`` give the same intervals.

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        by: grouping columns besides quant (see :func:`relative_change`).
        seed: seed of the resampling.
        n_resamples: bootstrap replicates.
        method: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated, jackknife acceleration).
        confidence: two-sided level of the intervals.
        weighting: ``"language"`` or ``"item"`` (see :func:`relative_change`).

    Returns:
        A :class:`ChangeTable` with ``diff_lo``/``diff_hi``, ``rel_change_lo``/``rel_change_hi`` and
        ``recovery_lo``/``recovery_hi`` columns.

    Example:
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> b = (rng.random(200) < 0.7).astype(float)
        >>> q = np.where(rng.random(200) < 0.1, 1 - b, b)
        >>> df = pd.DataFrame({"quant": ["fp32"] * 200 + ["w4"] * 200, "task": "t", "lang": "en",
        ...                    "item_id": [str(i) for i in range(200)] * 2, "score": np.r_[b, q]})
        >>> t = paired_bootstrap(df, seed=1, n_resamples=2000).to_frame()
        >>> bool(t.diff_lo.iloc[0] < t["diff"].iloc[0] < t.diff_hi.iloc[0])
        True

    References:
        Efron, B., & Tibshirani, R. J. (1993). An Introduction to the Bootstrap, ch. 13-14 (percentile, BCa).
        Koehn, P. (2004). Statistical Significance Tests for Machine Translation Evaluation (paired bootstrap).
        Field, C. A., & Welsh, A. H. (2007). Bootstrapping clustered data. JRSS B 69(3).
    """
    spec = Bootstrap(n_resamples=n_resamples, method=method, confidence=confidence, seed=seed)
    return change_table(results, baseline, by, weighting, spec, "rel_change")
