"""INT8 weight-and-activation quantization (W8A8), simulated: ``w8a8``, ``smoothquant-w8a8``, ``w8a8-int-gptq``.

* ``w8a8``: weights int8 symmetric per output channel (round to nearest); activations int8 symmetric per token,
  quantized on the fly (dynamic) by a forward pre-hook on every decoder-block Linear
  (``x_hat = clamp(round(x / s_t), -127, 127) * s_t`` with ``s_t = max_j |x_tj| / 127``).
* ``smoothquant-w8a8``: SmoothQuant (Xiao et al., ICML 2023, arXiv 2211.10438) first migrates activation outliers
  into the weights: for the Linears that share one input, ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)``
  (``alpha`` default 0.5; maxima over calibration text, the weight maximum over all those Linears), the weight
  columns are multiplied by ``s`` and ``1/s`` is folded into the op that produces the input. Then as ``w8a8``.
* ``w8a8-int-gptq``: SmoothQuant, then GPTQ int8 per-channel weights (the Neural Magic W8A8-INT recipe of
  Kurtic et al. 2024, arXiv 2411.02355), with the same dynamic per-token int8 activations.

Where ``1/s`` is folded (only where the producer feeds exactly those Linears, which is checked on the calibration
pass by tagging each norm's output tensor):

* q/k/v ← ``input_layernorm``; gate/up ← ``pre_feedforward_layernorm`` (Gemma 2/3) or
  ``post_attention_layernorm`` (Llama, Mistral, Qwen). RMSNorm ``y = w * x_hat`` becomes ``w / s``; Gemma's
  ``y = (1 + w) * x_hat`` becomes ``w' = (1 + w) / s - 1`` (the parametrisation is detected numerically).
* o_proj ← v_proj (``smooth_out_proj``, default True): attention is linear in V, so dividing row ``j`` of v_proj by
  ``s_j`` and multiplying the matching o_proj columns by ``s_j`` is exact; with grouped-query attention one scale
  is shared by the query heads that read the same KV head.
* down_proj ← up_proj (``smooth_out_proj``): ``down(act(gate x) * up x)`` is linear in ``up x`` per channel.

These two are applied only for architectures known to have that form (Llama, Mistral, Qwen 2/3, Gemma 1-3); for
others, o_proj and down_proj are quantized without smoothing (logged, and listed in ``report.attrs["smoothing"]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import (
    QPARAMS_ATTR,
    SMOOTH_ATTR,
    QParams,
    bits_per_weight,
    check_options,
    check_range,
    decoder_layers,
    fake_quant_weight,
    install_act_quant,
    make_batches,
    option,
    pad_id,
    quantizable_linears,
    weight_params,
)
from mlquant.quantize.calibration import check_calibration
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = ["SmoothQuantQuantizer", "W8A8GPTQQuantizer", "W8A8Quantizer", "quantize_w8a8_weights", "smooth_model"]

log = logging.getLogger(__name__)

#: model_type values whose attention output is softmax(QK)·V and whose MLP is down(act(gate)·up).
LINEAR_IN_V_AND_UP = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text"})
SMOOTH_DEFAULTS: dict[str, Any] = {"alpha": 0.5, "smooth_out_proj": True, "max_tokens": 128, "seed": 0}


def _check_w8a8(spec: QuantSpec) -> None:
    if spec.w_bits != 8:
        raise ConfigError(f"{spec.method}: w_bits={spec.w_bits!r}; W8A8 has 8-bit weights.")
    if spec.a_bits != 8:
        raise ConfigError(f"{spec.method}: a_bits={spec.a_bits!r}; W8A8 has 8-bit activations.")
    if spec.group_size is not None:
        raise ConfigError(f"{spec.method}: group_size={spec.group_size!r}; W8A8 weights are per output channel.")
    if spec.backend != "simulate":
        raise ConfigError(
            f"{spec.method}: backend {spec.backend!r} is not available; W8A8 runs simulated (export with "
            "save_quantized(..., format='compressed-tensors') to serve it)."
        )
    if not spec.symmetric:
        raise ConfigError(f"{spec.method}: symmetric=False is not supported; W8A8 int8 grids are symmetric.")


#: Attribute set on a norm's output tensor during the calibration pass: (block index, norm name).
_PRODUCER_TAG = "_mlquant_produced_by"


# ----- activation statistics and smoothing ------------------------------------------------------------------------
def _act_stats(
    torch_model: Any, seqs: Sequence[Sequence[int]], pad: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Per-channel max |x| of every decoder Linear's input, and (first batch) which norm output each Linear reads.

    Each norm output is tagged with ``(block index, norm name)`` as an attribute of the tensor object itself, and a
    Linear records the tag of its input (None when the input is no norm's output). Tensor ids (addresses) are not
    used: CPython reuses the address of a freed temporary for the next tensor, so an id-based match depended on the
    allocator's state, i.e. on whatever ran before (71 of 72 Gemma folds after other tests had run)."""
    import torch

    amax: dict[str, torch.Tensor] = {}
    in_ids: dict[str, Any] = {}
    norm_out: dict[str, Any] = {}
    state: dict[str, Any] = {"first": True, "layer": -1}
    handles = []

    def lin_hook(name: str) -> Any:
        def hook(mod: Any, args: Any) -> None:
            x = args[0]
            m = x[state["mask"]].abs().amax(dim=0).float()
            amax[name] = torch.maximum(amax[name], m) if name in amax else m
            if state["first"]:
                in_ids[name] = getattr(x, _PRODUCER_TAG, None)

        return hook

    def norm_hook(name: str) -> Any:
        def hook(mod: Any, args: Any, out: Any) -> None:
            if state["first"] and isinstance(out, torch.Tensor):
                key = (state["layer"], name)
                setattr(out, _PRODUCER_TAG, key)
                norm_out[name] = key

        return hook

    def enter(index: int) -> Any:
        def hook(mod: Any, args: Any) -> None:
            state["layer"] = index

        return hook

    body = getattr(torch_model, torch_model.base_model_prefix)
    device = next(torch_model.parameters()).device
    try:
        for name, module in quantizable_linears(torch_model):
            handles.append(module.register_forward_pre_hook(lin_hook(name)))
        for name, module in torch_model.named_modules():
            if ".layers." in f".{name}" and name.endswith("norm"):
                handles.append(module.register_forward_hook(norm_hook(name)))
        for index, layer in enumerate(decoder_layers(torch_model)):
            handles.append(layer.register_forward_pre_hook(enter(index)))
        with torch.no_grad():
            for ids, mask in make_batches(seqs, 16, pad):
                state["mask"] = mask.bool().to(device)
                body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                state["first"] = False
    finally:
        for h in handles:
            h.remove()
    return amax, in_ids, norm_out


def _one_plus_weight(norm: Any) -> bool:
    """Whether an RMSNorm scales by ``(1 + weight)`` (Gemma) rather than ``weight`` (probe with weight = 0)."""
    import copy

    import torch

    probe = copy.deepcopy(norm).float()
    with torch.no_grad():
        probe.weight.zero_()
        x = torch.randn(2, probe.weight.shape[0])
        return bool(probe(x).abs().sum() > 0)


def _smooth_scale(act_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    import torch

    s = act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    ok = (act_max > 0) & (w_max > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s))


def _record_smooth(linear: Any, s_in: torch.Tensor | None = None, s_out: torch.Tensor | None = None) -> None:
    old_in, old_out = getattr(linear, SMOOTH_ATTR, (None, None))
    setattr(linear, SMOOTH_ATTR, (s_in if s_in is not None else old_in, s_out if s_out is not None else old_out))


def smooth_model(torch_model: Any, seqs: Sequence[Sequence[int]], pad: int, alpha: float, smooth_out_proj: bool) -> list[str]:
    """Apply SmoothQuant scales to ``torch_model`` in place (float weights); return what was smoothed."""
    import torch

    amax, in_ids, norm_out = _act_stats(torch_model, seqs, pad)
    names = {m: n for n, m in torch_model.named_modules()}
    model_type = getattr(torch_model.config, "model_type", "")
    done: list[str] = []
    for layer in decoder_layers(torch_model):
        prefix = names[layer]
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        mlp_norm = "pre_feedforward_layernorm" if hasattr(layer, "pre_feedforward_layernorm") else "post_attention_layernorm"
        folds = [
            ("input_layernorm", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            (mlp_norm, ["mlp.gate_proj", "mlp.up_proj"]),
        ]
        for norm_name, lin_names in folds:
            norm = getattr(layer, norm_name, None)
            found = [layer.get_submodule(n) if _has(layer, n) else None for n in lin_names]
            lins = [m for m in found if m is not None]
            full = [f"{prefix}.{n}" for n in lin_names]
            key = norm_out.get(f"{prefix}.{norm_name}")
            if norm is None or len(lins) < len(lin_names) or key is None:
                log.info("smoothquant: %s: no %s feeding %s; not smoothed", prefix, norm_name, lin_names)
                continue
            consumers = [n for n, k in in_ids.items() if k == key]
            if sorted(consumers) != sorted(full):
                log.info("smoothquant: %s.%s feeds %s, not exactly %s; not smoothed", prefix, norm_name, consumers, full)
                continue
            w_max = torch.cat([m.weight.detach().abs().float() for m in lins], dim=0).amax(dim=0)
            s = _smooth_scale(amax[full[0]], w_max, alpha)
            with torch.no_grad():
                w = norm.weight.detach().float()
                new = (1 + w) / s - 1 if _one_plus_weight(norm) else w / s
                norm.weight.copy_(new.to(norm.weight.dtype))
                for m in lins:
                    m.weight.mul_(s.to(m.weight.dtype)[None, :])
                    _record_smooth(m, s_in=s)
            done.append(f"{prefix}.{norm_name} -> {', '.join(n.split('.')[-1] for n in lin_names)}")
        if not smooth_out_proj:
            continue
        if model_type not in LINEAR_IN_V_AND_UP:
            log.info("smoothquant: model_type %r not known to be linear in V / up; o_proj, down_proj not smoothed", model_type)
            continue
        if attn is not None and _has(attn, "v_proj") and _has(attn, "o_proj") and not hasattr(attn, "v_norm"):
            v, o = attn.v_proj, attn.o_proj
            n_rep = o.in_features // v.out_features if v.out_features else 0
            if n_rep >= 1 and n_rep * v.out_features == o.in_features:
                head_dim = getattr(attn, "head_dim", None) or v.out_features
                kv = v.out_features // head_dim
                act = amax[f"{prefix}.self_attn.o_proj"].reshape(kv, n_rep, head_dim).amax(dim=1).reshape(-1)
                wmx = o.weight.detach().abs().float().amax(dim=0).reshape(kv, n_rep, head_dim).amax(dim=1).reshape(-1)
                s = _smooth_scale(act, wmx, alpha)
                s_o = s.reshape(kv, 1, head_dim).expand(kv, n_rep, head_dim).reshape(-1)
                with torch.no_grad():
                    v.weight.div_(s.to(v.weight.dtype)[:, None])
                    if v.bias is not None:
                        v.bias.div_(s.to(v.bias.dtype))
                    o.weight.mul_(s_o.to(o.weight.dtype)[None, :])
                _record_smooth(v, s_out=s)
                _record_smooth(o, s_in=s_o)
                done.append(f"{prefix}.self_attn.v_proj -> o_proj")
        if mlp is not None and _has(mlp, "up_proj") and _has(mlp, "down_proj") and _has(mlp, "gate_proj"):
            up, down = mlp.up_proj, mlp.down_proj
            s = _smooth_scale(amax[f"{prefix}.mlp.down_proj"], down.weight.detach().abs().float().amax(dim=0), alpha)
            with torch.no_grad():
                up.weight.div_(s.to(up.weight.dtype)[:, None])
                if up.bias is not None:
                    up.bias.div_(s.to(up.bias.dtype))
                down.weight.mul_(s.to(down.weight.dtype)[None, :])
            _record_smooth(up, s_out=s)
            _record_smooth(down, s_in=s)
            done.append(f"{prefix}.mlp.up_proj -> down_proj")
    return done


def _has(module: Any, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def quantize_w8a8_weights(torch_model: Any, act: str = "int8") -> dict[str, dict[str, Any]]:
    """Round every decoder Linear's weight to int8 per output channel and quantize its inputs per token."""
    import torch

    records: dict[str, dict[str, Any]] = {}
    for name, lin in quantizable_linears(torch_model):
        start = time.perf_counter()
        w = lin.weight.detach().float().clone()
        scale, zero = weight_params(w, 8, None, True)
        qp = QParams("int", 8, None, True, scale, zero)
        wq = fake_quant_weight(w, qp)
        with torch.no_grad():
            lin.weight.copy_(wq.to(lin.weight.dtype))
        setattr(lin, QPARAMS_ATTR, qp)
        install_act_quant(lin, act)
        records[name] = {
            "weight_rel_err": float((w - wq).norm() / w.norm().clamp(min=1e-30)),
            "seconds": time.perf_counter() - start,
            "bits_per_weight": bits_per_weight("int", 8, None, lin.in_features),
        }
    return records


def _calibration_seqs(model: HFModel, spec: QuantSpec, defaults: dict[str, Any]) -> list[list[int]]:
    from mlquant.quantize.calibration import calibration_texts, encode_texts

    texts = calibration_texts(spec.calibration, int(option(spec, defaults, "seed")))
    return encode_texts(model.tokenizer, texts, int(option(spec, defaults, "max_tokens")))


class W8A8Quantizer:
    """``w8a8``: int8 per-channel weights, int8 per-token dynamic activations, no smoothing, no calibration."""

    name: ClassVar[str] = "w8a8"
    option_defaults: ClassVar[dict[str, Any]] = {}
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        _check_w8a8(spec)
        check_options(spec, self.option_defaults)
        if spec.calibration is not None:
            raise ConfigError("w8a8: calibration is not used (activations are scaled per token); remove it.")

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        return Transformed(torch_model, quantize_w8a8_weights(torch_model))


class SmoothQuantQuantizer:
    """``smoothquant-w8a8`` (option ``alpha``, default 0.5; ``smoothquant-w8a8@flores:ja:128``)."""

    name: ClassVar[str] = "smoothquant"
    option_defaults: ClassVar[dict[str, Any]] = dict(SMOOTH_DEFAULTS)
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        _check_w8a8(spec)
        check_options(spec, self.option_defaults)
        check_range(spec, "alpha", 0.0, 1.0)
        check_range(spec, "max_tokens", 2, 1 << 20)
        check_range(spec, "seed", 0, 2**63 - 1)
        check_calibration(spec.calibration)

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        seqs = _calibration_seqs(model, spec, self.option_defaults)
        smoothed = smooth_model(
            torch_model, seqs, pad_id(model.tokenizer), float(option(spec, self.option_defaults, "alpha")),
            bool(option(spec, self.option_defaults, "smooth_out_proj")),
        )
        return Transformed(torch_model, quantize_w8a8_weights(torch_model), {"smoothing": smoothed})


class W8A8GPTQQuantizer:
    """``w8a8-int-gptq``: SmoothQuant + GPTQ int8 per-channel weights + int8 per-token activations."""

    name: ClassVar[str] = "w8a8-int-gptq"
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    @property
    def option_defaults(self) -> dict[str, Any]:
        from mlquant.quantize.gptq import GPTQ_DEFAULTS

        return {**GPTQ_DEFAULTS, "alpha": 0.5, "smooth_out_proj": True}

    def validate(self, spec: QuantSpec) -> None:
        from mlquant.quantize.gptq import validate_gptq_like

        _check_w8a8(spec)
        validate_gptq_like(spec, self.option_defaults, bits=(8, 8))
        check_range(spec, "alpha", 0.0, 1.0)

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        from mlquant.quantize.gptq import run_gptq

        defaults = self.option_defaults
        seqs = _calibration_seqs(model, spec, defaults)
        pad = pad_id(model.tokenizer)
        smoothed = smooth_model(
            torch_model, seqs, pad, float(option(spec, defaults, "alpha")), bool(option(spec, defaults, "smooth_out_proj"))
        )
        records = run_gptq(torch_model, seqs, pad, spec, after_linear=lambda m: install_act_quant(m, "int8"))
        return Transformed(torch_model, records, {"smoothing": smoothed})


register_quantizer(W8A8Quantizer(), aliases={"w8a8": {"method": "w8a8", "w_bits": 8, "a_bits": 8}})
register_quantizer(SmoothQuantQuantizer())
register_quantizer(W8A8GPTQQuantizer(), aliases={"w8a8-int-gptq": {"method": "w8a8-int-gptq", "w_bits": 8, "a_bits": 8}})
