"""Greedy batched generation that stops computing finished rows (private; imports torch).

``model.generate`` runs a left-padded batch until its last row stops: a row that met its stop string, its EOS or its
token limit keeps going through every layer and the 262k-column LM head as padding, and its stop check decodes every
row's whole text at every step. :func:`greedy_rows` is the same greedy decoding (the same prefill, positions, mask,
key/value cache and argmax) with three changes that leave the tokens as they are:

* a finished row leaves the batch: its row of the key/value cache, mask and positions is dropped;
* the stop check decodes a tail window of each row's tokens and decodes the whole row only to confirm a hit
  (:class:`StopCheck`);
* on a CPU, for 2 to 8 rows, the LM head is computed as ``weight @ hidden.T`` (MKL's ``linear`` of [4, 640] by
  Gemma 3's [262144, 640] head took 2.1x as long, of 8 rows 1.2x, on the AVX2 CPU of bench/README.md) — the same
  products, summed in another order. Only for model classes whose forward is ``lm_head`` (+ softcapping)
  (:data:`PLAIN_HEAD_CLASSES`); other models run their own forward with ``logits_to_keep=1``, as ``generate`` does.

Float rounding: the logits of a row depend in the last bits on how many rows share the batch (MKL picks other kernels
for other shapes, as ``model.generate``'s own outputs do for other batch sizes); greedy tokens differ only where two
logits tie to about 1e-5.

Sampling (temperature > 0) and any generation config that adds a logits processor, beams or another decoding mode
stay with ``model.generate`` (:func:`plain_greedy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

#: Model classes whose forward computes the logits as ``lm_head(hidden)`` (then ``final_logit_softcapping`` where
#: the config has one): the ones whose LM head :func:`greedy_rows` may apply itself.
PLAIN_HEAD_CLASSES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "Olmo2ForCausalLM", "SmolLM3ForCausalLM",
})

#: Most rows for which the CPU LM head is computed as ``weight @ hidden.T`` (from 10-12 rows on, MKL's ``linear``
#: was as fast or faster).
TRANSPOSED_HEAD_MAX_ROWS = 8

#: Generation-config fields that change what greedy decoding picks, or how it decodes, when not at their default.
#: (``cache_implementation`` and ``prefill_chunk_size`` are not among them: a static or chunked cache computes the
#: same products, rounded as another batch size would round them.)
_DECODING_FIELDS = (
    "num_beams", "num_beam_groups", "penalty_alpha", "dola_layers", "prompt_lookup_num_tokens", "assistant_model",
    "guidance_scale", "sequence_bias", "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "force_words_ids", "constraints", "min_length", "min_new_tokens",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "renormalize_logits", "watermarking_config", "stop_strings",
)


def plain_greedy(torch_model: Any) -> bool:
    """Whether ``model.generate(do_sample=False)`` on this model is plain greedy decoding (argmax of the logits).

    False when the model's generation config sets beams, a repetition penalty, suppressed tokens, a minimum length or
    another field that changes the greedy choice, or when the model has no ``generation_config``.

    Example:
        >>> from transformers import GenerationConfig
        >>> class M: generation_config = GenerationConfig(repetition_penalty=1.3)
        >>> plain_greedy(M())
        False
    """
    from transformers import GenerationConfig

    cfg = getattr(torch_model, "generation_config", None)
    if not isinstance(cfg, GenerationConfig):
        return False
    default = GenerationConfig()  # type: ignore[no-untyped-call]
    return all(getattr(cfg, name, None) == getattr(default, name, None) for name in _DECODING_FIELDS)


class StopCheck:
    """Whether a row's generated tokens contain one of the stop strings, decoding only a tail window.

    The criterion is ``model.generate``'s with mlquant's stopping criterion: some stop string occurs in
    ``tokenizer.decode(tokens, skip_special_tokens=True)``. Checked after every new token, a stop string first occurs
    in text that ends within the newest token; decoding the last ``len(longest stop in UTF-8 bytes) + 8`` tokens
    (plus one more per special token among them, which decode to nothing) covers it — every other token decodes to at
    least one byte, and a decoder changes at most the first few characters of a window it starts mid-word or
    mid-character. A hit in the window is confirmed on the whole row (a window's first characters may differ from the
    whole text's).

    Args:
        tokenizer: the model's tokenizer.
        stops: the stop strings (empty ones ignored).

    Example:
        >>> class Tok:  # one character per token id, for the example
        ...     all_special_ids = [0]
        ...     def decode(self, ids, skip_special_tokens=True):
        ...         return "".join(chr(i) for i in ids if i != 0)
        >>> check = StopCheck(Tok(), ["\\n"])
        >>> check.done([ord(c) for c in "Hallo"]), check.done([ord(c) for c in "Hallo\\nWelt"])
        (False, True)
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 8
        self.special = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        #: Tokens decoded so far (tests and benchmarks read it).
        self.decoded_tokens = 0

    def _decode(self, tokens: Sequence[int]) -> str:
        self.decoded_tokens += len(tokens)
        text: str = self.tokenizer.decode(list(tokens), skip_special_tokens=True)
        return text

    def done(self, tokens: Sequence[int]) -> bool:
        """Whether ``tokens`` (a row's generated tokens so far) decode to a text containing a stop string."""
        if not self.stops or not tokens:
            return False
        k = self.window
        while k < len(tokens):
            extra = sum(1 for t in tokens[-k:] if t in self.special)
            if self.window + extra <= k:
                break
            k = self.window + extra
        tail = self._decode(tokens[-k:])
        if not any(s in tail for s in self.stops):
            return False
        if k >= len(tokens):
            return True
        whole = self._decode(tokens)
        return any(s in whole for s in self.stops)


def _forward_params(module: Any) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(module.forward).parameters)


def _cache_kwarg(module: Any, cache: Any) -> dict[str, Any]:
    """The key/value cache argument as this transformers version names it (``cache`` since 5.24)."""
    return {"cache": cache} if "cache" in _forward_params(module) else {"past_key_values": cache}


def _head_weight(torch_model: Any) -> torch.Tensor | None:
    """The LM head's weight when :func:`greedy_rows` may multiply by it itself (a plain bias-free ``nn.Linear``
    (:func:`mlquant._head.plain_head`) on the CPU, in a model class of :data:`PLAIN_HEAD_CLASSES`), else None."""
    from mlquant._head import plain_head

    if type(torch_model).__name__ not in PLAIN_HEAD_CLASSES:
        return None
    parts = plain_head(torch_model)
    if parts is None or parts[1] is not None or parts[0].device.type != "cpu":
        return None
    return parts[0]


def next_tokens(torch_model: Any, hidden: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy next tokens [rows] for the last hidden states [rows, d]: the argmax of the model's logits.

    The logits are ``lm_head(hidden)`` with the config's ``final_logit_softcapping`` applied in the model's dtype,
    then cast to float32, as ``model.generate`` computes them. With ``weight`` (see :func:`_head_weight`) and 2 to
    :data:`TRANSPOSED_HEAD_MAX_ROWS` rows, the head is computed as ``(weight @ hidden.T).T``.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...                                  num_hidden_layers=1, num_attention_heads=2))
        >>> next_tokens(m, torch.zeros(3, 16)).shape
        torch.Size([3])
    """
    if weight is not None and 1 < hidden.shape[0] <= TRANSPOSED_HEAD_MAX_ROWS:
        logits = (weight @ hidden.t()).t()
    else:
        logits = torch_model.get_output_embeddings()(hidden)
    cap = getattr(torch_model.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits.float().argmax(dim=-1)


@torch.inference_mode()
def greedy_rows(
    model: Any,
    rows: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos: int | None,
    pad: int,
    stop: Sequence[str] = (),
    on_step: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy generation for a batch of prompts; the new token ids of each row (EOS included where it stopped there).

    The rows are left-padded and prefilled together with a key/value cache as ``model.generate`` does; then each
    step feeds one token per unfinished row. A row finishes at EOS, after ``max_new_tokens`` tokens, or when its text
    contains a stop string (:class:`StopCheck`), and leaves the batch at once.

    Args:
        model: an :class:`~mlquant.models.HFModel` (``torch_model``, ``tokenizer``, ``body()``, ``device``).
        rows: the prompts' token ids (BOS included).
        max_new_tokens: at most this many new tokens per row.
        eos: the end-of-sequence id (None: no EOS stop).
        pad: the padding id.
        stop: stop strings, checked on the decoded new tokens.
        on_step: called with the number of rows of every forward pass (the prefill included).

    Returns:
        One list of new token ids per row, in the order of ``rows``.

    Example:
        >>> from types import SimpleNamespace
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> lm = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...                                   num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> m = SimpleNamespace(torch_model=lm, tokenizer=None, device=torch.device("cpu"), body=lambda: lm.model)
        >>> [len(t) for t in greedy_rows(m, [[1, 5, 7], [1, 9]], max_new_tokens=4, eos=None, pad=0)]
        [4, 4]
    """
    from transformers import DynamicCache

    n = len(rows)
    out: list[list[int]] = [[] for _ in range(n)]
    if n == 0 or max_new_tokens <= 0:
        return out
    torch_model = model.torch_model
    device = model.device
    check = StopCheck(model.tokenizer, stop)
    if type(torch_model).__name__ in PLAIN_HEAD_CLASSES:
        # the decoder stack, then the LM head at the last position only, applied here
        body = model.body()
        weight = _head_weight(torch_model) if device.type == "cpu" else None

        def run(**inputs: Any) -> torch.Tensor:
            hidden = body(**inputs, use_cache=True, **_cache_kwarg(body, cache)).last_hidden_state[:, -1]
            return next_tokens(torch_model, hidden, weight)
    else:
        # the model's own forward (its logits may be scaled or post-processed), logits at the last position only
        keep = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(torch_model) else {}

        def run(**inputs: Any) -> torch.Tensor:
            out = torch_model(**inputs, use_cache=True, **keep, **_cache_kwarg(torch_model, cache))
            logits: torch.Tensor = out.logits[:, -1]
            return logits.float().argmax(dim=-1)

    width = max(len(r) for r in rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    # model.generate's positions: cumsum of the mask - 1, padding at 0.
    positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 0)
    mask, positions = mask.to(device), positions.to(device)
    cache = DynamicCache(config=torch_model.config.get_text_config(decoder=True))
    tokens = run(input_ids=ids.to(device), attention_mask=mask, position_ids=positions)
    if on_step:
        on_step(n)
    last = positions[:, -1]
    active = list(range(n))  # the rows of the batch, in batch order
    while True:
        going: list[int] = []
        for j, (row, tok) in enumerate(zip(active, tokens.tolist())):
            out[row].append(tok)
            if tok == eos or len(out[row]) >= max_new_tokens or check.done(out[row]):
                continue
            going.append(j)
        if not going:
            return out
        if len(going) < len(active):
            sel = torch.tensor(going)  # CPU indices: valid for cache layers on any device (device_map)
            cache.batch_select_indices(sel)
            mask, last, tokens = mask[sel], last[sel], tokens[sel]
            active = [active[j] for j in going]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last = last + 1
        tokens = run(input_ids=tokens[:, None], attention_mask=mask, position_ids=last[:, None])
        if on_step:
            on_step(len(active))
