"""MXFP4 / NVFP4 (fp4.py), W4A8 (w4a8.py) and the Hadamard rotation step (rotate.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mlquant.errors import ConfigError
from mlquant.quantize import QuantSpec, quantize, save_quantized
from mlquant.quantize._common import ACT_ATTR, ActQuant, remove_act_quant
from mlquant.quantize.fp4 import (
    E2M1_VALUES,
    FP4ActQuant,
    mx_exponent,
    mxfp4_fake_quant,
    mxfp4_quantize,
    nvfp4_fake_quant,
    nvfp4_quantize,
    pack_e2m1,
    round_e2m1,
    unpack_e2m1,
)
from mlquant.quantize.rotate import Rotation, activation_outliers, hadamard_matrix, random_hadamard, rotate_model
from mlquant.quantize.rtn import fake_quantize

CT_INSTALL = "pip install 'compressed-tensors==0.20.0'  (or the lock's 'reference' extra)"


def _ct() -> Any:
    """compressed-tensors, the reference implementation; missing is a failure, not a skip."""
    try:
        import compressed_tensors
    except ImportError:
        pytest.fail(f"the FP4 reference tests need compressed-tensors: {CT_INSTALL}")
    return compressed_tensors


def _heavy(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, cols, generator=g))


# ----- E2M1 and packing ---------------------------------------------------------------------------------------------
def test_round_e2m1_ties_to_even_and_saturates() -> None:
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 100.0, -0.1, -2.9, 0.0])
    assert round_e2m1(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.0, -3.0, 0.0]
    grid = torch.tensor(E2M1_VALUES)
    assert torch.equal(round_e2m1(grid), grid) and torch.equal(round_e2m1(-grid), -grid)
    assert torch.signbit(round_e2m1(torch.tensor([-0.1]))).item()  # -0.0 keeps its sign (packs as 0x8)


def test_pack_round_trips_all_codes() -> None:
    values = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES)).reshape(2, 8)
    packed = pack_e2m1(values)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 4)
    assert packed[0, 0].item() == 0x10 and packed[1, 3].item() == 0xFE  # (0, 0.5) and (-4, -6): low nibble first
    assert torch.equal(unpack_e2m1(packed), values)
    with pytest.raises(ConfigError, match="even"):
        pack_e2m1(torch.zeros(1, 3))


def test_mx_scale_follows_the_ocp_rule() -> None:
    amax = torch.tensor([6.0, 7.0, 7.99, 8.0, 1.0, 0.0])
    assert mx_exponent(amax, "ocp").tolist() == [0, 0, 0, 1, -2, -127]  # floor(log2(amax)) - 2
    assert mx_exponent(amax, "vllm").tolist() == [0, 1, 1, 1, -2, -127]  # 7 = 1.75 * 2^2 rounds up
    x = torch.zeros(1, 32)
    x[0, :3] = torch.tensor([7.0, 3.0, -0.3])
    assert mxfp4_fake_quant(x)[0, :3].tolist() == [6.0, 3.0, -0.5]  # the spec saturates 7 to 6
    with pytest.raises(ConfigError, match="scale_rule='up'"):
        mx_exponent(amax, "up")


def test_fp4_errors_are_bounded_by_the_grid() -> None:
    w = _heavy(32, 64)
    for fq, block in ((mxfp4_fake_quant, 32), (nvfp4_fake_quant, 16)):
        wq = fq(w)
        assert wq.shape == w.shape and bool(torch.isfinite(wq).all())
        rel = float((wq - w).norm() / w.norm())
        assert 0.02 < rel < 0.2, (fq.__name__, rel)
        blocks = w.reshape(32, -1, block).abs().amax(-1)
        err = (wq - w).reshape(32, -1, block).abs().amax(-1)
        assert bool((err <= blocks * 0.34).all())  # at most (half the top step) / (block max) ≈ 1/6 (+ saturation)


# ----- against compressed-tensors -----------------------------------------------------------------------------------
def _ct_qparams(w: torch.Tensor, scheme: str, block: int) -> tuple[Any, Any, Any, Any]:
    _ct()
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = PRESET_SCHEMES[scheme]["weights"]
    g = generate_gparam(w.min(), w.max()) if scheme == "NVFP4" else None
    wb = w.reshape(w.shape[0], -1, block)
    scale, zp = calculate_qparams(wb.amin(-1), wb.amax(-1), args, global_scale=g)
    return args, scale, zp, g


def test_nvfp4_equals_compressed_tensors_bit_for_bit() -> None:
    _ct()
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize

    w = _heavy(64, 256)
    args, scale, zp, g = _ct_qparams(w, "NVFP4", 16)
    q, s, gg = nvfp4_quantize(w)
    assert torch.equal(gg, g) and torch.equal(s, scale.float())
    assert torch.equal(nvfp4_fake_quant(w), fake_quantize(w, scale, zp, args, global_scale=g))
    codes = ct_quantize(w, scale, zp, args, global_scale=g)
    assert torch.equal(q, codes)
    assert torch.equal(pack_e2m1(q), pack_fp4_to_uint8(codes))
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    packed = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_global_scale": g}, scheme)
    assert torch.equal(packed["weight_packed"], pack_e2m1(q))
    assert torch.equal(unpack_e2m1(packed["weight_packed"]), q)
    back = NVFP4PackedCompressor.decompress(packed, scheme)["weight"]
    assert torch.equal(back, nvfp4_fake_quant(w).to(back.dtype))


def test_mxfp4_vllm_rule_equals_compressed_tensors_and_ocp_rule_differs_only_where_it_must() -> None:
    _ct()
    from compressed_tensors.compressors.mx_utils import compress_mx_scale
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    w = _heavy(64, 256, seed=1)
    args, scale, zp, _ = _ct_qparams(w, "MXFP4", 32)
    ref = fake_quantize(w, scale, zp, args)
    assert torch.equal(mxfp4_fake_quant(w, "vllm"), ref)
    q, e = mxfp4_quantize(w, "vllm")
    assert torch.equal(e, compress_mx_scale(scale, torch.uint8))
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    packed = MXFP4PackedCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
    assert torch.equal(packed["weight_packed"], pack_e2m1(q)) and torch.equal(packed["weight_scale"], e)
    back = MXFP4PackedCompressor.decompress(packed, scheme)["weight"]
    assert torch.equal(back, ref.to(back.dtype))
    # The OCP rule differs exactly in the blocks whose max has a mantissa >= 1.75 (7 * 2^k .. 8 * 2^k).
    mant, _ = torch.frexp(w.reshape(64, -1, 32).abs().amax(-1))
    differs = (mxfp4_fake_quant(w, "ocp") != ref).reshape(64, -1, 32).any(-1)
    assert bool(differs.any()) and torch.equal(differs, mant >= 0.875)


# ----- Hadamard -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "how"),
    [(64, "sylvester(64)"), (12, "paley1(11)"), (28, "paley2(13)"), (40, "sylvester(2)⊗paley1(19)"),
     (640, "sylvester(32)⊗paley1(19)"), (7, "blockdiag(4,2,1)"), (100, "blockdiag(64,32,4)")],
)
def test_hadamard_matrices(n: int, how: str) -> None:
    H, built = hadamard_matrix(n)
    assert built == how
    assert bool((H.abs() == 1).sum() == n * n) == (not how.startswith("blockdiag"))
    Q, _ = random_hadamard(n, seed=3)
    assert float((Q @ Q.T - torch.eye(n, dtype=Q.dtype)).abs().max()) < 1e-12
    assert torch.equal(Q, random_hadamard(n, seed=3)[0]) and not torch.equal(Q, random_hadamard(n, seed=4)[0])


def _tiny_llama_80() -> Any:
    """A tiny Llama with hidden size 80 = 4 × 20 (a Paley-built rotation) and intermediate 96 = 8 × 12."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=80, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "gemma3", "llama80"])
def test_rotation_without_quantization_is_exact(arch: str) -> None:
    from conftest import make_tiny

    tm = _tiny_llama_80() if arch == "llama80" else make_tiny(arch).torch_model
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tm(ids).logits
        import copy

        rot = copy.deepcopy(tm)
        stats, built = rotate_model(rot, seed=0)
        out = rot(ids).logits
    assert float((out - ref).abs().max()) < 1e-5
    assert not torch.equal(rot.model.layers[0].mlp.down_proj.weight, tm.model.layers[0].mlp.down_proj.weight)
    assert set(stats) == {n for n, m in rot.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    if arch == "llama80":
        assert built == {80: "sylvester(4)⊗paley1(19)", 96: "sylvester(8)⊗paley1(11)"}
    with pytest.raises(ConfigError, match="rotated already"):
        rotate_model(rot)


def test_rotation_lowers_w4_and_w4a4_error_with_outliers_synthetic() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(256, 512, generator=g)
    W[:, :4] *= 25  # outlier weight columns
    X = torch.randn(64, 512, generator=g)
    X[:, 10:14] *= 50  # outlier activation channels
    Q = random_hadamard(512)[0].float()
    Y = X @ W.T

    def err(wq: torch.Tensor, xq: torch.Tensor) -> float:
        return float((xq @ wq.T - Y).norm() / Y.norm())

    w4 = err(fake_quantize(W, 4, None, True), X), err(fake_quantize(W @ Q, 4, None, True), X @ Q)
    mx = err(mxfp4_fake_quant(W), mxfp4_fake_quant(X)), err(mxfp4_fake_quant(W @ Q), mxfp4_fake_quant(X @ Q))
    nv = (err(nvfp4_fake_quant(W), nvfp4_fake_quant(X, True)),
          err(nvfp4_fake_quant(W @ Q), nvfp4_fake_quant(X @ Q, True)))
    for plain, rotated in (w4, mx, nv):
        assert rotated < 0.5 * plain, (plain, rotated)


def _with_outliers(arch: str, kind: str) -> Any:
    """A tiny model with outlier weight columns (``weight``) or outlier input channels (``act``, via the norms)."""
    from conftest import make_tiny

    model = make_tiny(arch)
    with torch.no_grad():
        for layer in model.torch_model.model.layers:
            groups = ((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                      (layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj]))
            for norm, lins in groups:
                if kind == "act":
                    norm.weight[:3] *= 20
                else:
                    for lin in lins:
                        lin.weight[:, 5:7] *= 10
    return model


@pytest.mark.parametrize(("kind", "label", "ratio"), [("weight", "rtn-w4", 0.7), ("act", "mxfp4-w4a4", 0.9)])
def test_rotation_lowers_error_on_a_tiny_model_with_outliers(kind: str, label: str, ratio: float) -> None:
    model = _with_outliers("llama", kind)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.torch_model(ids).logits
        plain = quantize(model, label)
        rotated = quantize(model, label, rotate="hadamard")
        e_plain = float((plain.torch_model(ids).logits - ref).norm() / ref.norm())
        e_rot = float((rotated.torch_model(ids).logits - ref).norm() / ref.norm())
    assert e_rot < ratio * e_plain, (e_plain, e_rot)
    report = rotated.quant_report
    assert report.attrs["rotation"] == {"kind": "hadamard", "hadamard": {64: "sylvester(64)", 128: "sylvester(128)"}}
    assert rotated.spec.label == f"{label}-rotatehadamard"
    col = "w_max_rms" if kind == "weight" else "x_kurtosis"
    if col in report:  # x_* need the report text (FLORES); w_* are always there
        assert (report[f"{col}_rotated"] < report[col]).mean() > 0.5
    assert {"w_kurtosis", "w_kurtosis_rotated", "w_max_rms", "w_max_rms_rotated"} <= set(report.columns)
    assert float(report["weight_rel_err"].max()) < 0.5  # measured against W·Q, the weight the method quantized


def test_activation_outliers_measured_before_and_after() -> None:
    model = _with_outliers("llama", "act")
    tm = model.copy_torch_model()
    rotate_model(tm)
    seqs = [list(range(1, 30)), list(range(40, 60))]
    stats = activation_outliers(tm, seqs, pad=0)
    q = stats["model.layers.0.self_attn.q_proj"]
    assert q["x_kurtosis"] > 10 > q["x_kurtosis_rotated"]
    assert q["x_max_rms_rotated"] < q["x_max_rms"]


# ----- the pipeline, hooks, export ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_w4a4_hooks_see_rotated_inputs(arch: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(f"tiny_{arch}")
    q = quantize(model, "nvfp4-w4a4", rotate="hadamard")
    lin = q.torch_model.model.layers[0].self_attn.q_proj
    hooks = list(lin._forward_pre_hooks.values())
    assert [type(h) for h in hooks] == [Rotation, FP4ActQuant] and getattr(lin, ACT_ATTR) == "nvfp4"
    x = torch.randn(3, lin.in_features)
    expected = torch.nn.functional.linear(nvfp4_fake_quant(x @ hooks[0].Q, per_token=True), lin.weight)
    assert torch.allclose(lin(x), expected, atol=1e-6)
    assert q.quant_report["bits_per_weight"].min() > 4.5


def test_methods_end_to_end(tiny_gemma3: Any) -> None:
    seen = {}
    for label, kw in [("mxfp4-w4", {}), ("mxfp4-w4a4", {}), ("nvfp4-w4", {}), ("w4a8-w4g32a8", {}),
                      ("w4a8-w4g32a8", {"act": "fp8", "rotate": "hadamard"})]:
        q = quantize(tiny_gemma3, label, **kw)
        report = q.quant_report
        seen[q.spec.label] = float(report["weight_rel_err"].mean())
        assert 0.01 < seen[q.spec.label] < 0.3
        lin = q.torch_model.model.layers[1].mlp.down_proj
        acts = [h for h in lin._forward_pre_hooks.values() if isinstance(h, ActQuant)]
        assert len(acts) == (0 if q.spec.a_bits is None else 1)
    assert set(seen) == {"mxfp4-w4", "mxfp4-w4a4", "nvfp4-w4", "w4a8-w4g32a8", "w4a8-w4g32a8-actfp8-rotatehadamard"}
    bits = quantize(tiny_gemma3, "mxfp4-w4").quant_report["bits_per_weight"]
    assert set(bits) == {4.25}


def test_w4a8_gptq_weights(tiny_llama: Any) -> None:
    rtn = quantize(tiny_llama, "w4a8-w4g32a8")
    gptq = quantize(tiny_llama, "w4a8-w4g32a8", weights="gptq", calibration="flores:en:8", max_tokens=32)
    lin = gptq.torch_model.model.layers[0].mlp.up_proj
    assert getattr(lin, ACT_ATTR) == "int8"
    assert gptq.spec.label == "w4a8-w4g32a8-max_tokens32-weightsgptq@flores:en:8"
    diff = (lin.weight - rtn.torch_model.model.layers[0].mlp.up_proj.weight).abs().max()
    assert float(diff.detach()) > 0  # GPTQ moved weights away from round-to-nearest


def test_rotated_models_refuse_export(tiny_llama: Any, tmp_path: Any) -> None:
    from mlquant.quantize.export import save_quantized as export_save

    q = quantize(tiny_llama, "rtn-w4g32", rotate="hadamard")
    with pytest.raises(ConfigError, match="rotat"):
        save_quantized(q, tmp_path / "a", "simulated")
    for fmt in ("simulated", "gptq"):
        with pytest.raises(ConfigError, match="rotation"):
            export_save(q, tmp_path / fmt, fmt)
    with pytest.raises(ConfigError, match="rotation"):
        remove_act_quant(q.torch_model.model.layers[0].self_attn.q_proj)
    from mlquant.engines.vllm import VLLMModel

    with pytest.raises(ConfigError, match="rotation"):
        VLLMModel.from_hf(q, folder=tmp_path / "vllm")
    plain = quantize(tiny_llama, "mxfp4-w4")  # not rotated: the dense checkpoint is written
    assert (save_quantized(plain, tmp_path / "plain", "simulated") / "config.json").exists()


# ----- specs --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["mxfp4-w4", "mxfp4-w4a4", "nvfp4-w4", "nvfp4-w4a4", "w4a8-w4g128a8", "w4a8-w4a8"])
def test_labels_round_trip(label: str) -> None:
    spec = QuantSpec.parse(label)
    assert spec.label == label and QuantSpec.parse(spec.label) == spec


@pytest.mark.parametrize(
    ("label", "options", "expected"),
    [("rtn-w4g128", {"rotate": "hadamard"}, "rtn-w4g128-rotatehadamard"),
     ("gptq-w4g128", {"rotate": "hadamard", "rotate_seed": 2}, "gptq-w4g128-rotatehadamard-rotate_seed2"),
     ("mxfp4-w4a4", {"rotate": "hadamard", "scale_rule": "vllm"}, "mxfp4-w4a4-rotatehadamard-scale_rulevllm"),
     ("rtn-w4", {"rotate": "none"}, "rtn-w4")],
)
def test_rotate_labels(label: str, options: dict[str, Any], expected: str) -> None:
    spec = QuantSpec.parse(label, **options)
    assert spec.label == expected
    again = QuantSpec.from_dict(spec.to_dict())
    assert again.label == expected and again.fingerprint() == spec.fingerprint()


@pytest.mark.parametrize(
    ("label", "overrides", "needles"),
    [("mxfp4-w8", {}, ["w_bits=8", "[4]"]),
     ("nvfp4-w3", {}, ["w_bits=3", "[4]"]),
     ("mxfp4-w4a8", {}, ["a_bits=8", "[None, 4]"]),
     ("nvfp4-w4a16", {}, ["a_bits=16", "[None, 4]"]),
     ("mxfp4-w4g64", {}, ["group_size=64", "block size", "32"]),
     ("nvfp4-w4g32", {}, ["group_size=32", "block size", "16"]),
     ("mxfp4-w4", {"symmetric": False}, ["symmetric=False"]),
     ("mxfp4-w4", {"scale_rule": "up"}, ["scale_rule='up'", "['ocp', 'vllm']"]),
     ("rtn-w4", {"rotate": "random"}, ["rotate='random'", "['none', 'hadamard']"]),
     ("gptq-w4g128", {"rotate": "hadamar"}, ["rotate='hadamar'", "['none', 'hadamard']"]),
     ("nvfp4-w4", {"rotate": 1}, ["rotate=1", "wrong type"]),
     ("rtn-w4", {"rotate_seed": -1}, ["rotate_seed=-1"]),
     ("w4a8-w8g128a8", {}, ["w_bits=8", "[4]"]),
     ("w4a8-w4g128a4", {}, ["a_bits=4", "[8]"]),
     ("w4a8-w4g128a8", {"act": "int4"}, ["act='int4'", "['int8', 'fp8']"]),
     ("w4a8-w4g128a8", {"weights": "awq"}, ["weights='awq'", "['rtn', 'gptq']"]),
     ("w4a8-w4g128a8", {"damp": 0.1}, ["'damp'", "weights='gptq'"]),
     ("w4a8-w4g128a8", {"calibration": "flores:en:8"}, ["calibration", "weights='gptq'"]),
     ("smoothquant-w8a8", {"rotate": "hadamard"}, ["unknown option 'rotate'"])],
)
def test_bad_specs(label: str, overrides: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        QuantSpec.parse(label, **overrides)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_block_size_must_divide_features() -> None:
    from conftest import byte_tokenizer, make_tiny
    from transformers import LlamaConfig, LlamaForCausalLM

    from mlquant.models import HFModel

    tiny = make_tiny("llama")
    cfg = LlamaConfig(vocab_size=259, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    odd = HFModel(LlamaForCausalLM(cfg).eval(), byte_tokenizer(), tiny.source, QuantSpec.parse("fp32"))
    with pytest.raises(ConfigError, match="block size 32 does not divide in_features=48"):
        quantize(odd, "mxfp4-w4")
