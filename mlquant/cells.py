"""Study cells and their signatures: value objects shared by the study, its runner and the results store.

A :class:`Cell` is one (quant, task, language) of a study. Its :class:`Signature` says everything that produced
its numbers (mlquant, model and revision, quant label, backend, calibration, task with options, language, item
limit, seed, torch and transformers versions); it is built once per cell, stored in every row of the cell's
Parquet file, and compared on resume: a cell whose stored signature differs is recomputed.

Example:
    >>> sig = Signature.parse(
    ...     "mlquant:0.1.0|model:org/m@abc|quant:rtn-w8|backend:simulate|calib:none|task:xcopa@1.0|lang:tr"
    ...     "|limit:20|seed:0|torch:2.13.0|transformers:5.24.0"
    ... )
    >>> sig.quant, sig.lang, sig.limit
    ('rtn-w8', 'tr', '20')
    >>> Signature.parse(sig.format()) == sig
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import metadata

from mlquant.errors import DataError
from mlquant.languages import Language
from mlquant.spec import QuantSpec
from mlquant.tasks import Task

__all__ = ["Cell", "RunStats", "Signature", "library_versions"]


@dataclass(frozen=True)
class Cell:
    """One (quant, task, language) of a study.

    ``label`` names the task in the results (the ``task`` column and the cell's file); it is the task's name unless
    the study gave the entry a ``label`` (needed when one task appears twice, e.g. FLORES in both directions).
    """

    quant: QuantSpec
    task: Task
    lang: Language
    label: str = ""

    @property
    def task_label(self) -> str:
        return self.label or self.task.name

    def describe(self) -> str:
        return f"{self.quant.label} | {self.task_label} | {self.lang.code}"


@dataclass
class RunStats:
    """What the last :meth:`~mlquant.study.Study.run` did."""

    cells_total: int = 0
    cells_skipped: int = 0
    cells_computed: int = 0
    requests_computed: int = 0
    cache_hits: int = 0
    forward_passes: int = 0
    models_loaded: int = 0
    failed: list[str] = field(default_factory=list)


def library_versions() -> tuple[str, str]:
    """The installed (torch, transformers) versions, ``"none"`` for a missing one.

    Example:
        >>> len(library_versions())
        2
    """

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "none"

    return version("torch"), version("transformers")


# Keys of the formatted signature, in order; ``label`` appears only for a custom task label.
_KEYS = (
    "mlquant", "model", "quant", "backend", "engine", "calib", "task", "label", "lang", "limit", "seed", "torch",
    "transformers",
)
#: Keys written only when they have a value (so that signatures written before they existed stay equal).
_OPTIONAL = ("label", "engine")


@dataclass(frozen=True)
class Signature:
    """Everything that produced a cell's numbers, as ``key:value`` fields joined by ``|`` (sacrebleu style).

    Attributes are the formatted values (strings). ``label`` is empty unless the study gave the task a custom
    label, and ``engine`` empty for transformers (``vllm@0.32.0:dense-float32``, ``openai@<url>`` otherwise), so run
    folders written before labels and engines existed keep their signatures.
    """

    mlquant: str
    model: str
    quant: str
    backend: str
    calib: str
    task: str
    lang: str
    limit: str
    seed: str
    torch: str
    transformers: str
    label: str = ""
    engine: str = ""

    def format(self) -> str:
        """``mlquant:VER|model:ID@REV|quant:LABEL|backend:..|calib:..|task:NAME@VER[..]|lang:..|limit:..|seed:..|torch:..|transformers:..``."""
        return "|".join(f"{key}:{getattr(self, key)}" for key in _KEYS if key not in _OPTIONAL or getattr(self, key))

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str) -> Signature:
        """Read a formatted signature back; a value that contains ``|`` (a task option) is kept whole.

        Raises:
            DataError: a key is missing or unknown, naming it and the signature.
        """
        values: dict[str, str] = {}
        last = ""
        for part in text.split("|"):
            key, sep, value = part.partition(":")
            if sep and key in _KEYS and key not in values:
                values[key] = value
                last = key
            elif last:
                values[last] += "|" + part
            else:
                raise DataError(f"signature {text!r}: expected 'mlquant:<version>|...', got {part!r} first.")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(values) - set(_OPTIONAL))
        if missing:
            raise DataError(f"signature {text!r}: missing {', '.join(missing)}.")
        return cls(**values)
