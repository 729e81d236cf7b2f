"""Reports: what quantizing cost, per task and language, built once as data and rendered as text or HTML.

:func:`build_report` computes every section of the report once, as :class:`Section` objects (a title, a table or
a text, a note); :meth:`Report.to_text` renders them for the terminal (what ``mlquant report RUN`` prints) and
:meth:`Report.to_html` as a static HTML page (``mlquant report RUN --html PAGE``, :func:`write_html`). Sections:
scores, relative change, similarity to the baseline, judge win rates, the corpus-level metrics of every cell
(:meth:`mlquant.tasks.Task.aggregate`: chrF++ and spBLEU of translation, LPR / WPR / LCPR of language
confusion) and the statistics summary. The tables are also public functions.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> report = mq.report.build_report(mq.read_results("runs/demo"))  # doctest: +SKIP
    >>> print(report.to_text())  # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from mlquant.errors import MlquantError
from mlquant.results import aggregate
from mlquant.stats import as_frame
from mlquant.tasks import Task, get_task

__all__ = [
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

#: What :func:`format_table` shows for an empty table.
EMPTY = "(nothing to show: no scored item of a quantized cell pairs with the baseline)"


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


# ----- sections and their rendering -------------------------------------------------------------------------------------
def format_table(table: pd.DataFrame, digits: int = 2) -> str:
    """A fixed-width text rendering of a table (for the terminal and the demo)."""
    if table.empty:
        return EMPTY
    text: str = table.round(digits).to_string(na_rep="-")
    return text


@dataclass(frozen=True)
class Section:
    """One section of a report: a title, a table (or a preformatted text), a note, and lines after the body.

    Attributes:
        title: the heading.
        body: a table, or preformatted text (the statistics summary).
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
        """The section as an HTML fragment."""
        parts = [f"<h2>{html.escape(self.title)}</h2>"]
        if self.note:
            parts.append(f"<p>{html.escape(self.note)}</p>")
        if isinstance(self.body, str):
            parts.append(f"<pre>{html.escape(self.body)}</pre>")
        elif self.body.empty:
            parts.append(f"<p>{html.escape(EMPTY)}</p>")
        else:
            parts.append(str(self.body.round(self.digits).to_html(na_rep="-")))
        parts += [f"<p><code>{html.escape(line)}</code></p>" for line in self.lines]
        return "\n".join(parts)


_STYLE = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
          "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")


@dataclass(frozen=True)
class Report:
    """A report on a run: its sections, computed once (:func:`build_report`), rendered as text or HTML.

    Attributes:
        baseline: the baseline quant label.
        models: the models of the run.
        sections: the sections, in order.
    """

    baseline: str
    models: tuple[str, ...]
    sections: tuple[Section, ...]

    @property
    def header(self) -> str:
        return f"Baseline: {self.baseline}. Models: {', '.join(self.models)}."

    def to_text(self) -> str:
        """The report for a terminal (what ``mlquant report RUN`` prints)."""
        return "\n\n".join([self.header, *(s.to_text() for s in self.sections)])

    def to_html(self) -> str:
        """A static HTML page."""
        head = (f"<!doctype html><html><head><meta charset='utf-8'><title>mlquant report</title><style>{_STYLE}</style>"
                f"</head><body>\n<h1>mlquant report</h1>\n<p>{html.escape(self.header)}</p>")
        return "\n".join([head, *(s.to_html() for s in self.sections), "</body></html>"])

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_html` to ``path``; return the path."""
        out = Path(path)
        out.write_text(self.to_html(), encoding="utf-8")
        return out

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.header)}</p>" + "\n".join(s.to_html() for s in self.sections)


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
    if len(changes):
        sections.append(Section("Statistics", str(stats.summary(scored_rows(frame), baseline=baseline))))
    return Report(baseline, models, tuple(sections))


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
