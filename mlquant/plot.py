"""Figures a reviewer accepts: per-language heatmaps, forest plots, groupings, flips, distances, bits per byte.

Every function takes what the :mod:`mlquant.stats` functions take (a :class:`mlquant.results.Results`, a tidy
per-item DataFrame, or a :class:`mlquant.stats.Paired`), draws on ``ax=`` (or on a new
:class:`matplotlib.figure.Figure` when None) and returns the Axes. Nothing here computes a statistic of its own:
relative changes and their paired bootstrap CIs come from :func:`mlquant.stats.relative_change`, p-values from
:func:`mlquant.stats.permutation_test` (the exact McNemar test for unclustered 0/1 scores, a sign-flip
permutation test otherwise -- the test :func:`mlquant.stats.summary` uses) adjusted by
:func:`mlquant.stats.adjust` (Holm), flips from :func:`mlquant.stats.flips`, groupings and the Latin / non-Latin
contrast from :func:`mlquant.stats.summary`. Only matplotlib's object API is used: no pyplot state, no GUI
backend, never ``show()``. Needs the ``plot`` extra (``pip install 'mlquant[plot]'``).

=============================  =================================================================================
:func:`heatmap`                languages (x task) x quant: relative change, ``*`` where Holm p < alpha
:func:`forest`                 one quant: per-language relative change with CIs, grouped by script / resource class
:func:`grouping`               group means of the relative change (Latin vs non-Latin, script, ...) with CIs
:func:`flips`                  correct->wrong vs wrong->correct answers per language and quant
:func:`calibration_matrix`     calibration language x evaluation language (the calibration-matrix analysis)
:func:`distance`               per-language distances to the baseline (KL, ...) with CIs
:func:`bits_per_byte`          per-language change of FLORES bits per byte with paired CIs
:func:`report_figures`         the figures of the HTML report, each with a caption
:func:`to_svg`                 a figure as inline SVG text (no XML prolog; text kept as text)
=============================  =================================================================================

Example:
    >>> import pandas as pd
    >>> import mlquant as mq
    >>> df = pd.DataFrame({"quant": ["fp32"] * 40 + ["w4"] * 40, "task": "xcopa", "lang": ["en", "ja"] * 40,
    ...                    "item_id": [str(i // 2) for i in range(40)] * 2,
    ...                    "score": [1.0] * 40 + [1.0, 0.0] * 20})
    >>> ax = mq.plot.heatmap(df)
    >>> ax.images[0].get_array().tolist()  # rows en, ja; one column (w4): relative change in %
    [[0.0], [-100.0]]
    >>> to_svg(ax.figure).startswith("<svg")
    True
"""

from __future__ import annotations

import io
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Literal

try:
    import matplotlib as mpl
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - the plot extra is installed wherever the tests run
    from mlquant.errors import BackendUnavailableError

    raise BackendUnavailableError(f"mlquant.plot needs matplotlib: pip install 'mlquant[plot]' ({exc}).") from None
import numpy as np

from mlquant import stats
from mlquant._plot_stats import binary_tasks, flips, forest, grouping, heatmap, lower_is_better_metrics
from mlquant._plot_tables import CALIBRATION_COLUMNS, DISTANCE_COLUMNS, bits_per_byte, calibration_matrix, distance
from mlquant._plotting import DEFAULT_CI, paired_input, quants_of, root_figure
from mlquant.errors import ConfigError
from mlquant.stats import Bootstrap, Paired

__all__ = [
    "CALIBRATION_COLUMNS",
    "DISTANCE_COLUMNS",
    "ReportFigure",
    "bits_per_byte",
    "calibration_matrix",
    "distance",
    "flips",
    "forest",
    "grouping",
    "heatmap",
    "report_figures",
    "to_svg",
]


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the HTML report, with what it is and how to read it.

    Attributes:
        key: a stable identifier (``"heatmap"``, ``"forest"``, ``"grouping"``, ``"flips"``, ``"bits_per_byte"``).
        title: a heading for the figure.
        caption: one sentence saying how to read it.
        figure: the matplotlib Figure (render it with :func:`to_svg`).
    """

    key: str
    title: str
    caption: str
    figure: Figure


def _most_degraded(paired: Paired) -> str:
    """The quant with the largest mean direction-aware drop over its cells (mq.stats.relative_change's rel_drop)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="a group mixes metrics where higher is better")
        per_quant = stats.relative_change(paired, by=()).to_frame()
    drop = per_quant["rel_drop"].to_numpy(float)
    if not np.isfinite(drop).any():
        return quants_of(paired)[0]
    return str(per_quant["quant"].iloc[int(np.nanargmax(drop))])


def report_figures(results: Any, *, baseline: str | None = None, ci: Bootstrap = DEFAULT_CI) -> list[ReportFigure]:
    """The figures an HTML report of this run shows, each with a title and a one-sentence caption.

    In order: the heatmap (every cell, ``rel_drop`` when some metric has lower-is-better, else ``rel_change``), the
    forest plot of the most degraded quant (largest mean ``rel_drop``; its higher-is-better tasks, or all when
    there are none), the grouping (Latin vs non-Latin when both are present, else script, else resource class,
    else difficulty; left out when no grouping has two groups), the flips (when a task has binary scores) and
    bits per byte (when a cell has that metric). The statistics are computed once per figure with ``ci``.

    Args:
        results: a ``Results``, a tidy per-item DataFrame or a ``Paired``.
        baseline: the reference quant label (default: fp32, else bf16, else fp16).
        ci: the bootstrap of every interval (and the seed of Monte Carlo permutation tests).

    Returns:
        A list of :class:`ReportFigure`.

    Raises:
        ConfigError: empty results, no baseline, several models.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 60 + ["w4"] * 60, "task": "t", "lang": ["en", "ja"] * 60,
        ...                    "item_id": [str(i // 2) for i in range(60)] * 2,
        ...                    "score": [1.0] * 60 + [1.0, 0.0] * 30})
        >>> [f.key for f in report_figures(df, ci=Bootstrap(n_resamples=200))]
        ['heatmap', 'forest', 'grouping', 'flips']
    """
    paired = paired_input(results, baseline)
    base = paired.baseline
    cells = paired.cells
    lower = lower_is_better_metrics(cells)
    out: list[ReportFigure] = []
    metric: Literal["rel_drop", "rel_change"] = "rel_drop" if lower else "rel_change"
    word = "relative drop (positive = worse)" if lower else "relative change"
    out.append(
        ReportFigure(
            "heatmap",
            f"{word.capitalize()} per task and language vs {base}",
            f"Each cell is a quant's {word} vs {base} in % on the same items (red = worse); * marks cells whose paired "
            "test stays below 0.05 after Holm's adjustment over all cells.",
            root_figure(heatmap(paired, metric=metric)),
        )
    )
    quant = _most_degraded(paired)
    own = cells[cells["quant"].astype(str) == quant]
    higher = sorted(set(own.loc[own["higher_is_better"].astype(bool), "task"].astype(str)))
    tasks = higher or sorted(set(own["task"].astype(str)))
    out.append(
        ReportFigure(
            "forest",
            f"{quant}: relative change per language",
            f"Each line is the {ci.confidence:.0%} paired bootstrap interval of {quant}'s relative change in one language "
            f"(tasks {', '.join(tasks)} pooled), languages grouped by script and resource class; red dots are "
            "significant after Holm's adjustment, and intervals left of 0 are losses.",
            root_figure(forest(paired, quant=quant, task=tasks, ci=ci)),
        )
    )
    grouped = _report_grouping(paired, ci)
    if grouped is not None:
        out.append(grouped)
    if binary_tasks(paired):
        out.append(
            ReportFigure(
                "flips",
                f"Answers that changed vs {base}",
                "Bars above 0 count items that were wrong with the baseline and right after quantization, bars below 0 "
                "the reverse; equal accuracy can hide many changed answers.",
                root_figure(flips(paired)),
            )
        )
    if (cells["metric"].astype(str) == "bits_per_byte").any():
        out.append(
            ReportFigure(
                "bits_per_byte",
                f"FLORES bits per byte vs {base}",
                f"Each bar is the mean change in bits per byte on the same sentences (higher is worse) with its "
                f"{ci.confidence:.0%} paired bootstrap interval.",
                root_figure(bits_per_byte(paired, ci=ci)),
            )
        )
    return out


def _report_grouping(paired: Paired, ci: Bootstrap) -> ReportFigure | None:
    grouping_ci = Bootstrap(n_resamples=ci.n_resamples, seed=ci.seed)
    summ = stats.summary(paired, seed=grouping_ci.seed, n_resamples=grouping_ci.n_resamples)
    groups = summ.groups()
    if not len(groups):
        return None
    for by in ("latin", "script", "resource_class", "difficulty"):
        sub = groups[groups["grouping"] == by]
        if len(sub) and sub.groupby("quant")["value"].nunique().max() > 1:
            what = "Latin- vs non-Latin-script languages" if by == "latin" else by.replace("_", " ")
            return ReportFigure(
                "grouping",
                f"Relative change by {what}",
                f"Each marker is a quant's mean relative change over the languages of a group ({what}), each task x "
                "language cell weighing the same, with its 95 % paired bootstrap interval; compare groups within a "
                "colour.",
                root_figure(grouping(summ, by=by)),
            )
    return None


def to_svg(figure: Figure, *, salt: str | None = None) -> str:
    """The figure as an inline SVG element: no XML prolog or doctype, text kept as ``<text>`` (searchable).

    Rendered with ``svg.fonttype = "none"``: labels stay text in the DOM (searchable, selectable, small), drawn in
    the page's fonts (matplotlib's font family is named, DejaVu Sans by default) rather than as glyph paths. The
    date metadata is left out. Element ids (clip paths) are derived from ``salt``: a random one by default, so that
    several figures can sit in one HTML page without clashing ids; pass a fixed string for byte-identical output.

    Args:
        figure: a matplotlib Figure (e.g. ``ax.figure`` or :attr:`ReportFigure.figure`).
        salt: the seed of the element ids (None: random).

    Returns:
        The text from ``<svg`` to ``</svg>``.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 1))
        >>> _ = fig.add_subplot().set_title("bits per byte")
        >>> svg = to_svg(fig, salt="x")
        >>> svg.startswith("<svg"), "bits per byte" in svg, svg == to_svg(fig, salt="x")
        (True, True, True)
    """
    if not isinstance(figure, Figure):
        raise ConfigError(f"to_svg needs a matplotlib Figure, got {type(figure).__name__}.")
    buf = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt if salt is not None else uuid.uuid4().hex}):
        figure.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]
