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
        ("awq-w4g256", {}, "symmetric=True"),
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
    from mlquant.quantize.awq import clip_search
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
