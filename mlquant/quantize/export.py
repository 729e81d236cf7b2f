"""Saving a quantized model: ``save_quantized(model, dir, format=...)``.

Formats:

* ``simulated`` (always works): the dequantized float weights with ``save_pretrained`` (bitsandbytes layers are
  dequantized back to ``nn.Linear``), the tokenizer, and ``mlquant_quant.json`` with the spec, its label and
  fingerprint, and what the float weights do not carry (activation quantization to apply at run time).
  ``AutoModelForCausalLM.from_pretrained(dir)`` reloads it; the weights equal the simulated ones exactly.
* ``gptq``: a packed GPTQ checkpoint (``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` int32 / fp16 tensors and a
  ``quantization_config`` with ``quant_method: gptq``), the layout GPTQModel (the maintained successor of
  AutoGPTQ), vLLM and transformers load. mlquant packs it itself from the scales the quantizer kept, so it is
  written and checked on any machine; *loading* it needs GPTQModel (``pip install 'mlquant[gptq]'``, a CUDA build
  with torch >= 2.14.1) or vLLM. Symmetric grids are written as ``checkpoint_format: gptq`` (zero points stored
  minus one, as AutoGPTQ v1), asymmetric ones as ``gptq_v2``. Bits 2, 4 and 8 only.
* ``compressed-tensors``: the format vLLM serves, written with the ``compressed-tensors`` library (the one
  llm-compressor writes with; ``pip install 'compressed-tensors>=0.15'`` — transformers >= 5 needs >= 0.15 to read it):
  ``pack-quantized`` for integer weight-only (W4A16, ``gptq-w4g128``), ``int-quantized`` for W8A8-INT8 (``w8a8``,
  ``smoothquant-w8a8``, ``w8a8-int-gptq``; activations declared int8 per-token dynamic), ``float-quantized`` for
  FP8 (``fp8-w8a8``). The quantizer's own scales are used, so the checkpoint dequantizes to exactly the simulated
  weights; ``AutoModelForCausalLM.from_pretrained(dir)`` (with compressed-tensors installed) and vLLM load it.
  llm-compressor itself is not needed (its 0.14 release pins transformers <= 5.17).
* ``auto``: ``gptq`` for GPTQ / RTN int weights with 2, 4 or 8 bits and no activation quantization, else
  ``compressed-tensors`` for W8A8 / FP8 when compressed-tensors is installed, else ``simulated``.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> q = mq.quantize(mq.load_model("gemma3-270m"), "gptq-w4g128")  # doctest: +SKIP
    >>> save_quantized(q, "out/gemma-gptq", format="gptq")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlquant.errors import BackendUnavailableError, ConfigError
from mlquant.quantize._common import (
    ACT_ATTR,
    QPARAMS_ATTR,
    SMOOTH_ATTR,
    QParams,
    fake_quant_weight,
    remove_act_quant,
    weight_params,
)

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = ["CT_INSTALL", "FORMATS", "GPTQ_INSTALL", "LLMCOMPRESSOR_INSTALL", "save_quantized", "unpack_gptq_layer"]

FORMATS = ("auto", "simulated", "gptq", "compressed-tensors")
GPTQ_INSTALL = "pip install 'mlquant[gptq]'  (GPTQModel >= 7.7; needs a CUDA build of torch >= 2.14.1)"
LLMCOMPRESSOR_INSTALL = (
    "pip install 'mlquant[llmcompressor]'  (llm-compressor >= 0.14, which pins transformers <= 5.17: "
    "use a separate environment)"
)
CT_INSTALL = "pip install 'compressed-tensors>=0.15'  (also installed by llm-compressor: pip install 'mlquant[llmcompressor]')"
QUANT_JSON = "mlquant_quant.json"


def _meta(model: HFModel) -> dict[str, Any]:
    from mlquant.version import __version__

    spec = model.spec
    acts = sorted({getattr(m, ACT_ATTR) for m in model.torch_model.modules() if getattr(m, ACT_ATTR, None)})
    return {
        "mlquant_version": __version__,
        "label": spec.label,
        "spec": spec.to_dict(),
        "model": model.source.model_id,
        "model_revision": model.source.revision,
        "model_file_sha256": model.source.file_sha256,
        "fingerprint": model.fingerprint(),
        "activation_quantization": (
            {"kind": acts[0], "granularity": "per-token", "dynamic": True, "applies_to": "decoder-block Linear inputs"}
            if acts
            else None
        ),
        "note": "weights are stored dequantized (float); activation quantization, if any, is not in the weights "
        "and must be applied at run time (mlquant does it with forward pre-hooks).",
    }


def _float_copy(model: HFModel) -> Any:
    """A copy of the torch model with plain nn.Linear layers holding the effective (dequantized) weights."""
    import torch

    from mlquant.quantize._common import quantizable_linears
    from mlquant.quantize.report import effective_weight

    torch_model = copy.deepcopy(model.torch_model)
    for name, module in list(quantizable_linears(torch_model)):
        if type(module) is not torch.nn.Linear:
            w = effective_weight(module)
            lin = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(w)
                if module.bias is not None:
                    lin.bias.copy_(module.bias.float())
            torch_model.set_submodule(name, lin.to(w.device, dtype=getattr(torch, model.spec.dtype)))
        else:
            remove_act_quant(module)
    if getattr(torch_model, "hf_quantizer", None) is not None:
        torch_model.hf_quantizer = None
        torch_model.is_quantized = False
    if hasattr(torch_model.config, "quantization_config"):
        del torch_model.config.quantization_config
    return torch_model


def _save_simulated(model: HFModel, out: Path) -> Path:
    torch_model = _float_copy(model)
    torch_model.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    (out / QUANT_JSON).write_text(json.dumps(_meta(model), indent=2, default=str), encoding="utf-8")
    return out


# ----- GPTQ packing -----------------------------------------------------------------------------------------------
def _qparams(module: Any, spec: Any) -> QParams:
    """The module's QParams, or ones recovered (and verified) from its dequantized weight (RTN)."""
    qp = getattr(module, QPARAMS_ATTR, None)
    if isinstance(qp, QParams):
        return qp
    w = module.weight.detach().float()
    scale, zero = weight_params(w, int(spec.w_bits), spec.group_size, spec.symmetric)
    qp = QParams("int", int(spec.w_bits), spec.group_size, spec.symmetric, scale, zero)
    if not bool(((fake_quant_weight(w, qp) - w).abs() <= 1e-5 * scale.abs().max()).all()):
        raise ConfigError(f"export: the weights of {type(module).__name__} are not on a {spec.w_bits}-bit grid.")
    return qp


def _int_codes(w: torch.Tensor, qp: QParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unsigned codes [rows, cols], unsigned zero points [rows, groups], g_idx [cols]) for a GPTQ checkpoint."""
    import torch

    cols = w.shape[1]
    g = qp.group_size or cols
    g_idx = qp.g_idx if qp.g_idx is not None else torch.arange(cols, device=w.device) // g
    scale = qp.scale[:, g_idx]
    zero = qp.zero[:, g_idx]
    offset = 2 ** (qp.bits - 1) if qp.symmetric else 0
    codes = torch.round(w.float() / scale + zero).clamp(-offset, 2**qp.bits - 1 - offset) + offset
    return codes.to(torch.int32), (qp.zero + offset).round().to(torch.int32), g_idx.to(torch.int32)


def _pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack ``32 // bits`` unsigned values along ``dim`` into int32 (lowest bits first)."""
    import torch

    per = 32 // bits
    v = values.to(torch.int64).movedim(dim, 0)
    n = v.shape[0]
    if n % per:
        raise ConfigError(f"export: {n} values do not pack into int32 words of {per} {bits}-bit values.")
    v = v.reshape(n // per, per, *v.shape[1:])
    shifts = (torch.arange(per, device=v.device, dtype=torch.int64) * bits).reshape(1, per, *([1] * (v.dim() - 2)))
    packed = (v << shifts).sum(dim=1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.movedim(0, dim).contiguous()


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    import torch

    per = 32 // bits
    p = packed.to(torch.int64).movedim(dim, 0) & 0xFFFFFFFF
    shifts = (torch.arange(per, dtype=torch.int64) * bits).reshape(1, per, *([1] * (p.dim() - 1)))
    v = (p.unsqueeze(1) >> shifts) & (2**bits - 1)
    out: torch.Tensor = v.reshape(p.shape[0] * per, *p.shape[1:]).movedim(0, dim)
    return out


def unpack_gptq_layer(tensors: dict[str, torch.Tensor], prefix: str, bits: int, v1: bool = True) -> torch.Tensor:
    """The dequantized weight [out, in] of one layer of a GPTQ checkpoint (for checks; what the kernels compute)."""
    qweight = tensors[f"{prefix}.qweight"]
    qzeros = tensors[f"{prefix}.qzeros"]
    scales = tensors[f"{prefix}.scales"].float()
    g_idx = tensors[f"{prefix}.g_idx"].long()
    codes = _unpack(qweight, bits, 0)  # [in, out]
    zeros = _unpack(qzeros, bits, 1)  # [groups, out]
    if v1:
        zeros = (zeros + 1) & (2**bits - 1)
    w = (codes.float() - zeros[g_idx].float()) * scales[g_idx]
    return w.T.contiguous()


def _save_gptq(model: HFModel, out: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from mlquant.quantize._common import quantizable_linears

    spec = model.spec
    bits = int(spec.w_bits or 0)
    if spec.a_bits is not None or bits not in (2, 4, 8):
        raise ConfigError(
            f"export: format 'gptq' needs integer weight-only quantization with 2, 4 or 8 bits; {spec.label!r} is not."
        )
    if any(getattr(m, SMOOTH_ATTR, None) is not None for m in model.torch_model.modules()):
        raise ConfigError("export: a SmoothQuant model has activation quantization; use 'compressed-tensors'.")
    torch_model = _float_copy(model)
    state = {k: v.detach().cpu().contiguous() for k, v in torch_model.state_dict().items()}
    desc_act = False
    for name, module in quantizable_linears(model.torch_model):
        qp = _qparams(module, spec)
        if qp.fmt != "int":
            raise ConfigError(f"export: {name} is not integer-quantized; format 'gptq' needs integer weights.")
        codes, zeros, g_idx = _int_codes(module.weight.detach().float().cpu(), _to_cpu(qp))
        desc_act = desc_act or qp.g_idx is not None
        if module.in_features % (32 // bits) or module.out_features % (32 // bits):
            raise ConfigError(f"export: {name} has features that do not pack into int32 words of {bits}-bit values.")
        del state[f"{name}.weight"]
        state[f"{name}.qweight"] = _pack(codes.T.contiguous(), bits, 0)  # [in / per, out]
        stored_zeros = zeros.T.contiguous() - (1 if spec.symmetric else 0)  # [groups, out]; v1 stores zero - 1
        state[f"{name}.qzeros"] = _pack(stored_zeros & (2**bits - 1), bits, 1)
        state[f"{name}.scales"] = qp.scale.T.contiguous().cpu().to(torch.float16)
        state[f"{name}.g_idx"] = g_idx.cpu()
    opts = spec.to_dict()["options"]
    qcfg = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": spec.group_size or -1,
        "desc_act": desc_act,
        "sym": spec.symmetric,
        "static_groups": bool(opts.get("static_groups", True)),
        "true_sequential": bool(opts.get("true_sequential", True)),
        "damp_percent": float(opts.get("damp", 0.0)),
        "checkpoint_format": "gptq" if spec.symmetric else "gptq_v2",
        "meta": {"quantizer": [f"mlquant:{_meta(model)['mlquant_version']}"], "mlquant_label": spec.label},
    }
    torch_model.config.quantization_config = qcfg
    out.mkdir(parents=True, exist_ok=True)
    torch_model.config.save_pretrained(out)
    if getattr(torch_model, "generation_config", None) is not None:
        torch_model.generation_config.save_pretrained(out)
    # Tied weights (LM head = embeddings) are stored once, as save_pretrained does.
    tied = [k for k in state if k.endswith("lm_head.weight")]
    if tied and getattr(torch_model.config, "tie_word_embeddings", False):
        for k in tied:
            del state[k]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "quantize_config.json").write_text(json.dumps(qcfg, indent=2), encoding="utf-8")
    model.tokenizer.save_pretrained(out)
    (out / QUANT_JSON).write_text(json.dumps(_meta(model), indent=2, default=str), encoding="utf-8")
    return out


def _to_cpu(qp: QParams) -> QParams:
    return QParams(qp.fmt, qp.bits, qp.group_size, qp.symmetric, qp.scale.detach().cpu(), qp.zero.detach().cpu(),
                   None if qp.g_idx is None else qp.g_idx.detach().cpu())


def _save_compressed_tensors(model: HFModel, out: Path) -> Path:
    """A compressed-tensors checkpoint (vLLM's format): the quantizer's own scales are attached to a float copy
    through ``apply_quantization_config``, then ``ModelCompressor`` packs it (it re-derives the integer / FP8 codes
    from the dequantized weights and those scales, which is exact since the weights lie on that grid)."""
    if importlib.util.find_spec("compressed_tensors") is None:
        raise BackendUnavailableError(f"format 'compressed-tensors' needs the compressed-tensors library: {CT_INSTALL}")
    import torch
    from compressed_tensors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    from mlquant.quantize._common import quantizable_linears

    spec = model.spec
    lins = dict(quantizable_linears(model.torch_model))
    if not lins or any(type(m) is not torch.nn.Linear for m in lins.values()):
        raise ConfigError(f"export: {spec.label!r} has no simulated integer/FP8 Linear layers to write as compressed-tensors.")
    if spec.is_baseline or spec.w_bits is None:
        raise ConfigError("export: an unquantized model has nothing to compress; use format='simulated'.")
    qps = {n: _to_cpu(_qparams(m, spec)) for n, m in lins.items()}
    first = next(iter(qps.values()))
    if any(qp.g_idx is not None for qp in qps.values()):
        raise ConfigError("export: GPTQ groups in activation order (static_groups=False with act_order) are not "
                          "written as compressed-tensors; quantize with static_groups=True.")
    acts = {getattr(m, ACT_ATTR, None) for m in lins.values()}
    if len(acts) != 1 or len({(qp.fmt, qp.bits, qp.group_size, qp.symmetric) for qp in qps.values()}) != 1:
        raise ConfigError("export: the layers are quantized in different ways; compressed-tensors needs one scheme.")
    act = acts.pop()
    is_fp8 = first.fmt == "fp8"
    weights = QuantizationArgs(
        num_bits=first.bits, type="float" if is_fp8 else "int", symmetric=first.symmetric,
        strategy="group" if first.group_size else "channel", group_size=first.group_size,
    )
    inputs = None
    if act is not None:
        inputs = QuantizationArgs(num_bits=8, type="float" if act == "fp8" else "int", symmetric=True,
                                  strategy="token", dynamic=True)
    fmt = "float-quantized" if is_fp8 else ("int-quantized" if act == "int8" and first.bits == 8 else "pack-quantized")
    torch_model = _float_copy(model)
    ignore = [n for n, m in torch_model.named_modules() if isinstance(m, torch.nn.Linear) and n not in lins]
    config = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=inputs)},
        ignore=ignore,
        quantization_status=QuantizationStatus.FROZEN,
    )
    apply_quantization_config(torch_model, config)
    modules = dict(torch_model.named_modules())
    for name, qp in qps.items():
        mod = modules[name]
        # compressed-tensors' integer codes are signed ([-2^(b-1), 2^(b-1)-1]); mlquant's asymmetric ones unsigned.
        offset = 2 ** (qp.bits - 1) if (qp.fmt == "int" and not qp.symmetric) else 0
        with torch.no_grad():
            mod.weight_scale.data = qp.scale.to(mod.weight_scale.dtype).reshape(mod.weight_scale.shape)
            if hasattr(mod, "weight_zero_point"):
                zp = (qp.zero - offset).to(mod.weight_zero_point.dtype).reshape(mod.weight_zero_point.shape)
                mod.weight_zero_point.data = zp
    compressor = ModelCompressor.from_pretrained_model(torch_model, quantization_format=fmt)
    compressor.compress_model(torch_model)
    torch_model.save_pretrained(out)
    compressor.update_config(str(out))
    model.tokenizer.save_pretrained(out)
    (out / QUANT_JSON).write_text(json.dumps(_meta(model), indent=2, default=str), encoding="utf-8")
    return out


def save_quantized(model: HFModel, path: str | Path, format: str = "auto") -> Path:
    """Write ``model`` (quantized or not) to the folder ``path`` in ``format``; return the folder.

    Raises:
        ConfigError: unknown format, or the model's quantization cannot be written in it.
        BackendUnavailableError: the format's optional backend is not installed (message has the install command).

    Example:
        >>> save_quantized(q, "out/gptq", format="gptq")  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise ConfigError(f"export: format={format!r} is not one of {list(FORMATS)}.")
    out = Path(path)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"export: {out} exists and is not empty.")
    spec = model.spec
    if format == "auto":
        gptq_ok = spec.method in ("gptq", "rtn") and spec.a_bits is None and spec.w_bits in (2, 4, 8)
        ct_ok = spec.method in ("w8a8", "smoothquant", "w8a8-int-gptq", "fp8") and importlib.util.find_spec(
            "compressed_tensors"
        ) is not None
        format = "gptq" if gptq_ok else ("compressed-tensors" if ct_ok else "simulated")
    out.mkdir(parents=True, exist_ok=True)
    if format == "simulated":
        return _save_simulated(model, out)
    if format == "gptq":
        return _save_gptq(model, out)
    return _save_compressed_tensors(model, out)


def gptq_backend_available() -> bool:
    """Whether GPTQModel (to load packed GPTQ checkpoints) is importable."""
    return importlib.util.find_spec("gptqmodel") is not None


def require_gptqmodel() -> None:
    """BackendUnavailableError with the install command unless GPTQModel is installed."""
    if not gptq_backend_available():
        raise BackendUnavailableError(f"loading a GPTQ checkpoint needs GPTQModel: {GPTQ_INSTALL}")
