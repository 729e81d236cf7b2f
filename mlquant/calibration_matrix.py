"""The calibration-language x evaluation-language matrix: what calibrating on one language does to the others.

A calibrated method (GPTQ, AWQ, SmoothQuant, ...) sees text in some language while it quantizes. This module asks,
for every evaluation language, how the same method calibrated on another source compares with it calibrated on a
*reference* source (English by default), item by item:

* :func:`calibration_grid` builds the quant list of a :class:`~mlquant.study.Study` that runs the grid (each method
  on each calibration source, plus the no-calibration controls such as RTN at the same bits and group size);
* :func:`calibration_matrix` turns the finished run into a :class:`CalibrationMatrix`: one row per (method,
  calibration source, task, evaluation language) with the paired difference to the reference-calibrated cell, its
  paired bootstrap CI, a paired test (McNemar for 0/1 scores, the sign-flip permutation test of the mean otherwise)
  and Holm-adjusted p-values over each matrix; and, where the run has them, the difference of each calibrated cell
  to RTN and HQQ at the same bits/group (``delta_vs_rtn``, ``delta_vs_hqq``) and to the unquantized baseline
  (``delta_vs_baseline``): so that "calibrating on English hurts Greek beyond rounding" can be told apart from
  "4-bit hurts Greek".

A method's base label is its quant label without the ``@<calibration>`` suffix (``gptq-w4g128@flores:ja:128`` ->
``gptq-w4g128``); a label without a suffix whose base also appears with one is the method with its default
calibration (:data:`mlquant.quantize.calibration.DEFAULT_CALIBRATION`, English). Calibration sources get short
names: ``flores:ja:128`` -> ``ja``, ``flores:en+ja+zh+ar:128`` -> ``mix(en+ja+zh+ar)``, ``flores:mixed:128`` ->
``mixed``, a text file -> its file name (``:<n>`` is appended where one method has a language at several sizes).

Example:
    >>> grid = calibration_grid(["gptq-w4g128"], ["en", "ja"], n=64, controls=["rtn-w4g128"])  # doctest: +SKIP
    >>> grid  # doctest: +SKIP
    ['fp32', {'label': 'gptq-w4g128', 'calibration': ['flores:en:64', 'flores:ja:64']}, 'rtn-w4g128']
    >>> calibration_name("flores:en+ja+zh+ar:128")
    'mix(en+ja+zh+ar)'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, DataError
from mlquant.quantize.calibration import DEFAULT_CALIBRATION, parse_calibration
from mlquant.stats import Bootstrap, adjust, mcnemar, pair, paired_bootstrap, permutation_test
from mlquant.stats._types import FrameResult

__all__ = ["CONTROL_METHODS", "CalibrationMatrix", "calibration_grid", "calibration_matrix", "calibration_name"]

#: Methods without calibration that serve as the no-calibration reference at the same bits / group size.
CONTROL_METHODS = ("rtn", "hqq")

#: The columns every matrix has, in order (more follow them).
MATRIX_COLUMNS = ("method", "calibration", "lang", "task", "delta", "ci_low", "ci_high", "p", "p_holm", "n")

_BITS = re.compile(r"-(w\d+(?:g\d+)?(?:a\d+)?)(?=-|$)")


def calibration_name(calibration: str | None) -> str:
    """The short name of a calibration source (``None`` or ``""``: the default calibration's).

    Example:
        >>> calibration_name("flores:ja:128"), calibration_name("flores:mixed:64"), calibration_name(None)
        ('ja', 'mixed', 'en')
    """
    src = parse_calibration(calibration or DEFAULT_CALIBRATION)
    if src.kind == "file":
        return Path(str(src.path)).name
    if len(src.languages) == 1:
        return src.languages[0]
    return "mix(" + "+".join(src.languages) + ")"


def _source_string(source: str, n: int) -> str:
    """``en`` -> ``flores:en:<n>``; ``en+ja`` -> ``flores:en+ja:<n>``; a full ``flores:...`` string or a path as is."""
    if source.startswith("flores:") or "/" in source or source.endswith(".txt"):
        return source
    return f"flores:{source}:{n}"


def calibration_grid(
    methods: Sequence[str],
    sources: Sequence[str],
    *,
    n: int = 128,
    controls: Sequence[str] = (),
    baseline: str | None = "fp32",
) -> list[str | dict[str, Any]]:
    """The quant list of a study that runs each method on each calibration source, plus controls and a baseline.

    Args:
        methods: labels of calibrated methods without calibration (``gptq-w4g128``, ``awq-w4g128``).
        sources: calibration sources: a FLORES language (``ja``), several joined by ``+`` (``en+ja+zh+ar``, sampled
            round-robin), ``mixed`` (every FLORES language), a full calibration string (``flores:ja:64``) or a text
            file path.
        n: sentences per calibration set (for the short forms).
        controls: labels without calibration at the same bits (``rtn-w4g128``, ``hqq-w4g128``; ``rtn-w4g128-asym``
            for the asymmetric grid, which AWQ uses).
        baseline: the unquantized baseline to put first (``fp32``, ``bf16``, ``fp16``), or None to leave it out.

    Returns:
        Entries for ``Study(quant=...)``: the baseline, one mapping per method whose ``calibration`` list is the
        axis of sources, then the controls.

    Raises:
        ConfigError: an empty or repeated method or source, a method that takes no calibration, a source whose
            FLORES data is missing, or a control that does not parse; before any model is loaded.

    Example:
        >>> calibration_grid(["gptq-w4g128"], ["en", "ja+zh"], n=64, controls=["rtn-w4g128"])  # doctest: +SKIP
        ['fp32', {'label': 'gptq-w4g128', 'calibration': ['flores:en:64', 'flores:ja+zh:64']}, 'rtn-w4g128']
    """
    from mlquant.spec import QuantSpec

    if isinstance(methods, str) or isinstance(sources, str) or isinstance(controls, str):
        raise ConfigError("calibration_grid: methods, sources and controls are lists of labels, not one string.")
    if not methods or not sources:
        raise ConfigError(f"calibration_grid: needs at least one method and one source (got {methods!r}, {sources!r}).")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"calibration_grid: n={n!r}; expected a positive number of sentences.")
    for what, values in (("method", methods), ("source", sources), ("control", controls)):
        dupes = sorted({v for v in values if list(values).count(v) > 1})
        if dupes:
            raise ConfigError(f"calibration_grid: {what} {dupes[0]!r} is listed twice.")
    strings = [_source_string(str(s), n) for s in sources]
    for label in methods:
        if "@" in label:
            raise ConfigError(f"calibration_grid: method {label!r} already names a calibration; give it without '@...'.")
        for cal in strings:
            try:
                QuantSpec.parse(label, calibration=cal)
            except ConfigError as exc:
                raise ConfigError(f"calibration_grid: method {label!r} with calibration {cal!r}: {exc}") from exc
    control_entries: list[str | dict[str, Any]] = []
    for label in controls:
        # 'rtn-w4g128-asym' (how the label prints) -> {label: rtn-w4g128, symmetric: false}, as a study spells it.
        entry: str | dict[str, Any] = (
            {"label": label.removesuffix("-asym"), "symmetric": False} if label.endswith("-asym") else label
        )
        try:
            spec = QuantSpec.from_dict(entry) if isinstance(entry, dict) else QuantSpec.parse(entry)
        except ConfigError as exc:
            raise ConfigError(f"calibration_grid: control {label!r}: {exc}") from exc
        if spec.calibration is not None or spec.is_baseline:
            raise ConfigError(f"calibration_grid: control {label!r} must be a quantizer without calibration.")
        control_entries.append(entry)
    grid: list[str | dict[str, Any]] = [baseline] if baseline is not None else []
    if baseline is not None and not QuantSpec.parse(baseline).is_baseline:
        raise ConfigError(f"calibration_grid: baseline={baseline!r} is not fp32, bf16 or fp16.")
    grid += [{"label": label, "calibration": list(strings)} for label in methods]
    grid += control_entries
    return grid


# ----- the matrix -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CalibrationMatrix(FrameResult):
    """One row per (method, calibration source, task, evaluation language); see :func:`calibration_matrix`.

    Attributes:
        reference: the short name of the reference calibration source.
        alpha: the significance level of the marks (on ``p_holm``).
        ci: the bootstrap settings of the intervals.
        controls: the control labels found in the run, per method (``{"gptq-w4g128": ("rtn-w4g128",)}``).
        baseline: the unquantized baseline of ``delta_vs_baseline``, or None when the run has none.
    """

    reference: str = "en"
    alpha: float = 0.05
    ci: Bootstrap = field(default_factory=Bootstrap)
    controls: dict[str, tuple[str, ...]] = field(default_factory=dict)
    baseline: str | None = None

    def pivot(self, value: str = "delta") -> pd.DataFrame:
        """A wide table of one column: rows (method, task, calibration), columns the evaluation languages."""
        if value not in self._frame.columns:
            raise ConfigError(f"pivot: no column {value!r}; columns: {list(self._frame.columns)}.")
        frame = self._frame
        wide = frame.pivot_table(index=["method", "task", "calibration"], columns="lang", values=value, sort=False)
        langs = list(dict.fromkeys(frame["lang"]))
        wide = wide.reindex(columns=langs)
        wide.columns.name = None
        return wide

    def __str__(self) -> str:
        frame = self._frame
        if frame.empty:
            return "calibration matrix: no cells"
        langs = list(dict.fromkeys(frame["lang"]))
        blocks = []
        for (method, task), part in frame.groupby(["method", "task"], sort=False):
            hib = bool(part["higher_is_better"].iloc[0])
            metric = str(part["metric"].iloc[0])
            head = (
                f"{method} on {task} ({metric}, {'higher' if hib else 'lower'} is better): delta vs "
                f"{self.reference}-calibrated (rows '<source> - <control>': vs the control without calibration); "
                f"* p_holm < {self.alpha:g} ({self.ci.confidence:.0%} CIs in to_frame())"
            )
            rows = []
            for cal, sub in part.groupby("calibration", sort=False):
                by_lang = {str(r["lang"]): r for r in sub.to_dict("records")}
                cells = [_mark(by_lang.get(lang), "delta", "p_holm", self.alpha) for lang in langs]
                rows.append([str(cal), *cells])
            for ctrl in self.controls.get(str(method), ()):
                short = ctrl.split("-")[0]
                for cal, sub in part.groupby("calibration", sort=False):
                    by_lang = {str(r["lang"]): r for r in sub.to_dict("records")}
                    cells = [_mark(by_lang.get(lang), f"delta_vs_{short}", f"p_vs_{short}_holm", self.alpha)
                             for lang in langs]
                    rows.append([f"{cal} - {ctrl}", *cells])
            table = pd.DataFrame(rows, columns=["calibration", *langs])
            blocks.append(head + "\n" + table.to_string(index=False))
        return "\n\n".join(blocks)


def _mark(row: Mapping[Any, Any] | None, col: str, pcol: str, alpha: float) -> str:
    if row is None or pd.isna(row.get(col)):
        return "-"
    p = row.get(pcol)
    star = "*" if p is not None and not pd.isna(p) and float(p) < alpha else ""
    return f"{float(row[col]):+.4f}{star}"


def _split_label(label: str) -> tuple[str, str | None]:
    base, sep, cal = label.partition("@")
    return base, (cal if sep else None)


def _method_labels(frame: pd.DataFrame) -> dict[str, dict[str, str]]:
    """base label -> {short calibration name -> quant label}, for every method with a calibrated cell."""
    labels = [str(q) for q in dict.fromkeys(frame["quant"])]
    split = [(label, *_split_label(label)) for label in labels]
    calibrated = {base for _, base, cal in split if cal is not None}
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for label, base, cal in split:
        if base not in calibrated:
            continue
        full = cal or DEFAULT_CALIBRATION
        try:
            short = calibration_name(full)
        except ConfigError:
            short = full
        out.setdefault(base, {})[label] = (short, full)
    result: dict[str, dict[str, str]] = {}
    for base, entries in out.items():
        shorts = [s for s, _ in entries.values()]
        names: dict[str, str] = {}
        for label, (short, full) in entries.items():
            if shorts.count(short) > 1:
                src = parse_calibration(full)
                short = f"{short}:{src.n}"
            if short in names:
                raise DataError(
                    f"calibration_matrix: {base!r} has two cells for calibration {short!r} "
                    f"({names[short]!r} and {label!r}); filter one out first."
                )
            names[short] = label
        result[base] = names
    return result


def _control_candidates(base: str, control: str) -> list[str]:
    """Labels of ``control`` at the bits and group size of ``base``, on the same grid first (``rtn-w4g128-asym`` for
    AWQ, whose default grid is asymmetric), then on the control's default grid."""
    from mlquant.spec import QuantSpec

    m = _BITS.search(base)
    if m is None:
        return []
    plain = f"{control}-{m.group(1)}"
    try:
        symmetric = QuantSpec.parse(base).symmetric
    except ConfigError:  # a label with method options: only its suffix says
        symmetric = not (base.endswith("-asym") or "-asym-" in base)
    return [plain] if symmetric else [f"{plain}-asym", plain]


def _is_binary(frame: pd.DataFrame) -> bool:
    scores = pd.to_numeric(frame["score"], errors="coerce").dropna()
    return bool(len(scores)) and bool(scores.isin([0.0, 1.0]).all())


def _compare(frame: pd.DataFrame, ref_label: str, labels: Sequence[str], ci: Bootstrap) -> pd.DataFrame:
    """Paired diff (label - ref_label), its CI and a paired test per (quant, task, lang)."""
    sub = frame[frame["quant"].isin([ref_label, *labels])]
    paired = pair(sub, ref_label)
    table = paired_bootstrap(
        paired, ref_label, seed=ci.seed, n_resamples=ci.n_resamples, method=ci.method, confidence=ci.confidence
    ).to_frame()
    keys = ["quant", "task", "lang"]
    out = table[[*keys, "n", "baseline", "quantized", "diff", "diff_lo", "diff_hi", "metric", "higher_is_better"]]
    tasks = [str(t) for t in paired.cells["task"].unique()]
    binary = [t for t in tasks if _is_binary(sub[sub["task"] == t])]
    tests = []
    if binary:
        tests.append(mcnemar(paired.select(task=binary), ref_label).to_frame()[[*keys, "p_value", "test"]])
    other = [t for t in tasks if t not in binary]
    if other:
        perm = permutation_test(paired.select(task=other), ref_label, n_resamples=ci.n_resamples, seed=ci.seed)
        tests.append(perm.to_frame()[[*keys, "p_value", "test"]])
    merged: pd.DataFrame = out.merge(pd.concat(tests, ignore_index=True), on=keys, how="left")
    return merged


def _select(frame: pd.DataFrame, column: str, wanted: str | Sequence[str] | None) -> pd.DataFrame:
    if wanted is None:
        return frame
    values = [wanted] if isinstance(wanted, str) else list(wanted)
    if column not in frame.columns:
        raise DataError(f"calibration_matrix: {column}={wanted!r} given, but the results have no {column!r} column.")
    present = [str(v) for v in dict.fromkeys(frame[column])]
    missing = [v for v in values if v not in present]
    if missing:
        raise ConfigError(f"calibration_matrix: {column} {missing[0]!r} is not in the results (present: {present}).")
    return frame[frame[column].isin(values)]


def calibration_matrix(
    results: Any,
    *,
    reference: str = "en",
    method: str | Sequence[str] | None = None,
    task: str | Sequence[str] | None = None,
    metric: str | None = None,
    baseline: str | None = None,
    ci: Bootstrap | None = None,
    alpha: float = 0.05,
) -> CalibrationMatrix:
    """Each calibrated method's score change per (calibration source, evaluation language) vs the reference source.

    ``delta`` is the paired per-item mean of ``score(method@source) - score(method@reference)`` over the items of
    that task and language (positive = higher score; for bits per byte, *worse*: ``harm`` is the direction-aware
    version, positive = worse). ``ci_low``/``ci_high`` are paired bootstrap intervals (:func:`mlquant.stats.
    paired_bootstrap`); ``p`` is the exact McNemar test for 0/1 scores, else the paired sign-flip permutation test
    of the mean (:func:`mlquant.stats.permutation_test`); ``p_holm`` is Holm-adjusted over each matrix (one method
    and task, every non-reference source x language). The reference source's own row has ``delta`` 0 and no test.

    Where the run has them, ``delta_vs_rtn`` / ``delta_vs_hqq`` (with ``_low``, ``_high``, ``p_vs_*`` and
    ``p_vs_*_holm``) compare each calibrated cell with RTN / HQQ at the same bits and group size (``gptq-w4g128``
    -> ``rtn-w4g128``; on the same grid where the run has it: ``awq-w4g128``, asymmetric, -> ``rtn-w4g128-asym``,
    else ``rtn-w4g128``; ``rtn_label`` / ``hqq_label`` say which): a negative ``delta_vs_rtn`` on bits per byte
    means the calibrated method beats plain rounding there. ``delta_vs_baseline`` (with its CI) compares it with the
    unquantized baseline. The columns are NaN where the run lacks that cell.

    Args:
        results: the tidy per-item frame or :class:`mlquant.results.Results` of a run.
        reference: the reference calibration source: a short name (``en``, ``mix(en+ja)``) or a calibration string
            (``flores:en:128``).
        method: base label(s) (``gptq-w4g128``) or method name(s) (``gptq``) to keep; default: every calibrated one.
        task: task label(s) to keep; default: all.
        metric: keep the tasks with this metric (``bits_per_byte``); default: all.
        baseline: the unquantized baseline of ``delta_vs_baseline`` (default: fp32, else bf16, else fp16, else none).
        ci: the bootstrap settings (default ``Bootstrap()``: 10,000 percentile resamples, 95 %, seed 0); its seed
            and ``n_resamples`` also drive the permutation test.
        alpha: the level of the ``significant`` column and of the marks in ``str()``.

    Returns:
        A :class:`CalibrationMatrix` whose ``to_frame()`` has ``method, calibration, lang, task, delta, ci_low,
        ci_high, p, p_holm, n`` first, then ``harm, significant, quant, calibration_string, reference_label,
        metric, higher_is_better, test, score, reference_score`` and the control columns.

    Raises:
        ConfigError: no calibrated method (labels ``<method>@<calibration>``), a method, task or metric that is not
            in the results, or a method without a cell calibrated on ``reference`` (naming the method, the
            reference and the sources it has).
        DataError: the frame lacks a column, or holds several models.

    Example:
        >>> rows = []
        >>> for quant, shift in [("fp32", 0.0), ("gptq-w4g128@flores:en:8", 0.1), ("gptq-w4g128@flores:ja:8", 0.3)]:
        ...     rows += [{"quant": quant, "task": "flores_ppl", "lang": "ar", "item_id": str(i),
        ...               "score": 1.0 + 0.01 * i + shift, "higher_is_better": False} for i in range(30)]
        >>> m = calibration_matrix(pd.DataFrame(rows), ci=Bootstrap(n_resamples=1000))
        >>> row = m.to_frame().set_index("calibration").loc["ja"]
        >>> round(float(row["delta"]), 3), bool(row["p_holm"] < 0.05), round(float(row["delta_vs_baseline"]), 3)
        (0.2, True, 0.3)

    References:
        Frantar, E., et al. (2023). GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
        Transformers. ICLR (calibration on text). Marchisio, K., et al. (2024). How Does Quantization Affect
        Multilingual LLMs? arXiv:2407.03211 (the calibration language as a factor).
    """
    from mlquant.stats import as_frame, default_baseline

    ci = ci if ci is not None else Bootstrap()
    if not isinstance(ci, Bootstrap):
        raise ConfigError(f"calibration_matrix: ci must be a mlquant.stats.Bootstrap, got {type(ci).__name__}.")
    if not 0 < float(alpha) < 1:
        raise ConfigError(f"calibration_matrix: alpha={alpha!r}; expected a level in (0, 1).")
    frame = as_frame(results)
    missing = [c for c in ("quant", "task", "lang", "item_id", "score") if c not in frame.columns]
    if missing:
        raise DataError(f"calibration_matrix: the results lack column(s) {missing}.")
    if "model" in frame.columns and frame["model"].nunique() > 1:
        raise DataError(
            f"calibration_matrix: the results hold several models ({sorted(frame['model'].unique())}); "
            "filter them to one first."
        )
    frame = _select(_select(frame, "task", task), "metric", metric)
    methods = _method_labels(frame)
    if not methods:
        raise ConfigError(
            "calibration_matrix: no calibrated method in the results: no quant label has an '@<calibration>' "
            f"suffix (labels: {[str(q) for q in dict.fromkeys(frame['quant'])]}). Run e.g. "
            "{label: gptq-w4g128, calibration: [flores:en:128, flores:ja:128]}."
        )
    if method is not None:
        wanted = [method] if isinstance(method, str) else list(method)
        chosen = {b: v for b, v in methods.items() if b in wanted or b.split("-w")[0] in wanted}
        unknown = [w for w in wanted if not any(w == b or w == b.split("-w")[0] for b in methods)]
        if unknown:
            raise ConfigError(
                f"calibration_matrix: method {unknown[0]!r} has no calibrated cell; calibrated methods: {sorted(methods)}."
            )
        methods = chosen
    base_label: str | None
    try:
        base_label = baseline or default_baseline(frame)
    except ConfigError:
        base_label = None
    if base_label is not None and base_label not in set(frame["quant"]):
        raise ConfigError(f"calibration_matrix: baseline {base_label!r} is not in the results.")
    parts = []
    controls: dict[str, tuple[str, ...]] = {}
    for base, names in methods.items():
        ref_short = _reference_name(base, names, reference)
        part, found = _method_matrix(frame, base, names, ref_short, ci, base_label)
        controls[base] = found
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table["significant"] = table["p_holm"] < alpha
    lead = list(MATRIX_COLUMNS)
    table = table[lead + [c for c in table.columns if c not in lead]]
    return CalibrationMatrix(
        _frame=table, reference=reference, alpha=float(alpha), ci=ci, controls=controls, baseline=base_label
    )


def _reference_name(base: str, names: dict[str, str], reference: str) -> str:
    if reference in names:
        return reference
    for short, label in names.items():
        if _split_label(label)[1] == reference or (
            _split_label(label)[1] is None and reference == DEFAULT_CALIBRATION
        ):
            return short
    raise ConfigError(
        f"calibration_matrix: method {base!r} has no cell calibrated on the reference {reference!r}; its calibration "
        f"sources are {sorted(names)}. Add {base}@flores:{reference}:<n> to the study, or pass reference= one of these."
    )


def _method_matrix(
    frame: pd.DataFrame, base: str, names: dict[str, str], ref_short: str, ci: Bootstrap, baseline: str | None
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The rows of one method (every source incl. the reference) and the control labels found."""
    ref_label = names[ref_short]
    short_of = {label: short for short, label in names.items()}
    own = frame[frame["quant"].isin(list(names.values()))]
    keys = ["quant", "task", "lang"]
    weight = pd.to_numeric(own["weight"], errors="coerce").fillna(1.0) if "weight" in own.columns else 1.0
    scored = own.assign(_w=weight, _sw=pd.to_numeric(own["score"], errors="coerce") * weight)
    scored = scored[scored["_sw"].notna()]
    cells = scored.groupby(keys, sort=False).agg(sw=("_sw", "sum"), w=("_w", "sum"), n=("_sw", "count")).reset_index()
    cells["score"] = cells["sw"] / cells["w"]
    cells = cells.drop(columns=["sw", "w"])
    # Rows: the reference, then single-language sources (alphabetical), then mixes and files.
    others = sorted((lb for lb in names.values() if lb != ref_label), key=lambda lb: ("(" in short_of[lb], short_of[lb]))
    if others:
        delta = _compare(frame, ref_label, others, ci).rename(
            columns={"diff": "delta", "diff_lo": "ci_low", "diff_hi": "ci_high", "p_value": "p", "n": "n_paired"}
        )
        delta = delta.drop(columns=["quantized"]).rename(columns={"baseline": "reference_score"})
    else:
        delta = pd.DataFrame(columns=[*keys, "delta", "ci_low", "ci_high", "p", "test", "n_paired", "reference_score"])
    table = cells.merge(delta.drop(columns=["metric", "higher_is_better"], errors="ignore"), on=keys, how="left")
    is_ref = table["quant"] == ref_label
    table.loc[is_ref, ["delta", "ci_low", "ci_high"]] = 0.0
    ref_scores = table[is_ref].set_index(["task", "lang"])["score"]
    table["reference_score"] = [ref_scores.get((t, lg), np.nan) for t, lg in zip(table["task"], table["lang"])]
    meta = _task_meta(frame)
    table["metric"] = table["task"].map(lambda t: meta[t][0])
    table["higher_is_better"] = table["task"].map(lambda t: meta[t][1])
    table["harm"] = np.where(table["higher_is_better"].astype(bool), -1.0, 1.0) * table["delta"].astype(float)
    table["n"] = np.where(is_ref, table["n"], table["n_paired"].fillna(0)).astype(int)
    p = pd.to_numeric(table["p"], errors="coerce").to_numpy(dtype=float)
    table["p"] = p
    table["p_holm"] = np.nan
    for _, idx in table.groupby("task", sort=False).indices.items():
        table.loc[table.index[idx], "p_holm"] = adjust(p[idx], "holm")
    found = []
    for ctrl in CONTROL_METHODS:
        col = f"delta_vs_{ctrl}"
        extra = [col, f"{col}_low", f"{col}_high", f"p_vs_{ctrl}", f"p_vs_{ctrl}_holm"]
        table[extra] = np.nan
        table[f"{ctrl}_label"] = ""
        present = [c for c in _control_candidates(base, ctrl) if c in set(frame["quant"])]
        if not present:
            continue
        ctrl_label = present[0]
        table[f"{ctrl}_label"] = ctrl_label
        found.append(ctrl_label)
        _fill(table, _compare(frame, ctrl_label, list(names.values()), ci), col, f"p_vs_{ctrl}")
    table[["delta_vs_baseline", "delta_vs_baseline_low", "delta_vs_baseline_high"]] = np.nan
    if baseline is not None:
        _fill(table, _compare(frame, baseline, list(names.values()), ci), "delta_vs_baseline", None)
    table.insert(0, "method", base)
    table.insert(1, "calibration", table["quant"].map(short_of))
    table["calibration_string"] = table["quant"].map(lambda q: _split_label(q)[1] or DEFAULT_CALIBRATION)
    table["reference_label"] = ref_label
    table = table.drop(columns=["n_paired"])
    order = {label: i for i, label in enumerate([ref_label, *others])}
    table = table.sort_values(by="quant", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return table, tuple(found)


def _fill(table: pd.DataFrame, comp: pd.DataFrame, col: str, pcol: str | None) -> None:
    """Put a comparison's diff, CI (and p, Holm-adjusted per task) into ``table``'s columns, by (quant, task, lang)."""
    keyed = comp.set_index(["quant", "task", "lang"])
    idx = pd.MultiIndex.from_frame(table[["quant", "task", "lang"]])
    table[col] = keyed["diff"].reindex(idx).to_numpy(dtype=float)
    table[f"{col}_low"] = keyed["diff_lo"].reindex(idx).to_numpy(dtype=float)
    table[f"{col}_high"] = keyed["diff_hi"].reindex(idx).to_numpy(dtype=float)
    if pcol is None:
        return
    p = pd.to_numeric(keyed["p_value"].reindex(idx), errors="coerce").to_numpy(dtype=float)
    table[pcol] = p
    holm = np.full(len(table), np.nan)
    for _, rows in table.groupby("task", sort=False).indices.items():
        holm[rows] = adjust(p[rows], "holm")
    table[f"{pcol}_holm"] = holm


def _task_meta(frame: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """task -> (metric, higher_is_better), from the frame's columns (defaults: ``score``, True)."""
    out: dict[str, tuple[str, bool]] = {}
    for t, part in frame.groupby("task", sort=False):
        metric = str(part["metric"].iloc[0]) if "metric" in part.columns else "score"
        hib = True
        if "higher_is_better" in part.columns:
            value = part["higher_is_better"].iloc[0]
            hib = bool(value) if isinstance(value, (bool, np.bool_)) else str(value).strip().lower() in ("true", "1", "1.0")
        out[str(t)] = (metric, bool(hib))
    return out
