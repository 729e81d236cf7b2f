"""Requests a task sends to a model, and what comes back (the lm-eval ``LM`` contract, typed).

Three kinds, as in lm-evaluation-harness: the log-likelihood of a continuation after a context, the
rolling log-likelihood of a whole text (perplexity), and greedy or sampled generation until a stop sequence.
Every request has a stable :meth:`key` (a hash of its fields) used with the model fingerprint as the cache key.

Example:
    >>> r = LoglikelihoodRequest("Paris is the capital of", " France")
    >>> len(r.key())
    64
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

    from mlquant.spec import QuantSpec

__all__ = [
    "GenerateRequest",
    "LanguageModel",
    "LoglikelihoodRequest",
    "LoglikelihoodResult",
    "Model",
    "Request",
    "RollingRequest",
    "RollingResult",
    "cut_at_stop",
    "result_from_json",
    "result_to_json",
]


def _key(kind: str, fields: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, **fields}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log P(continuation | context). The context is shared by the options of a choice item."""

    context: str
    continuation: str

    kind = "loglikelihood"

    def key(self) -> str:
        return _key(self.kind, asdict(self))


@dataclass(frozen=True)
class RollingRequest:
    """log P(text) summed over every token of ``text`` (after the BOS token), for perplexity."""

    text: str

    kind = "loglikelihood_rolling"

    def key(self) -> str:
        return _key(self.kind, asdict(self))


@dataclass(frozen=True)
class GenerateRequest:
    """Generate after ``context`` until a stop sequence or ``max_new_tokens``.

    ``temperature == 0`` means greedy decoding (the default); otherwise nucleus sampling with ``top_p``,
    seeded by ``seed`` so that a run is reproducible.
    """

    context: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    kind = "generate"

    def key(self) -> str:
        fields = asdict(self)
        fields["stop"] = list(self.stop)
        return _key(self.kind, fields)


Request = LoglikelihoodRequest | RollingRequest | GenerateRequest


@dataclass(frozen=True)
class LoglikelihoodResult:
    """Sum of the continuation's token log-probabilities (natural log), whether every token was the argmax,
    and the number of continuation tokens."""

    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclass(frozen=True)
class RollingResult:
    """Sum of token log-probabilities (natural log) of a text, its number of scored tokens and of UTF-8 bytes."""

    logprob: float
    n_tokens: int
    n_bytes: int

    @property
    def bits_per_byte(self) -> float:
        """-log2 P(text) / bytes: the tokenizer-independent perplexity measure."""
        import math

        return -self.logprob / math.log(2) / max(self.n_bytes, 1)


def result_to_json(result: LoglikelihoodResult | RollingResult | str) -> str:
    """Serialise a model result for the request cache."""
    if isinstance(result, str):
        return json.dumps({"t": "str", "v": result}, ensure_ascii=False)
    return json.dumps({"t": type(result).__name__, "v": asdict(result)})


def result_from_json(blob: str) -> LoglikelihoodResult | RollingResult | str:
    """Inverse of :func:`result_to_json`."""
    obj = json.loads(blob)
    if obj["t"] == "str":
        return str(obj["v"])
    if obj["t"] == "LoglikelihoodResult":
        return LoglikelihoodResult(**obj["v"])
    if obj["t"] == "RollingResult":
        return RollingResult(**obj["v"])
    raise ValueError(f"result_from_json: unknown result type {obj['t']!r} in the request cache.")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop sequence (all of it when none occurs).

    Example:
        >>> cut_at_stop("42. Question: next", [" Question:"])
        '42.'
    """
    cut = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


@runtime_checkable
class LanguageModel(Protocol):
    """What a task and the request cache need: lm-eval's ``LM`` contract plus an identity (a judge behind an API
    is one too)."""

    @property
    def name(self) -> str:
        """The model's name."""

    def fingerprint(self) -> str:
        """Identity of the model *including* its quantization: the request cache is keyed by it."""

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """log P(continuation | context) of each request."""

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """log P(text) of each request's whole text."""

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Generated text of each request, cut at its stop sequences."""


@runtime_checkable
class Model(LanguageModel, Protocol):
    """What the study runner needs from a model it runs: a :class:`LanguageModel` with its spec and counts.

    Attributes:
        spec: its quantization spec (a baseline spec such as ``fp32`` for an unquantized model).
        quant_report: per-layer quantization report (a DataFrame), or None for an unquantized model.
    """

    spec: QuantSpec
    quant_report: pd.DataFrame | None

    @property
    def n_forward(self) -> int:
        """Forward passes run so far (the runner reports them per study)."""

    def signature(self) -> str:
        """``model:<id>@<revision>``, the model part of every cell signature."""
