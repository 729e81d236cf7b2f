"""Compare two engines (or two models) on the same items: do they predict the same, and how far apart are their numbers?

Both models answer exactly the requests a study would send them (each task's :meth:`~mlquant.tasks.Task.items`,
:meth:`~mlquant.tasks.Task.requests` and :meth:`~mlquant.tasks.Task.score`), cell by cell (one task and language);
nothing is cached, so each number is the model's own. Typical pairs: :class:`~mlquant.models.HFModel` against
:class:`~mlquant.engines.vllm.VLLMModel` on the same weights (do the engines agree?), or a model against its
quantized copy (what does quantization change, item by item?).

* :func:`compare_items`: one row per item: both engines' predictions, outputs and scores, whether they agree, and
  the |Δ log-likelihood| of its requests.
* :func:`summarize`: one row per (task, language) from those rows.
* :func:`compare_engines`: both at once, the frame ``mlquant compare-engines`` prints.

What "agree" means per task kind: ``choice``, the same predicted option (the argmax of the options'
log-likelihoods); ``generate``, exactly the same output text; ``perplexity``, not defined (NaN; the |Δ| columns
then cover the rolling log-likelihoods). chrF between the two engines' generations (the first engine's as the
reference, 0-100, 100 when identical) says how different the non-identical ones are.

Example:
    >>> import mlquant as mq
    >>> from mlquant.compare import compare_engines
    >>> a = mq.load_model("gemma3-270m")                                        # doctest: +SKIP
    >>> b = mq.quantize(a, "rtn-w4g128")                                        # doctest: +SKIP
    >>> compare_engines(a, b, ["xcopa"], ["tr", "zh"], limit=20)                # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlquant.errors import ConfigError
from mlquant.languages import Language, get_language
from mlquant.requests import (
    GenerateRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Model,
    Request,
    RollingRequest,
    RollingResult,
)
from mlquant.similarity import chrf
from mlquant.tasks import Item, Task, get_task

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ITEM_COLUMNS", "SUMMARY_COLUMNS", "Answers", "TaskEntry", "answer", "build_task", "compare_engines", "compare_items",
    "format_comparison", "summarize", "task_entries",
]

#: A task: its name, a built :class:`~mlquant.tasks.Task`, or ``{"name": ..., **options}``.
TaskEntry = str | Task | Mapping[str, Any]

#: The columns of :func:`compare_items`.
ITEM_COLUMNS = [
    "task", "lang", "item_id", "kind", "n_requests", "pred_a", "pred_b", "output_a", "output_b", "agree",
    "max_abs_delta", "sum_abs_delta", "chrf", "score_a", "score_b", "weight",
]
#: The columns of :func:`summarize` / :func:`compare_engines`.
SUMMARY_COLUMNS = [
    "task", "lang", "kind", "metric", "n", "n_requests", "agree", "agree_pct", "max_abs_delta", "mean_abs_delta",
    "chrf", "score_a", "score_b", "seconds_a", "seconds_b",
]


@dataclass(frozen=True)
class Answers:
    """One model's answers to a list of requests (in the requests' order) and the wall time they took."""

    outputs: list[Any]
    seconds: float


def answer(model: Model, requests: Sequence[Request]) -> Answers:
    """Every request answered by ``model``: one call per request kind (the model batches as it does in a study),
    the answers put back in the requests' order, with the wall time of the calls.

    Raises:
        ConfigError: a request of an unknown kind.
    """
    by_kind: dict[str, list[int]] = {"loglikelihood": [], "rolling": [], "generate": []}
    for i, req in enumerate(requests):
        if isinstance(req, LoglikelihoodRequest):
            by_kind["loglikelihood"].append(i)
        elif isinstance(req, RollingRequest):
            by_kind["rolling"].append(i)
        elif isinstance(req, GenerateRequest):
            by_kind["generate"].append(i)
        else:
            raise ConfigError(
                f"request {i} is a {type(req).__name__}; expected a log-likelihood, rolling or generate request."
            )
    outputs: list[Any] = [None] * len(requests)
    start = time.perf_counter()
    for kind, idx in by_kind.items():
        if not idx:
            continue
        chosen = [requests[i] for i in idx]
        got: Sequence[Any]
        if kind == "loglikelihood":
            got = model.loglikelihood([r for r in chosen if isinstance(r, LoglikelihoodRequest)])
        elif kind == "rolling":
            got = model.loglikelihood_rolling([r for r in chosen if isinstance(r, RollingRequest)])
        else:
            got = model.generate([r for r in chosen if isinstance(r, GenerateRequest)])
        if len(got) != len(idx):
            raise ConfigError(f"{model.name}: {len(idx)} {kind} requests, {len(got)} answers.")
        for i, out in zip(idx, got):
            outputs[i] = out
    return Answers(outputs, time.perf_counter() - start)


def build_task(entry: TaskEntry) -> Task:
    """A task from its name, a Task, or a mapping ``{"name": ..., **options}``.

    Example:
        >>> build_task({"name": "flores", "direction": "en-xx", "max_new_tokens": 32}).signature()
        'flores@...'
    """
    if isinstance(entry, (str, Task)):
        return get_task(entry)
    if isinstance(entry, Mapping):
        options = {str(k): v for k, v in entry.items() if k != "name"}
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"task {dict(entry)!r}: a mapping needs a 'name'.")
        return get_task(name, **options)
    raise ConfigError(f"task {entry!r}: expected a name, a Task or a mapping with a 'name'.")


def _deltas(outs_a: Sequence[Any], outs_b: Sequence[Any]) -> list[float]:
    deltas = []
    for x, y in zip(outs_a, outs_b):
        if isinstance(x, (LoglikelihoodResult, RollingResult)) and isinstance(y, (LoglikelihoodResult, RollingResult)):
            deltas.append(abs(float(x.logprob) - float(y.logprob)))
    return deltas


def _item_row(task: Task, lang: Language, item: Item, outs_a: Sequence[Any], outs_b: Sequence[Any]) -> dict[str, Any]:
    score_a = task.score(item, lang, outs_a)
    score_b = task.score(item, lang, outs_b)
    deltas = _deltas(outs_a, outs_b)
    texts_a = [o for o in outs_a if isinstance(o, str)]
    texts_b = [o for o in outs_b if isinstance(o, str)]
    agree: float
    similarity = math.nan
    if task.kind == "choice":
        agree = float(score_a.extracted == score_b.extracted)
    elif texts_a:
        agree = float(texts_a == texts_b)
        similarity = sum(chrf(b, a) for a, b in zip(texts_a, texts_b)) / len(texts_a)
    else:
        agree = math.nan
    return {
        "task": task.name,
        "lang": lang.code,
        "item_id": item.id,
        "kind": str(task.kind),
        "n_requests": len(outs_a),
        "pred_a": score_a.extracted,
        "pred_b": score_b.extracted,
        "output_a": "\n".join(texts_a) if texts_a else score_a.output,
        "output_b": "\n".join(texts_b) if texts_b else score_b.output,
        "agree": agree,
        "max_abs_delta": max(deltas) if deltas else math.nan,
        "sum_abs_delta": sum(deltas) if deltas else math.nan,
        "n_deltas": len(deltas),
        "chrf": similarity,
        "score_a": float(score_a.score),
        "score_b": float(score_b.score),
        "weight": float(score_a.weight),
    }


def compare_items(
    a: Model,
    b: Model,
    tasks: Sequence[TaskEntry],
    languages: Sequence[str | Language],
    limit: int | None = None,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the same items with ``a`` and ``b``; one row per item, and the seconds each model took per cell.

    Args:
        a, b: the two models (any :class:`~mlquant.requests.Model`: HFModel, VLLMModel, OpenAIEngine, ...).
        tasks: task names, built tasks, or ``{"name": ..., **options}``.
        languages: language codes; a language a task has no data for is skipped (each task runs in the languages
            it has; none at all is a ConfigError).
        limit, seed: the items of each cell, as a study draws them (:meth:`~mlquant.tasks.Task.items`).

    Returns:
        (items, timings): the per-item frame (:data:`ITEM_COLUMNS` plus ``n_deltas``), and one row per cell with
        ``task, lang, n, n_requests, seconds_a, seconds_b``. Within a cell ``a`` answers first, then ``b``.

    Raises:
        ConfigError: an unknown task or language, or no task has data for any of the languages.
    """
    import pandas as pd

    built = [build_task(t) for t in tasks]
    langs = [get_language(code) for code in languages]
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    for task in built:
        have = set(task.languages())
        for lang in langs:
            if lang.code not in have:
                continue
            items = task.items(lang, limit=limit, seed=seed)
            per_item = [task.requests(item, lang) for item in items]
            flat = [r for reqs in per_item for r in reqs]
            got_a = answer(a, flat)
            got_b = answer(b, flat)
            k = 0
            for item, reqs in zip(items, per_item):
                n = len(reqs)
                rows.append(_item_row(task, lang, item, got_a.outputs[k : k + n], got_b.outputs[k : k + n]))
                k += n
            timings.append({"task": task.name, "lang": lang.code, "n": len(items), "n_requests": len(flat),
                            "seconds_a": got_a.seconds, "seconds_b": got_b.seconds})
    if not timings:
        names = ", ".join(t.name for t in built)
        raise ConfigError(f"no task among {names} has data for any of {', '.join(lg.code for lg in langs)}.")
    return pd.DataFrame(rows, columns=[*ITEM_COLUMNS, "n_deltas"]), pd.DataFrame(timings)


def summarize(items: pd.DataFrame, timings: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (task, language) of :func:`compare_items`'s items (:data:`SUMMARY_COLUMNS`).

    ``n``: items; ``agree``: items whose predictions agree (NaN for perplexity tasks), ``agree_pct`` the same in %;
    ``max_abs_delta`` / ``mean_abs_delta``: over every log-likelihood (or rolling) request of the cell (NaN for
    generation); ``chrf``: mean sentence chrF of b's generations against a's (NaN without generations);
    ``score_a`` / ``score_b``: the weighted mean item score of each model; ``seconds_a`` / ``seconds_b``: from
    ``timings`` (NaN without).
    """
    import pandas as pd

    out = []
    for (task, lang), cell in items.groupby(["task", "lang"], sort=False):
        n = len(cell)
        agree = cell["agree"].dropna()
        n_deltas = int(cell["n_deltas"].sum())
        weights = cell["weight"].astype(float)
        total_w = float(weights.sum()) or float(n)
        row: dict[str, Any] = {
            "task": task,
            "lang": lang,
            "kind": cell["kind"].iloc[0],
            "metric": "",
            "n": n,
            "n_requests": int(cell["n_requests"].sum()),
            "agree": float(agree.sum()) if len(agree) else math.nan,
            "agree_pct": 100.0 * float(agree.mean()) if len(agree) else math.nan,
            "max_abs_delta": float(cell["max_abs_delta"].max()) if n_deltas else math.nan,
            "mean_abs_delta": float(cell["sum_abs_delta"].sum()) / n_deltas if n_deltas else math.nan,
            "chrf": float(cell["chrf"].mean()) if cell["chrf"].notna().any() else math.nan,
            "score_a": float((cell["score_a"] * weights).sum()) / total_w,
            "score_b": float((cell["score_b"] * weights).sum()) / total_w,
            "seconds_a": math.nan,
            "seconds_b": math.nan,
        }
        if timings is not None:
            match = timings[(timings["task"] == task) & (timings["lang"] == lang)]
            if len(match):
                row["seconds_a"] = float(match["seconds_a"].sum())
                row["seconds_b"] = float(match["seconds_b"].sum())
        out.append(row)
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def compare_engines(
    a: Model,
    b: Model,
    tasks: Sequence[TaskEntry],
    languages: Sequence[str | Language],
    limit: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Score the same items with two models and return one row per (task, language) (:data:`SUMMARY_COLUMNS`):
    items, prediction agreement, |Δ log-likelihood| (max and mean over the requests), chrF between the two
    models' generations, each model's score and seconds. See :func:`compare_items` for the arguments.

    Example:
        >>> frame = compare_engines(model, model, ["xcopa"], ["tr"], limit=4)   # doctest: +SKIP
        >>> frame[["n", "agree_pct", "max_abs_delta"]].iloc[0].tolist()        # doctest: +SKIP
        [4, 100.0, 0.0]
    """
    items, timings = compare_items(a, b, tasks, languages, limit=limit, seed=seed)
    frame = summarize(items, timings)
    metrics = {t.name: t.metric for t in (build_task(e) for e in tasks)}
    frame["metric"] = [metrics.get(str(name), "") for name in frame["task"]]
    return frame


def task_entries(tasks: str, options: Sequence[str] = ()) -> list[TaskEntry]:
    """Task entries from the command line: ``"a,b"`` and options ``"a.key=value"`` (values read as YAML scalars).

    Raises:
        ConfigError: an option that is not ``TASK.KEY=VALUE`` with TASK one of the tasks.

    Example:
        >>> task_entries("xcopa,flores", ["flores.max_new_tokens=32", "flores.direction=en-xx"])
        ['xcopa', {'name': 'flores', 'max_new_tokens': 32, 'direction': 'en-xx'}]
    """
    import yaml

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    found: dict[str, dict[str, Any]] = {name: {} for name in names}
    for text in options:
        target, eq, value = text.partition("=")
        name, dot, key = target.partition(".")
        if not (eq and dot and key) or name not in found:
            raise ConfigError(f"task option {text!r}: expected TASK.KEY=VALUE with TASK one of {', '.join(names)}.")
        found[name][key] = yaml.safe_load(value)
    return [{"name": name, **opts} if opts else name for name, opts in found.items()]


def format_comparison(frame: pd.DataFrame) -> str:
    """The frame of :func:`compare_engines` as a fixed-width table (|Δ| in scientific notation)."""
    if frame.empty:
        return "(no cells)"
    shown = frame.drop(columns=["metric"]).set_index(["task", "lang"]).astype(object)
    formats = {"agree": "{:.0f}", "agree_pct": "{:.1f}", "max_abs_delta": "{:.2e}", "mean_abs_delta": "{:.2e}",
               "chrf": "{:.1f}", "score_a": "{:.4f}", "score_b": "{:.4f}", "seconds_a": "{:.1f}", "seconds_b": "{:.1f}"}
    for column, fmt in formats.items():
        shown[column] = [("-" if isinstance(v, float) and math.isnan(v) else fmt.format(v)) for v in shown[column]]
    text: str = shown.to_string()
    return text
