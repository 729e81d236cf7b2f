"""GGUF k-quants (mlquant.quantize.kquant): bytes equal to gguf's, dequantization equal to gguf's, llama.cpp's
per-tensor type choice against the embedded Q4_K_M file, idempotency on its own blocks, error ordering, imatrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mlquant as mq
from mlquant.errors import ConfigError
from mlquant.quantize.kquant import (
    BITS_PER_WEIGHT,
    dequantize_tensor,
    fake_quantize_gguf,
    gguf_name,
    gguf_tensor_type,
    quantize_tensor,
    read_gguf_tensors,
)

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def _weights(rows: int = 48, cols: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    w[0, :256] = 0.0  # an all-zero block
    w[1, :32] = 1e-3  # a constant block
    w[2] *= torch.linspace(0.1, 10, cols)  # uneven magnitudes
    w[3, 5] = 0.5  # an outlier
    return w


@pytest.mark.parametrize("qtype", LEGACY)
def test_bytes_equal_gguf_quantize(qtype: str) -> None:
    w = _weights()
    mine = quantize_tensor(w, qtype)
    ref = gguf.quants.quantize(w.numpy(), T[qtype])
    assert mine.dtype == np.uint8 and mine.shape == ref.shape
    assert np.array_equal(mine, ref)


@pytest.mark.parametrize("qtype", LEGACY + K_TYPES)
@pytest.mark.parametrize("use_imatrix", [False, True])
def test_dequantization_equals_gguf(qtype: str, use_imatrix: bool) -> None:
    w = _weights(rows=16)
    imatrix = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(1)) if use_imatrix else None
    data = quantize_tensor(w, qtype, imatrix)
    mine = dequantize_tensor(data, qtype).numpy()
    ref = gguf.quants.dequantize(data, T[qtype])
    assert np.array_equal(mine, ref)
    assert np.array_equal(fake_quantize_gguf(w, qtype, imatrix).numpy(), ref)


def test_roundf_rounds_half_away_from_zero_like_c() -> None:
    from mlquant.quantize._kquant_search import roundf

    under_half = np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997: v + 0.5 would round it up to 1
    v = np.array([0.0, under_half, 0.5, 1.5, 2.5, 126.5, 127.49999, 2.0**22 + 0.5, 2.0**23 + 1, 1e30, 1e-40],
                 dtype=np.float32)
    v = np.concatenate([v, -v])
    expected = np.sign(v) * np.floor(np.abs(v).astype(np.float64) + 0.5)  # exact in float64: C's roundf
    assert np.array_equal(roundf(torch.from_numpy(v)).numpy(), expected.astype(np.float32))
    small = torch.from_numpy(v[np.abs(v) < 127.5])
    assert torch.equal(roundf(small, torch.int8), torch.from_numpy(expected[np.abs(v) < 127.5]).to(torch.int8))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_1", "Q4_K"])
def test_many_chunks_give_the_same_weights(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    kquant = importlib.import_module("mlquant.quantize.kquant")
    w = _weights(rows=20)
    whole, fake = quantize_tensor(w, qtype), fake_quantize_gguf(w, qtype)
    monkeypatch.setattr(kquant, "_CHUNK", 3 * 512)  # 3 rows at a time: 7 chunks, the last one short
    assert np.array_equal(quantize_tensor(w, qtype), whole)
    assert torch.equal(fake_quantize_gguf(w, qtype), fake)
    assert np.array_equal(fake.numpy(), gguf.quants.dequantize(whole, T[qtype]))


def test_error_ordering_and_bits() -> None:
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(2))
    order = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
    errs = [float((fake_quantize_gguf(w, t) - w).norm() / w.norm()) for t in order]
    assert errs == sorted(errs), dict(zip(order, errs, strict=True))
    assert [BITS_PER_WEIGHT[t] for t in order] == [8.5, 6.5625, 5.5, 4.5, 3.4375, 2.625]


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_0", "Q5_1"])
def test_imatrix_reduces_the_importance_weighted_error(qtype: str) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 512, generator=g)
    imatrix = torch.rand(512, generator=g) ** 4 * 100  # a few columns matter much more than the rest

    def weighted(q: torch.Tensor) -> float:
        return float(((q - w) ** 2 * imatrix).sum())

    plain, with_im = weighted(fake_quantize_gguf(w, qtype)), weighted(fake_quantize_gguf(w, qtype, imatrix))
    assert with_im < 0.97 * plain, (plain, with_im)


def test_q8_0_ignores_the_imatrix() -> None:
    w = _weights(rows=8)
    assert np.array_equal(quantize_tensor(w, "Q8_0", torch.rand(512)), quantize_tensor(w, "Q8_0"))


def test_type_choice_follows_llama_cpp() -> None:
    n = 32  # a Llama-like 32-layer model: use_more_bits layers are 0-3, 28-31 and every third from 6
    down = [gguf_tensor_type(f"blk.{i}.ffn_down.weight", 11008, "q4_k_m", n).type for i in range(n)]
    assert [i for i, t in enumerate(down) if t == "Q6_K"] == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert set(down) == {"Q4_K", "Q6_K"}
    assert gguf_tensor_type("blk.5.attn_v.weight", 4096, "q5_k_m", n).type == "Q5_K"
    assert gguf_tensor_type("blk.6.attn_v.weight", 4096, "q5_k_m", n).type == "Q6_K"
    assert gguf_tensor_type("blk.5.attn_q.weight", 4096, "q4_k_m", n).type == "Q4_K"
    assert gguf_tensor_type("blk.1.attn_v.weight", 4096, "q3_k_m", n).type == "Q5_K"
    assert gguf_tensor_type("blk.2.attn_v.weight", 4096, "q3_k_m", n).type == "Q4_K"
    assert gguf_tensor_type("blk.1.ffn_down.weight", 4096, "q3_k_m", n).type == "Q5_K"  # layer < n/16
    assert gguf_tensor_type("blk.2.ffn_down.weight", 4096, "q3_k_m", n).type == "Q4_K"
    assert gguf_tensor_type("blk.9.attn_output.weight", 4096, "q3_k_m", n).type == "Q4_K"
    assert gguf_tensor_type("blk.9.attn_v.weight", 4096, "q2_k", n, n_gqa=4).type == "Q4_K"
    assert gguf_tensor_type("blk.9.attn_v.weight", 4096, "q2_k", n, n_gqa=1).type == "Q3_K"
    assert gguf_tensor_type("blk.9.ffn_up.weight", 4096, "q2_k", n).type == "Q2_K"
    assert gguf_tensor_type("output.weight", 4096, "q4_k_m", n).type == "Q6_K"
    assert gguf_tensor_type("output.weight", 4096, "q8_0", n).type == "Q8_0"
    assert gguf_tensor_type("token_embd.weight", 4096, "q4_k_m", n).type == "Q4_K"
    assert gguf_tensor_type("token_embd.weight", 640, "q4_k_m", n, tied_embeddings=True).type == "Q8_0"
    # fallbacks for rows that are not a multiple of 256 (then 32)
    assert gguf_tensor_type("blk.0.attn_q.weight", 640, "q4_k_m", 18) == ("Q5_0", "Q4_K")
    assert gguf_tensor_type("blk.0.attn_q.weight", 640, "q5_k_m", 18) == ("Q5_1", "Q5_K")
    assert gguf_tensor_type("blk.0.ffn_down.weight", 640, "q4_k_m", 18) == ("Q8_0", "Q6_K")
    assert gguf_tensor_type("blk.3.ffn_up.weight", 640, "q3_k_m", 18) == ("Q4_0", "Q3_K")
    assert gguf_tensor_type("blk.3.ffn_up.weight", 100, "q4_k_m", 18) == ("F16", "Q4_K")
    with pytest.raises(ConfigError, match="q4_k_x"):
        gguf_tensor_type("blk.0.attn_q.weight", 640, "q4_k_x", 18)


def test_hf_names_map_to_gguf_names() -> None:
    pairs = {
        "model.layers.2.self_attn.q_proj": "blk.2.attn_q.weight", "model.layers.2.self_attn.k_proj": "blk.2.attn_k.weight",
        "model.layers.2.self_attn.v_proj": "blk.2.attn_v.weight", "model.layers.2.self_attn.o_proj": "blk.2.attn_output.weight",
        "model.layers.2.mlp.gate_proj": "blk.2.ffn_gate.weight", "model.layers.2.mlp.up_proj": "blk.2.ffn_up.weight",
        "model.layers.2.mlp.down_proj": "blk.2.ffn_down.weight",
    }
    assert {k: gguf_name(k) for k in pairs} == pairs


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ConfigError, match="multiple of 256"):
        quantize_tensor(torch.zeros(2, 320), "Q4_K")
    with pytest.raises(ConfigError, match="importance matrix"):
        quantize_tensor(torch.zeros(2, 256), "Q4_K", torch.ones(128))
    with pytest.raises(ConfigError, match="unknown type"):
        quantize_tensor(torch.zeros(2, 256), "Q7_K")
    for label, overrides in [("gguf-q4_k_m", {"group_size": 128}), ("gguf-q4_k_m", {"backend": "native"}),
                             ("gguf-q4_k_m", {"damp": 0.1}), ("gguf-q6_k", {"a_bits": 8})]:
        with pytest.raises(ConfigError, match="gguf-"):
            mq.QuantSpec.parse(label, **overrides)


def _tiny_256() -> object:
    """A 2-layer Llama whose Linear rows are multiples of 256 (so the k-quant paths run, not the fallbacks)."""
    from conftest import byte_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from mlquant._loading import ModelSource
    from mlquant.models import HFModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    model = LlamaForCausalLM(cfg).eval()
    return HFModel(model, byte_tokenizer(), ModelSource("tiny-256", "tiny-256"), mq.QuantSpec.parse("fp32"))


def test_quantize_a_model_with_a_mix_and_an_imatrix(tmp_path) -> None:
    model = _tiny_256()
    q = mq.quantize(model, "gguf-q4_k_m")
    report = q.quant_report
    assert q.spec.label == "gguf-q4_k_m" and len(report) == 14
    types = report.attrs["gguf_types"]
    # 2 layers: use_more_bits is true for layer 1 only (1 >= 7*2//8)
    assert types["model.layers.1.mlp.down_proj"] == "Q6_K" and types["model.layers.0.mlp.down_proj"] == "Q4_K"
    assert types["model.layers.0.mlp.up_proj"] == "Q4_K" and types["model.layers.0.self_attn.v_proj"] == "Q4_K"
    assert types["model.layers.1.self_attn.v_proj"] == "Q6_K" and report.attrs["gguf_fallbacks"] == {}
    assert set(report["bits_per_weight"]) == {4.5, 6.5625}
    assert 4.5 < report.attrs["bits_per_weight"] < 6.5625
    w0 = model.torch_model.model.layers[0].mlp.up_proj.weight.detach()
    expected = fake_quantize_gguf(w0, "Q4_K")
    assert torch.equal(q.torch_model.model.layers[0].mlp.up_proj.weight, expected)
    texts = tmp_path / "calib.txt"
    texts.write_text("\n".join(f"calibration sentence number {i} with some words" for i in range(20)), encoding="utf-8")
    qi = mq.quantize(model, "gguf-q4_k_m", calibration=str(texts))
    assert qi.spec.label == f"gguf-q4_k_m@{texts}" and qi.quant_report.attrs["imatrix"] == str(texts)
    wi = qi.torch_model.model.layers[0].mlp.up_proj.weight.detach()
    assert not torch.equal(wi, expected)  # the importance matrix changed the rounding
    assert float((wi - w0).norm() / w0.norm()) < 0.2


# ----- the embedded Gemma 3 270M Q4_K_M file ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded() -> dict[str, object]:
    from pathlib import Path

    from mlquant._loading import default_model_source

    src = default_model_source()
    return read_gguf_tensors(Path(src.path) / str(src.gguf_file))


@pytest.mark.slow
def test_type_choice_equals_the_embedded_q4_k_m_file(embedded: dict) -> None:
    n_layers = 18  # gemma3.block_count; 4 query heads per KV head
    checked = 0
    for name, t in embedded.items():
        if len(t.shape) < 2 or name.endswith("_norm.weight"):
            assert t.type == "F32", name
            continue
        choice = gguf_tensor_type(name, t.shape[0], "q4_k_m", n_layers, n_gqa=4, tied_embeddings=True)
        assert choice.type == t.type, (name, choice)
        checked += 1
    assert checked == 1 + 7 * n_layers


def _requantize(t: object) -> tuple[np.ndarray, np.ndarray]:
    raw = np.asarray(t.data)
    w = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, T[t.type])))
    size = gguf.GGML_QUANT_SIZES[T[t.type]][1]
    return quantize_tensor(w, t.type).reshape(-1, size), raw.reshape(-1, size)


@pytest.mark.slow
def test_requantizing_the_embedded_blocks_gives_them_back(embedded: dict) -> None:
    for name in ("blk.3.attn_q.weight", "blk.3.ffn_up.weight", "blk.4.attn_v.weight"):  # Q5_0, Q5_0, Q8_0
        assert embedded[name].type in ("Q5_0", "Q8_0")
        mine, theirs = _requantize(embedded[name])
        assert np.array_equal(mine, theirs), name
    # Q4_K: llama.cpp's search is not exactly idempotent: a handful of blocks pick another 6-bit sub-scale.
    mine, theirs = _requantize(embedded["blk.3.ffn_down.weight"])
    assert embedded["blk.3.ffn_down.weight"].type == "Q4_K"
    assert (mine != theirs).any(axis=1).mean() < 0.005
    # Q6_K: dequantized sub-blocks often hold +31 d and -31 d, a tie in |x| that ggml breaks by position, which can
    # flip the sign of a sub-block scale (same values); apart from those, the blocks come back.
    mine, theirs = _requantize(embedded["blk.4.ffn_down.weight"])
    sa, sb = mine[:, 192:208].view(np.int8).astype(int), theirs[:, 192:208].view(np.int8).astype(int)
    differ = (mine != theirs).any(axis=1)
    only_sign = ((sa == sb) | (sa == -sb)).all(axis=1) & (sa != sb).any(axis=1)
    assert differ.mean() < 0.2
    assert (differ & ~only_sign).mean() < 0.01


@pytest.mark.slow
def test_error_ordering_on_real_weights(embedded: dict) -> None:
    # Token embeddings are stored as Q8_0 (close to the original floats; the Q4_K / Q6_K tensors would favour
    # their own type); their values, laid out in rows of 512, are the real weights here.
    t = embedded["token_embd.weight"]
    w = torch.from_numpy(gguf.quants.dequantize(np.asarray(t.data[:512]), T[t.type]).reshape(-1, 512))
    order = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
    errs = [float((fake_quantize_gguf(w, q) - w).norm() / w.norm()) for q in order]
    assert errs == sorted(errs), dict(zip(order, errs, strict=True))
    assert np.array_equal(quantize_tensor(w, "Q8_0"), gguf.quants.quantize(w.numpy(), T.Q8_0))
