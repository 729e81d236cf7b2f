"""Figures of tables and of one metric: calibration matrices, distances to the baseline, bits per byte.

Part of :mod:`mlquant.plot` (which re-exports these functions; use them as ``mq.plot.distance`` etc.).
:func:`calibration_matrix` and :func:`distance` draw tables that other analyses computed (nothing is
recomputed); :func:`bits_per_byte` draws :func:`mlquant.stats.relative_change`'s paired differences.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"quant": "w4", "lang": ["en"], "metric": "kl", "value": [0.1], "ci_low": [0.08],
    ...                   "ci_high": [0.12]})
    >>> distance(t).get_ylabel()
    'KL(P_base || P_quant), nats per token'
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes

from mlquant import stats
from mlquant._plotting import (
    DEFAULT_CI,
    as_table,
    draw_matrix,
    interval_bars,
    lang_rank,
    language_info,
    new_axes,
    order_languages,
    paired_input,
    pick_one,
    quants_of,
    row_order,
)
from mlquant.errors import ConfigError
from mlquant.stats import Bootstrap

__all__ = ["CALIBRATION_COLUMNS", "DISTANCE_COLUMNS", "bits_per_byte", "calibration_matrix", "distance"]

#: Columns of a calibration-matrix table (``mlquant.calibration_matrix``'s result ``.to_frame()``).
CALIBRATION_COLUMNS: tuple[str, ...] = (
    "method",
    "calibration",
    "lang",
    "task",
    "delta",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "n",
)
#: Columns of a distance table (``mlquant.distance``'s result ``.to_frame()``), long format.
DISTANCE_COLUMNS: tuple[str, ...] = ("quant", "lang", "metric", "value", "ci_low", "ci_high")
_DISTANCE_LABELS = {
    "kl": "KL(P_base || P_quant), nats per token",
    "kl_reverse": "KL(P_quant || P_base), nats per token",
    "same_top_p": "share of tokens with the same top-1 token",
    "dp_mean": "mean p_quant - p_base of the true token",
    "dp_rms": "RMS of p_quant - p_base of the true token",
    "ln_ppl_ratio": "ln(PPL quantized / PPL baseline)",
}


def calibration_matrix(
    matrix: Any,
    *,
    method: str | None = None,
    task: str | None = None,
    alpha: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Calibration language (rows) x evaluation language (columns): the paired score change, ``*`` where significant.

    Draws the ``delta`` of a calibration-matrix table (mean paired score difference of a method calibrated on the
    row's language vs the same method calibrated on the reference language, on the column's language), diverging
    around 0, annotated, with ``*`` where the table's ``p_holm`` is below ``alpha``. Nothing is recomputed.

    Args:
        matrix: the calibration-matrix result (anything with ``.to_frame()``) or a DataFrame with
            :data:`CALIBRATION_COLUMNS`; its ``reference`` attribute, when present, names the reference language.
        method: the method to draw when the table holds several.
        task: the task to draw when the table holds several.
        alpha: level of the ``*`` marks (default: the result's ``alpha`` attribute, else 0.05).
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes: ``ax.images[0]`` holds the matrix (rows and columns in order of appearance).

    Raises:
        ConfigError: missing columns, an empty table, several methods or tasks and none chosen, a (calibration,
            language) pair given twice.

    Example:
        >>> import pandas as pd
        >>> m = pd.DataFrame({"method": "gptq-w4g128", "calibration": ["en", "en", "ja", "ja"], "task": "xcopa",
        ...                   "lang": ["en", "ja"] * 2, "delta": [0.0, 0.0, -0.01, 0.04], "ci_low": 0.0,
        ...                   "ci_high": 0.0, "p": [1, 1, 0.5, 0.001], "p_holm": [1, 1, 0.5, 0.003], "n": 100})
        >>> ax = calibration_matrix(m)
        >>> ax.images[0].get_array().tolist(), [a.xy for a in ax.texts if a.get_text() == "*"]
        ([[0.0, 0.0], [-0.01, 0.04]], [(1, 1)])
    """
    alpha = float(getattr(matrix, "alpha", 0.05)) if alpha is None else alpha
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
    frame = as_table(matrix, CALIBRATION_COLUMNS, "calibration matrix")
    frame = pick_one(pick_one(frame, "method", method, "calibration matrix"), "task", task, "calibration matrix")
    frame = frame.assign(calibration=frame["calibration"].astype(str), lang=frame["lang"].astype(str))
    dup = frame.duplicated(["calibration", "lang"])
    if dup.any():
        row = frame[dup].iloc[0]
        raise ConfigError(f"the calibration matrix has calibration={row.calibration!r}, lang={row.lang!r} twice.")
    rows = list(dict.fromkeys(frame["calibration"]))
    cols = list(dict.fromkeys(frame["lang"]))
    values = np.full((len(rows), len(cols)), np.nan)
    stars = np.zeros(values.shape, dtype=bool)
    for cal, lang, delta, p in zip(frame["calibration"], frame["lang"], frame["delta"].tolist(), frame["p_holm"].tolist()):
        i, j = rows.index(cal), cols.index(lang)
        values[i, j] = float(delta)
        stars[i, j] = bool(float(p) < alpha)
    reference = getattr(matrix, "reference", None) or "the reference language"
    label = f"delta mean score vs calibration on {reference}\n(paired; positive = higher score)"
    ax = new_axes(ax, (0.9 * len(cols) + 3.2, 0.45 * len(rows) + 1.8))
    draw_matrix(ax, values, (rows, cols), stars, {"cmap": "RdBu", "label": label, "fmt": "{:+.3f}"})
    ax.set_ylabel("calibration language")
    ax.set_xlabel("evaluation language")
    which = " / ".join(str(frame[c].iloc[0]) for c in ("method", "task"))
    ax.set_title(f"{which}; * = Holm-adjusted p < {alpha:g}", fontsize=9)
    return ax


def distance(table: Any, *, metric: str = "kl", ax: Axes | None = None) -> Axes:
    """Per-language distance of each quant's outputs to the baseline's (KL, ...), with the table's CIs.

    Args:
        table: the distance result (anything with ``.to_frame()``) or a DataFrame with :data:`DISTANCE_COLUMNS`
            (long format: one row per quant, language and metric).
        metric: the metric to draw (``kl``, ``kl_reverse``, ``same_top_p``, ``dp_rms``, ``ln_ppl_ratio``, ...:
            whatever the table holds).
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes: per quant a BarContainer labelled with the quant (heights = values) and a LineCollection
        labelled ``"_ci <quant>"`` (segments from ci_low to ci_high); languages by script, then resource class.

    Raises:
        ConfigError: missing columns, an empty table, a metric the table does not hold (the message lists them).

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"quant": "w4", "lang": ["ja", "en"], "metric": "kl", "value": [0.2, 0.1],
        ...                   "ci_low": [0.15, 0.08], "ci_high": [0.25, 0.12]})
        >>> ax = distance(t)
        >>> [float(b.get_height()) for b in ax.containers[0]], [t.get_text() for t in ax.get_xticklabels()]
        ([0.1, 0.2], ['en', 'ja'])
    """
    frame = as_table(table, DISTANCE_COLUMNS, "distance table")
    metrics = [str(m) for m in dict.fromkeys(frame["metric"].astype(str))]
    if not isinstance(metric, str) or metric not in metrics:
        raise ConfigError(f"the distance table has no metric {metric!r}; it has {metrics}.")
    frame = frame[frame["metric"].astype(str) == metric].assign(lang=lambda f: f["lang"].astype(str))
    info = language_info(frame["lang"])
    langs = order_languages(frame["lang"], info, ("script", "resource_class"))
    series = []
    for q in dict.fromkeys(frame["quant"].astype(str)):
        sub = frame[frame["quant"].astype(str) == q]
        if sub["lang"].duplicated().any():
            raise ConfigError(f"the distance table has quant {q!r}, metric {metric!r} twice for one language.")
        sub = sub.set_index("lang").reindex(langs)
        series.append((q, sub["value"].to_numpy(float), sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float)))
    ax = new_axes(ax, (max(4.5, 0.45 * len(langs) * len(series) + 2.0), 3.8))
    interval_bars(ax, langs, series)
    ax.set_ylabel(_DISTANCE_LABELS.get(metric, metric))
    ax.set_title(f"{metric} per language (bars: CI of the table)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return ax


def bits_per_byte(results: Any, *, baseline: str | None = None, ci: Bootstrap = DEFAULT_CI, ax: Axes | None = None) -> Axes:
    """Per-language change of bits per byte (FLORES, task ``flores_ppl``) with paired bootstrap CIs, per quant.

    The bars are :func:`mlquant.stats.relative_change`'s ``diff`` (quantized minus baseline bits per byte, on the
    same sentences) of every cell whose metric is ``bits_per_byte``; the vertical lines its CI. Higher is worse.

    Args:
        results: a ``Results``, a tidy per-item DataFrame or a ``Paired``.
        baseline: the reference quant label (default: fp32, else bf16, else fp16).
        ci: the bootstrap of the intervals.
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes: per quant a BarContainer labelled with the quant and a LineCollection labelled ``"_ci <quant>"``.

    Raises:
        ConfigError: no cell has the metric ``bits_per_byte`` (the message lists the tasks and metrics present).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "flores_ppl", "lang": "en",
        ...                    "metric": "bits_per_byte", "higher_is_better": False,
        ...                    "item_id": list("abcd") * 2, "score": [1.0, 1.2, 0.8, 1.0, 1.1, 1.3, 0.9, 1.1]})
        >>> ax = bits_per_byte(df, ci=Bootstrap(n_resamples=200))
        >>> [round(float(b.get_height()), 3) for b in ax.containers[0]]
        [0.1]
    """
    if not isinstance(ci, Bootstrap):
        raise ConfigError(f"ci must be a mlquant.stats.Bootstrap, got {type(ci).__name__}.")
    paired = paired_input(results, baseline)
    cells = paired.cells
    if not (cells["metric"].astype(str) == "bits_per_byte").any():
        raise ConfigError(
            "no cell has the metric 'bits_per_byte' (task flores_ppl); the results have tasks "
            f"{sorted(set(cells['task'].astype(str)))} with metrics {sorted(set(cells['metric'].astype(str)))}."
        )
    sub = paired.select(metric="bits_per_byte")
    by = ("lang",) if sub.cells["task"].nunique() == 1 else ("task", "lang")
    table = stats.relative_change(sub, by=by, ci=ci).to_frame()
    cats = row_order(table, by, lang_rank(sub, ("script", "resource_class")))
    labels = [" / ".join(r) for r in cats.itertuples(index=False)]
    table = table.assign(_key=[" / ".join(r) for r in table[list(by)].astype(str).itertuples(index=False)])
    series = []
    for q in quants_of(sub):
        t = table[table["quant"].astype(str) == q].set_index("_key").reindex(labels)
        series.append((q, t["diff"].to_numpy(float), t["diff_lo"].to_numpy(float), t["diff_hi"].to_numpy(float)))
    ax = new_axes(ax, (max(4.5, 0.45 * len(labels) * len(series) + 2.0), 3.8))
    interval_bars(ax, labels, series)
    ax.set_ylabel(f"bits per byte, quantized - {paired.baseline}\n(higher is worse)")
    ax.set_title(f"FLORES bits per byte vs {paired.baseline}; {ci.confidence:.0%} paired bootstrap CI", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return ax
