"""The blocked LM head (mlquant._head) and token-budget batches of the choice scorer (mlquant._forward).

References are float64 log-softmax over the full logits; the blocked path is checked with blocks much smaller than the
vocabulary so that the running log-sum-exp, the running argmax and the target gathering cross block boundaries.
"""

from __future__ import annotations

import pytest
import torch
from conftest import head_numerics, make_tiny
from test_models import full_sequence_logprob, requests

import mlquant._head as head_mod
from mlquant._forward import token_batches
from mlquant._head import plain_head, token_logprobs
from mlquant.errors import ConfigError
from mlquant.requests import LoglikelihoodRequest


def count_logprobs_at(model, monkeypatch) -> list[int]:
    """Rows of every call of the model's ``logprobs_at`` (the module path of the head) from now on."""
    calls: list[int] = []
    original = type(model).logprobs_at

    def counting(self, hidden):
        calls.append(hidden.shape[0])
        return original(self, hidden)

    monkeypatch.setattr(type(model), "logprobs_at", counting)
    return calls


@pytest.mark.parametrize("block", [1, 7, 64, 1000, 4096])
@pytest.mark.parametrize("softcap", [None, 30.0])  # Gemma 2's final_logit_softcapping
@pytest.mark.parametrize("with_bias", [False, True])
def test_token_logprobs_equal_float64_log_softmax(block: int, softcap: float | None, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(block)
    weight = torch.randn(1000, 24, generator=g)
    bias = torch.randn(1000, generator=g) if with_bias else None
    hidden = torch.randn(5, 24, generator=g) * 3
    rows = torch.tensor([0, 0, 1, 2, 3, 4, 4, 4])
    logits = hidden.double() @ weight.double().T + (0 if bias is None else bias.double())
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    ref = torch.log_softmax(logits, dim=-1)
    # Targets in several blocks, and each row's own argmax for some pairs (greedy True there).
    targets = torch.tensor([3, int(ref[0].argmax()), 999, 500, 0, int(ref[4].argmax()), 64, 65])
    lp, greedy = token_logprobs(weight, bias, softcap, hidden, rows, targets, block=block)
    assert lp.dtype == torch.float64
    assert torch.allclose(lp, ref[rows, targets], atol=2e-5, rtol=0), (lp, ref[rows, targets])
    assert greedy.tolist() == (ref[rows].argmax(dim=-1) == targets).tolist()
    assert greedy[1] and greedy[5]


def test_token_logprobs_tie_goes_to_the_first_index_across_blocks() -> None:
    weight = torch.zeros(10, 2)
    weight[2] = weight[8] = torch.tensor([1.0, 0.0])  # tokens 2 and 8 tie for the argmax, in different blocks of 4
    hidden = torch.tensor([[5.0, 1.0]])
    rows = torch.tensor([0, 0])
    _, greedy = token_logprobs(weight, None, None, hidden, rows, torch.tensor([2, 8]), block=4)
    assert greedy.tolist() == [True, False]


def test_plain_head_only_for_a_plain_linear(tiny_llama) -> None:
    tm = tiny_llama.torch_model
    assert plain_head(tm) == (tm.lm_head.weight, None)
    handle = tm.lm_head.register_forward_pre_hook(lambda m, a: None)
    assert plain_head(tm) is None  # an activation quantizer's hook must run: the module is called instead
    handle.remove()
    wrapped = torch.nn.Sequential(tm.lm_head)
    tm.set_output_embeddings(wrapped)
    try:
        assert plain_head(tm) is None
    finally:
        tm.set_output_embeddings(wrapped[0])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_loglikelihood_blocked_head_matches_float64_and_the_module_path(arch: str, monkeypatch) -> None:
    model = make_tiny(arch)
    reqs = requests()
    reference = [full_sequence_logprob(model, r) for r in reqs]
    monkeypatch.setattr(head_mod, "CPU_BLOCK", 16)  # 259-token vocabulary: 17 blocks
    blocked = model.loglikelihood(reqs)
    calls = count_logprobs_at(model, monkeypatch)
    monkeypatch.setattr(head_mod, "plain_head", lambda tm: None)
    module_path = model.loglikelihood(reqs)
    assert calls, "the fallback went through logprobs_at"
    for b, m, ref in zip(blocked, module_path, reference):
        assert abs(b.logprob - ref) < 1e-5, (b.logprob, ref)
        assert abs(m.logprob - ref) < 1e-4
        assert b.is_greedy == m.is_greedy and b.n_tokens == m.n_tokens


def test_each_context_goes_through_the_head_once_for_first_tokens(tiny_llama, monkeypatch) -> None:
    seen: list[int] = []
    real = head_mod.token_logprobs

    def spy(weight, bias, softcap, hidden, rows, targets, block=None):
        seen.append(hidden.shape[0])
        return real(weight, bias, softcap, hidden, rows, targets, block)

    monkeypatch.setattr(head_mod, "token_logprobs", spy)
    # Two contexts with four one-token options each (Belebele's shape): one head call, on 2 rows, for 8 requests.
    reqs = [LoglikelihoodRequest(ctx, f" {x}") for ctx in ("Passage one.\nAnswer:", "Passage two, longer.\nAnswer:") for x in "ABCD"]
    out = tiny_llama.loglikelihood(reqs)
    assert seen == [2, 8]  # the first tokens: 2 context rows; the second tokens: 8 option rows
    assert [r.n_tokens for r in out] == [2] * 8  # " A" is two byte tokens: the second one goes through the tail pass


def test_token_batches_respect_rows_and_tokens() -> None:
    lengths = sorted([300, 290, 100, 90, 80, 10, 10, 10, 10, 5, 700], reverse=True)
    spans = token_batches(lengths, rows=4, tokens=400)
    assert [i for s in spans for i in s] == list(range(len(lengths)))  # every item once, in order
    for s in spans:
        assert len(s) <= 4
        assert len(s) == 1 or len(s) * lengths[s.start] <= 400  # alone, an item longer than the budget still runs
    assert spans[0] == range(0, 1)  # 700 alone
    assert token_batches(lengths, rows=4, tokens=None) == [range(0, 4), range(4, 8), range(8, 11)]


def test_token_budget_changes_batches_not_results(tiny_gemma3) -> None:
    reqs = requests()
    tiny_gemma3.max_batch_tokens = None
    before = tiny_gemma3.n_forward
    unlimited = tiny_gemma3.loglikelihood(reqs)
    passes_unlimited = tiny_gemma3.n_forward - before
    tiny_gemma3.max_batch_tokens = 30
    before = tiny_gemma3.n_forward
    budgeted = tiny_gemma3.loglikelihood(reqs)
    assert tiny_gemma3.n_forward - before > passes_unlimited
    for a, b in zip(unlimited, budgeted):
        assert abs(a.logprob - b.logprob) < 1e-5 and a.is_greedy == b.is_greedy


def test_cpu_models_get_the_cpu_token_budget(tiny_llama) -> None:
    from mlquant.models import CPU_BATCH_TOKENS

    assert tiny_llama.max_batch_tokens == CPU_BATCH_TOKENS
    assert tiny_llama.derive(tiny_llama.torch_model, tiny_llama.spec).max_batch_tokens == CPU_BATCH_TOKENS


def test_a_token_budget_sizes_batches_beyond_batch_size(tiny_llama) -> None:
    reqs = requests()  # 4 contexts x 5 continuations
    tiny_llama.batch_size = 2
    tiny_llama.max_batch_tokens = None
    before = tiny_llama.n_forward
    by_rows = tiny_llama.loglikelihood(reqs)
    passes_by_rows = tiny_llama.n_forward - before
    tiny_llama.max_batch_tokens = 10_000  # holds every row at once: one context pass, one continuation pass
    before = tiny_llama.n_forward
    by_tokens = tiny_llama.loglikelihood(reqs)
    assert tiny_llama.n_forward - before == 2 < passes_by_rows
    for a, b in zip(by_rows, by_tokens):
        assert abs(a.logprob - b.logprob) < 1e-5 and a.is_greedy == b.is_greedy


def test_log_softmax_numerics_go_through_the_module(tiny_llama, monkeypatch) -> None:
    calls = count_logprobs_at(tiny_llama, monkeypatch)
    reqs = requests()[:5]
    exact = tiny_llama.loglikelihood(reqs)
    assert calls == []
    with head_numerics(tiny_llama, "log_softmax"):
        compat = tiny_llama.loglikelihood(reqs)
    assert calls
    for a, b in zip(exact, compat):
        assert abs(a.logprob - b.logprob) < 1e-4 and a.is_greedy == b.is_greedy
    with head_numerics(tiny_llama, "float16"), pytest.raises(ConfigError, match="head_numerics='float16'"):
        tiny_llama.loglikelihood(reqs)


def test_a_bad_token_budget_is_named(tiny_llama) -> None:
    from mlquant.models import HFModel

    with pytest.raises(ConfigError, match="max_batch_tokens must be >= 1 or None, got 0"):
        HFModel(tiny_llama.torch_model, tiny_llama.tokenizer, tiny_llama.source, tiny_llama.spec, max_batch_tokens=0)
