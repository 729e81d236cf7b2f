"""The report as HTML: a self-contained page (inline CSS, inline SVG figures, no script, no external request).

:func:`render` lays out a report's parts: the summary first (the findings that survive Holm correction in words,
what did not with its minimum detectable differences, the model, baseline, dates, versions and cell signatures), then
the figures of :func:`mlquant.plot.report_figures` (each a ``<figure>`` with a ``<figcaption>``; a visible note where
they cannot be drawn), then the tables (sticky headers, numbers right-aligned, long tables scroll inside their box)
and the statistics of every cell as a table. Every string from the run is escaped: outputs and labels are text.

Example:
    >>> print(table_html(pd.DataFrame({"fp32": [0.5]}, index=pd.Index(["<b>"], name="task"))))  # doctest: +ELLIPSIS
    <div class="scroll"><table>...<th scope="row">&lt;b&gt;</th><td class="num">0.50</td>...
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from numbers import Number
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import MlquantError
from mlquant.report_summary import Findings, RunInfo, format_p

__all__ = ["EMPTY", "STYLE", "Section", "figures_html", "format_table", "render", "statistics_html", "table_html"]

#: What an empty table shows.
EMPTY = "(nothing to show: no scored item of a quantized cell pairs with the baseline)"

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;line-height:1.45}
main{max-width:72rem;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{font-size:1.6rem;margin:.5rem 0}
h2{font-size:1.3rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
p,li{max-width:60rem;overflow-wrap:anywhere}
code{font-size:.85em;overflow-wrap:anywhere}
.note{background:#fff6db;border-left:4px solid #d9a400;padding:.5rem .9rem;max-width:60rem}
.scroll{width:fit-content;max-width:100%;max-height:34rem;overflow:auto;border:1px solid #d7d7d7;margin:.6rem 0}
table{border-collapse:separate;border-spacing:0;font-size:.88rem}
th,td{padding:.2rem .55rem;border-bottom:1px solid #ececec;white-space:nowrap;text-align:left}
thead th{position:sticky;top:0;z-index:1;background:#f1f3f5;border-bottom:1px solid #b9b9b9}
tbody th{font-weight:normal;background:#fafafa}
.num{text-align:right;font-variant-numeric:tabular-nums}
td.long{white-space:normal;overflow-wrap:anywhere;min-width:24rem}
tr.sig td,tr.sig th{background:#fdecea}
figure{margin:1.2rem 0;max-width:100%;overflow-x:auto}
figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:.9rem;color:#444;max-width:60rem}
details{margin:.6rem 0}
summary{cursor:pointer}
pre{max-width:100%;overflow:auto;background:#f6f6f6;padding:.5rem}
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2rem 1rem}
dt{font-weight:600} dd{margin:0;overflow-wrap:anywhere}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_table(table: pd.DataFrame, digits: int = 2) -> str:
    """A fixed-width text rendering of a table (for the terminal and the demo).

    Example:
        >>> print(format_table(pd.DataFrame({"fp32": [0.123]}, index=["xcopa"])))
               fp32
        xcopa  0.12
    """
    if table.empty:
        return EMPTY
    text: str = table.round(digits).to_string(na_rep="-")
    return text


def _is_number(value: object) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _cell(value: object, digits: int, right: bool) -> str:
    """One ``<td>``: numbers right-aligned with ``digits`` decimals (integers as they are), text escaped."""
    if _is_number(value):
        number = float(value)  # type: ignore[arg-type]
        if not np.isfinite(number):
            text = "–"
        elif isinstance(value, (int, np.integer)):
            text = str(value)
        else:
            text = f"{number:.{digits}f}"
        return f'<td class="num">{text}</td>'
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return '<td class="num">–</td>'
    text = str(value)
    klass = "num" if right else ("long" if len(text) > 60 else "")
    return f'<td class="{klass}">{_esc(text)}</td>' if klass else f"<td>{_esc(text)}</td>"


def _label(value: object) -> str:
    return " / ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def table_html(
    table: pd.DataFrame, digits: int = 2, *, right: Collection[str] = (), rows: Sequence[str] = ()
) -> str:
    """A table as HTML in a scrolling box: sticky header, index as row headers, numbers right-aligned, text escaped.

    Args:
        table: the frame; a RangeIndex is not shown, other index levels become the first (header) columns.
        digits: decimals of floats.
        right: text columns to right-align too (pre-formatted numbers such as ``"-3.2 [-5.0, -1.1]"``).
        rows: a CSS class per row (``"sig"`` highlights a row), empty for none.
    """
    if table.empty:
        return f"<p>{_esc(EMPTY)}</p>"
    show_index = not isinstance(table.index, pd.RangeIndex)
    names = [_label(n) if n is not None else "" for n in table.index.names] if show_index else []
    columns = [_label(c) for c in table.columns]
    right_set = set(right)
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
               for c in table.columns]
    head = "".join(f'<th scope="col">{_esc(n)}</th>' for n in names) + "".join(
        f'<th scope="col" class="num">{_esc(c)}</th>' if num or c in right_set else f'<th scope="col">{_esc(c)}</th>'
        for c, num in zip(columns, numeric, strict=True))
    body = []
    for i, (index, values) in enumerate(zip(table.index, table.itertuples(index=False, name=None), strict=True)):
        keys = index if isinstance(index, tuple) else (index,)
        cells = "".join(f'<th scope="row">{_esc(k)}</th>' for k in keys) if show_index else ""
        cells += "".join(_cell(v, digits, c in right_set) for v, c in zip(values, columns, strict=True))
        klass = rows[i] if i < len(rows) else ""
        body.append(f'<tr class="{_esc(klass)}">{cells}</tr>' if klass else f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            "</div>")


@dataclass(frozen=True)
class Section:
    """One section of a report: a title, a table (or a preformatted text), a note, and lines after the body.

    Attributes:
        title: the heading.
        body: a table, or preformatted text.
        note: how to read the body (units, abbreviations); in parentheses after the title in text.
        digits: decimals shown of the table's numbers.
        lines: shown after the body (the signatures of corpus metrics).

    Example:
        >>> print(Section("Scores", pd.DataFrame({"fp32": [0.5]}, index=["xcopa"]), "weighted mean").to_text())
        Scores (weighted mean):
               fp32
        xcopa   0.5
    """

    title: str
    body: pd.DataFrame | str
    note: str = ""
    digits: int = 2
    lines: tuple[str, ...] = ()

    def to_text(self) -> str:
        """The section for a terminal."""
        head = f"{self.title} ({self.note}):" if self.note else f"{self.title}:"
        body = self.body if isinstance(self.body, str) else format_table(self.body, self.digits)
        return "\n".join([head, body, *(f"  {line}" for line in self.lines)])

    def to_html(self) -> str:
        """The section as an HTML fragment (a ``<section>`` with its heading)."""
        parts = [f"<section><h2>{_esc(self.title)}</h2>"]
        if self.note:
            parts.append(f"<p>{_esc(self.note)}</p>")
        if isinstance(self.body, str):
            parts.append(f"<pre>{_esc(self.body)}</pre>")
        else:
            parts.append(table_html(self.body, self.digits))
        parts += [f"<p><code>{_esc(line)}</code></p>" for line in self.lines]
        parts.append("</section>")
        return "\n".join(parts)


# ----- summary -------------------------------------------------------------------------------------------------------
def _run_html(info: RunInfo) -> str:
    rows = [("Model", ", ".join(info.models) or "(not recorded)"), ("Baseline", info.baseline)]
    if info.run_dir:
        rows.append(("Run folder", info.run_dir))
    if info.written:
        rows.append(("Cells written", f"{info.written[0]} – {info.written[1]}"))
    rows.append(("Report built", info.generated))
    rows += list(info.versions)
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows)
    note = f'<p class="note">{_esc(info.note)}</p>' if info.note else ""
    sigs = (f"<details><summary>Cell signatures ({len(info.signatures)} cells)</summary>"
            f"{table_html(info.signatures)}</details>") if len(info.signatures) else ""
    return f"<h3>The run</h3>{note}<dl>{items}</dl>{sigs}"


def summary_html(findings: Findings | None, info: RunInfo) -> str:
    """The summary section: significant findings by quant, what did not survive, and the run's facts."""
    parts = ['<section id="summary"><h2>Summary</h2>']
    if findings is None:
        parts.append("<p>No statistics: no quantized cell pairs with the baseline's items.</p>")
    else:
        parts.append(f"<p>{_esc(findings.family())}</p>")
        if not findings.significant:
            parts.append("<p><strong>No cell changes significantly after Holm correction.</strong></p>")
        for quant, found in findings.by_quant().items():
            items = "".join(f"<li>{_esc(f.sentence())}</li>" for f in found)
            parts.append(f"<h3>{_esc(quant)}: {len(found)} significant change{'s' * (len(found) != 1)}</h3>"
                         f"<ul>{items}</ul>")
        absent = findings.absent()
        if absent:
            parts.append("<h3>No significant change</h3><ul>" + "".join(f"<li>{_esc(a)}</li>" for a in absent)
                         + "</ul>")
    parts.append(_run_html(info))
    parts.append("</section>")
    return "\n".join(parts)


# ----- figures --------------------------------------------------------------------------------------------------------
def _inline_svg(svg: str) -> str:
    """The ``<svg>`` element of an SVG document (no XML declaration or doctype inside HTML)."""
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def figures_html(results: Any, baseline: str) -> str:
    """The figures section: each figure of :func:`mlquant.plot.report_figures` as inline SVG in a ``<figure>``.

    Where the figures cannot be drawn (matplotlib missing: ``pip install 'mlquant[plot]'``), the section holds a
    visible note saying why, and the rest of the report renders.
    """
    head = '<section id="figures"><h2>Figures</h2>'
    try:
        from mlquant import plot

        drawn = [(f, _inline_svg(plot.to_svg(f.figure))) for f in plot.report_figures(results, baseline=baseline)]
    except (ImportError, MlquantError) as exc:
        why = str(exc) or type(exc).__name__
        hint = " Install them with: pip install 'mlquant[plot]'." if "matplotlib" in why else ""
        return f'{head}<p class="note" id="no-figures">No figures: {_esc(why)}.{_esc(hint)}</p></section>'
    if not drawn:
        return f'{head}<p class="note" id="no-figures">No figures: nothing to plot in this run.</p></section>'
    figures = "".join(
        f'<figure id="fig-{_esc(f.key)}"><h3>{_esc(f.title)}</h3>{svg}<figcaption>{_esc(f.caption)}</figcaption>'
        "</figure>"
        for f, svg in drawn
    )
    return head + figures + "</section>"


# ----- statistics ----------------------------------------------------------------------------------------------------
def _fmt(value: float, points: bool, digits: int = 3) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{value:+.1f}" if points else f"{value:+.{digits}g}"


def statistics_html(stats: pd.DataFrame, findings: Findings, notes: Sequence[str] = ()) -> str:
    """The per-cell statistics as a table: change, CI, relative change, p, Holm p, MDD (significant rows marked)."""
    keys = [c for c in ("model", "quant", "task", "lang") if c in stats.columns]
    points = [str(unit) == "points" for unit in stats["unit"]]
    show = stats[[*keys, "metric", "n", "unit"]].copy()
    show["baseline"] = [_fmt(v, p, 4).lstrip("+") for v, p in zip(stats["baseline"], points, strict=True)]
    show["quantized"] = [_fmt(v, p, 4).lstrip("+") for v, p in zip(stats["quantized"], points, strict=True)]
    show["change"] = [_fmt(v, p) for v, p in zip(stats["diff"], points, strict=True)]
    show["95 % CI"] = [f"{_fmt(lo, p)} – {_fmt(hi, p)}"
                       for lo, hi, p in zip(stats["diff_lo"], stats["diff_hi"], points, strict=True)]
    show["rel. change %"] = [f"{v:+.1f}" if np.isfinite(v) else "–" for v in stats["rel_change"]]
    show["test"] = stats["test"]
    show["p"] = [format_p(p).removeprefix("= ") for p in stats["p_value"]]
    show["Holm p"] = [format_p(p).removeprefix("= ") for p in stats["p_holm"]]
    show["MDD"] = [_fmt(v, p).lstrip("+") for v, p in zip(stats["mdd"], points, strict=True)]
    show["significant"] = np.where(stats["significant"], "yes", "")
    right = ("baseline", "quantized", "change", "95 % CI", "rel. change %", "p", "Holm p", "MDD")
    note = (f"One row per cell against {findings.baseline}, paired by item. change = quantized - baseline (in "
            "percentage points for 0/1 scores, else in the metric's units) with its 95 % paired bootstrap CI; p: "
            "exact McNemar test (unclustered 0/1 scores) or sign-flip permutation test; Holm p: p adjusted by Holm's "
            f"method. {findings.family()} MDD: smallest change detectable at 80 % power (unadjusted α). Highlighted rows "
            "are significant.")
    extra = "".join(f'<p class="note">{_esc(n)}</p>' for n in notes)
    return (f'<section id="statistics"><h2>Statistics per cell</h2><p>{_esc(note)}</p>'
            f'{table_html(show, right=right, rows=list(np.where(stats["significant"], "sig", "")))}{extra}</section>')


def render(parts: Sequence[str], title: str = "mlquant report", *, page: bool = True) -> str:
    """Join rendered sections into a page (``page=False``: a fragment for Jupyter, without the ``<html>`` shell)."""
    body = "\n".join(parts)
    if not page:
        return f'<div class="mlquant-report"><style>{_scoped(STYLE)}</style>{body}</div>'
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head>\n<body><main>\n"
            f"<header><h1>{_esc(title)}</h1></header>\n{body}\n</main></body></html>")


def _scope_rule(match: re.Match[str]) -> str:
    return ",".join(f".mlquant-report {s.strip()}" for s in match.group(1).split(",")) + "{"


def _scoped(css: str) -> str:
    """The page's CSS limited to the report's ``<div>`` (a notebook's own styles stay untouched)."""
    return re.sub(r"(?m)^([^{}\n]+)\{", _scope_rule, css.replace("} ", "}\n"))
