"""Models: the :class:`Model` protocol, the transformers-backed :class:`HFModel`, and a scripted :class:`FakeModel`.

The contract follows lm-evaluation-harness's ``LM``: batched ``loglikelihood`` of continuations,
``loglikelihood_rolling`` for perplexity, and ``generate`` until stop sequences. ``HFModel`` computes
log-likelihoods from hidden states and applies the LM head only at the positions being scored, runs each
shared context once (its key/value cache is reused by every option), and batches by length.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> model = mq.load_model("gemma3-270m")  # doctest: +SKIP
    >>> model.loglikelihood([mq.LoglikelihoodRequest("The capital of France is", " Paris")])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlquant._loading import (
    DEFAULT_MODEL,
    ModelSource,
    check_device,
    check_device_map,
    device_kind,
    load_pretrained,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from mlquant.errors import ConfigError
from mlquant.requests import (
    GenerateRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    Model,
    RollingRequest,
    RollingResult,
    cut_at_stop,
)
from mlquant.spec import BASELINES, QuantSpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL", "FakeModel", "HFModel", "Model", "TokenEncoder", "load_model", "model_fingerprint", "resolve_device",
]

log = logging.getLogger(__name__)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(source: ModelSource, spec: QuantSpec, device: str = "cpu") -> str:
    """Fingerprint of a model before it is loaded: model id, revision or file hash, the full quant spec
    (which carries the dtype) and the device type when it is not ``cpu`` (a GPU's kernels round differently; CPU
    fingerprints are those of the versions before devices, so older request caches stay valid).
    :meth:`HFModel.fingerprint` returns the same value once loaded.

    Example:
        >>> src = ModelSource("org/model", "org/model", revision="abc")
        >>> model_fingerprint(src, QuantSpec.parse("fp32")) != model_fingerprint(src, QuantSpec.parse("rtn-w8"))
        True
        >>> model_fingerprint(src, QuantSpec.parse("fp32"), "cuda") != model_fingerprint(src, QuantSpec.parse("fp32"))
        True
    """
    kind = device.partition(":")[0]
    where = {} if kind == "cpu" else {"device": kind}
    return _digest(
        {"model": source.model_id, "revision": source.revision, "file_sha256": source.file_sha256,
         "quant": spec.fingerprint(), **where}
    )


class FakeModel:
    """A scripted model for unit tests: answers come from functions you give it; calls are counted.

    Args:
        loglikelihood: maps (context, continuation) to a log-probability (default: minus the continuation length).
        generate: maps a context to a generated text (default: empty string).
        rolling: maps a text to its log-probability (default: minus its length in bytes).
        name: model name (part of the fingerprint).

    Example:
        >>> m = FakeModel(generate=lambda ctx: "The answer is 42.")
        >>> m.generate([GenerateRequest("Q")])
        ['The answer is 42.']
        >>> m.calls
        1
    """

    def __init__(
        self,
        loglikelihood: Callable[[str, str], float] | None = None,
        generate: Callable[[str], str] | None = None,
        rolling: Callable[[str], float] | None = None,
        name: str = "fake",
        spec: QuantSpec | None = None,
    ) -> None:
        self.name = name
        self.spec = spec or QuantSpec.parse("fp32")
        self._ll = loglikelihood or (lambda ctx, cont: -float(len(cont)))
        self._gen = generate or (lambda ctx: "")
        self._roll = rolling or (lambda text: -float(len(text.encode("utf-8"))))
        self.calls = 0
        self.requests_seen = 0
        self.quant_report: Any = None

    @property
    def n_forward(self) -> int:
        """Calls answered so far (a scripted model has no forward passes; each call counts as one)."""
        return self.calls

    def fingerprint(self) -> str:
        return _digest({"model": self.name, "quant": self.spec.fingerprint()})

    def signature(self) -> str:
        return f"model:{self.name}"

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        self.calls += 1
        self.requests_seen += len(requests)
        return [LoglikelihoodResult(float(self._ll(r.context, r.continuation)), False, 1) for r in requests]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        self.calls += 1
        self.requests_seen += len(requests)
        return [RollingResult(float(self._roll(r.text)), len(r.text), len(r.text.encode("utf-8"))) for r in requests]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        self.calls += 1
        self.requests_seen += len(requests)
        return [cut_at_stop(self._gen(r.context), r.stop) for r in requests]


class TokenEncoder:
    """The token ids mlquant scores: BOS first, lm-eval's context/continuation split. One place, so that every
    engine (transformers here, vLLM in :mod:`mlquant.engines.vllm`) scores exactly the same ids.

    Args:
        tokenizer: a transformers tokenizer.
        prefix: the ids every text starts with; default: BOS (EOS where the tokenizer has no BOS).

    Example:
        >>> enc = TokenEncoder(tokenizer)  # doctest: +SKIP
        >>> enc.encode_pair("Paris is the capital of ", "France")  # doctest: +SKIP
        ([2, ...], [...])
    """

    def __init__(self, tokenizer: Any, prefix: Sequence[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.prefix = None if prefix is None else list(prefix)

    def prefix_ids(self) -> list[int]:
        """The ids every encoded text starts with: ``prefix`` if given, else BOS (EOS where there is no BOS)."""
        if self.prefix is not None:
            return list(self.prefix)
        tok = self.tokenizer
        if tok.bos_token_id is not None:
            return [tok.bos_token_id]
        return [tok.eos_token_id]

    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` alone (no special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` after :meth:`prefix_ids`."""
        return self.prefix_ids() + self.text_ids(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of a log-likelihood request, split as lm-eval splits them."""
        # As lm-eval: trailing whitespace of the context belongs to the continuation.
        n_space = len(context) - len(context.rstrip())
        if n_space:
            continuation = context[-n_space:] + continuation
            context = context[:-n_space]
        ctx = self.encode(context)
        whole = self.encode(context + continuation)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, self.text_ids(continuation)


def fit_context(ctx: list[int], n_continuation: int, limit: int) -> list[int]:
    """The context ids of a log-likelihood request cut so that context + continuation hold ``limit`` tokens: its first
    token (BOS) and its last ones; unchanged when they fit.

    Example:
        >>> fit_context([1, 10, 11, 12, 13], 2, 5)
        [1, 12, 13]
        >>> fit_context([1, 10], 2, 5)
        [1, 10]
    """
    if len(ctx) + n_continuation <= limit:
        return ctx
    keep = limit - n_continuation
    return ctx[:1] + ctx[len(ctx) - keep + 1 :]


#: Default :attr:`HFModel.max_batch_tokens` on a CPU.
CPU_BATCH_TOKENS = 1536


class HFModel:
    """A transformers causal LM behind the :class:`Model` protocol.

    Build it with :func:`load_model`; quantizers return new ``HFModel`` objects through :meth:`derive`.

    Attributes:
        torch_model: the ``transformers`` model (``PreTrainedModel``).
        tokenizer: its tokenizer.
        source: where the weights came from (id, file hash, revision).
        spec: the quantization spec applied (a baseline spec for the unquantized model).
        batch_size: rows per forward pass.
        max_batch_tokens: padded tokens (rows × longest row) per pass of :meth:`loglikelihood`; when set, it sizes
            those passes instead of ``batch_size`` (as many rows as it holds, up to 128 or ``batch_size`` if larger):
            few rows of long Belebele passages, many of short XCOPA premises. Default: :data:`CPU_BATCH_TOKENS` on a
            CPU (bench/README.md, bench/choice.py), None (``batch_size`` rows) elsewhere.
        head_numerics: how log-probabilities are normalised: ``"exact"`` (default; the LM head one block of the
            vocabulary at a time with a float64 running log-sum-exp, within ~2e-6 nats of float64) or
            ``"log_softmax"`` (torch's float32 ``log_softmax`` over the whole vocabulary, as lm-eval and vLLM compute
            it: up to 1e-4 nats per token off on Gemma 3's 262k vocabulary, but equal to those tools' numbers to
            ~1e-4 per request; slower from a few hundred positions on). bench/head.py measures both.
        n_forward: forward passes run so far (used by tests and benchmarks).
    """

    def __init__(
        self,
        torch_model: Any,
        tokenizer: Any,
        source: ModelSource,
        spec: QuantSpec,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1 or None, got {max_batch_tokens}.")
        self.torch_model = torch_model
        self.tokenizer = tokenizer
        self.source = source
        self.spec = spec
        self.batch_size = batch_size
        cfg_max = getattr(torch_model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or min(cfg_max, 4096))
        if max_batch_tokens is None and next(torch_model.parameters()).device.type == "cpu":
            max_batch_tokens = CPU_BATCH_TOKENS
        self.max_batch_tokens = max_batch_tokens
        self.head_numerics = "exact"
        self.n_forward = 0
        self.quant_report: Any = None
        self.name = source.model_id

    # ----- identity -------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the first parameter: where inputs go (with a device_map, where the embeddings are)."""
        first: torch.device = next(self.torch_model.parameters()).device
        return first

    def fingerprint(self) -> str:
        """sha256 over model id, revision or file hash, dtype, the full quantization spec and the device type
        (when not cpu; see :func:`model_fingerprint`)."""
        return model_fingerprint(self.source, self.spec, self.device.type)

    def signature(self) -> str:
        rev = self.source.revision or (self.source.file_sha256 or "")[:12] or "main"
        return f"model:{self.source.model_id}@{rev}"

    def derive(self, torch_model: Any, spec: QuantSpec) -> HFModel:
        """A new HFModel sharing tokenizer and source, with other weights and spec (used by quantizers)."""
        return HFModel(
            torch_model, self.tokenizer, self.source, spec, batch_size=self.batch_size, max_length=self.max_length,
            max_batch_tokens=self.max_batch_tokens,
        )

    def copy_torch_model(self) -> Any:
        """A deep copy of the torch model, for a quantizer to modify."""
        return copy.deepcopy(self.torch_model)

    def to_dtype(self, dtype: str) -> HFModel:
        """This model in another baseline dtype (itself when it already has it)."""
        import torch

        spec = QuantSpec(method="none", dtype=dtype)
        if not self.spec.is_baseline:
            raise ConfigError("to_dtype() applies to an unquantized model only.")
        if self.spec.dtype == dtype:
            return self
        return self.derive(self.copy_torch_model().to(getattr(torch, dtype)), spec)

    # ----- tokenization ---------------------------------------------------------------------------------------------
    def prefix_ids(self) -> list[int]:
        """The ids every encoded text starts with: BOS (EOS where the tokenizer has no BOS)."""
        return TokenEncoder(self.tokenizer).prefix_ids()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` after :meth:`prefix_ids`."""
        return TokenEncoder(self.tokenizer, self.prefix_ids()).encode(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of a log-likelihood request, split as lm-eval splits them."""
        return TokenEncoder(self.tokenizer, self.prefix_ids()).encode_pair(context, continuation)

    # ----- scoring --------------------------------------------------------------------------------------------------
    def body(self) -> Any:
        """The decoder stack without the LM head (its forward returns hidden states)."""
        return getattr(self.torch_model, self.torch_model.base_model_prefix)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """One counted forward pass of :meth:`body` on (right-padded) ids; its ``last_hidden_state`` is [batch, seq, d]."""
        out = self.body()(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        self.n_forward += 1
        return out

    def logprobs_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """log-softmax over the vocabulary for hidden states [n, d] (the LM head applied only there)."""
        import torch

        logits = self.torch_model.get_output_embeddings()(hidden).float()
        cap = getattr(self.torch_model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return torch.log_softmax(logits, dim=-1)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """log P(continuation | context) for each request.

        Requests with the same context form a group: the context runs once and its key/value cache serves every
        continuation of the group. Groups are sorted by context length and batched ``batch_size`` at a time.
        """
        from mlquant._forward import Passes, score_groups

        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            ctx, cont = self.encode_pair(req.context, req.continuation)
            if not cont:
                raise ConfigError(f"request {i}: the continuation {req.continuation!r} encodes to no tokens.")
            ctx = fit_context(ctx, len(cont), self.max_length)
            groups.setdefault(tuple(ctx), []).append((i, cont))
        out: list[LoglikelihoodResult | None] = [None] * len(requests)
        passes = Passes()
        try:
            for idx, result in score_groups(self, groups, passes):
                out[idx] = result
        finally:
            self.n_forward += passes.count
        return [r for r in out if r is not None]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """log P(text) of each text, every token after BOS scored (disjoint windows of ``max_length``)."""
        from mlquant._forward import Passes, rolling_logprobs

        passes = Passes()
        try:
            return rolling_logprobs(self, requests, passes)
        finally:
            self.n_forward += passes.count

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Greedy (or seeded nucleus) generation, batched by length, cut at each request's stop sequences."""
        from mlquant._forward import Passes, generate_batched

        passes = Passes()
        try:
            texts = generate_batched(self, requests, passes)
        finally:
            self.n_forward += passes.count
        return [cut_at_stop(text, r.stop) for text, r in zip(texts, requests)]


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    gguf_file: str | None = None,
    device: str | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    batch_size: int = 16,
) -> HFModel:
    """Load a causal LM: ``"gemma3-270m"`` (the embedded default), a hub id, a local folder or a ``.gguf`` file.

    Args:
        name: model name or path.
        dtype: ``float32`` (default), ``bfloat16``, ``float16``, or ``auto``: ``bfloat16`` on a cuda or mps device
            that supports it, ``float32`` on the CPU.
        revision: hub revision (commit or tag) for reproducibility.
        gguf_file: a GGUF file inside the folder or hub repository ``name``.
        device: ``cpu`` (default), ``cuda``, ``cuda:<index>``, ``mps``, or ``auto`` (cuda, then mps, then cpu).
            Checked before anything is loaded.
        device_map: placement by accelerate for a model larger than one device (``"auto"``, ``"sequential"``, a
            mapping such as ``{"": "cpu"}``), passed to ``from_pretrained``; the model is then not moved to
            ``device``, which defaults to ``auto`` and must be where the first layer lands. ``"auto"`` with a
            ``cpu`` device is ``{"": "cpu"}``.
        batch_size: rows per forward pass.

    Raises:
        ConfigError: an unknown dtype, device string or device_map form, or a device_map that put the model
            elsewhere than ``device``.
        BackendUnavailableError: the device is not available here (``cuda`` without a GPU), or device_map without
            accelerate.

    Example:
        >>> model = load_model("gemma3-270m")  # doctest: +SKIP
        >>> model.spec.label  # doctest: +SKIP
        'fp32'
        >>> load_model("gemma3-270m", device="auto", dtype="auto").device.type  # doctest: +SKIP
        'cuda'
    """
    placement = check_device_map(device_map)
    target = resolve_device(check_device(device) if device is not None else ("auto" if placement else "cpu"))
    dtype = resolve_dtype(dtype, target)
    if dtype not in BASELINES.values():
        raise ConfigError(f"load_model: dtype {dtype!r} is not one of {sorted(BASELINES.values())} or 'auto'.")
    if placement == "auto" and target == "cpu":
        placement = {"": "cpu"}
    source = resolve_source(name, revision=revision, gguf_file=gguf_file)
    if source.note:
        log.warning("%s: %s", source.model_id, source.note)
    torch_model, tok = load_pretrained(source, dtype, target, placement)
    model = HFModel(torch_model, tok, source, QuantSpec(method="none", dtype=dtype), batch_size=batch_size)
    if placement is not None and model.device.type != device_kind(target):
        raise ConfigError(
            f"device_map {device_map!r} put the model's first layer on {model.device}, but device is {target!r}; "
            f"set device to {model.device.type!r} (or auto), or give a device_map on {target!r}."
        )
    return model
