"""Drawing and input helpers of :mod:`mlquant.plot`: axes, input checks, language order, matrices and bars.

Nothing here computes a statistic. Every number drawn comes from :mod:`mlquant.stats` (or from the tables of the
calibration-matrix and distance analyses) through :mod:`mlquant.plot`; this module only checks inputs, orders
rows and draws. Only the object API of matplotlib is used (``matplotlib.figure.Figure``, never pyplot), so no GUI
backend is touched.

Example:
    >>> order_languages(["ja", "en", "sw"], {"ja": ("Jpan", 5), "en": ("Latn", 5), "sw": ("Latn", 2)},
    ...                 ("script", "resource_class"))
    ['en', 'sw', 'ja']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from mlquant.errors import ConfigError, MlquantError
from mlquant.stats import Bootstrap, Paired, as_frame, pair

__all__ = [
    "DEFAULT_CI",
    "ORDER_KEYS",
    "LangInfo",
    "as_by",
    "as_table",
    "check_choice",
    "check_quant",
    "check_tasks",
    "draw_matrix",
    "interval_bars",
    "lang_rank",
    "language_info",
    "language_label",
    "new_axes",
    "order_languages",
    "paired_input",
    "pick_one",
    "quants_of",
    "root_figure",
    "row_order",
]

#: Default intervals: 95 % percentile paired bootstrap, 10,000 resamples, seed 0 (as ``mq.stats``'s ``ci=True``).
DEFAULT_CI = Bootstrap()
#: Keys that ``order=`` accepts to group languages (forest plots, bar charts).
ORDER_KEYS: tuple[str, ...] = ("script", "resource_class", "family", "latin")
#: (script, resource class) of a language; either may be None when unknown.
LangInfo = tuple[Any, Any]
DIFFICULTY_ORDER: dict[str, int] = {"easy": 0, "medium": 1, "hard": 2}


def new_axes(ax: Axes | None, size: tuple[float, float]) -> Axes:
    """``ax``, or the Axes of a new ``Figure`` of ``size`` inches (constrained layout, no pyplot state)."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise ConfigError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}.")
        return ax
    fig = Figure(figsize=size, layout="constrained")
    return fig.add_subplot()


def root_figure(ax: Axes) -> Figure:
    """The top-level :class:`~matplotlib.figure.Figure` holding ``ax`` (also when ``ax`` sits in a SubFigure)."""
    fig: Any = ax.figure
    while fig is not None and not isinstance(fig, Figure):
        fig = getattr(fig, "figure", None)
    if fig is None:
        raise ConfigError("the Axes belongs to no Figure.")
    root: Figure = fig
    return root


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` when it is one of ``allowed``; else a ConfigError naming the argument and the alternatives."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; expected one of {list(allowed)}.")
    return value


def as_by(by: str | Sequence[str], allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """``by`` as a non-empty tuple of column names (never ``quant``: it is always the other axis)."""
    cols = (by,) if isinstance(by, str) else tuple(by)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise ConfigError(f"by must be a column name or a sequence of column names, got {by!r}.")
    if "quant" in cols or "model" in cols:
        raise ConfigError(f"by={by!r}: 'quant' is always the other axis of the figure; leave it (and 'model') out.")
    if allowed is not None:
        for c in cols:
            check_choice("by", c, allowed)
    return cols


def paired_input(results: Any, baseline: str | None) -> Paired:
    """The item pairing of ``results`` (a ``Results``, a tidy frame or a ``Paired``) against ``baseline``.

    Raises:
        ConfigError: the results are empty, hold several models, or lack the baseline (from :func:`mlquant.stats.pair`).
    """
    if not isinstance(results, Paired):
        frame = as_frame(results)
        if len(frame) == 0:
            raise ConfigError(
                "the results are empty (0 rows); mlquant.plot needs per-item rows with columns quant, task, lang, "
                "item_id and score (e.g. mq.Results.read(run_dir))."
            )
    paired = pair(results, baseline)
    if "model" in paired.keys:
        models = sorted(set(paired.cells["model"].astype(str)))
        raise ConfigError(
            f"the results hold {len(models)} models {models}; mlquant.plot draws one model at a time: keep the rows "
            "of one model (frame[frame.model == ...])."
        )
    return paired


def quants_of(paired: Paired) -> list[str]:
    """The quantized labels (baseline excluded), in order of appearance."""
    return [str(q) for q in dict.fromkeys(paired.cells["quant"].astype(str))]


def check_quant(paired: Paired, quant: Any) -> str:
    """``quant`` when the results hold it (and it is not the baseline); else a ConfigError listing the labels."""
    quants = quants_of(paired)
    if quant == paired.baseline:
        raise ConfigError(f"quant={quant!r} is the baseline; compare one of {quants} with it.")
    if not isinstance(quant, str) or quant not in quants:
        raise ConfigError(f"unknown quant {quant!r}; the results have {quants} (baseline {paired.baseline!r}).")
    return quant


def check_tasks(paired: Paired, task: str | Sequence[str] | None) -> list[str]:
    """The tasks to draw: all of them for None; else ``task`` (one or several), each checked."""
    present = sorted(set(paired.cells["task"].astype(str)))
    if task is None:
        return present
    wanted = [task] if isinstance(task, str) else list(task)
    for t in wanted:
        if t not in present:
            raise ConfigError(f"unknown task {t!r}; the results have tasks {present}.")
    if not wanted:
        raise ConfigError(f"task= is empty; pick from {present}.")
    return wanted


def pick_one(frame: pd.DataFrame, column: str, value: Any, what: str) -> pd.DataFrame:
    """The rows of ``frame`` where ``column == value``; ``value=None`` is allowed when the column has one value."""
    present = [str(v) for v in dict.fromkeys(frame[column].astype(str))]
    if value is None:
        if len(present) > 1:
            raise ConfigError(f"the {what} holds several {column} values {present}; pass {column}= one of them.")
        return frame
    if str(value) not in present:
        raise ConfigError(f"unknown {column} {value!r}; the {what} has {present}.")
    picked: pd.DataFrame = frame[frame[column].astype(str) == str(value)]
    return picked


def as_table(obj: Any, columns: Sequence[str], what: str) -> pd.DataFrame:
    """The long-format frame of ``obj`` (a DataFrame or an object with ``.to_frame()``), with ``columns`` checked."""
    to_frame = getattr(obj, "to_frame", None)
    frame: Any = obj if isinstance(obj, pd.DataFrame) else (to_frame() if callable(to_frame) else None)
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"expected a {what} (a DataFrame or a result with .to_frame()), got {type(obj).__name__}.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"the {what} lacks column(s) {missing}; expected {list(columns)} (present: {list(frame.columns)}).")
    if len(frame) == 0:
        raise ConfigError(f"the {what} is empty (0 rows).")
    return frame


def _lang_file(lang: str) -> LangInfo:
    from mlquant.languages import get_language

    try:
        language = get_language(lang)
    except MlquantError:
        return (None, None)
    return (language.script, language.resource_class)


def language_info(langs: Iterable[Any], cells: pd.DataFrame | None = None) -> dict[str, LangInfo]:
    """(script, resource class) of each language: from the results' columns when present, else its language file."""
    out: dict[str, LangInfo] = {}
    for lang in dict.fromkeys(str(x) for x in langs):
        script: Any = None
        rc: Any = None
        if cells is not None and "lang" in cells.columns:
            rows = cells[cells["lang"].astype(str) == lang]
            if len(rows):
                script = rows["script"].iloc[0] if "script" in rows.columns else None
                rc = rows["resource_class"].iloc[0] if "resource_class" in rows.columns else None
        if script is None or rc is None or pd.isna(script) or pd.isna(rc):
            file_script, file_rc = _lang_file(lang)
            script = file_script if script is None or pd.isna(script) else script
            rc = file_rc if rc is None or pd.isna(rc) else rc
        out[lang] = (None if script is None else str(script), None if rc is None else int(float(rc)))
    return out


def _order_key(info: LangInfo, key: str) -> tuple[Any, ...]:
    script, rc = info
    if key == "script":
        return (script is None, script != "Latn", script or "")
    if key == "latin":
        return (script is None, script != "Latn")
    if key == "resource_class":
        return (rc is None, -(rc or 0))
    return ()


def order_languages(langs: Iterable[Any], info: Mapping[str, LangInfo], order: Sequence[str]) -> list[str]:
    """Languages sorted by ``order`` (script: Latin first, then by name; resource class: high first), then code."""
    for key in order:
        check_choice("order", key, ("script", "resource_class", "latin"))
    unique = list(dict.fromkeys(str(x) for x in langs))
    return sorted(unique, key=lambda lang: (*[k for key in order for k in _order_key(info[lang], key)], lang))


def lang_rank(paired: Paired, order: Sequence[str]) -> dict[str, int]:
    """Display rank of each language of ``paired`` (see :func:`order_languages`)."""
    langs = paired.cells["lang"].astype(str)
    info = language_info(langs, paired.cells)
    return {lang: i for i, lang in enumerate(order_languages(langs, info, order))}


def language_label(lang: str, info: LangInfo) -> str:
    """``"ja (Jpan, class 5)"``: the language with the script and resource class the order uses."""
    script, rc = info
    return f"{lang} ({script or '?'}, class {'?' if rc is None else rc})"


def row_order(frame: pd.DataFrame, cols: Sequence[str], lang_rank: Mapping[str, int]) -> pd.DataFrame:
    """The distinct rows of ``frame[cols]`` in display order (languages by ``lang_rank``, difficulty easy->hard)."""
    rows = frame[list(cols)].astype(str).drop_duplicates().reset_index(drop=True)

    def key_of(col: str) -> Callable[[pd.Series], pd.Series]:
        if col == "lang":
            return lambda s: s.map(lambda v: lang_rank.get(v, len(lang_rank)))
        if col == "difficulty":
            return lambda s: s.map(lambda v: DIFFICULTY_ORDER.get(v, 3))
        if col == "resource_class":
            return lambda s: -pd.to_numeric(s, errors="coerce").fillna(-1)
        if col == "script":
            return lambda s: s.map(lambda v: ("0" if v == "Latn" else "1") + v)
        return lambda s: s

    for col in reversed(list(cols)):
        rows = rows.sort_values(col, key=key_of(col), kind="stable")
    ordered: pd.DataFrame = rows.reset_index(drop=True)
    return ordered


def draw_matrix(
    ax: Axes,
    values: np.ndarray,
    labels: tuple[Sequence[str], Sequence[str]],
    stars: np.ndarray,
    style: Mapping[str, str],
) -> AxesImage:
    """An annotated matrix: colours centred on 0, the value in each cell, a ``*`` annotation on starred cells.

    Args:
        ax: where to draw.
        values: rows x columns (NaN = no value, drawn grey with "n/a").
        labels: (row labels, column labels).
        stars: boolean rows x columns; each True cell gets an annotation ``"*"`` whose ``xy`` is the cell centre.
        style: ``cmap``, ``label`` (the colour bar's), ``fmt`` (format of a value).
    """
    finite = values[np.isfinite(values)]
    m = float(np.max(np.abs(finite))) if finite.size else 1.0
    m = m if m > 0 else 1.0
    norm = Normalize(vmin=-m, vmax=m)
    cmap = mpl.colormaps[style["cmap"]].with_extremes(bad="#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    fmt = style.get("fmt", "{:+.1f}")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = float(values[i, j])
            if math.isfinite(v):
                r, g, b, _ = cmap(norm(v))
                colour = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                ax.text(j, i, fmt.format(v), ha="center", va="center", color=colour, fontsize=8)
            else:
                ax.text(j, i, "n/a", ha="center", va="center", color="0.4", fontsize=7)
            if stars[i, j]:
                ax.annotate("*", xy=(j, i), xytext=(9, 3), textcoords="offset points", fontsize=10, fontweight="bold")
    rows, cols = labels
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    ax.tick_params(length=0)
    root_figure(ax).colorbar(image, ax=ax, label=style["label"], shrink=0.9)
    return image


def interval_bars(
    ax: Axes,
    categories: Sequence[str],
    series: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """Grouped bars, one colour per series, with the interval of each bar as a vertical line.

    Args:
        ax: where to draw.
        categories: the x categories.
        series: ``(label, values, lo, hi)`` per series (arrays aligned with ``categories``; NaN = none). The bars
            are a BarContainer labelled ``label``; the intervals a LineCollection labelled ``"_ci " + label``
            whose segments run from ``(x, lo)`` to ``(x, hi)``.
    """
    x = np.arange(len(categories), dtype=float)
    width = 0.8 / max(len(series), 1)
    for k, (label, values, lo, hi) in enumerate(series):
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, values, width * 0.92, color=f"C{k % 10}", label=label)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.vlines(pos[ok], lo[ok], hi[ok], colors="0.15", linewidths=1.0, label=f"_ci {label}")
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.set_xticks(x, labels=list(categories), rotation=30 if len(categories) > 6 else 0)
    ax.set_xlim(-0.6, len(categories) - 0.4)
