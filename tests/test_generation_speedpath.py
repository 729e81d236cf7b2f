"""Greedy generation's own decode loop (mlquant._generate): the same tokens as ``model.generate``, finished rows
leave the batch, the tail-window stop check agrees with decoding the whole row, sampling keeps ``model.generate``."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import byte_tokenizer, make_tiny

import mlquant._generate as gen
from mlquant._forward import _left_pad
from mlquant.requests import GenerateRequest

PROMPTS = [
    "Hello",
    "日本語のテキストです",
    "a",
    "A much longer context that spans well beyond the sliding window of the tiny Gemma model, twice over.",
    "Question: 2 + 2?\nAnswer:",
]


def reference(model, rows, max_new, eos, pad) -> list[list[int]]:
    """``model.generate`` on the left-padded batch: each row's new tokens up to and including EOS."""
    ids, mask = _left_pad(rows, pad)
    out = model.torch_model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=pad, eos_token_id=eos,
        do_sample=False, temperature=None, top_p=None, top_k=None,
    )
    result = []
    for row in out[:, ids.shape[1] :].tolist():
        if eos in row:
            row = row[: row.index(eos) + 1]
        result.append(row)
    return result


def old_path(model, requests, monkeypatch) -> list[str]:
    """HFModel.generate as it was: every batch through ``model.generate`` (the greedy loop switched off)."""
    with monkeypatch.context() as m:
        m.setattr(gen, "plain_greedy", lambda torch_model: False)
        return model.generate(requests)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("own_head", [True, False])
def test_greedy_rows_equal_model_generate(arch: str, own_head: bool, monkeypatch) -> None:
    model = make_tiny(arch)
    if not own_head:  # a model class whose forward the loop does not know: it runs the model's own forward
        monkeypatch.setattr(gen, "PLAIN_HEAD_CLASSES", frozenset())
        monkeypatch.setattr(gen, "next_tokens", None)  # never called on that path
    pad = model.tokenizer.pad_token_id
    rows = [model.encode(p) for p in PROMPTS]  # ragged: 2 to 100 tokens, Gemma's sliding window is 8
    ref = reference(model, rows, 24, None, pad)
    assert gen.greedy_rows(model, rows, max_new_tokens=24, eos=None, pad=pad) == ref
    # EOS: a token the model produces mid-way in some row (and not in others) stops that row, EOS kept.
    eos = ref[0][5]
    ref_eos = reference(model, rows, 24, eos, pad)
    assert any(len(r) < 24 for r in ref_eos) and any(len(r) == 24 for r in ref_eos)
    assert gen.greedy_rows(model, rows, max_new_tokens=24, eos=eos, pad=pad) == ref_eos
    # one row alone
    assert gen.greedy_rows(model, rows[3:4], max_new_tokens=24, eos=eos, pad=pad) == reference(model, rows[3:4], 24, eos, pad)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_generate_outputs_unchanged(arch: str, batch_size: int, monkeypatch) -> None:
    model = make_tiny(arch, batch_size=batch_size)
    plain = model.generate([GenerateRequest(p, max_new_tokens=16) for p in PROMPTS])
    # stop strings that cut some rows early (taken from the outputs themselves), two max_new_tokens groups
    stops = (plain[0][4:6], plain[3][2:4])
    reqs = [GenerateRequest(p, stop=stops, max_new_tokens=16) for p in PROMPTS]
    reqs += [GenerateRequest(p, stop=("\n",), max_new_tokens=7) for p in PROMPTS[:3]]
    reqs += [GenerateRequest(PROMPTS[1], max_new_tokens=1)]
    new = model.generate(reqs)
    assert new == old_path(model, reqs, monkeypatch)
    assert plain == old_path(model, [GenerateRequest(p, max_new_tokens=16) for p in PROMPTS], monkeypatch)
    assert any(len(a) < len(b) for a, b in zip(new, plain))  # some stop string did cut


def test_finished_rows_leave_the_batch() -> None:
    model = make_tiny("llama")
    pad = model.tokenizer.pad_token_id
    rows = [model.encode(p) for p in PROMPTS]
    eos = reference(model, rows, 20, None, pad)[0][3]
    seen: list[int] = []
    out = gen.greedy_rows(model, rows, max_new_tokens=20, eos=eos, pad=pad, on_step=seen.append)
    lengths = [len(r) for r in out]
    assert min(lengths) < max(lengths)  # some rows stop early
    # prefill: every row; then each step only the rows still going. model.generate would run
    # len(rows) * (max(lengths) - 1) rows after the prefill.
    assert seen[0] == len(rows)
    assert sum(seen[1:]) == sum(n - 1 for n in lengths) < len(rows) * (max(lengths) - 1)
    assert seen[1:] == sorted(seen[1:], reverse=True)
    # the body's forward passes see the same row counts (nothing else runs the decoder)
    calls: list[int] = []
    hook = model.body().register_forward_pre_hook(lambda mod, args, kw: calls.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        gen.greedy_rows(model, rows, max_new_tokens=20, eos=eos, pad=pad)
    finally:
        hook.remove()
    assert calls == seen


def test_stop_check_agrees_with_whole_decode() -> None:
    tok = byte_tokenizer()
    rng = random.Random(0)
    text_ids = tok("Grüße, 世界! Stop here: END.\n¿Qué? ok", add_special_tokens=False)["input_ids"]
    specials = [tok.pad_token_id, tok.bos_token_id]
    for stops in (["\n"], ["END."], ["世界", "?"], ["ße, 世"], ["never there"]):
        for _ in range(30):
            # random token soup: pieces of multi-byte characters, special tokens (decode to nothing), text
            seq = [rng.choice(text_ids + specials * 3) for _ in range(rng.randrange(1, 120))]
            check = gen.StopCheck(tok, stops)
            for n in range(1, len(seq) + 1):
                whole = tok.decode(seq[:n], skip_special_tokens=True)
                expected = any(s in whole for s in stops)
                assert check.done(seq[:n]) == expected, (stops, seq[:n])
                if expected:
                    break
    # long rows: the check decodes a window, not the whole row, at each step
    check = gen.StopCheck(tok, ["\n"])
    row = tok("x" * 200, add_special_tokens=False)["input_ids"]
    for n in range(1, len(row) + 1):
        assert not check.done(row[:n])
    assert check.decoded_tokens <= len(row) * check.window < sum(range(len(row) + 1))


def test_plain_greedy_falls_back_to_model_generate(monkeypatch) -> None:
    model = make_tiny("llama")
    assert gen.plain_greedy(model.torch_model)
    model.torch_model.generation_config.repetition_penalty = 1.5
    assert not gen.plain_greedy(model.torch_model)
    called: list[int] = []
    real = model.torch_model.generate
    monkeypatch.setattr(model.torch_model, "generate", lambda *a, **k: called.append(1) or real(*a, **k))
    out = model.generate([GenerateRequest("Hello", max_new_tokens=8)])
    assert called == [1]  # the penalty is applied by model.generate, not skipped
    ids = model.encode("Hello")
    ref = real(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False, temperature=None, top_p=None, top_k=None,
               pad_token_id=model.tokenizer.pad_token_id, eos_token_id=model.tokenizer.eos_token_id)
    assert out[0] == model.tokenizer.decode(ref[0, len(ids) :], skip_special_tokens=True)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_static_cache_config_keeps_the_loop_and_its_tokens(arch: str, monkeypatch) -> None:
    # Official Gemma checkpoints ship cache_implementation="hybrid"/"static": a cache layout, not another decoding.
    model = make_tiny(arch)
    model.torch_model.generation_config.cache_implementation = "static"
    assert gen.plain_greedy(model.torch_model)
    reqs = [GenerateRequest(p, max_new_tokens=16) for p in PROMPTS]
    assert model.generate(reqs) == old_path(model, reqs, monkeypatch)


def test_sampling_stays_seeded_through_model_generate(monkeypatch) -> None:
    model = make_tiny("gemma3")
    reqs = [GenerateRequest(p, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7) for p in PROMPTS[:3]]
    calls: list[int] = []
    real = model.torch_model.generate
    monkeypatch.setattr(model.torch_model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = model.generate(reqs)
    assert calls == [1]
    assert model.generate(reqs) == first
    assert first != model.generate([GenerateRequest(r.context, max_new_tokens=10) for r in reqs])  # not greedy


def test_head_weight_only_for_a_plain_linear_head() -> None:
    model = make_tiny("llama")
    tm = model.torch_model
    assert gen._head_weight(tm) is tm.get_output_embeddings().weight
    hidden = torch.randn(5, 64) * 4
    for rows in (1, 2, 5, 8, 9, 16):  # weight @ hidden.T for 2-8 rows, the module otherwise
        h = hidden.repeat(4, 1)[:rows]
        assert torch.equal(gen.next_tokens(tm, h, gen._head_weight(tm)), tm.get_output_embeddings()(h).argmax(-1))
    hook = tm.get_output_embeddings().register_forward_hook(lambda *a: None)
    try:
        assert gen._head_weight(tm) is None
    finally:
        hook.remove()
