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
import pkgutil
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mlquant._registry import Registry
from mlquant.data import HubSource, available_languages, load_rows
from mlquant.errors import ConfigError
from mlquant.languages import Language, get_language
from mlquant.requests import GenerateRequest, LoglikelihoodRequest, Request, RollingRequest

__all__ = [
    "Item",
    "ItemScore",
    "Task",
    "ChoiceTask",
    "TaskKind",
    "Difficulty",
    "register_task",
    "get_task",
    "list_tasks",
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
