"""Reports: what quantizing cost, per task and language, built once as data and rendered as text or HTML.

:func:`build_report` computes every part of the report once: the summary (:mod:`mlquant.report_summary`: the
changes that survive Holm correction across all cells, in words, and what the other cells could have detected),
the table sections (:class:`Section`: scores, relative change, similarity to the baseline, judge win rates, the
corpus-level metrics of every cell -- chrF++ and spBLEU of translation, LPR / WPR / LCPR of language confusion) and
the statistics of every cell. :meth:`Report.to_text` renders them for the terminal (what ``mlquant report RUN``
prints); :meth:`Report.to_html` as a self-contained page (:mod:`mlquant.report_html`: summary first, then the
figures of :func:`mlquant.plot.report_figures` as inline SVG, the tables and the statistics; ``mlquant report RUN
--html PAGE``, :func:`write_html`), and ``_repr_html_`` the same without the page shell for Jupyter. The tables are
also public functions.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> report = mq.report.build_report(mq.read_results("runs/demo"))  # doctest: +SKIP
    >>> print(report.to_text())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from mlquant.errors import MlquantError
from mlquant.report_html import EMPTY, Section, figures_html, format_table, render, statistics_html, summary_html
from mlquant.report_summary import Findings, RunInfo, cell_statistics, find, run_info
from mlquant.results import aggregate
from mlquant.stats import as_frame
from mlquant.tasks import Task, get_task

__all__ = [
    "EMPTY",
    "Report",
    "Section",
    "build_report",
    "corpus_metrics",
    "corpus_table",
    "default_baseline",
    "format_table",
    "relative_change_table",
    "score_table",
    "scored_rows",
    "similarity_table",
    "write_html",
]

log = logging.getLogger(__name__)


def _as_frame(results: Any) -> pd.DataFrame:
    """The tidy frame of a DataFrame or a :class:`mlquant.Results` (:func:`mlquant.stats.as_frame`)."""
    frame: pd.DataFrame = as_frame(results)
    return frame


def default_baseline(frame: pd.DataFrame) -> str:
    """The baseline label of a results frame: fp32, else bf16, else fp16 (:func:`mlquant.stats.default_baseline`)."""
    from mlquant.stats import default_baseline as default

    return default(_as_frame(frame))


def scored_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a score (open-ended generations have none until they are judged)."""
    frame = _as_frame(frame)
    return frame[frame["score"].notna()]


def score_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Aggregate score per (task, metric, lang) row and quant column."""
    frame = _as_frame(frame)
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

    frame = _as_frame(frame)
    baseline = baseline or default_baseline(frame)
    frame = scored_rows(frame)
    if frame.empty or not (frame["quant"] != baseline).any() or not (frame["quant"] == baseline).any():
        return pd.DataFrame()
    rc = stats.relative_change(frame, baseline=baseline).to_frame()
    metric = frame.drop_duplicates("task").set_index("task")["metric"]
    rc = rc.assign(metric=rc["task"].map(metric))
    # pivot, not pivot_table: a cell whose relative change is undefined (baseline 0) stays in the table as NaN.
    table = rc.pivot(index=["task", "metric", "lang"], columns="quant", values="rel_change")
    order = [q for q in dict.fromkeys(frame["quant"]) if q in table.columns and q != baseline]
    return table[order]


def _binary_tasks(frame: pd.DataFrame) -> list[str]:
    """Tasks whose every scored item is 0 or 1 (choice tasks, MGSM exact match): the ones where a flip is defined."""
    scored = frame[frame["score"].notna()]
    is01 = scored["score"].isin([0.0, 1.0]).groupby(scored["task"]).all()
    return sorted(is01[is01].index)


def similarity_table(
    frame: pd.DataFrame,
    baseline: str | None = None,
    *,
    cosine: bool = False,
    embedder: Any = None,
    kl: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """How far each quantized model's answers moved from the baseline's, on the same items (Kurtic et al. 2024).

    Per (task, lang) row and quant: on tasks scored 0/1 (choice tasks, MGSM) the flip rate in % with its two
    directions (Dutta et al. 2024); on generation tasks the mean chrF (0-100) and ROUGE-L F1 (0-1) between the
    quantized and the baseline output of each item, and with ``cosine=True`` the mean embedding cosine
    (:func:`mlquant.similarity.default_embedder` unless ``embedder`` is given). A column is NaN where it does
    not apply. ``kl`` (the per-sentence frame of :func:`mlquant.similarity.run_kl`, ``mlquant kl``) adds the mean
    KL(baseline || quantized) of next-token distributions in nats per token, on the flores_ppl rows.

    Example:
        >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "xcopa", "lang": "tr",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 0.0, 0.0, 0.0], "kind": "choice",
        ...                    "output": ""})
        >>> similarity_table(df)["flip_rate"].tolist()
        [50.0]
    """
    from mlquant import similarity

    frame = _as_frame(frame)
    baseline = baseline or default_baseline(frame)
    parts = []
    binary = _binary_tasks(frame)
    if binary:
        flips = similarity.flip_rate(frame, baseline, kinds=None, tasks=binary)
        flips = flips.assign(flip_rate=100 * flips["flip_rate"],
                             c2w=100 * flips["correct_to_wrong"] / flips["n"],
                             w2c=100 * flips["wrong_to_correct"] / flips["n"])
        parts.append(flips[["quant", "task", "lang", "n", "flip_rate", "c2w", "w2c"]])
    generated = frame[frame["kind"] == "generate"]
    if len(generated) and (generated["quant"] != baseline).any():
        metrics = ("chrf", "rouge_l", "cosine") if cosine else ("chrf", "rouge_l")
        sim = similarity.output_similarity(generated, baseline, metrics=metrics, embedder=embedder)
        sim = sim.groupby(["quant", "task", "lang"], sort=False)[list(metrics)].agg(["mean", "size"])
        means = sim.xs("mean", axis=1, level=1)
        means["n"] = sim[(metrics[0], "size")]
        parts.append(means.reset_index())
    if kl is not None and len(kl):
        mean_kl = kl.groupby(["quant", "task", "lang"], sort=False)["kl"].agg(["mean", "size"]).reset_index()
        parts.append(mean_kl.rename(columns={"mean": "kl", "size": "n"}))
    if not parts:
        return pd.DataFrame()
    long = pd.concat(parts, ignore_index=True)
    value_cols = [c for c in ("n", "flip_rate", "c2w", "w2c", "chrf", "rouge_l", "cosine", "kl") if c in long.columns]
    # MGSM is in both parts (0/1 scores and generated text): one row per cell, the first non-NaN of each column.
    table = long.groupby(["task", "lang", "quant"], sort=True)[value_cols].first()
    table["n"] = table["n"].astype(int)
    return table


# ----- corpus-level metrics: Task.aggregate of every cell --------------------------------------------------------------
_TASK_FIELD = re.compile(r"(?:^|\|)task:([A-Za-z0-9_.-]+)@[^|\[]*(?:\[(.*?)\])?(?=\|(?:label|lang):|$)")


def _option(value: str, split: bool) -> Any:
    """A task option as the signature wrote it, read back (int, float, bool; ``a+b`` as a list with ``split``)."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value in ("True", "False"):
        return value == "True"
    return value.split("+") if split and "+" in value else value


def _task_spec(signature: str) -> str:
    """``NAME[OPTIONS]`` from the ``task:NAME@VER[OPTIONS]`` field of a cell signature (``""`` without one)."""
    match = _TASK_FIELD.search(signature)
    return f"{match.group(1)}[{match.group(2) or ''}]" if match else ""


@lru_cache(maxsize=256)
def _task_of(label: str, spec: str) -> Task | None:
    """The task of a cell, rebuilt from its signature's task (:func:`_task_spec`; without one, from its label).

    Options are read back from their text; where the task refuses them, it is built with its defaults (corpus
    metrics read what they need from the rows). None: no registered task of that name.
    """
    name, _, text = spec[:-1].partition("[") if spec else (label, "", "")
    pairs = [part.partition("=") for part in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", text) if part]
    for options in ({k: _option(v, False) for k, _, v in pairs}, {k: _option(v, True) for k, _, v in pairs}, {}):
        try:
            return get_task(name, **options)
        except MlquantError:
            continue
    return None


def corpus_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """The corpus-level metrics of every cell, from its task's :meth:`~mlquant.tasks.Task.aggregate`, in long form.

    A cell's task is rebuilt from the ``task:`` field of its rows' ``signature`` (else from the ``task`` label);
    cells of tasks without corpus metrics, or of unknown tasks, have no rows.

    Returns:
        One row per (task, lang, quant, metric): ``value``, ``signature``, ``n`` (items), ``note``, ``n_rows``
        (rows of the cell).

    Example:
        >>> rows = pd.DataFrame({"quant": "w4", "task": "confusion", "lang": "ja", "item_id": ["1", "2"],
        ...     "extra": ['{"skipped": false, "line_pass": true, "word_pass": true}',
        ...               '{"skipped": false, "line_pass": false, "word_pass": null}']})
        >>> corpus_metrics(rows)[["metric", "value"]].round(4).values.tolist()
        [['lpr', 0.5], ['wpr', 1.0], ['lcpr', 0.6667]]
    """
    frame = _as_frame(frame)
    columns = ["task", "lang", "quant", "metric", "value", "signature", "n", "note", "n_rows"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    signatures = frame["signature"].fillna("").astype(str) if "signature" in frame.columns else pd.Series("", frame.index)
    specs = signatures.map({sig: _task_spec(sig) for sig in signatures.unique()})
    out: list[dict[str, Any]] = []
    for (label, spec), rows in frame.groupby([frame["task"].astype(str), specs], sort=True):
        task = _task_of(str(label), str(spec))
        if task is None or type(task).aggregate is Task.aggregate:
            continue
        for (lang, quant), cell in rows.groupby(["lang", "quant"], sort=True):
            try:
                scores = task.aggregate(cell, str(lang))
            except MlquantError as exc:
                log.warning("corpus metrics of %s | %s | %s: %s", quant, label, lang, exc)
                continue
            out += [{"task": label, "lang": lang, "quant": quant, **vars(s), "n_rows": len(cell)} for s in scores.scores]
    return pd.DataFrame(out, columns=columns)


def corpus_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Corpus-level metrics of every cell (:func:`corpus_metrics`), one row per cell, with their signatures.

    Translation (``flores``, any label): chrF++ and spBLEU of sacrebleu, 0-100; where spBLEU cannot run here (no
    flores200 SentencePiece model) its value is NaN and ``spbleu_signature`` says why (``not computed: ...``).
    Language confusion: LPR, WPR, LCPR as fractions in [0, 1].

    Returns:
        Index (task, lang, quant); columns ``n`` (rows of the cell), one per metric, and ``<metric>_signature``
        (the signature, or the note where the value was not computed). Empty when no cell has corpus metrics.
    """
    long = corpus_metrics(frame)
    if long.empty:
        return pd.DataFrame()
    keys = ["task", "lang", "quant"]
    long = long.assign(signature=long["signature"].where(long["signature"] != "", long["note"]))
    metrics = list(dict.fromkeys(long["metric"]))
    values = long.pivot(index=keys, columns="metric", values="value")[metrics]
    signatures = long.pivot(index=keys, columns="metric", values="signature")[metrics].add_suffix("_signature")
    n = long.groupby(keys, sort=True)["n_rows"].first().rename("n")
    table = pd.concat([n, values, signatures], axis=1)
    table.columns.name = None
    return table


def _corpus_sections(frame: pd.DataFrame) -> list[Section]:
    """One section per task label with corpus metrics: the values, then each metric's signatures."""
    long = corpus_metrics(frame)
    sections = []
    for label, part in long.groupby("task", sort=True):
        metrics = list(dict.fromkeys(part["metric"]))
        table = part.pivot(index=["lang", "quant"], columns="metric", values="value")[metrics]
        table.columns.name = None
        table.insert(0, "n", part.groupby(["lang", "quant"], sort=True)["n_rows"].first())
        said: dict[str, list[str]] = {}  # what the signatures say -> the metrics they say it of
        for metric in metrics:
            rows = part[part["metric"] == metric]
            text = "; ".join(sorted(set(rows["signature"].where(rows["signature"] != "", rows["note"]))))
            said.setdefault(text, []).append(metric)
        sacrebleu = [m for m in metrics if m in ("chrf++", "spbleu", "bleu")]
        scales = ["0-100 (sacrebleu)"] * bool(sacrebleu) + ["0-1"] * (len(sacrebleu) < len(metrics))
        sections.append(Section(f"Corpus-level metrics of {label}", table, note=f"one value per cell; {', '.join(scales)}",
                                digits=2 if sacrebleu else 4, lines=tuple(f"{', '.join(m)}: {t}" for t, m in said.items())))
    return sections


# ----- the report ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    """A report on a run: its parts, computed once (:func:`build_report`), rendered as text or HTML.

    Attributes:
        baseline: the baseline quant label.
        models: the models of the run.
        sections: the table sections, in order.
        findings: the summary's findings (:func:`mlquant.report_summary.find`), None without a paired cell.
        statistics: the statistics of every cell in display units (:func:`mlquant.report_summary.cell_statistics`).
        summary: the :class:`mlquant.stats.Summary` (what the terminal prints last), None without a paired cell.
        info: the run's model, baseline, dates, versions and cell signatures.
        results: the per-item frame the figures are drawn from (drawn when the HTML is rendered).
    """

    baseline: str
    models: tuple[str, ...]
    sections: tuple[Section, ...]
    findings: Findings | None = None
    statistics: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    summary: Any = field(default=None, repr=False)
    info: RunInfo | None = field(default=None, repr=False)
    results: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def header(self) -> str:
        return f"Baseline: {self.baseline}. Models: {', '.join(self.models)}."

    def to_text(self) -> str:
        """The report for a terminal (what ``mlquant report RUN`` prints): summary, tables, statistics."""
        parts = [self.header]
        if self.info is not None and self.info.note:
            parts.append(f"Note: {self.info.note}")
        if self.findings is not None:
            parts.append(self.findings.to_text())
        parts += [s.to_text() for s in self.sections]
        if self.summary is not None:
            parts.append(f"Statistics:\n{self.summary}")
        return "\n\n".join(parts)

    def html_parts(self) -> list[str]:
        """The rendered sections of the HTML report, in order: summary, figures, tables, statistics, groupings."""
        info = self.info or run_info(self.results, self.baseline)
        parts = [summary_html(self.findings, info)]
        if len(self.results):
            parts.append(figures_html(self.results, self.baseline))
        parts += [s.to_html() for s in self.sections]
        if self.findings is not None and len(self.statistics):
            notes = tuple(self.summary.notes) if self.summary is not None else ()
            parts.append(statistics_html(self.statistics, self.findings, notes))
            groups = self.summary.groups() if self.summary is not None else pd.DataFrame()
            if len(groups):
                parts.append(Section("Groupings", groups.drop(columns=["weighting"], errors="ignore"),
                                     "mean of the cells' relative changes in % with its 95 % bootstrap CI; each "
                                     "task x language cell weighs the same").to_html())
        return parts

    def to_html(self) -> str:
        """The report as a self-contained HTML page (inline CSS and SVG; no script, no external request)."""
        return render(self.html_parts())

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_html` to ``path`` (UTF-8); return the path."""
        out = Path(path)
        out.write_text(self.to_html(), encoding="utf-8")
        return out

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        return render(self.html_parts(), page=False)


def build_report(
    results: Any,
    baseline: str | None = None,
    *,
    cosine: bool = False,
    kl: pd.DataFrame | None = None,
    judged: pd.DataFrame | None = None,
) -> Report:
    """Compute every section of the report on a run's results, once.

    Args:
        results: the tidy per-item frame (:func:`mlquant.read_results`) or a :class:`mlquant.Results`.
        baseline: the baseline quant label (default: fp32, else bf16, else fp16).
        cosine: add the embedding cosine of generated outputs to the similarity table (needs ``mlquant[embed]``).
        kl: per-sentence KL divergences (``mlquant kl``; ``read_results(run, what="kl")``).
        judged: pairwise verdicts (``mlquant judge``; ``read_results(run, what="judged")``).

    Example:
        >>> df = pd.DataFrame({"model": "m", "quant": ["fp32", "fp32", "w4", "w4"], "task": "xcopa", "lang": "tr",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 1.0, 1.0, 0.0], "weight": 1.0,
        ...                    "metric": "accuracy", "kind": "choice", "output": ""})
        >>> [s.title for s in build_report(df).sections][:3]
        ['Scores', 'Relative change 100*(q-b)/b, paired by item', "Similarity to the baseline's outputs, same items"]
    """
    from mlquant import stats

    frame = _as_frame(results)
    baseline = baseline or default_baseline(frame)
    models = tuple(sorted(str(m) for m in frame["model"].unique())) if "model" in frame.columns else ()
    changes = relative_change_table(frame, baseline)
    sections = [
        Section("Scores", score_table(frame), "weighted mean per cell", digits=4),
        Section("Relative change 100*(q-b)/b, paired by item", changes),
    ]
    similar = similarity_table(frame, baseline, cosine=cosine, kl=kl)
    if len(similar):
        sections.append(Section(
            "Similarity to the baseline's outputs, same items", similar,
            "flip_rate, c2w = correct->wrong, w2c = wrong->correct: % of items; chrf 0-100, rouge_l 0-1 between the "
            "two outputs; kl: nats/token, from mlquant kl"))
    if judged is not None and len(judged):
        from mlquant.tasks.judge import win_rates

        keys = [c for c in ("judge", "quant", "task", "lang") if c in judged.columns]
        sections.append(Section("Pairwise judge, quantized vs baseline, both orders",
                                win_rates(judged, by=keys).set_index(keys), "win_rate = win + tie/2", digits=3))
    sections += _corpus_sections(frame)
    findings, statistics, summary = None, pd.DataFrame(), None
    if len(changes):
        scored = scored_rows(frame)
        summary = stats.summary(scored, baseline=baseline)
        statistics = cell_statistics(summary, scored)
        findings = find(summary, scored)
    info = run_info(frame, baseline, getattr(results, "run_dir", None))
    return Report(baseline, models, tuple(sections), findings, statistics, summary, info, frame)


def write_html(
    frame: pd.DataFrame,
    path: str | os.PathLike[str],
    baseline: str | None = None,
    *,
    cosine: bool = False,
    kl: pd.DataFrame | None = None,
    judged: pd.DataFrame | None = None,
) -> Path:
    """Write the report (:func:`build_report`) as a static HTML page; return its path."""
    return build_report(frame, baseline, cosine=cosine, kl=kl, judged=judged).write_html(path)
