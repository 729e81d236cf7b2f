"""Tasks: what is asked of a model in one language, and how its answer is scored.

A :class:`Task` turns a language's items into model requests and scores the model's outputs per item.
Its prompt words come only from ``languages/`` (:class:`mlquant.languages.Language`). Each task module
registers itself with :func:`register_task`; :func:`get_task` builds one by name with its options.

Example:
    >>> import mlquant as mq
    >>> task = mq.get_task("xcopa")
    >>> task.kind, task.metric
    ('choice', 'accuracy')
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

from mlquant._registry import Registry
from mlquant.data import HubSource, available_languages, load_rows
from mlquant.errors import ConfigError
from mlquant.languages import Language, get_language
from mlquant.requests import LoglikelihoodRequest, Request

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CellRows",
    "ChoiceTask",
    "CorpusScore",
    "CorpusScores",
    "Difficulty",
    "Item",
    "ItemScore",
    "Task",
    "TaskKind",
    "cell_records",
    "get_task",
    "list_tasks",
    "register_task",
]

TaskKind = Literal["choice", "generate", "perplexity"]
Difficulty = Literal["easy", "medium", "hard"]


@dataclass(frozen=True)
class Item:
    """One evaluation item of one language.

    Attributes:
        id: stable id, aligned across languages where the benchmark is parallel (so items pair by id).
        data: the benchmark's fields for this item (question, choices, label, ...).
        group: id of a cluster of items that share a context (a Belebele passage), for cluster bootstrap.
    """

    id: str
    data: Mapping[str, Any]
    group: str | None = None


@dataclass(frozen=True)
class ItemScore:
    """The score of one item: what was asked, what came back, and what it is worth.

    Attributes:
        score: the per-item metric (1.0/0.0 for accuracy, bits per byte, sentence chrF, ...).
        prompt: the prompt shown to the model (for choice tasks: the shared context).
        output: what the model produced (generation) or the chosen option's text (choice).
        extracted: the answer extracted from the output (choice index, number, ...), as a string.
        target: the gold answer, as a string.
        weight: weight of the item in the task's aggregate (bytes for bits per byte; 1.0 otherwise).
        extra: task-specific details kept in the results (per-choice log-likelihoods, token counts, ...).
    """

    score: float
    prompt: str
    output: str
    extracted: str
    target: str
    weight: float = 1.0
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CorpusScore:
    """One corpus-level metric of one cell, computed from all of its items at once (not a mean of item scores).

    Attributes:
        metric: the metric's name (``chrf++``, ``spbleu``, ``lcpr``).
        value: the score; NaN where it cannot be computed here or is undefined, and then ``note`` says why.
        signature: what produced it (sacrebleu's signature, the task's), ``""`` when it was not computed.
        n: the number of items it was computed on.
        note: why the value is NaN, or how to read it.

    Example:
        >>> CorpusScore("lcpr", 2 / 3, "confusion@1.0", 10).n
        10
    """

    metric: str
    value: float
    signature: str
    n: int
    note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"CorpusScore: metric={self.metric!r}; expected a non-empty string.")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise ConfigError(f"CorpusScore {self.metric}: value={self.value!r}; expected a number.")
        if not isinstance(self.signature, str) or not isinstance(self.note, str):
            raise ConfigError(f"CorpusScore {self.metric}: signature and note must be strings.")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise ConfigError(f"CorpusScore {self.metric}: n={self.n!r}; expected an integer >= 0.")


@dataclass(frozen=True)
class CorpusScores(Mapping[str, float | str]):
    """The corpus-level metrics of one cell (:meth:`Task.aggregate`): :attr:`scores`, one :class:`CorpusScore` each.

    It also reads as sacrebleu-style ``{metric: value, "<metric>_signature": signature}`` (what
    :func:`mlquant.tasks.flores.corpus_scores` returns). Empty (falsy) for a task without corpus metrics.

    Example:
        >>> scores = CorpusScores((CorpusScore("lpr", 0.5, "sig", 4), CorpusScore("lcpr", 2 / 3, "sig", 4)))
        >>> round(scores["lcpr"], 4), scores["lpr_signature"], len(scores.scores), bool(CorpusScores())
        (0.6667, 'sig', 2, False)
    """

    scores: tuple[CorpusScore, ...] = ()

    def __post_init__(self) -> None:
        if not all(isinstance(s, CorpusScore) for s in self.scores):
            raise ConfigError("CorpusScores: expected a tuple of CorpusScore.")
        metrics = [s.metric for s in self.scores]
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"CorpusScores: a metric appears twice in {metrics}.")

    def __getitem__(self, key: str) -> float | str:
        for s in self.scores:
            if key == s.metric:
                return s.value
            if key == f"{s.metric}_signature":
                return s.signature
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        for s in self.scores:
            yield s.metric
            yield f"{s.metric}_signature"

    def __len__(self) -> int:
        return 2 * len(self.scores)

    def to_frame(self) -> pd.DataFrame:
        """One row per metric: ``metric``, ``value``, ``signature``, ``n``, ``note``."""
        import pandas as pd

        return pd.DataFrame([vars(s) for s in self.scores], columns=["metric", "value", "signature", "n", "note"])


#: The rows of one cell, as :meth:`Task.aggregate` takes them: a tidy results frame (columns of
#: :data:`mlquant.results.COLUMNS`), one mapping per row, or the cell's :class:`ItemScore` objects.
CellRows = Union["pd.DataFrame", Sequence[Mapping[str, Any]], Sequence[ItemScore]]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell_records(rows: CellRows, lang: Language | str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of ONE cell as dicts with ``extra`` decoded, and the cell's language code.

    ``lang`` (a code or Language) wins; else the rows' ``lang`` column, which must hold one language. Every record
    gets ``lang`` when it is known. :class:`ItemScore` rows become ``{score, prompt, output, extracted, target,
    weight, extra}``.

    Raises:
        ConfigError: the rows span more than one language, quant or task (they are not one cell), or are not rows.

    Example:
        >>> records, lang = cell_records([{"lang": "ja", "extra": '{"line_pass": true}', "score": 1.0}])
        >>> lang, records[0]["extra"]
        ('ja', {'line_pass': True})
    """
    import pandas as pd

    if isinstance(rows, pd.DataFrame):
        raw: list[Mapping[str, Any]] = [{str(k): v for k, v in r.items()} for r in rows.to_dict("records")]
    else:
        raw = []
        for i, row in enumerate(rows):
            if isinstance(row, ItemScore):
                raw.append({"score": row.score, "prompt": row.prompt, "output": row.output, "extracted": row.extracted,
                            "target": row.target, "weight": row.weight, "extra": row.extra})
            elif isinstance(row, Mapping):
                raw.append(row)
            else:
                raise ConfigError(f"cell rows: row {i} is a {type(row).__name__}; expected a mapping or an ItemScore.")
    for column in ("quant", "task"):
        values = {str(r[column]) for r in raw if not _missing(r.get(column))}
        if len(values) > 1:
            raise ConfigError(f"cell rows: the rows of one cell have one {column}; these have {sorted(values)}.")
    if lang is not None:
        code: str | None = lang if isinstance(lang, str) else lang.code
    else:
        langs = {str(r["lang"]) for r in raw if not _missing(r.get("lang"))}
        if len(langs) > 1:
            raise ConfigError(f"cell rows: the rows of one cell have one language; these have {sorted(langs)}.")
        code = langs.pop() if langs else None
    records = []
    for i, row in enumerate(raw):
        extra = row.get("extra")
        if isinstance(extra, str) and extra:
            try:
                extra = json.loads(extra)
            except ValueError as exc:
                raise ConfigError(f"cell rows: row {i} has an 'extra' that is not JSON: {extra[:80]!r}.") from exc
        record = {**row, "extra": dict(extra) if isinstance(extra, Mapping) else {}}
        if code is not None:
            record["lang"] = code
        records.append(record)
    return records, code


class Task(ABC):
    """Base class of every task.

    Subclasses set the class attributes and implement :meth:`load_items`, :meth:`requests` and :meth:`score`.
    Options (shots, mode, ...) are constructor arguments and become part of :meth:`signature`.

    Attributes:
        name: registry name (``belebele``).
        version: bumped whenever prompts or scoring change, so cached results are never mixed.
        kind: ``choice`` (log-likelihood of options), ``generate`` or ``perplexity``.
        difficulty: coarse difficulty tag used by the statistics (``easy`` / ``medium`` / ``hard``).
        metric: name of the per-item score.
        higher_is_better: False for losses such as bits per byte.
        benchmark: folder under ``MLQUANT_DATA_DIR`` (``belebele``), also the key in a language's ``datasets``.
        split: the split read by default.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    kind: ClassVar[TaskKind]
    difficulty: ClassVar[Difficulty]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    benchmark: ClassVar[str]
    split: ClassVar[str] = "test"

    def __init__(self, *, source: str | None = None) -> None:
        self.source = source

    # ----- data ---------------------------------------------------------------------------------------------------
    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        """Where this task's items live on the Hugging Face hub for ``lang`` (None: not on the hub)."""
        return None

    def languages(self, where: Literal["any", "local", "hub"] = "any") -> list[str]:
        """Codes of the languages this task has data for: local files under MLQUANT_DATA_DIR, the hub, or both."""
        return available_languages(self.benchmark, self.split, hub_codes=self.hub_languages(), where=where)

    def hub_languages(self) -> list[str]:
        """Language codes whose data the hub provides (from the language files' ``datasets`` codes)."""
        from mlquant.languages import list_languages

        return [lang.code for lang in list_languages() if lang.dataset_code(self.benchmark)]

    def check_language(self, lang: Language | str) -> Language:
        """Return the language, or raise ConfigError listing the languages this task has."""
        language = get_language(lang)
        have = self.languages()
        if language.code not in have:
            raise ConfigError(
                f"task {self.name!r} has no data for language {language.code!r}; it has: {', '.join(have) or 'none'}."
            )
        return language

    def rows(self, lang: Language, split: str | None = None) -> list[dict[str, Any]]:
        """Raw rows of ``lang`` (local file, else hub), each with ``_file`` and ``_line`` for error messages."""
        split = split or self.split
        return load_rows(self.benchmark, split, lang.code, source=self.source, hub=self.hub_source(lang, split))

    @abstractmethod
    def load_items(self, lang: Language) -> list[Item]:
        """Every item of ``lang``, in the benchmark's order."""

    def items(self, lang: Language | str, limit: int | None = None, seed: int = 0) -> list[Item]:
        """Items of ``lang``; with ``limit``, a sample of that many drawn with ``seed``, kept in benchmark order.

        The sample depends only on (task, language, seed, limit), so every quantization method of a study
        sees exactly the same items and the comparison is paired.
        """
        language = get_language(lang)
        items = self.load_items(language)
        if limit is None or limit >= len(items):
            return items
        if limit <= 0:
            raise ConfigError(f"limit must be a positive integer or None, got {limit!r}.")
        rng = random.Random(f"{self.name}|{language.code}|{seed}")
        keep = sorted(rng.sample(range(len(items)), limit))
        return [items[i] for i in keep]

    # ----- prompting and scoring ------------------------------------------------------------------------------------
    @abstractmethod
    def requests(self, item: Item, lang: Language) -> list[Request]:
        """The model requests needed to score ``item``."""

    @abstractmethod
    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        """Score ``item`` from the model's answers to :meth:`requests` (same order)."""

    def aggregate(self, rows: CellRows, lang: Language | str | None = None) -> CorpusScores:
        """Corpus-level metrics of ONE cell from all of its rows at once (corpus BLEU, LCPR): not means of item scores.

        The mean of the per-item scores is not here (it is :func:`mlquant.results.aggregate`). Tasks with corpus
        metrics override this; the report shows what it returns for every cell.

        Args:
            rows: the cell's rows (:data:`CellRows`: a tidy results frame, dicts, or :class:`ItemScore` objects).
            lang: the cell's language; default: the rows' ``lang``.

        Returns:
            The metrics; empty (the default) for a task that has none.

        Example:
            >>> get_task("xcopa").aggregate([{"lang": "tr", "score": 1.0}])
            CorpusScores(scores=())
        """
        return CorpusScores()

    def options(self) -> dict[str, Any]:
        """The options that change prompts or scoring (recorded in the signature)."""
        return {}

    def signature(self) -> str:
        """``name@version`` plus options, e.g. ``mgsm@1.0[shots=8]``."""
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options().items()))
        return f"{self.name}@{self.version}" + (f"[{opts}]" if opts else "")

    def __repr__(self) -> str:
        return f"<Task {self.signature()}>"


class ChoiceTask(Task):
    """A task answered by comparing the log-likelihood of each option after a shared context.

    Subclasses implement :meth:`context` and :meth:`choices`; the gold index is ``item.data['label']``.
    The prediction is the option with the highest total log-likelihood; ``extra`` keeps every option's
    log-likelihood (for the margin and flip analyses of the statistics).
    """

    kind: ClassVar[TaskKind] = "choice"
    metric: ClassVar[str] = "accuracy"

    @abstractmethod
    def context(self, item: Item, lang: Language) -> str:
        """The text shared by all options."""

    @abstractmethod
    def choices(self, item: Item, lang: Language) -> list[str]:
        """The continuation of each option (with its leading space where the language uses spaces)."""

    def gold(self, item: Item) -> int:
        return int(item.data["label"])

    def requests(self, item: Item, lang: Language) -> list[Request]:
        ctx = self.context(item, lang)
        return [LoglikelihoodRequest(ctx, c) for c in self.choices(item, lang)]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        lls = [float(o.logprob) for o in outputs]
        pred = max(range(len(lls)), key=lambda i: lls[i])
        choices = self.choices(item, lang)
        gold = self.gold(item)
        return ItemScore(
            score=float(pred == gold),
            prompt=self.context(item, lang),
            output=choices[pred],
            extracted=str(pred),
            target=str(gold),
            extra={"logprobs": lls, "n_tokens": [int(o.n_tokens) for o in outputs]},
        )


TaskFactory = Callable[..., Task]
_TASKS: Registry[TaskFactory] = Registry("task")
_loaded = False


def register_task(name: str, factory: TaskFactory, *, overwrite: bool = False) -> None:
    """Register a task class (or any callable returning a Task) under ``name``.

    Example:
        >>> from mlquant.tasks import register_task, get_task
        >>> from mlquant.tasks.xcopa import XCopa
        >>> register_task("xcopa_copy", XCopa, overwrite=True)
        >>> get_task("xcopa_copy").name
        'xcopa'
    """
    _TASKS.register(name, factory, overwrite=overwrite)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        # Every public module of this package is a task module that registers itself on import.
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")


def get_task(name: str | Task, **options: Any) -> Task:
    """Build the task ``name`` with ``options`` (unknown options raise ConfigError).

    Raises:
        UnknownNameError: with close names.
    """
    if isinstance(name, Task):
        if options:
            raise ConfigError(f"options {sorted(options)} given for an already built task {name!r}")
        return name
    _load_builtins()
    factory = _TASKS.get(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"task {name!r}: bad options {options!r}: {exc}") from exc


def list_tasks() -> list[str]:
    """Names of every registered task."""
    _load_builtins()
    return _TASKS.names()
