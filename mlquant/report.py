"""Reports: the per-language degradation table in text (terminal, notebook) and as a static HTML page.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> print(mq.report.relative_change_table(mq.read_results("runs/demo")))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from mlquant.results import aggregate

__all__ = ["score_table", "relative_change_table", "format_table", "write_html", "default_baseline"]


def default_baseline(frame: pd.DataFrame) -> str:
    """The baseline label of a results frame: fp32, else bf16, else fp16."""
    present = set(frame["quant"].unique())
    for label in ("fp32", "bf16", "fp16"):
        if label in present:
            return label
    from mlquant.errors import ConfigError

    raise ConfigError(f"no baseline (fp32, bf16 or fp16) among the quant labels {sorted(present)}.")


def score_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Aggregate score per (task, metric, lang) row and quant column."""
    agg = aggregate(frame, by=("task", "metric", "lang", "quant"))
    table = agg.pivot_table(index=["task", "metric", "lang"], columns="quant", values="score")
    order = [q for q in dict.fromkeys(frame["quant"]) if q in table.columns]
    return table[order]


def relative_change_table(frame: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Marchisio et al. 2024's table: 100 * (quantized - baseline) / baseline per (task, lang) row and method column.

    Computed by :func:`mlquant.stats.relative_change` on the items present in both cells. For metrics where lower
    is better (bits per byte), a positive change is a degradation; the ``metric`` level of the index says which.
    """
    from mlquant import stats

    baseline = baseline or default_baseline(frame)
    rc = stats.relative_change(frame, baseline=baseline).to_frame()
    metric = frame.drop_duplicates("task").set_index("task")["metric"]
    rc = rc.assign(metric=rc["task"].map(metric))
    table = rc.pivot_table(index=["task", "metric", "lang"], columns="quant", values="rel_change")
    order = [q for q in dict.fromkeys(frame["quant"]) if q in table.columns and q != baseline]
    return table[order]


def format_table(table: pd.DataFrame, digits: int = 2) -> str:
    """A fixed-width text rendering of a table (for the terminal and the demo)."""
    return table.round(digits).to_string(na_rep="-")


def write_html(frame: pd.DataFrame, path: str | os.PathLike[str], baseline: str | None = None) -> Path:
    """Write a static HTML page with the score table, the relative-change table and the statistics summary."""
    from mlquant import stats

    baseline = baseline or default_baseline(frame)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mlquant report</title>",
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
        f"<h1>mlquant report</h1><p>Baseline: <b>{html.escape(baseline)}</b>. Models: "
        f"{html.escape(', '.join(sorted(frame['model'].unique())))}.</p>",
        "<h2>Scores</h2>",
        score_table(frame).round(4).to_html(na_rep="-"),
        "<h2>Relative change, 100·(q−b)/b, paired by item</h2>",
        relative_change_table(frame, baseline).round(2).to_html(na_rep="-"),
    ]
    summary = stats.summary(frame, baseline=baseline)
    parts += ["<h2>Statistics</h2>", f"<pre>{html.escape(str(summary))}</pre>", "</body></html>"]
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
