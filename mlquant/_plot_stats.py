"""Figures of per-item results against the baseline: heatmap, forest plot, groupings and flips.

Part of :mod:`mlquant.plot`, which re-exports the public functions (use them as ``mq.plot.heatmap`` etc.). Every
number comes from :mod:`mlquant.stats`: relative changes and CIs from :func:`mlquant.stats.relative_change`,
p-values from :func:`mlquant.stats.permutation_test` (exact McNemar for unclustered 0/1 scores, a sign-flip
permutation test otherwise: the test of :func:`mlquant.stats.summary`) adjusted by Holm
(:func:`mlquant.stats.adjust`), groupings from :func:`mlquant.stats.summary`, flips from :func:`mlquant.stats.flips`.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "t", "lang": "en",
    ...                    "item_id": list("abcd") * 2, "score": [1.0, 1, 0, 0, 1, 1, 0.5, 0]})
    >>> binary_tasks(stats.pair(df))
    []
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from mlquant import stats
from mlquant._plotting import (
    DEFAULT_CI,
    as_by,
    check_choice,
    check_quant,
    check_tasks,
    draw_matrix,
    lang_rank,
    language_info,
    language_label,
    new_axes,
    order_languages,
    paired_input,
    quants_of,
    row_order,
)
from mlquant.errors import ConfigError, MlquantError
from mlquant.stats import Bootstrap, Paired

__all__ = ["GROUPINGS", "binary_tasks", "flips", "forest", "grouping", "heatmap", "lower_is_better_metrics"]

GROUPINGS: tuple[str, ...] = ("latin", "script", "resource_class", "family", "difficulty")
_MEASURES = {
    "rel_change": ("relative change, % = 100 (q - b) / b", "RdBu"),
    "rel_drop": ("relative drop, % (positive = worse, whatever the metric's direction)", "RdBu_r"),
    "diff": ("difference q - b, in score units", "RdBu"),
}
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h")


def _same_keys(a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str]) -> None:
    if not a[list(keys)].astype(str).reset_index(drop=True).equals(b[list(keys)].astype(str).reset_index(drop=True)):
        raise MlquantError("internal error: mlquant.stats returned cells in different orders")  # pragma: no cover


def _significance(paired: Paired, by: Sequence[str], ci: Bootstrap = DEFAULT_CI) -> pd.DataFrame:
    """Holm-adjusted p-values (column ``p_adjusted``) of the paired test per group, over all groups drawn."""
    tests = stats.permutation_test(paired, by=tuple(by), n_resamples=ci.n_resamples, seed=ci.seed)
    return stats.adjust(tests, "holm").to_frame()


def lower_is_better_metrics(cells: pd.DataFrame) -> list[str]:
    return sorted(set(cells.loc[~cells["higher_is_better"].astype(bool), "metric"].astype(str)))


def heatmap(
    results: Any,
    *,
    baseline: str | None = None,
    metric: Literal["rel_change", "rel_drop", "diff"] = "rel_change",
    by: str | Sequence[str] = ("task", "lang"),
    alpha: float = 0.05,
    ax: Axes | None = None,
) -> Axes:
    """Rows = (task,) language, columns = quant: the change vs the baseline, ``*`` where Holm p < ``alpha``.

    The colours diverge around 0 (red = lower score for ``rel_change`` / ``diff``; red = worse for ``rel_drop``);
    each cell shows its value; grey cells have none (a baseline score of 0). A ``*`` marks the cells whose paired
    test (:func:`mlquant.stats.permutation_test`: exact McNemar for unclustered 0/1 scores, sign-flip permutation
    otherwise) is below ``alpha`` after Holm's adjustment over all cells drawn -- with the default ``by`` the
    ``p_holm`` of :func:`mlquant.stats.summary`. For metrics where lower is better (bits per byte) a positive
    change is a loss; the colour bar's label says so, and ``metric="rel_drop"`` makes red mean worse for all.

    Args:
        results: a ``Results``, a tidy per-item DataFrame or a ``Paired``.
        baseline: the reference quant label (default: fp32, else bf16, else fp16).
        metric: ``"rel_change"`` (Marchisio et al. 2024), ``"rel_drop"`` (direction-aware) or ``"diff"``.
        by: the row keys: ``("task", "lang")``, ``"lang"`` (cells averaged over tasks), or other grouping
            columns of :func:`mlquant.stats.relative_change` (``"script"``, ``"difficulty"``, ...).
        alpha: level of the ``*`` marks.
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes: ``ax.images[0]`` holds the matrix; each ``*`` is an annotation whose ``xy`` is its cell.

    Raises:
        ConfigError: empty results, no baseline, an unknown ``metric`` or ``by``, ``alpha`` outside (0, 1).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 60 + ["w4"] * 60, "task": "t", "lang": ["en", "ja"] * 60,
        ...                    "item_id": [str(i // 2) for i in range(60)] * 2,
        ...                    "score": [1.0] * 60 + [1.0, 0.0] * 30})
        >>> ax = heatmap(df, metric="rel_drop")
        >>> [t.get_text() for t in ax.texts], [a.xy for a in ax.texts if a.get_text() == "*"]
        (['+0.0', '+100.0', '*'], [(0, 1)])
    """
    label, cmap = _MEASURES[check_choice("metric", metric, tuple(_MEASURES))]
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
    by_cols = as_by(by)
    paired = paired_input(results, baseline)
    change = stats.relative_change(paired, by=by_cols).to_frame()
    tests = _significance(paired, by_cols)
    keys = ["quant", *by_cols]
    _same_keys(change, tests, keys)
    table = change[keys].astype(str).assign(value=change[metric].to_numpy(float), p=tests["p_adjusted"].to_numpy())
    ranks = lang_rank(paired, ("script", "resource_class"))
    rows = row_order(table, by_cols, ranks)
    quants = quants_of(paired)
    row_key = [tuple(r) for r in rows.itertuples(index=False)]
    values = np.full((len(rows), len(quants)), np.nan)
    stars = np.zeros(values.shape, dtype=bool)
    position = {k: i for i, k in enumerate(row_key)}
    key_cols = [table[c].tolist() for c in by_cols]
    for n, (q, value, p) in enumerate(zip(table["quant"].tolist(), table["value"].tolist(), table["p"].tolist())):
        i, j = position[tuple(col[n] for col in key_cols)], quants.index(q)
        values[i, j] = value
        stars[i, j] = bool(p < alpha)
    lower = lower_is_better_metrics(paired.cells)
    if lower and metric != "rel_drop":
        label += f"\nfor {', '.join(lower)} (lower is better) a positive change is worse"
    ax = new_axes(ax, (1.1 * len(quants) + 3.2, 0.32 * len(rows) + 1.8))
    draw_matrix(ax, values, ([" / ".join(k) for k in row_key], quants), stars, {"cmap": cmap, "label": label})
    ax.set_title(f"vs {paired.baseline}; * = Holm-adjusted paired test p < {alpha}", fontsize=9)
    return ax


def forest(
    results: Any,
    *,
    quant: str,
    baseline: str | None = None,
    task: str | Sequence[str] | None = None,
    order: Sequence[str] = ("script", "resource_class"),
    ci: Bootstrap = DEFAULT_CI,
    ax: Axes | None = None,
) -> Axes:
    """One quant's relative change per language, with paired bootstrap CIs, grouped by script and resource class.

    A horizontal line per language spans its CI (:func:`mlquant.stats.relative_change` with ``ci``); the dot is the
    estimate; the vertical line is 0. Languages are sorted by ``order`` (script: Latin first; resource class: high
    first), dotted lines separate the groups of the first key, and each label shows both. Red, filled: the paired
    test (exact McNemar / sign-flip permutation) has a Holm-adjusted p below ``1 - ci.confidence`` over the
    languages drawn; grey, hollow: not significant. Several tasks are pooled per language (each task's cell
    weighs the same), which needs them to share a metric direction.

    Args:
        results: a ``Results``, a tidy per-item DataFrame or a ``Paired``.
        quant: the quant label to draw.
        baseline: the reference quant label (default: fp32, else bf16, else fp16).
        task: a task label, several, or None for all tasks.
        order: language keys, from ``"script"``, ``"resource_class"``, ``"latin"`` (``()``: by code).
        ci: the bootstrap (resamples, method, confidence, seed); also sets the level and the permutation seed.
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes. The CIs are the LineCollection labelled ``"_ci"`` (one segment per language, top to bottom),
        the estimates the PathCollection labelled ``"_estimate"``.

    Raises:
        ConfigError: unknown quant or task, no baseline, empty results, tasks of opposite metric directions.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 60 + ["w4"] * 60, "task": "t", "lang": ["ja", "en"] * 60,
        ...                    "item_id": [str(i // 2) for i in range(60)] * 2,
        ...                    "score": [1.0] * 60 + [0.0, 1.0] * 30})
        >>> ax = forest(df, quant="w4", ci=Bootstrap(n_resamples=200))
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['en (Latn, class 5)', 'ja (Jpan, class 5)']
    """
    if not isinstance(ci, Bootstrap):
        raise ConfigError(f"ci must be a mlquant.stats.Bootstrap, got {type(ci).__name__}.")
    paired = paired_input(results, baseline)
    quant = check_quant(paired, quant)
    tasks = check_tasks(paired, task)
    sub = paired.select(quant=quant, task=tasks)
    lower = sorted(set(sub.cells.loc[~sub.cells["higher_is_better"].astype(bool), "task"].astype(str)))
    if lower and len(lower) < sub.cells["task"].nunique():
        raise ConfigError(
            f"forest pools tasks {tasks}, but {lower} have metrics where lower is better and the others higher; "
            "a pooled relative change would mix directions. Pass task= tasks of one direction."
        )
    change = stats.relative_change(sub, by="lang", ci=ci).to_frame()
    tests = _significance(sub, ("lang",), ci)
    _same_keys(change, tests, ["lang"])
    info = language_info(change["lang"].astype(str), sub.cells)
    langs = order_languages(change["lang"].astype(str), info, order)
    at = [change["lang"].astype(str).tolist().index(lang) for lang in langs]
    rel = change["rel_change"].to_numpy(float)[at]
    lo, hi = change["rel_change_lo"].to_numpy(float)[at], change["rel_change_hi"].to_numpy(float)[at]
    sig = tests["p_adjusted"].to_numpy(float)[at] < 1 - ci.confidence
    y = np.arange(len(langs), dtype=float)
    colours = ["C3" if s else "0.45" for s in sig]
    ax = new_axes(ax, (6.4, 0.3 * len(langs) + 1.6))
    ax.hlines(y, lo, hi, colors=colours, linewidth=1.8, label="_ci")
    ax.scatter(
        rel,
        y,
        s=30,
        zorder=3,
        facecolors=[c if s else "white" for c, s in zip(colours, sig, strict=True)],
        edgecolors=colours,
        label="_estimate",
    )
    ax.axvline(0.0, color="0.2", linewidth=0.8)
    for i in range(1, len(langs)):
        if order and _group(info[langs[i]], order[0]) != _group(info[langs[i - 1]], order[0]):
            ax.axhline(i - 0.5, color="0.8", linewidth=0.8, linestyle=":")
    ax.set_yticks(y, labels=[language_label(lang, info[lang]) for lang in langs])
    ax.set_ylim(len(langs) - 0.5, -0.5)
    xlabel = f"relative change, % (100 (q - b) / b), {ci.confidence:.0%} paired bootstrap CI"
    ax.set_xlabel(xlabel + ("\nlower is better here: a positive change is worse" if lower else ""))
    ax.set_title(f"{quant} vs {paired.baseline} ({', '.join(tasks)})", fontsize=9)
    level = f"Holm p < {1 - ci.confidence:.2g}"
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="none", color="C3", label=level),
            Line2D([], [], marker="o", ls="none", color="0.45", markerfacecolor="white", label="not significant"),
        ],
        fontsize=7,
        loc="best",
    )
    return ax


def _group(info: tuple[Any, Any], key: str) -> Any:
    script, rc = info
    return {"script": script, "latin": script == "Latn", "resource_class": rc}.get(key)


def grouping(
    results: Any,
    *,
    baseline: str | None = None,
    by: Literal["latin", "script", "resource_class", "family", "difficulty"] = "latin",
    ci: Bootstrap = DEFAULT_CI,
    ax: Axes | None = None,
) -> Axes:
    """Mean relative change per group of languages (or difficulty) with its CI, one marker per quant.

    The numbers are :func:`mlquant.stats.summary`'s groupings (``.groups()``): the mean of the cells' relative
    changes (each task x language cell weighs the same) with a 95 % percentile bootstrap CI over items, languages
    held fixed. With ``by="latin"`` the non-Latin minus Latin contrast and its CI (``.contrasts()``) are written
    as the x axis label. Studies mixing metric directions get separate groups per direction (as in the summary).

    Args:
        results: a ``Results``, a tidy per-item DataFrame, a ``Paired``, or a :class:`mlquant.stats.Summary`
            already computed (then ``baseline`` and ``ci`` are not used).
        baseline: the reference quant label (default: fp32, else bf16, else fp16).
        by: ``"latin"`` (Latin vs non-Latin script), ``"script"``, ``"resource_class"``, ``"family"`` or
            ``"difficulty"``.
        ci: resamples and seed of the summary (its intervals are 95 % percentile ones).
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes: per quant a Line2D labelled with the quant (the means) and a LineCollection labelled
        ``"_ci <quant>"`` (the CIs), in the order of the x tick labels.

    Raises:
        ConfigError: an unknown ``by``, a grouping the results cannot form (one language, no difficulty tags), a
            ``ci`` that is not 95 % percentile.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 60 + ["w4"] * 60, "task": "t", "lang": ["en", "ja"] * 60,
        ...                    "item_id": [str(i // 2) for i in range(60)] * 2,
        ...                    "score": [1.0] * 60 + [1.0, 0.0] * 30})
        >>> ax = grouping(df, ci=Bootstrap(n_resamples=200))
        >>> [t.get_text() for t in ax.get_xticklabels()], ax.get_lines()[0].get_ydata().tolist()
        (['Latin\\n1 lang.', 'non-Latin\\n1 lang.'], [0.0, -100.0])
    """
    check_choice("by", by, GROUPINGS)
    if isinstance(results, stats.Summary):
        summ = results
    else:
        if not isinstance(ci, Bootstrap) or ci.method != "percentile" or ci.confidence != 0.95:
            raise ConfigError(
                f"grouping draws mq.stats.summary's groupings, whose CIs are 95 % percentile bootstrap intervals; "
                f"pass ci=Bootstrap(n_resamples=..., seed=...) with those defaults, got {ci!r}."
            )
        summ = stats.summary(paired_input(results, baseline), seed=ci.seed, n_resamples=ci.n_resamples)
    groups = summ.groups()
    present = sorted(set(groups["grouping"])) if len(groups) else []
    frame = groups[groups["grouping"] == by] if len(groups) else groups
    if len(frame) == 0:
        notes = " ".join(summ.notes)
        raise ConfigError(f"these results have no grouping by {by!r} (groupings: {present}). {notes}".strip())
    frame = frame.assign(category=frame["value"].astype(str))
    if "higher_is_better" in frame.columns:
        lower = ~frame["higher_is_better"].astype(str).isin(["True", "true", "1"])
        frame.loc[lower, "category"] = frame.loc[lower, "category"] + " (lower is better)"
    rank = {"resource_class": "resource_class", "difficulty": "difficulty", "script": "script"}.get(by, "value")
    order = row_order(frame.assign(**{rank: frame["value"].astype(str)}), [rank, "category"], {})
    categories = order["category"].tolist()
    quants = [str(q) for q in dict.fromkeys(frame["quant"].astype(str))]
    lines: list[str] = []
    if by == "latin" and len(summ.contrasts()):
        contrasts = summ.contrasts()
        lower = ~contrasts.get("higher_is_better", pd.Series(True, index=contrasts.index)).astype(str).isin(["True", "1"])
        lines = [
            f"{q}{' (lower is better)' if low else ''}: non-Latin - Latin = {d:+.2f} [{lo:+.2f}, {hi:+.2f}] points"
            for q, low, d, lo, hi in zip(contrasts["quant"], lower, contrasts["difference"], contrasts["lo"], contrasts["hi"])
        ]
    ax = new_axes(ax, (max(4.5, 1.1 * len(categories) + 2.5), 4.0 + 0.13 * len(lines)))
    x = np.arange(len(categories), dtype=float)
    width = 0.6 / max(len(quants), 1)
    for k, q in enumerate(quants):
        sub = frame[frame["quant"].astype(str) == q].set_index("category").reindex(categories)
        pos = x - 0.3 + width * (k + 0.5)
        lo, hi = sub["rel_change_lo"].to_numpy(float), sub["rel_change_hi"].to_numpy(float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.vlines(pos[ok], lo[ok], hi[ok], colors=f"C{k % 10}", linewidth=1.5, label=f"_ci {q}")
        ax.plot(pos, sub["rel_change"].to_numpy(float), ls="none", marker=_MARKERS[k % 10], color=f"C{k % 10}", label=q)
    n_langs = frame.groupby("category")["n_langs"].max()
    ticks = [c.replace(" (lower is better)", "\nlower is better") + f"\n{int(n_langs[c])} lang." for c in categories]
    ax.set_xticks(x, labels=ticks)
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ylabel = "mean relative change, %\n(task x language cells weigh the same)"
    if any(c.endswith(" (lower is better)") for c in categories):
        ylabel += "\n(lower is better: positive = worse)"
    ax.set_ylabel(ylabel)
    ax.set_title(f"by {by} vs {summ.baseline}; 95 % paired bootstrap CI (languages fixed)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    if lines:
        ax.set_xlabel("\n".join(lines), fontsize=7, color="0.25", loc="left")
    return ax


def binary_tasks(paired: Paired) -> list[str]:
    """The tasks whose every paired baseline and quantized score is 0 or 1."""
    ok = np.isin(paired.b, (0.0, 1.0)) & np.isin(paired.q, (0.0, 1.0))
    bad_cell = np.bincount(paired.cell, weights=(~ok).astype(float), minlength=paired.n_cells) > 0
    tasks = paired.cells["task"].astype(str)
    bad_tasks = set(tasks[bad_cell])
    return sorted(set(tasks) - bad_tasks)


def flips(
    results: Any,
    *,
    baseline: str | None = None,
    by: str | Sequence[str] = "lang",
    task: str | Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Answers that changed, per language and quant: wrong->correct upwards, correct->wrong downwards.

    The counts are :func:`mlquant.stats.flips`'s ``wrong_to_correct`` and ``correct_to_wrong`` (items pooled over
    the tasks drawn). Two methods with the same accuracy can change very different numbers of answers; the net
    change is the difference of the two bars.

    Args:
        results: a ``Results``, a tidy per-item DataFrame or a ``Paired``.
        baseline: the reference quant label (default: fp32, else bf16, else fp16).
        by: the x categories (``"lang"``, ``"task"``, ``("task", "lang")``, ...).
        task: a task, several, or None for every task with binary (0/1) scores.
        ax: the Axes to draw on (a new Figure when None).

    Returns:
        The Axes; per quant two BarContainers labelled ``"<quant>: wrong->correct"`` (heights = counts) and
        ``"<quant>: correct->wrong"`` (heights = minus the counts).

    Raises:
        ConfigError: no task has binary scores, or ``task`` names one without them (the message lists those with).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "t", "lang": "en",
        ...                    "item_id": list("abcd") * 2, "score": [1.0, 1, 0, 0, 0, 1, 1, 1]})
        >>> [[float(b.get_height()) for b in c] for c in flips(df).containers]
        [[2.0], [-1.0]]
    """
    by_cols = as_by(by)
    paired = paired_input(results, baseline)
    binary = binary_tasks(paired)
    present = sorted(set(paired.cells["task"].astype(str)))
    if not binary:
        metrics = sorted(set(paired.cells["metric"].astype(str)))
        raise ConfigError(f"flips needs binary (0/1) scores, and none of the tasks {present} (metrics {metrics}) has them.")
    tasks = binary if task is None else check_tasks(paired, task)
    for t in tasks:
        if t not in binary:
            raise ConfigError(f"task {t!r} has no binary (0/1) scores; flips needs them. Tasks with binary scores: {binary}.")
    table = stats.flips(paired.select(task=tasks), by=by_cols).to_frame()
    cats = row_order(table, by_cols, lang_rank(paired, ("script", "resource_class")))
    labels = [" / ".join(r) for r in cats.itertuples(index=False)]
    quants = quants_of(paired)
    table = table.assign(_key=[" / ".join(r) for r in table[list(by_cols)].astype(str).itertuples(index=False)])
    ax = new_axes(ax, (max(4.5, 0.5 * len(labels) * max(len(quants), 1) + 2.0), 4.0))
    x = np.arange(len(labels), dtype=float)
    width = 0.8 / max(len(quants), 1)
    for k, q in enumerate(quants):
        sub = table[table["quant"].astype(str) == q].set_index("_key").reindex(labels)
        pos = x - 0.4 + width * (k + 0.5)
        gains = sub["wrong_to_correct"].fillna(0).to_numpy(float)
        losses = sub["correct_to_wrong"].fillna(0).to_numpy(float)
        ax.bar(pos, gains, width * 0.92, color=f"C{k % 10}", label=f"{q}: wrong->correct")
        ax.bar(pos, -losses, width * 0.92, color=f"C{k % 10}", alpha=0.55, hatch="///", label=f"{q}: correct->wrong")
    ax.axhline(0.0, color="0.2", linewidth=0.8)
    ax.set_xticks(x, labels=labels, rotation=30 if len(labels) > 6 else 0)
    ax.set_ylabel("items: up wrong->correct, down correct->wrong")
    ax.set_title(f"flipped answers vs {paired.baseline} ({', '.join(tasks)})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return ax
