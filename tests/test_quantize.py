"""QuantSpec parsing and validation, and round-to-nearest quantization."""

from __future__ import annotations

import pytest
import torch

import mlquant as mq
from mlquant.errors import ConfigError, UnknownNameError
from mlquant.quantize import QuantSpec, quantize
from mlquant.quantize.rtn import fake_quantize, quantizable_linears


@pytest.mark.parametrize(
    ("label", "method", "bits", "group"),
    [("rtn-w8", "rtn", 8, None), ("rtn-w4", "rtn", 4, None), ("rtn-w4g128", "rtn", 4, 128), ("rtn-w3g64", "rtn", 3, 64)],
)
def test_parse_labels(label: str, method: str, bits: int, group: int | None) -> None:
    spec = QuantSpec.parse(label)
    assert (spec.method, spec.w_bits, spec.group_size, spec.label) == (method, bits, group, label)


def test_baselines() -> None:
    assert QuantSpec.parse("fp32").dtype == "float32"
    assert QuantSpec.parse("bf16").label == "bf16"
    assert QuantSpec.parse("fp16").is_baseline


def test_asymmetric_label() -> None:
    assert QuantSpec.parse("rtn-w4g128", symmetric=False).label == "rtn-w4g128-asym"


@pytest.mark.parametrize(
    ("label", "overrides", "message"),
    [
        ("rtn-w0", {}, "w_bits=0"),
        ("rtn-w9", {}, "w_bits=9"),
        ("rtn-w4", {"group_size": 0}, "group_size=0"),
        ("rtn-w4", {"bogus": 1}, "unknown option 'bogus'"),
        ("rtn-w4", {"calibration": "flores:en:128"}, "calibration"),
        ("nonsense", {}, "cannot parse quant label 'nonsense'"),
    ],
)
def test_bad_specs_raise_config_error(label: str, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantSpec.parse(label, **overrides)


def test_unknown_method_suggests() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'rtn'"):
        QuantSpec.parse("rtm-w4")


def test_group_size_must_divide_features(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="group_size=48 does not divide"):
        quantize(tiny_llama, "rtn-w4g48")


def test_fake_quantize_symmetric_grid() -> None:
    w = torch.tensor([[0.1, -0.4, 0.25, 0.4]])
    q = fake_quantize(w, bits=2, group_size=None, symmetric=True)
    # scale = 0.4 / 1: values round to -0.4, 0, 0.4
    assert q[0].tolist() == pytest.approx([0.0, -0.4, 0.4, 0.4])


def test_fake_quantize_asymmetric_has_zero_point() -> None:
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3]])
    q = fake_quantize(w, bits=2, group_size=None, symmetric=False)
    assert q[0].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3], abs=1e-6)  # 4 levels fit 4 values exactly


def test_group_size_uses_one_scale_per_group() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 256)
    w[:, :128] *= 100  # a first group of large weights
    per_channel = fake_quantize(w, 4, None, True)
    grouped = fake_quantize(w, 4, 128, True)
    err = lambda q: float(((q - w)[:, 128:]).norm())  # noqa: E731
    assert err(grouped) < err(per_channel) / 5


@pytest.mark.parametrize("symmetric", [True, False])
def test_error_decreases_with_bits(symmetric: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    errors = [float((fake_quantize(w, b, 32, symmetric) - w).norm()) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_rtn_apply_quantizes_copy_not_original(tiny_llama) -> None:
    before = {n: m.weight.clone() for n, m in quantizable_linears(tiny_llama.torch_model)}
    q = quantize(tiny_llama, "rtn-w4g32")
    for name, module in quantizable_linears(tiny_llama.torch_model):
        assert torch.equal(module.weight, before[name])
    qlin = dict(quantizable_linears(q.torch_model))
    for name, w in before.items():
        rows = qlin[name].weight.reshape(-1, 32)
        assert all(len(torch.unique(r)) <= 16 for r in rows)  # at most 2^4 levels per group
    assert q.spec.label == "rtn-w4g32" and q.fingerprint() != tiny_llama.fingerprint()
    # embeddings and LM head stay in float
    assert torch.equal(q.torch_model.get_output_embeddings().weight, tiny_llama.torch_model.get_output_embeddings().weight)


def test_list_methods_has_rtn_and_baselines() -> None:
    assert {"rtn", "fp32", "bf16", "fp16"} <= set(mq.list_methods())


def test_quantize_label_inherits_model_dtype(tiny_llama) -> None:
    bf16 = quantize(tiny_llama, "bf16")
    assert bf16.spec.label == "bf16" and bf16.spec.dtype == "bfloat16"
    assert quantize(bf16, "rtn-w8").spec.dtype == "bfloat16"
    assert quantize(tiny_llama, "fp32") is tiny_llama


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec.parse("rtn-w4g128", symmetric=False),
        QuantSpec.parse("gptq-w4g128", symmetric=False, damp=0.05, calibration="flores:ja:16"),
        QuantSpec.parse("rtn-w4g128", rotate="hadamard"),
        QuantSpec.parse("awq-w4g256"),
        QuantSpec.parse("hqq-w4g64"),
        QuantSpec.parse("w8a8-int-gptq"),
    ],
    ids=lambda s: s.label,
)
def test_every_label_a_spec_writes_parses_back_to_that_spec(spec: QuantSpec) -> None:
    """Labels read from a results table (suffixes -asym/-sym, -<option><value>, @calibration) work in a study file."""
    assert QuantSpec.parse(spec.label) == spec


def test_a_label_suffix_that_is_no_option_is_named_with_the_methods_options() -> None:
    with pytest.raises(ConfigError, match=r"suffix 'foo'.*options: \['rotate', 'rotate_seed'\]"):
        QuantSpec.parse("rtn-w4g128-foo")
    with pytest.raises(ConfigError, match=r"'@' must be followed by the calibration"):
        QuantSpec.parse("gptq-w4g128@")
