"""Forward passes of :class:`~mlquant.models.HFModel` (private; imports torch).

* ``score_groups``: log-likelihood of continuations. Each batch of distinct contexts runs once (left-padded,
  key/value cache kept; at most ``batch_size`` rows, or with a ``max_batch_tokens`` budget as many rows as it holds,
  up to ``BUDGET_MAX_ROWS``); the cache rows are then selected for every continuation of those contexts, and the
  continuations run on top with explicit position ids.
  The LM head is applied only at the scored positions (each context's last position once for all its options), one
  block of the vocabulary at a time where it is a plain linear layer (:mod:`mlquant._head`).
* ``rolling_logprobs``: log-likelihood of whole texts, LM head applied in chunks of positions (blocked, as above).
* ``generate_batched``: left-padded batched generation with stop strings: greedy requests through
  :func:`mlquant._generate.greedy_rows` (finished rows leave the batch), sampled ones through ``model.generate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mlquant.errors import ConfigError
from mlquant.requests import GenerateRequest, LoglikelihoodResult, RollingRequest, RollingResult


class ForwardModel(Protocol):
    """What the forward passes need from a model (:class:`~mlquant.models.HFModel` provides it)."""

    torch_model: Any
    tokenizer: Any
    batch_size: int
    max_batch_tokens: int | None
    max_length: int

    @property
    def device(self) -> torch.device: ...

    def body(self) -> Any:
        """The decoder stack without the LM head (returns hidden states)."""

    def logprobs_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """log-softmax over the vocabulary for hidden states [n, d]."""

    def prefix_ids(self) -> list[int]:
        """The token ids every text starts with (BOS)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` after the prefix."""


@dataclass
class Passes:
    """Forward passes run by one call (the caller adds them to its own count)."""

    count: int = 0

#: Hidden-state positions sent through ``model.logprobs_at`` at once (bounds its [positions, vocab] logits buffer).
HEAD_CHUNK = 256
#: Most rows of a log-likelihood pass when the model has a token budget (``max_batch_tokens``) instead of ``batch_size``.
BUDGET_MAX_ROWS = 128
#: Positions per call of the blocked head (its buffer is [positions, block]; more positions per pass over the weight).
BLOCKED_HEAD_CHUNK = 1024


def _right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _gather_logprobs(
    model: ForwardModel, hidden: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(target) (float64; float32 on MPS) and whether the target is the argmax, for hidden [n, d], targets [m].

    ``rows`` [m] names the row of ``hidden`` each target belongs to (default: row k for target k); each row goes
    through the LM head once however many targets share it. A plain ``nn.Linear`` head is applied one block of the
    vocabulary at a time (:func:`mlquant._head.token_logprobs`); any other head, or any head when the model's
    ``head_numerics`` is ``"log_softmax"``, through ``model.logprobs_at``.
    """
    from mlquant._head import acc_dtype, plain_head, token_logprobs

    device = hidden.device
    if rows is None:
        rows = torch.arange(hidden.shape[0], device=device)
    numerics = getattr(model, "head_numerics", "exact")
    if numerics not in ("exact", "log_softmax"):
        raise ConfigError(f"head_numerics={numerics!r}; expected 'exact' or 'log_softmax'.")
    parts = plain_head(model.torch_model) if numerics == "exact" else None
    cap = getattr(model.torch_model.config, "final_logit_softcapping", None)
    lp = torch.empty(rows.shape[0], dtype=acc_dtype(device), device=device)
    greedy = torch.empty(rows.shape[0], dtype=torch.bool, device=device)
    chunk = HEAD_CHUNK if parts is None else BLOCKED_HEAD_CHUNK
    for start in range(0, hidden.shape[0], chunk):
        sel = ((rows >= start) & (rows < start + chunk)).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        h, r, t = hidden[start : start + chunk], rows[sel] - start, targets[sel]
        if parts is not None:
            lp[sel], greedy[sel] = token_logprobs(parts[0], parts[1], cap, h, r, t)
        else:
            full = model.logprobs_at(h)
            lp[sel] = full[r, t].to(lp.dtype)
            greedy[sel] = full[r].argmax(dim=-1) == t
    return lp, greedy


def _select_rows(layer: Any, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of the chosen batch rows of one layer of a filled key/value cache."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
        raise TypeError(f"key/value cache layer {type(layer).__name__} holds no key and value tensors to select from.")
    return keys[rows], values[rows]


def _cache_kwarg(body: Any, cache: Any) -> dict[str, Any]:
    """The key/value cache argument as this transformers version names it: ``cache`` since 5.24 (``past_key_values``
    still works there but warns that it goes in 5.40), ``past_key_values`` before."""
    import inspect

    params = inspect.signature(body.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _batches(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def token_batches(lengths: Sequence[int], rows: int, tokens: int | None) -> list[range]:
    """Consecutive batches of items sorted longest first: at most ``rows`` items, and at most ``tokens`` padded
    tokens (items × the batch's longest) unless one item alone is longer.

    Example:
        >>> token_batches([300, 290, 100, 90, 10, 10], rows=4, tokens=600)
        [range(0, 2), range(2, 6)]
        >>> token_batches([300, 290, 100], rows=16, tokens=None)
        [range(0, 3)]
    """
    out: list[range] = []
    start = 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < rows and (tokens is None or (end + 1 - start) * lengths[start] <= tokens):
            end += 1
        out.append(range(start, end))
        start = end
    return out


@torch.inference_mode()
def score_groups(
    model: ForwardModel, groups: dict[tuple[int, ...], list[tuple[int, list[int]]]], passes: Passes
) -> Iterator[tuple[int, LoglikelihoodResult]]:
    """Yield (request index, result) for every continuation of every context group; count passes in ``passes``."""
    from transformers import DynamicCache

    device = model.device
    body = model.body()
    pad = model.tokenizer.pad_token_id or 0
    # Longest contexts first: similar lengths share a batch, and memory problems show up at once.
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[0]), kv[0]))
    budget = model.max_batch_tokens
    # With a token budget, the budget sizes the batches (short XCOPA contexts: up to BUDGET_MAX_ROWS rows a pass).
    max_rows = model.batch_size if budget is None else max(model.batch_size, BUDGET_MAX_ROWS)
    for span in token_batches([len(ctx) for ctx, _ in ordered], max_rows, budget):
        batch = ordered[span.start : span.stop]
        contexts = [list(ctx) for ctx, _ in batch]
        ctx_len = torch.tensor([len(c) for c in contexts])
        # Left padding: every context ends at the same index, so the distance between a continuation token and
        # any context token is the true one (sliding-window attention stays exact); positions are explicit.
        ids, mask = _left_pad(contexts, pad)
        cache = DynamicCache()
        out = body(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(device),
            **_cache_kwarg(body, cache),
            use_cache=True,
        )
        passes.count += 1
        last_hidden = out.last_hidden_state[:, -1]
        # Every continuation of the batch: (group row, request index, tokens).
        rows = [(g, idx, cont) for g, (_, conts) in enumerate(batch) for idx, cont in conts]
        rows.sort(key=lambda r: -len(r[2]))
        # The first token of every continuation, from its context's last position: each context through the head once.
        all_first_lp, all_first_greedy = _gather_logprobs(
            model,
            last_hidden,
            torch.tensor([c[0] for _, _, c in rows], device=device),
            torch.tensor([g for g, _, _ in rows], device=device),
        )
        width = ids.shape[1]
        for part in token_batches([width + len(c) - 1 for _, _, c in rows], max_rows, budget):
            chunk = rows[part.start : part.stop]
            sel = torch.tensor([g for g, _, _ in chunk])
            first_lp = all_first_lp[part.start : part.stop]
            first_greedy = all_first_greedy[part.start : part.stop]
            # Feed all continuation tokens but the last; each predicts the next one.
            tails = [c[:-1] for _, _, c in chunk]
            longest = max(len(t) for t in tails)
            if longest == 0:
                for k, (_, idx, _) in enumerate(chunk):
                    yield idx, LoglikelihoodResult(float(first_lp[k]), bool(first_greedy[k]), 1)
                continue
            tail_ids, tail_mask = _right_pad([t if t else [pad] for t in tails], pad)
            for k, t in enumerate(tails):
                if not t:
                    tail_mask[k, 0] = 0
            sub = DynamicCache(ddp_cache_data=[_select_rows(layer, sel.to(device)) for layer in cache.layers])
            full_mask = torch.cat([mask[sel], tail_mask], dim=1)
            positions = ctx_len[sel][:, None] + torch.arange(longest)[None, :]
            out2 = body(
                input_ids=tail_ids.to(device),
                attention_mask=full_mask.to(device),
                position_ids=positions.to(device),
                **_cache_kwarg(body, sub),
                use_cache=True,
            )
            passes.count += 1
            hid, targets, owner = [], [], []
            for k, (_, _, cont) in enumerate(chunk):
                n = len(cont) - 1
                if n:
                    hid.append(out2.last_hidden_state[k, :n])
                    targets.extend(cont[1:])
                    owner.extend([k] * n)
            lp, greedy = _gather_logprobs(model, torch.cat(hid), torch.tensor(targets, device=device))
            own = torch.tensor(owner, device=device)
            # Sums in float64 on the CPU (MPS has no float64).
            total = first_lp.cpu().double().clone().index_add_(0, own.cpu(), lp.cpu().double())
            bad = torch.zeros(len(chunk), dtype=torch.long, device=device).index_add_(0, own, (~greedy).long())
            for k, (_, idx, cont) in enumerate(chunk):
                yield idx, LoglikelihoodResult(float(total[k]), bool(first_greedy[k]) and int(bad[k]) == 0, len(cont))


@torch.inference_mode()
def rolling_logprobs(model: ForwardModel, requests: Sequence[RollingRequest], passes: Passes) -> list[RollingResult]:
    """Sum of log P(token) over each text (all tokens after BOS), in disjoint windows of ``max_length``."""
    device = model.device
    body = model.body()
    pad = model.tokenizer.pad_token_id or 0
    prefix = model.prefix_ids()
    windows: list[tuple[int, list[int], int]] = []  # (request, input tokens, number of leading context tokens)
    for i, req in enumerate(requests):
        text_ids = list(model.tokenizer(req.text, add_special_tokens=False)["input_ids"])
        step = model.max_length - len(prefix)
        for start in range(0, max(len(text_ids), 1), step):
            windows.append((i, prefix + text_ids[start : start + step], len(prefix)))
    order = sorted(range(len(windows)), key=lambda w: -len(windows[w][1]))
    sums = [0.0] * len(requests)
    counts = [0] * len(requests)
    for chunk in _batches(order, model.batch_size):
        ids, mask = _right_pad([windows[w][1] for w in chunk], pad)
        out = body(input_ids=ids.to(device), attention_mask=mask.to(device))
        passes.count += 1
        hid, targets, owner = [], [], []
        for k, w in enumerate(chunk):
            req_i, toks, _ = windows[w]
            n = len(toks) - 1
            if n > 0:
                hid.append(out.last_hidden_state[k, :n])
                targets.extend(toks[1:])
                owner.extend([req_i] * n)
        if not hid:
            continue
        lp, _ = _gather_logprobs(model, torch.cat(hid), torch.tensor(targets, device=device))
        for req_i, value in zip(owner, lp.cpu().double().tolist()):
            sums[req_i] += value
            counts[req_i] += 1
    return [RollingResult(sums[i], counts[i], len(r.text.encode("utf-8"))) for i, r in enumerate(requests)]


class _StopOnStrings:
    """Stopping criterion: every row has produced one of its stop strings (checked on the decoded new text)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = []
        for row in input_ids[:, self.prompt_width :]:
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            done.append(any(s in text for s in self.stops))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_batched(model: ForwardModel, requests: Sequence[GenerateRequest], passes: Passes) -> list[str]:
    """Generate for each request; requests with the same decoding parameters share left-padded batches.

    Greedy requests go through :func:`~mlquant._generate.greedy_rows` when the model's generation config is plain
    greedy decoding (:func:`~mlquant._generate.plain_greedy`); sampled ones, and greedy ones on any other config,
    through ``model.generate``. ``passes`` counts one pass per batch either way.
    """
    from transformers import StoppingCriteriaList

    from mlquant._generate import greedy_rows, plain_greedy

    tok = model.tokenizer
    device = model.device
    pad = tok.pad_token_id or 0
    eos = tok.eos_token_id
    encoded = [model.encode(r.context) for r in requests]
    results: list[str] = [""] * len(requests)
    by_params: dict[tuple[Any, ...], list[int]] = {}
    for i, r in enumerate(requests):
        by_params.setdefault((r.stop, r.max_new_tokens, r.temperature, r.top_p, r.seed), []).append(i)
    greedy = plain_greedy(model.torch_model)
    for (stop, max_new, temperature, top_p, seed), idxs in by_params.items():
        idxs = sorted(idxs, key=lambda i: -len(encoded[i]))
        for chunk in _batches(idxs, model.batch_size):
            rows = [encoded[i][-(model.max_length - max_new) :] for i in chunk]
            if greedy and temperature <= 0:
                new_ids = greedy_rows(model, rows, max_new_tokens=max_new, eos=eos, pad=pad, stop=stop)
                passes.count += 1
                for i, ids_i in zip(chunk, new_ids):
                    results[i] = tok.decode(ids_i, skip_special_tokens=True)
                continue
            ids, mask = _left_pad(rows, pad)
            width = ids.shape[1]
            kwargs: dict[str, Any] = {"do_sample": temperature > 0}
            if temperature > 0:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
                torch.manual_seed(seed)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            out = model.torch_model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new,
                pad_token_id=pad,
                eos_token_id=eos,
                stopping_criteria=StoppingCriteriaList([_StopOnStrings(tok, stop, width)]) if stop else None,
                **kwargs,
            )
            passes.count += 1
            for k, i in enumerate(chunk):
                results[i] = tok.decode(out[k, width:], skip_special_tokens=True)
    return results
