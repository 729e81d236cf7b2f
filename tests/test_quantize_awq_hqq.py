"""AWQ and HQQ (mlquant/quantize/awq.py, hqq.py) on the tiny random Llama / Gemma 3 of conftest.py; the Gemma 3 270M
check is marked slow. HQQ is compared with the hqq package (a test dependency: the ``reference`` extra)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny

import mlquant as mq
from mlquant.errors import ConfigError
from mlquant.quantize import QuantSpec
from mlquant.quantize._common import pad_id
from mlquant.quantize.calibration import calibration_texts, encode_texts


def _seqs(model, calibration: str = "flores:en:4", max_tokens: int = 128):
    return encode_texts(model.tokenizer, calibration_texts(calibration, 0), max_tokens)


def _logits(torch_model, seqs) -> torch.Tensor:
    ids = torch.tensor([seqs[0][:64]])
    with torch.no_grad():
        return torch.as_tensor(torch_model(input_ids=ids).logits)


# ----- specs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "kw", "expected"),
    [
        ("awq-w4g128", {}, "awq-w4g128"),
        ("awq-w3g128", {"calibration": "flores:ja:128"}, "awq-w3g128@flores:ja:128"),
        ("awq-w4g128", {"n_grid": 10, "clip": False}, "awq-w4g128-clipFalse-n_grid10"),
        ("awq-w4g256", {"symmetric": False}, "awq-w4g256"),
    ],
)
def test_awq_labels(label: str, kw: dict, expected: str) -> None:
    spec = QuantSpec.parse(label, **kw)
    assert spec.label == expected
    assert not spec.symmetric
    if not kw:  # labels carry calibration and options but only the plain ones parse back (as for every method)
        assert QuantSpec.parse(spec.label) == spec


@pytest.mark.parametrize(
    ("label", "kw", "needle"),
    [
        ("awq-w4g128", {"n_grid": 0}, "n_grid=0"),
        ("awq-w4g128", {"min_clip_ratio": 1.5}, "min_clip_ratio=1.5"),
        ("awq-w4g128", {"min_clip_ratio": 0.0}, "min_clip_ratio=0.0"),
        ("awq-w4g128", {"clip_grid": 0}, "clip_grid=0"),
        ("awq-w4g128", {"alpha": 0.5}, "'alpha'"),
        ("awq-w9g128", {}, "w_bits=9"),
        ("awq-w4g128a8", {}, "a_bits=8"),
        ("awq-w4g256", {"symmetric": True}, "symmetric=True"),
        ("awq-w4g128", {"group_size": 64}, "'awq-w4g128' does not match"),
        ("awq-w4g128", {"calibration": "flores:xx:1"}, "xx"),
    ],
)
def test_awq_bad_specs(label: str, kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        QuantSpec.parse(label, **kw)
    assert needle in str(err.value)


def test_awq_group_that_does_not_divide_names_value_and_layer() -> None:
    tiny = make_tiny("llama")  # hidden size 64
    with pytest.raises(ConfigError, match=r"group_size=128 does not divide in_features=64 of model\.layers\.0"):
        mq.quantize(tiny, "awq-w4g128", calibration="flores:en:2")


# ----- AWQ ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_awq_alpha0_without_clipping_is_rtn(arch: str) -> None:
    tiny = make_tiny(arch)
    awq = mq.quantize(tiny, "awq-w4g32", calibration="flores:en:4", n_grid=1, duo_scaling=False, clip=False)
    rtn = mq.quantize(tiny, "rtn-w4g32", symmetric=False)
    a = dict(awq.torch_model.named_parameters())
    for name, p in rtn.torch_model.named_parameters():
        assert torch.equal(a[name], p), name
    assert all(r["awq_alpha"] == 0.0 for r in awq.quant_report.attrs["awq"]["layers"].values())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_awq_folds_are_exact(arch: str) -> None:
    from mlquant.quantize.awq import run_awq

    tiny = make_tiny(arch)
    seqs = _seqs(tiny)
    model = copy.deepcopy(tiny.torch_model)
    # n_grid=2 forces alpha=0.5 to be tried; a grid point with s != 1 is kept on these random models
    spec = QuantSpec.parse("awq-w4g32", calibration="flores:en:4")
    _, attrs = run_awq(model, seqs, pad_id(tiny.tokenizer), spec, fold_only=True)
    assert attrs["input_scaled"] == []
    assert len(attrs["folds"]) == 8  # 2 blocks x (norm -> qkv, v -> o, norm -> gate/up, up -> down)
    if arch == "gemma3":  # sandwich norms: the pre-feedforward norm feeds the MLP, with the (1 + w) convention
        assert any("pre_feedforward_layernorm -> gate_proj, up_proj ((1 + w) norm)" in f for f in attrs["folds"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(tiny.torch_model.named_parameters())[n])]
    assert any("v_proj" in n for n in changed) and any("norm" in n for n in changed)
    ref, out = _logits(tiny.torch_model, seqs), _logits(model, seqs)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0), float((out - ref).abs().max())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_awq_search_never_worse_than_rtn(arch: str) -> None:
    """α = 0 without duo scaling is RTN, and it is in the grid: the kept α's loss is at most RTN's. For o_proj and
    down_proj (scored on their own output, every token used) the two independent measurements agree."""
    tiny = make_tiny(arch)
    q = mq.quantize(tiny, "awq-w4g32", calibration="flores:en:4", duo_scaling=False, clip=False)
    layers = q.quant_report.attrs["awq"]["layers"]
    assert layers and len(layers) == len(q.quant_report)
    for name, r in layers.items():
        assert r["awq_search_loss"] <= r["rtn_search_loss"], name
        if name.endswith(("o_proj", "down_proj")):
            assert r["rtn_mse"] == pytest.approx(r["rtn_search_loss"], rel=1e-4), name
            assert r["awq_mse"] == pytest.approx(r["awq_search_loss"], rel=1e-4), name
    assert any(r["awq_alpha"] > 0 for r in layers.values())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_awq_default_beats_rtn_on_calibration_activations(arch: str) -> None:
    tiny = make_tiny(arch)
    q = mq.quantize(tiny, "awq-w4g32", calibration="flores:en:8")
    layers = q.quant_report.attrs["awq"]["layers"]
    awq = sum(r["awq_mse"] for r in layers.values())
    rtn = sum(r["rtn_mse"] for r in layers.values())
    assert awq < rtn
    clipped = [r for n, r in layers.items() if not n.endswith(("q_proj", "k_proj"))]
    assert all(0.5 < r["clip_ratio_min"] <= r["clip_ratio_mean"] <= 1 for r in clipped)
    assert any(r["clip_ratio_min"] < 1 for r in clipped)
    assert q.spec.label == "awq-w4g32@flores:en:8"
    assert q.quant_report["bits_per_weight"].iloc[0] == pytest.approx(4 + (16 + 4) / 32)


def test_clip_search_picks_the_best_ratio() -> None:
    from mlquant.quantize.awq_search import clip_search
    from mlquant.quantize.rtn import fake_quantize

    torch.manual_seed(0)
    w, x = torch.randn(6, 16), torch.randn(64, 16)
    w[0, 3] = 8.0  # one outlier: clipping it helps the other weights of its group
    quant = lambda t: fake_quantize(t, 3, 8, False)  # noqa: E731
    ratios = [1.0, 0.9, 0.8, 0.7, 0.6]
    wc, r = clip_search(w, x, quant, 8, ratios)
    for row in range(6):
        for g in range(2):
            cols = slice(8 * g, 8 * g + 8)
            errs = []
            for ratio in ratios:
                b = ratio * w[row, cols].abs().max()
                d = quant(w.clamp(-b, b))[row, cols] - w[row, cols]  # rows and groups are quantized independently
                errs.append(float((x[:, cols] @ d).pow(2).mean()))
            assert r[row, g] == ratios[min(range(len(ratios)), key=errs.__getitem__)]
    assert bool((r < 1).any()) and bool((r == 1).any())
    assert bool((wc.abs() <= w.abs()).all()) and not torch.equal(wc, w)


# ----- HQQ ----------------------------------------------------------------------------------------------------------
def _hqq_reference():
    """hqq's Quantizer (the reference implementation); a missing package fails the test, it is not skipped."""
    try:
        from hqq.core.quantize import Quantizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.fail(
            f"the hqq package is needed to check HQQ against its reference ({exc}); install it with "
            "`.venv/bin/python -m pip install hqq==0.2.8.post1` (or the project's 'reference' extra)."
        )
    return Quantizer


def _hqq_dequant(w: torch.Tensor, bits: int, group: int | None, round_zero: bool) -> torch.Tensor:
    quantizer = _hqq_reference()
    q, meta = quantizer.quantize(
        w, nbits=bits, group_size=group, axis=1, optimize=True, round_zero=round_zero, bitpack=False, device="cpu"
    )
    meta["compute_dtype"] = torch.float32
    return quantizer.dequantize(q, meta)


def _realish(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Heavy-tailed weights with a few outlier input channels, as trained LLM weights have."""
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(4.0).sample((rows, cols)) * 0.02
    w[:, torch.randint(0, cols, (3,), generator=g)] *= 8
    return w


@pytest.mark.parametrize(
    ("kind", "bits", "group", "round_zero"),
    [("randn", 4, 64, True), ("randn", 4, 64, False), ("randn", 3, 64, False), ("realish", 4, 64, True),
     ("realish", 2, 32, True), ("realish", 4, None, True), ("realish", 8, 128, True), ("tiny", 4, 64, True)],
)
def test_hqq_equals_the_hqq_package(kind: str, bits: int, group: int | None, round_zero: bool) -> None:
    """Same float32 operations in the same order as hqq 0.2.8: equal to within 1e-6 · max|w|. The tolerance
    allows a different reduction order in a group mean (a last-bit difference in a zero point), not a flipped
    rounding, which would be a whole step (max|w| / 15 at 4 bits) off."""
    from mlquant.quantize.hqq import hqq_fake_quantize

    torch.manual_seed(0)
    if kind == "randn":
        w = torch.randn(96, 256)
    elif kind == "realish":
        w = _realish(128, 512, seed=bits)
    else:
        w = make_tiny("llama").torch_model.model.layers[0].mlp.down_proj.weight.detach().clone()
    ref = _hqq_dequant(w, bits, group, round_zero)
    mine = hqq_fake_quantize(w, bits, group, {"round_zero": round_zero})
    assert torch.allclose(mine, ref, rtol=0, atol=1e-6 * float(w.abs().max())), float((mine - ref).abs().max())
    plain = hqq_fake_quantize(w, bits, group, {"round_zero": round_zero, "optimize": False})
    assert not torch.equal(mine, plain)  # the solver moved the zero points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hqq_lp_error_at_most_rtn_asym(seed: int) -> None:
    from mlquant.quantize.hqq import hqq_fake_quantize, lp_error
    from mlquant.quantize.rtn import fake_quantize

    w = _realish(64, 256, seed)
    for bits in (2, 3, 4):
        hqq = lp_error(w, hqq_fake_quantize(w, bits, 64), 0.7)
        rtn = lp_error(w, fake_quantize(w, bits, 64, symmetric=False), 0.7)
        assert hqq < rtn, (bits, hqq, rtn)


def test_hqq_model_and_specs() -> None:
    tiny = make_tiny("gemma3")
    q = mq.quantize(tiny, "hqq-w4g32", symmetric=False)
    assert q.spec.label == "hqq-w4g32" and not q.spec.symmetric
    assert q.quant_report["bits_per_weight"].iloc[0] == pytest.approx(4 + 32 / 32)
    layers = q.quant_report.attrs["hqq"]["layers"]
    rtn = mq.quantize(tiny, "rtn-w4g32", symmetric=False)
    rtn_w = dict(rtn.torch_model.named_parameters())
    orig = dict(tiny.torch_model.named_parameters())
    from mlquant.quantize.hqq import lp_error

    for name, r in layers.items():
        assert r["lp_error"] < lp_error(orig[f"{name}.weight"], rtn_w[f"{name}.weight"]), name
    assert QuantSpec.parse("hqq-w4g64").label == "hqq-w4g64"
    assert QuantSpec.parse(QuantSpec.parse("hqq-w3g64").label) == QuantSpec.parse("hqq-w3g64")
    assert QuantSpec.parse("hqq-w4g64", lp_norm=0.5).label == "hqq-w4g64-lp_norm0.5"


@pytest.mark.parametrize(
    ("label", "kw", "needle"),
    [
        ("hqq-w4g64", {"lp_norm": 1.5}, "lp_norm=1.5"),
        ("hqq-w4g64", {"beta": 0.0}, "beta=0.0"),
        ("hqq-w4g64", {"iters": 0}, "iters=0"),
        ("hqq-w4g64", {"kappa": 0.5}, "kappa=0.5"),
        ("hqq-w4g64", {"calibration": "flores:en:8"}, "calibration-free"),
        ("hqq-w4g32", {"symmetric": True}, "symmetric=True"),
        ("hqq-w9g64", {}, "w_bits=9"),
    ],
)
def test_hqq_bad_specs(label: str, kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        QuantSpec.parse(label, **kw)
    assert needle in str(err.value)


def test_hqq_group_that_does_not_divide() -> None:
    with pytest.raises(ConfigError, match=r"group_size=128 does not divide in_features=64 of model\.layers\.0"):
        mq.quantize(make_tiny("llama"), "hqq-w4g128")


# ----- Gemma 3 270M -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_awq_and_hqq_on_gemma(gemma) -> None:
    """Two AWQ blocks of the real model (grouped-query attention, sandwich norms, (1 + w) RMSNorm): the folds keep
    the logits, AWQ beats RTN on the calibration activations; HQQ equals the hqq package on real weights."""
    from mlquant.quantize.awq import run_awq

    seqs = _seqs(gemma, "flores:en:8", 64)
    pad = pad_id(gemma.tokenizer)
    spec = QuantSpec.parse("awq-w4g128")
    folded = copy.deepcopy(gemma.torch_model)
    _, attrs = run_awq(folded, seqs, pad, spec, blocks=[0, 1], fold_only=True)
    assert attrs["input_scaled"] == [] and len(attrs["folds"]) == 8
    ref, out = _logits(gemma.torch_model, seqs), _logits(folded, seqs)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    work = copy.deepcopy(gemma.torch_model)
    records, _ = run_awq(work, seqs, pad, spec, blocks=[0, 1])
    assert len(records) == 14
    assert sum(r["awq_mse"] for r in records.values()) < sum(r["rtn_mse"] for r in records.values())
    from mlquant.quantize.hqq import hqq_fake_quantize

    w = gemma.torch_model.model.layers[3].self_attn.o_proj.weight.detach().float()
    assert torch.allclose(hqq_fake_quantize(w, 4, 64), _hqq_dequant(w, 4, 64, True), rtol=0,
                          atol=1e-6 * float(w.abs().max()))


def test_hqq_report_measures_the_weight_error_against_the_original_weights() -> None:
    """The per-layer weight error is taken before the quantized values are written back (it read 0 when the float32
    weight and the 'original' were the same tensor)."""
    from mlquant.quantize import quantize
    from mlquant.quantize._common import quantizable_linears
    from mlquant.quantize.hqq import hqq_fake_quantize

    tiny = make_tiny("llama")
    q = quantize(tiny, QuantSpec.parse("hqq-w4g32"))
    report = q.quant_report.set_index("layer")
    name, linear = next(iter(quantizable_linears(tiny.torch_model)))
    w = linear.weight.detach().float()
    expected = float((w - hqq_fake_quantize(w, 4, 32)).norm() / w.norm())
    assert report.loc[name, "weight_rel_err"] == pytest.approx(expected, rel=1e-5) and expected > 0.01
