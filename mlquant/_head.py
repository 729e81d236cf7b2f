"""The LM head at scored positions, one block of the vocabulary at a time (private; imports torch).

Scoring a token needs its logit and the log-sum-exp of all the logits of its position. Computed as
``log_softmax(lm_head(hidden))``, a [positions, vocabulary] float32 matrix is written to memory and read back three
times (log-softmax, gather, argmax): for Gemma 3's 262,144-token vocabulary, 1 MiB per position. :func:`token_logprobs`
multiplies the hidden states by one block of the head's rows at a time and keeps, per position, a running log-sum-exp
(float64 across blocks; float32 on MPS), the running maximum and its index, and the target logits that fall in the
block; a block's logits stay in the CPU's cache. Measured figures: bench/README.md (bench/head.py).

Rounding: each block's logits are the same products as the full matrix's (another GEMM shape may sum them in another
order: ~1e-6). The result is within ~2e-6 nats of a float64 log-softmax of the same logits, where torch's float32
``log_softmax`` over 262,144 logits over-states log P(token) by ~4e-5 on average, up to 1e-4 (bench/head.py).
"""

from __future__ import annotations

from typing import Any

import torch

#: Vocabulary rows per block on a CPU (2,048-4,096 were fastest on the AVX2 CPU above; 512 and 8,192 slower).
CPU_BLOCK = 4096
#: Vocabulary rows per block elsewhere (an accelerator's GEMM prefers few large launches).
DEVICE_BLOCK = 65536


def acc_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums, except on MPS (no float64 there): float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def plain_head(torch_model: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of the model's LM head when it is a plain ``nn.Linear`` that may be multiplied by directly.

    None when the head is another module (a bitsandbytes or packed layer), has forward hooks (an activation
    quantizer's), is offloaded by accelerate (``_hf_hook``), or its weight is not a plain floating-point
    ``nn.Parameter``: then the caller runs the module itself.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...                                  num_hidden_layers=1, num_attention_heads=2))
        >>> plain_head(m)[0] is m.lm_head.weight
        True
    """
    head = torch_model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or hasattr(head, "_hf_hook"):
        return None
    if head._forward_hooks or head._forward_pre_hooks:
        return None
    weight = head.weight
    if type(weight) is not torch.nn.Parameter or not weight.dtype.is_floating_point:
        return None
    return weight, head.bias


def token_logprobs(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    hidden: torch.Tensor,
    rows: torch.Tensor,
    targets: torch.Tensor,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(target) (float64; float32 on MPS) and whether the target is the argmax, for each (row of ``hidden``, target) pair.

    The logits are ``hidden @ weight.T + bias`` in the weight's dtype, cast to float32, then soft-capped
    (``tanh(logits / cap) * cap``) where ``softcap`` is set, as :meth:`mlquant.models.HFModel.logprobs_at` computes
    them. Several pairs may share a row (the first token of every option of one context): each distinct row goes
    through the head once.

    Args:
        weight, bias: the head's [vocabulary, d] weight and optional [vocabulary] bias.
        softcap: the config's ``final_logit_softcapping`` (None or 0: none).
        hidden: [n, d] hidden states.
        rows, targets: [m] row of ``hidden`` and target token of each pair.
        block: vocabulary rows per block (default :data:`CPU_BLOCK` on a CPU, :data:`DEVICE_BLOCK` elsewhere).

    Example:
        >>> w = torch.randn(10, 4)
        >>> h = torch.randn(2, 4)
        >>> lp, greedy = token_logprobs(w, None, None, h, torch.tensor([0, 0, 1]), torch.tensor([3, 7, 3]), block=4)
        >>> ref = torch.log_softmax(h @ w.T, -1)
        >>> bool(torch.allclose(lp, ref[[0, 0, 1], [3, 7, 3]].double(), atol=1e-5))
        True
    """
    device = hidden.device
    n, vocab = hidden.shape[0], weight.shape[0]
    step = block or (CPU_BLOCK if device.type == "cpu" else DEVICE_BLOCK)
    acc = acc_dtype(device)
    lse = torch.full((n,), float("-inf"), dtype=acc, device=device)
    best = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    arg = torch.zeros(n, dtype=torch.long, device=device)
    target_logit = torch.zeros(rows.shape[0], dtype=torch.float32, device=device)
    which = torch.div(targets, step, rounding_mode="floor").tolist()
    by_block: dict[int, list[int]] = {}
    for k, b in enumerate(which):
        by_block.setdefault(int(b), []).append(k)
    h = hidden.to(weight.dtype)
    for b, start in enumerate(range(0, vocab, step)):
        logits = torch.nn.functional.linear(
            h, weight[start : start + step], None if bias is None else bias[start : start + step]
        ).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        top, top_idx = logits.max(dim=-1)
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1).to(acc))
        # Strictly greater: on a tie the earlier block keeps the argmax, as argmax over the whole row does.
        better = top > best
        best = torch.where(better, top, best)
        arg = torch.where(better, top_idx + start, arg)
        pairs = by_block.get(b)
        if pairs:
            sel = torch.tensor(pairs, device=device)
            target_logit[sel] = logits[rows[sel], targets[sel] - start]
    return target_logit.to(acc) - lse[rows], arg[rows] == targets
