"""The report's summary: findings that survive Holm correction in words, what did not, and what produced the run.

:func:`cell_statistics` turns :func:`mlquant.stats.summary`'s per-cell table into display units (accuracy-like 0/1
scores in percentage points, other metrics in their own units) with the test that gave each p-value;
:func:`find` keeps the cells whose Holm-adjusted p-value (family: every cell of the run) is below alpha and says
each in a sentence, and sums up the others with their minimum detectable differences (:func:`mlquant.stats.power`)
so that "no significant change" says how large a change could have been missed. :func:`run_info` collects the
model, the baseline (and whether it is itself quantized), dates, library versions and cell signatures.

Example:
    >>> f = Finding("rtn-w4", "xcopa", "th", "accuracy", True, True, -27.3, -40.0, -12.1, 0.002, 0.02, "McNemar", 100)
    >>> print(f.sentence())
    rtn-w4 lowers xcopa accuracy in th by 27.3 points (95 % CI 12.1 – 40.0; McNemar p = 0.002, Holm p = 0.02; n = 100 items)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlquant.cells import Signature
from mlquant.errors import DataError

__all__ = [
    "Finding",
    "Findings",
    "RunInfo",
    "baseline_note",
    "cell_statistics",
    "find",
    "format_p",
    "run_info",
]

#: The libraries whose versions the report names (besides those in the cells' signatures).
REPORT_LIBRARIES = ("mlquant", "numpy", "pandas", "scipy", "matplotlib")
#: Quantized GGUF tensor types in a model id or file name (``...:Q4_K_M``, ``model-q8_0.gguf``).
_GGUF_QUANT = re.compile(r"(?i)(?:^|[:/_.@-])(i?q[1-8](?:_[a-z0-9]+)*)(?=$|[@:/_.-])")


def format_p(p: float) -> str:
    """A p-value as the summary writes it: ``= 0.0021`` with two significant digits, ``< 0.001`` below that.

    Example:
        >>> format_p(0.00213), format_p(0.0000004), format_p(1.0)
        ('= 0.0021', '< 0.001', '= 1')
    """
    if not np.isfinite(p):
        return "not computed"
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def _number(value: float, points: bool) -> str:
    """A magnitude in display units: one decimal for points, three significant digits otherwise."""
    if not np.isfinite(value):
        return "-"
    return f"{value:.1f}" if points else f"{value:.3g}"


@dataclass(frozen=True)
class Finding:
    """One cell whose change survives Holm correction, in display units.

    Attributes:
        quant, task, lang, metric: the cell and its metric.
        points: scores are 0/1 (accuracy-like): the change and its CI are in percentage points.
        higher_is_better: the metric's direction.
        diff, lo, hi: the change quantized - baseline and its 95 % bootstrap CI (points, or metric units).
        p, p_holm: the test's p-value and its Holm-adjusted value.
        test: ``McNemar`` (exact, unclustered 0/1 scores) or ``permutation`` (sign-flip).
        n: paired items.
    """

    quant: str
    task: str
    lang: str
    metric: str
    points: bool
    higher_is_better: bool
    diff: float
    lo: float
    hi: float
    p: float
    p_holm: float
    test: str
    n: int

    def sentence(self) -> str:
        """The finding in words, with its effect, CI, p-values and n."""
        verb = "lowers" if self.diff < 0 else "raises"
        direction = "" if self.higher_is_better else " (lower is better)"
        lo, hi = (-self.hi, -self.lo) if self.diff < 0 else (self.lo, self.hi)
        unit = " points" if self.points else ""
        return (f"{self.quant} {verb} {self.task} {self.metric}{direction} in {self.lang} by "
                f"{_number(abs(self.diff), self.points)}{unit} (95 % CI {_number(lo, self.points)} – "
                f"{_number(hi, self.points)}; {self.test} p {format_p(self.p)}, Holm p {format_p(self.p_holm)}; "
                f"n = {self.n} items)")


@dataclass(frozen=True)
class Findings:
    """What the summary says: the significant cells, grouped by quant, and what the others could have detected.

    Attributes:
        baseline: the baseline quant label.
        alpha: the level of the Holm-adjusted p-values.
        n_cells: the family of the Holm correction (every quantized cell of the run).
        significant: the cells whose Holm p is below alpha, in the statistics' order.
        not_significant: one row per (quant, task, metric): ``cells`` (count), ``unit``, ``mdd_min``,
            ``mdd_median``, ``mdd_max`` (minimum detectable difference at 80 % power, display units).
        untested: cells without a p-value (``quant/task/lang``).
    """

    baseline: str
    alpha: float
    n_cells: int
    significant: tuple[Finding, ...]
    not_significant: pd.DataFrame = field(repr=False)
    untested: tuple[str, ...] = ()

    def by_quant(self) -> dict[str, list[Finding]]:
        """The significant findings grouped by quant label, in order of appearance."""
        out: dict[str, list[Finding]] = {}
        for finding in self.significant:
            out.setdefault(finding.quant, []).append(finding)
        return out

    def family(self) -> str:
        """The sentence naming the correction and its family."""
        return (f"Family of the Holm correction: all {self.n_cells} cells of the run, i.e. every quantized "
                f"quant x task x language cell compared with {self.baseline}; α = {self.alpha}.")

    def absent(self) -> list[str]:
        """What did not survive, one line per quant: the count and the minimum detectable differences."""
        lines = []
        rows = self.not_significant
        for quant, part in rows.groupby("quant", sort=False):
            ranges = []
            for task, metric, unit, low, high in zip(part["task"], part["metric"], part["unit"], part["mdd_min"],
                                                     part["mdd_max"], strict=True):
                points = str(unit) == "points"
                span = _number(float(low), points) + (f" – {_number(float(high), points)}" if high > low else "")
                ranges.append(f"{task} {metric} {span}{' points' if points else ''}")
            count = int(part["cells"].sum())
            lines.append(f"{quant}: {count} cell{'s' * (count != 1)} without a significant change (Holm p ≥ "
                         f"{self.alpha}). The smallest change each could detect (80 % power, unadjusted α = "
                         f"{self.alpha}): {'; '.join(ranges)}. A smaller change in these cells is not ruled out.")
        if self.untested:
            lines.append(f"{len(self.untested)} cells have no p-value: {', '.join(self.untested)}.")
        return lines

    def to_text(self) -> str:
        """The summary for a terminal."""
        lines = [f"Summary. {self.family()}"]
        if not self.significant:
            lines.append("No cell changes significantly after Holm correction.")
        for quant, found in self.by_quant().items():
            lines.append(f"{quant}: {len(found)} significant change(s):")
            lines += [f"  - {f.sentence()}" for f in found]
        lines += self.absent()
        return "\n".join(lines)


def _binary_cells(scored: pd.DataFrame) -> set[tuple[str, str]]:
    """(task, lang) pairs whose every scored item, in every quant, is 0 or 1."""
    is01 = scored["score"].isin([0.0, 1.0]).groupby([scored["task"].astype(str), scored["lang"].astype(str)]).all()
    tasks, langs = is01.index.get_level_values(0), is01.index.get_level_values(1)
    return {(str(t), str(lang)) for t, lang, ok in zip(tasks, langs, is01.to_numpy(), strict=True) if ok}


def cell_statistics(summary: Any, scored: pd.DataFrame) -> pd.DataFrame:
    """The statistics of every cell in display units: what the summary's sentences and the report's table show.

    Args:
        summary: a :class:`mlquant.stats.Summary` of ``scored``.
        scored: the per-item rows with a score that ``summary`` was computed on.

    Returns:
        One row per cell: the summary's keys, ``metric``, ``higher_is_better``, ``n``, ``unit`` (``points`` for 0/1
        scores, else the metric), ``baseline``, ``quantized`` (in % for 0/1 scores), ``diff``, ``diff_lo``,
        ``diff_hi`` (points or metric units), ``rel_change``, ``p_value``, ``test``, ``p_holm``, ``mdd`` and
        ``significant`` (Holm p below the summary's alpha).

    Example:
        >>> import mlquant as mq
        >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "t", "lang": "en",
        ...                    "item_id": list("abcd") * 2, "score": [1.0, 1, 0, 1, 1, 0, 0, 1]})
        >>> cell_statistics(mq.stats.summary(df, n_resamples=200), df)[["unit", "diff", "test"]].values.tolist()
        [['points', -25.0, 'McNemar']]
    """
    from mlquant.stats import power

    cells = summary.to_frame()
    alpha = float(summary.settings.get("alpha", 0.05))
    keys = [str(k) for k in summary.settings.get("keys", ("quant", "task", "lang"))]
    methods = power(scored, summary.baseline, alpha=alpha).to_frame()
    methods = methods.assign(**{k: methods[k].astype(str) for k in keys})[[*keys, "method"]]
    cells = cells.assign(**{k: cells[k].astype(str) for k in keys}).merge(methods, on=keys, how="left")
    binary = _binary_cells(scored)
    points = np.array([(t, lang) in binary for t, lang in zip(cells["task"], cells["lang"], strict=True)], dtype=bool)
    scale = np.where(points, 100.0, 1.0)
    out: pd.DataFrame = cells[keys].copy()
    out["metric"] = cells["metric"].astype(str)
    out["higher_is_better"] = cells["higher_is_better"].astype(str) != "False"
    out["n"] = cells["n"].astype(int)
    out["unit"] = np.where(points, "points", out["metric"])
    for col in ("baseline", "quantized", "diff", "diff_lo", "diff_hi", "mdd"):
        out[col] = cells[col].to_numpy(dtype=float) * scale
    out["rel_change"] = cells["rel_change"].to_numpy(dtype=float)
    out["p_value"] = cells["p_value"].to_numpy(dtype=float)
    out["test"] = np.where(cells["method"] == "mcnemar", "McNemar", "permutation")
    out["p_holm"] = cells["p_holm"].to_numpy(dtype=float)
    out["significant"] = out["p_holm"] < alpha
    return out


def find(summary: Any, scored: pd.DataFrame) -> Findings:
    """The summary's findings: the cells that survive Holm correction, and a digest of those that do not.

    Args:
        summary: a :class:`mlquant.stats.Summary` of ``scored`` (its Holm correction spans all its cells).
        scored: the per-item rows with a score that ``summary`` was computed on.

    Example:
        >>> import mlquant as mq
        >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "t", "lang": "en",
        ...                    "item_id": list("abcd") * 2, "score": [1.0, 1, 0, 1, 1, 0, 0, 1]})
        >>> f = find(mq.stats.summary(df, n_resamples=200), df)
        >>> len(f.significant), f.absent()[0][:45]
        (0, 'w4: 1 cell without a significant change (Holm')
    """
    stats = cell_statistics(summary, scored)
    alpha = float(summary.settings.get("alpha", 0.05))
    rows: list[dict[Any, Any]] = stats[stats["significant"]].sort_values("p_holm", kind="stable").to_dict("records")
    significant = tuple(
        Finding(str(r["quant"]), str(r["task"]), str(r["lang"]), str(r["metric"]), r["unit"] == "points",
                bool(r["higher_is_better"]), float(r["diff"]), float(r["diff_lo"]), float(r["diff_hi"]),
                float(r["p_value"]), float(r["p_holm"]), str(r["test"]), int(r["n"]))
        for r in rows
    )
    tested = stats["p_holm"].notna()
    untested = tuple("/".join(map(str, key)) for key in stats.loc[~tested, ["quant", "task", "lang"]].itertuples(index=False))
    rest = stats[tested & ~stats["significant"]]
    digest = (rest.groupby(["quant", "task", "metric", "unit"], sort=False)["mdd"]
              .agg(cells="size", mdd_min="min", mdd_median="median", mdd_max="max").reset_index())
    return Findings(summary.baseline, alpha, len(stats), significant, digest, untested)


# ----- what produced the run ------------------------------------------------------------------------------------------
def baseline_note(models: tuple[str, ...], baseline: str) -> str:
    """A warning when the baseline is itself quantized (a GGUF model of a quantized type), else ``""``.

    Example:
        >>> baseline_note(("google/gemma-3-270m:Q4_K_M@ab12",), "fp32")[:60]
        'The baseline fp32 is itself a quantized model: google/gemma-'
        >>> baseline_note(("meta-llama/Llama-3.2-1B@main",), "bf16")
        ''
    """
    quantized = [m for m in models if _GGUF_QUANT.search(m.partition("@")[0])]
    if not quantized:
        return ""
    kinds = sorted({match.group(1).upper() for m in quantized if (match := _GGUF_QUANT.search(m.partition("@")[0]))})
    return (f"The baseline {baseline} is itself a quantized model: {', '.join(quantized)} holds {', '.join(kinds)} "
            "weights, dequantized to float. The changes below measure what quantizing it again costs, not what "
            "quantizing the original model costs.")


@dataclass(frozen=True)
class RunInfo:
    """What produced the run: models, baseline, dates, versions and the signature of every cell.

    Attributes:
        models: the model ids of the run.
        baseline: the baseline quant label.
        note: :func:`baseline_note`.
        run_dir: the run folder, when known.
        written: first and last modification time of the cell files (UTC, ISO), when the folder is known.
        generated: when the report was built (UTC, ISO).
        versions: (library, versions) pairs: those in the cells' signatures, then the report's environment.
        signatures: one row per cell: quant, task, lang, signature.
    """

    models: tuple[str, ...]
    baseline: str
    note: str
    run_dir: str
    written: tuple[str, str] | None
    generated: str
    versions: tuple[tuple[str, str], ...]
    signatures: pd.DataFrame = field(repr=False)


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def run_info(frame: pd.DataFrame, baseline: str, run_dir: str | Path | None = None) -> RunInfo:
    """Collect the summary's facts about a run from its results (and its folder, for the dates).

    Example:
        >>> info = run_info(pd.DataFrame({"model": "m@1", "quant": ["fp32"], "task": "t", "lang": "en",
        ...     "signature": "mlquant:0.1.0|model:m@1|quant:fp32|backend:none|calib:none|task:t@1|lang:en|limit:none|"
        ...                  "seed:0|torch:2.13|transformers:5.24"}), "fp32")
        >>> info.versions[:3]
        (('mlquant (run)', '0.1.0'), ('torch (run)', '2.13'), ('transformers (run)', '5.24'))
    """
    models = tuple(sorted(str(m) for m in frame["model"].unique())) if "model" in frame.columns else ()
    where = run_dir if run_dir is not None else frame.attrs.get("run_dir")
    written = None
    if where is not None and (Path(where) / "cells").is_dir():
        times = [p.stat().st_mtime for p in (Path(where) / "cells").rglob("*.parquet")]
        written = (_stamp(min(times)), _stamp(max(times))) if times else None
    keys = ["quant", "task", "lang"]
    if "signature" in frame.columns and len(frame):
        sigs = frame.drop_duplicates(keys)[[*keys, "signature"]].astype(str).sort_values(keys).reset_index(drop=True)
    else:
        sigs = pd.DataFrame(columns=[*keys, "signature"])
    seen: dict[str, set[str]] = {}
    for text in sigs["signature"].unique():
        try:
            parsed = Signature.parse(str(text))
        except DataError:
            continue
        for key in ("mlquant", "torch", "transformers", "engine"):
            if getattr(parsed, key):
                seen.setdefault(key, set()).add(getattr(parsed, key))
    versions = [(f"{key} (run)", ", ".join(sorted(values))) for key, values in seen.items()]
    versions += [(f"{name} (report)", _installed(name)) for name in REPORT_LIBRARIES]
    return RunInfo(models, baseline, baseline_note(models, baseline), str(where or ""), written,
                   _stamp(datetime.now(timezone.utc).timestamp()), tuple(versions), sigs)
