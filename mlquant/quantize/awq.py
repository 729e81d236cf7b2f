"""AWQ weight quantization (Lin et al., MLSys 2024, arXiv 2306.00978), simulated in pure torch on any device.

Activation-aware weight quantization protects the input channels that see large activations by scaling them up
before rounding: for the Linears that read one input ``X``, ``W' = Q(W·diag(s))`` and the input becomes
``X·diag(s)^-1``, which is folded into the op that produces ``X`` where that is exact. Per decoder block, on
calibration text:

1. **Scale search.** ``s = mean|x|^α`` per input channel (``duo_scaling``, default True as llm-compressor's
   AWQModifier and AutoAWQ: ``s = mean|x|^α / (w̄^(1-α) + 1e-4)`` with ``w̄`` the mean over rows of ``|w|`` divided
   by its group's max), normalised by ``sqrt(max s · min s)``; ``α = i / n_grid`` for ``i = 0 … n_grid - 1``
   (the grid of llm-awq; ``α = 0`` without duo scaling is ``s = 1``, i.e. round-to-nearest). The ``α`` kept
   minimises the MSE of the output of the module that contains the scaled Linears (self-attention for q/k/v,
   the MLP for gate/up, the Linear itself for o_proj and down_proj) on the calibration tokens, with only those
   Linears quantized. Searches run in order q/k/v, o, gate/up, down, each fold applied before the next search.
2. **Folds** (exact in float, checked on the calibration pass: the norm's output tensor must be the Linears' input):
   q/k/v ← ``input_layernorm``; gate/up ← ``pre_feedforward_layernorm`` (Gemma 2/3 sandwich norms: the
   ``post_*`` norms act on block outputs, not on Linear inputs) or ``post_attention_layernorm`` (Llama, Mistral,
   Qwen). RMSNorm ``w * x̂`` becomes ``w / s``; Gemma's ``(1 + w) * x̂`` becomes ``(1 + w) / s - 1``.
   o_proj ← v_proj rows (attention is linear in V; with grouped-query attention one scale per KV channel, shared
   by the query heads that read it: llm-awq and llm-compressor skip this fold when the shapes differ, which is
   Gemma 3's case). down_proj ← up_proj rows (``down(act(gate x) · up x)`` is linear in ``up x``). Where no exact
   fold exists (another architecture, a norm feeding other tensors), the scale is kept as an explicit input scaling:
   a forward pre-hook multiplies the Linear's input by ``1/s`` (simulation only; listed in
   ``report.attrs["awq"]["input_scaled"]``).
3. **Clipping search** (``clip``, default True, as llm-awq; q_proj and k_proj are skipped as there): per output row
   and group, ``max|w|`` is shrunk by ratios ``1, 1 - 1/clip_grid, …`` down to ``min_clip_ratio`` (exclusive,
   default 0.5: ratios 1 … 0.55), the weights are clamped to ``±ratio·max|w|`` and the ratio minimising that
   group's output MSE ``mean_t (X_g (Q(W_g) - W_g)^T)^2`` on up to 512 calibration tokens is kept.
4. Round to nearest on the grid of rtn.py (asymmetric ``[0, 2^b - 1]`` with a zero point by default, as AWQ).

The next block's inputs are the float block's outputs (as llm-awq). Options: ``n_grid`` (20), ``duo_scaling``
(True), ``clip`` (True), ``clip_grid`` (20), ``min_clip_ratio`` (0.5), ``max_tokens`` (128), ``seed`` (0).
``report.attrs["awq"]`` lists the folds and, per Linear, the chosen ``alpha``, the clip ratios and the output MSE
on the calibration tokens of AWQ and of round-to-nearest on the same grid (``awq_mse``, ``rtn_mse``).

Example:
    >>> from mlquant.quantize import QuantSpec
    >>> spec = QuantSpec.parse("awq-w4g128", calibration="flores:ja:128")
    >>> spec.label, spec.symmetric
    ('awq-w4g128@flores:ja:128', False)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import (
    QPARAMS_ATTR,
    SMOOTH_ATTR,
    QParams,
    bits_per_weight,
    block_linears,
    capture_block_inputs,
    check_options,
    check_range,
    decoder_layers,
    fake_quant_weight,
    option,
    pad_id,
    run_block,
    weight_params,
)
from mlquant.quantize.awq_search import awq_scales, clip_search, group_view
from mlquant.quantize.calibration import check_calibration
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = ["AWQ_DEFAULTS", "AWQQuantizer", "InputScale", "asym_alias", "check_fields", "check_groups_divide", "run_awq"]

log = logging.getLogger(__name__)

AWQ_DEFAULTS: dict[str, Any] = {
    "n_grid": 20,
    "duo_scaling": True,
    "clip": True,
    "clip_grid": 20,
    "min_clip_ratio": 0.5,
    "max_tokens": 128,
    "seed": 0,
}
#: Tokens (evenly strided over the calibration set) used by the clipping search, as llm-awq.
CLIP_TOKENS = 512
#: Calibration sequences per forward pass.
CALIBRATION_BATCH = 16
#: model_type values whose attention is linear in V and whose MLP is down(act(gate) * up).
LINEAR_IN_V_AND_UP = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text"})
#: Attribute set on a Linear whose input is multiplied by ``1/s`` by an :class:`InputScale` pre-hook.
INPUT_SCALE_ATTR = "mlquant_awq_input_scale"
#: Labels registered as aliases (same fields as the general rule gives; kept for their fingerprints, see
#: :class:`AWQQuantizer`).
AWQ_LABELS = ("awq-w4g128", "awq-w3g128", "awq-w4g64", "awq-w4g32", "awq-w4")


class InputScale:
    """Forward pre-hook multiplying a Linear's input by ``inv_scale`` (an AWQ scale that has no exact fold)."""

    def __init__(self, inv_scale: torch.Tensor) -> None:
        self.inv_scale = inv_scale

    def __call__(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x * self.inv_scale.to(device=x.device, dtype=x.dtype), *args[1:])


# ----- per-block plan -------------------------------------------------------------------------------------------
@dataclass
class _Mapping:
    """Linears sharing one input, the op their scale folds into, and the module whose output the search scores."""

    key: str
    linears: list[tuple[str, Any]]
    prev: Any = None  # norm module, Linear (v_proj / up_proj) or None (explicit input scaling)
    prev_name: str = ""
    inspect: Any = None  # module run on captured inputs; None: the Linears themselves
    n_rep: int = 1  # query heads per KV head (v_proj -> o_proj with grouped-query attention)
    head_dim: int = 0
    x: Any = None  # captured inputs [tokens, in] (valid tokens only)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    ref: list[Any] = field(default_factory=list)


def _get(module: Any, path: str) -> Any:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _one_plus_weight(norm: Any) -> bool:
    """Whether an RMSNorm scales by ``(1 + weight)`` (Gemma) rather than ``weight`` (probe with weight = 0)."""
    import copy

    import torch

    probe = copy.deepcopy(norm).float()
    with torch.no_grad():
        probe.weight.zero_()
        return bool(probe(torch.randn(2, probe.weight.shape[0])).abs().sum() > 0)


def _plan(layer: Any, model_type: str) -> list[_Mapping]:
    """The block's mappings: q/k/v, o, gate/up, down where found, then every other Linear on its own."""
    import torch

    attn, mlp = _get(layer, "self_attn"), _get(layer, "mlp")
    plan: list[_Mapping] = []
    linear_ok = model_type in LINEAR_IN_V_AND_UP

    def lins(*paths: str) -> list[tuple[str, Any]] | None:
        found = [(p, _get(layer, p)) for p in paths]
        return found if all(isinstance(m, torch.nn.Linear) for _, m in found) else None

    qkv = lins("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    if qkv:
        plan.append(_Mapping("qkv", qkv, _get(layer, "input_layernorm"), "input_layernorm", attn))
    o = lins("self_attn.o_proj")
    if o:
        m = _Mapping("o", o)
        v = _get(layer, "self_attn.v_proj")
        head_dim = int(getattr(attn, "head_dim", 0) or 0)
        o_in = o[0][1].in_features
        if (linear_ok and qkv and head_dim and v.out_features % head_dim == 0 and o_in % v.out_features == 0
                and not hasattr(attn, "v_norm")):
            m.prev, m.prev_name, m.n_rep, m.head_dim = v, "self_attn.v_proj", o_in // v.out_features, head_dim
        plan.append(m)
    gate_up = lins("mlp.gate_proj", "mlp.up_proj")
    if gate_up:
        norm_name = "pre_feedforward_layernorm" if _get(layer, "pre_feedforward_layernorm") is not None else (
            "post_attention_layernorm")
        plan.append(_Mapping("gate_up", gate_up, _get(layer, norm_name), norm_name, mlp))
    down = lins("mlp.down_proj")
    if down:
        m = _Mapping("down", down)
        up = _get(layer, "mlp.up_proj")
        if linear_ok and gate_up and up.out_features == down[0][1].in_features:
            m.prev, m.prev_name = up, "mlp.up_proj"
        plan.append(m)
    covered = {id(mod) for mp in plan for _, mod in mp.linears}
    for name, mod in layer.named_modules():
        if isinstance(mod, torch.nn.Linear) and id(mod) not in covered:
            plan.append(_Mapping(name, [(name, mod)]))
    return plan


def _capture(layer: Any, index: int, batches: Sequence[Any], plan: list[_Mapping]) -> list[Any]:
    """Run the float block on every batch, recording each mapping's inputs; return the block outputs."""
    import torch

    state: dict[str, Any] = {}
    handles = []
    norm_outs: dict[int, Any] = {}

    def lin_hook(mp: _Mapping) -> Callable[..., None]:
        def hook(mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            state.setdefault("xs", {}).setdefault(mp.key, []).append(x[state["mask"]].detach().float())
            if state["first"] and isinstance(mp.prev, torch.nn.Module) and not isinstance(mp.prev, torch.nn.Linear):
                state.setdefault("fed", {}).setdefault(mp.key, []).append(x is norm_outs.get(id(mp.prev)))

        return hook

    def norm_hook(mod: Any, args: tuple[Any, ...], out: Any) -> None:
        if state["first"]:
            norm_outs[id(mod)] = out

    def call_hook(mp: _Mapping) -> Callable[..., None]:
        def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            mp.calls.append((args, dict(kwargs)))

        return hook

    outs = []
    try:
        for mp in plan:
            for _, m in mp.linears:
                handles.append(m.register_forward_pre_hook(lin_hook(mp)))
            if mp.inspect is not None:
                handles.append(mp.inspect.register_forward_pre_hook(call_hook(mp), with_kwargs=True))
            if mp.prev is not None and not isinstance(mp.prev, torch.nn.Linear):
                handles.append(mp.prev.register_forward_hook(norm_hook))
        with torch.no_grad():
            for k, batch in enumerate(batches):
                state.update(mask=batch.mask, first=k == 0)
                outs.append(run_block(layer, batch, index))
    finally:
        for h in handles:
            h.remove()
    xs, fed = state.get("xs", {}), state.get("fed", {})
    for mp in plan:
        per_linear = xs.get(mp.key, [])
        n = len(mp.linears)
        # every Linear of the mapping reads the same tensor: keep the first one's inputs
        mp.x = torch.cat(per_linear[::n]) if per_linear else None
        if mp.prev is not None and not isinstance(mp.prev, torch.nn.Linear) and not all(fed.get(mp.key, [False])):
            log.info("awq: %s does not feed %s exactly; explicit input scaling", mp.prev_name, mp.key)
            mp.prev = None
    return outs


# ----- one mapping ----------------------------------------------------------------------------------------------
def _inspect_outputs(mp: _Mapping, masks: Sequence[Any]) -> list[Any]:
    import torch

    with torch.no_grad():
        if mp.inspect is None or not mp.calls:
            return [torch.cat([m(mp.x.to(m.weight.dtype)).float() for _, m in mp.linears], dim=-1)]
        outs = []
        for (args, kwargs), mask in zip(mp.calls, masks, strict=True):
            out = mp.inspect(*args, **kwargs)
            outs.append((out[0] if isinstance(out, tuple) else out)[mask].float())
        return outs


def _mse(ref: Sequence[Any], out: Sequence[Any]) -> float:
    num = sum(float((a - b).double().pow(2).sum()) for a, b in zip(ref, out, strict=True))
    den = sum(int(a.numel()) for a in ref)
    return float(num) / max(den, 1)


def _reduce_kv(v: torch.Tensor, mp: _Mapping) -> torch.Tensor:
    """Per-KV-channel mean of a per-o_proj-input statistic (grouped-query attention shares one scale)."""
    if mp.n_rep == 1:
        return v
    return v.reshape(-1, mp.n_rep, mp.head_dim).mean(dim=1).reshape(-1)


def _expand_kv(s: torch.Tensor, mp: _Mapping) -> torch.Tensor:
    if mp.n_rep == 1:
        return s
    kv = s.numel() // mp.head_dim
    out: torch.Tensor = s.reshape(kv, 1, mp.head_dim).expand(kv, mp.n_rep, mp.head_dim).reshape(-1)
    return out


def _search(
    mp: _Mapping, masks: Sequence[Any], quant: Callable[[Any], Any], spec: QuantSpec, opts: dict[str, Any]
) -> dict[str, Any]:
    """Grid search of α for one mapping; the weights are left as they were. Returns alpha, scales, losses."""
    import torch

    weights = [m.weight.detach().clone() for _, m in mp.linears]
    x_mean = _reduce_kv(mp.x.abs().mean(dim=0), mp)
    w_mean = None
    if opts["duo_scaling"]:
        w = torch.cat([wt.float() for wt in weights], dim=0)
        wg = group_view(w, spec.group_size).abs()
        w_mean = _reduce_kv((wg / (wg.amax(dim=2, keepdim=True) + 1e-6)).reshape(w.shape).mean(dim=0), mp)
    ref = _inspect_outputs(mp, masks)
    losses: list[float] = []
    best: tuple[float, float, Any] = (float("inf"), -1.0, None)
    try:
        for i in range(int(opts["n_grid"])):
            alpha = i / int(opts["n_grid"])
            s = awq_scales(x_mean, w_mean, alpha)
            s_full = _expand_kv(s, mp).to(weights[0].device)
            with torch.no_grad():
                for (_, m), w0 in zip(mp.linears, weights, strict=True):
                    m.weight.copy_((quant(w0.float() * s_full) / s_full).to(w0.dtype))
            loss = _mse(ref, _inspect_outputs(mp, masks))
            losses.append(loss)
            if loss < best[0]:
                best = (loss, alpha, s)
    finally:
        with torch.no_grad():
            for (_, m), w0 in zip(mp.linears, weights, strict=True):
                m.weight.copy_(w0)
    if best[2] is None:
        raise ConfigError(f"awq: no finite loss in the scale search of {mp.key} (NaN in the block's outputs?).")
    return {"alpha": best[1], "scales": best[2], "loss": best[0], "loss_alpha0": losses[0]}


def _record_smooth(linear: Any, s_in: Any = None, s_out: Any = None) -> None:
    old_in, old_out = getattr(linear, SMOOTH_ATTR, (None, None))
    if s_in is not None and old_in is not None:
        s_in = s_in * old_in
    setattr(linear, SMOOTH_ATTR, (s_in if s_in is not None else old_in, s_out if s_out is not None else old_out))


def _apply(mp: _Mapping, s: torch.Tensor, prefix: str) -> str:
    """Scale the mapping's weight columns by ``s`` and fold ``1/s`` into its producer; say what was done."""
    import torch

    names = ", ".join(n.split(".")[-1] for n, _ in mp.linears)
    if bool((s == 1).all()):
        return f"{prefix}: {names}: s = 1 (nothing to fold)"
    s_full = _expand_kv(s, mp)
    with torch.no_grad():
        for _, m in mp.linears:
            m.weight.mul_(s_full.to(m.weight)[None, :])
            _record_smooth(m, s_in=s_full.to(m.weight.device))
        mp.x = mp.x / s_full.to(mp.x)[None, :]
        if isinstance(mp.prev, torch.nn.Linear):
            mp.prev.weight.div_(s.to(mp.prev.weight)[:, None])
            if mp.prev.bias is not None:
                mp.prev.bias.div_(s.to(mp.prev.bias))
            _record_smooth(mp.prev, s_out=s.to(mp.prev.weight.device))
            return f"{prefix}.{mp.prev_name} -> {names}"
        if mp.prev is not None:
            w = mp.prev.weight.detach().float()
            one_plus = _one_plus_weight(mp.prev)
            sd = s.to(w.device)
            mp.prev.weight.copy_(((1 + w) / sd - 1 if one_plus else w / sd).to(mp.prev.weight.dtype))
            if getattr(mp.prev, "bias", None) is not None:
                mp.prev.bias.div_(sd.to(mp.prev.bias))
            return f"{prefix}.{mp.prev_name} -> {names}" + (" ((1 + w) norm)" if one_plus else "")
    for _, m in mp.linears:
        m.register_forward_pre_hook(InputScale((1 / s_full).detach().clone()))
        setattr(m, INPUT_SCALE_ATTR, s_full.detach().clone())
    return f"{prefix}: {names}: explicit input scaling (no exact fold)"


def _quantize_linear(
    m: Any, name: str, x0: Any, x_clip: Any, result: dict[str, Any], quant: Callable[[Any], Any], spec: QuantSpec,
    opts: dict[str, Any], ratios: Sequence[float],
) -> dict[str, Any]:
    """Clip (except q/k, as llm-awq), round, and measure one Linear; ``x0`` are its inputs before AWQ's scales."""
    import torch

    bits, group, sym = int(spec.w_bits or 4), spec.group_size, spec.symmetric
    w = m.weight.detach().float()
    clip = bool(opts["clip"]) and x_clip is not None and not name.endswith(("q_proj", "k_proj"))
    wc, r = clip_search(w, x_clip, quant, group, ratios) if clip else (w, torch.ones(1))
    scale, zero = weight_params(wc, bits, group, sym)
    qp = QParams("int", bits, group, sym, scale, zero)
    wq = fake_quant_weight(wc, qp)
    rec: dict[str, Any] = {
        "weight_rel_err": float((w - wq).norm() / w.norm().clamp(min=1e-30)),
        "bits_per_weight": bits_per_weight("int", bits, group, m.in_features, sym),
        "awq_alpha": result["alpha"],
        "awq_search_loss": result["loss"],
        "rtn_search_loss": result["loss_alpha0"] if not opts["duo_scaling"] else float("nan"),
        "clip_ratio_mean": float(r.mean()),
        "clip_ratio_min": float(r.min()),
    }
    if x0 is not None and x_clip is not None:
        s_out = getattr(m, SMOOTH_ATTR, (None, None))[1]
        w0 = _original_weight(m)
        ref = x0 @ w0.T
        out = x_clip @ wq.T
        if s_out is not None:  # v_proj / up_proj rows were divided by the next mapping's scale
            out = out * s_out.to(out)[None, :]
        rec["rtn_mse"] = float((x0 @ quant(w0).T - ref).pow(2).mean())
        rec["awq_mse"] = float((out - ref).pow(2).mean())
    with torch.no_grad():
        m.weight.copy_(wq.to(m.weight.dtype))
    setattr(m, QPARAMS_ATTR, qp)
    return rec


def run_awq(
    torch_model: Any, seqs: Sequence[Sequence[int]], pad: int, spec: QuantSpec, *,
    blocks: Sequence[int] | None = None, fold_only: bool = False,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Quantize every decoder-block Linear of ``torch_model`` in place with AWQ.

    Args:
        torch_model: the model to modify (a copy).
        seqs: calibration token ids; ``pad``: the pad token id.
        spec: the AWQ spec (bits, group size, options as in :data:`AWQ_DEFAULTS`).
        blocks: quantize only these decoder blocks (None: all); the others stay in float.
        fold_only: search and fold the scales but leave the weights in float (the model's function is unchanged:
            a check of the folds).

    Raises:
        ConfigError: the group size does not divide a Linear's input features, or no calibration token.

    Returns:
        (per-layer records keyed by module name, ``attrs`` with the folds and the per-layer search results).
    """
    import torch

    opts = {k: spec.options.get(k, v) for k, v in AWQ_DEFAULTS.items()}
    bits, group, sym = int(spec.w_bits or 4), spec.group_size, spec.symmetric
    n_clip = max(1, round((1 - float(opts["min_clip_ratio"])) * int(opts["clip_grid"])))
    ratios = [1 - i / int(opts["clip_grid"]) for i in range(n_clip)]

    def quant(w: torch.Tensor) -> torch.Tensor:
        scale, zero = weight_params(w, bits, group, sym)
        return fake_quant_weight(w, QParams("int", bits, group, sym, scale, zero))

    layers = decoder_layers(torch_model)
    chosen = set(range(len(layers)) if blocks is None else blocks)
    names = {id(m): n for n, m in torch_model.named_modules()}
    check_groups_divide([(names[id(m)], m) for i in sorted(chosen) for _, m in block_linears(layers[i])], group, "awq")
    model_type = str(getattr(torch_model.config, "model_type", ""))
    batches = capture_block_inputs(torch_model, seqs, pad, CALIBRATION_BATCH)
    if not batches:
        raise ConfigError("awq: the calibration texts encode to no tokens.")
    masks = [b.mask for b in batches]
    n_tokens = int(sum(int(m.sum()) for m in masks))
    records: dict[str, dict[str, Any]] = {}
    folds: list[str] = []
    explicit: list[str] = []
    for index, layer in enumerate(layers):
        if index > max(chosen, default=-1):
            break
        start = time.perf_counter()
        if index not in chosen:
            with torch.no_grad():
                for batch in batches:
                    batch.hidden = run_block(layer, batch, index)
            continue
        plan = _plan(layer, model_type)
        outs = _capture(layer, index, batches, plan)
        prefix = names[id(layer)]
        searched: list[tuple[_Mapping, dict[str, Any], Any]] = []
        for mp in plan:  # 1. every scale searched and folded (the weights stay in float)
            if mp.x is None:  # never called on the calibration text: round to nearest
                searched.append((mp, {"alpha": float("nan"), "loss": float("nan"), "loss_alpha0": float("nan")}, None))
                continue
            x0 = mp.x[:: max(1, mp.x.shape[0] // CLIP_TOKENS)].clone()  # inputs before this mapping's scale
            result = _search(mp, masks, quant, spec, opts)
            done = _apply(mp, result["scales"], prefix)
            (explicit if "explicit" in done else folds).append(done)
            searched.append((mp, result, x0))
        for mp, result, x0 in ([] if fold_only else searched):  # 2. clipping search, then round to nearest
            x_clip = mp.x[:: max(1, mp.x.shape[0] // CLIP_TOKENS)] if mp.x is not None else None
            for name, m in mp.linears:
                records[names[id(m)]] = _quantize_linear(m, name, x0, x_clip, result, quant, spec, opts, ratios)
                records[names[id(m)]]["n_tokens"] = n_tokens
        for batch, out in zip(batches, outs, strict=True):
            batch.hidden = out
        seconds = time.perf_counter() - start
        for mp in plan:
            for _, m in mp.linears:
                if names[id(m)] in records:
                        records[names[id(m)]]["seconds"] = seconds * m.weight.numel() / sum(
                        mm.weight.numel() for p in plan for _, mm in p.linears)
        log.info("awq: block %d/%d in %.1f s", index + 1, len(layers), seconds)
    attrs = {"folds": folds, "input_scaled": explicit, "layers": {k: dict(v) for k, v in records.items()}}
    return records, attrs


def _original_weight(m: Any) -> torch.Tensor:
    """The Linear's weight before AWQ's rescaling (undoing the scales recorded in ``mlquant_smooth``)."""
    w: torch.Tensor = m.weight.detach().float()
    s_in, s_out = getattr(m, SMOOTH_ATTR, (None, None))
    if s_in is not None:
        w = w / s_in.to(w)[None, :]
    if s_out is not None:
        w = w * s_out.to(w)[:, None]
    return w


class AWQQuantizer:
    """AWQ (``awq-w4g128``, ``awq-w3g128``, ``awq-w4g128@flores:ja:128``), asymmetric by default.

    Every ``awq-w<bits>[g<group>]`` label parses by :mod:`mlquant.spec`'s general rule on this method's default grid
    (``default_symmetric`` False: ``awq-w4g256`` is asymmetric). The labels of :data:`AWQ_LABELS` are registered as
    aliases as well: they give the same fields, and they are kept because an alias stores its label as the spec's
    ``name``, which :meth:`~mlquant.spec.QuantSpec.to_dict` includes (the model fingerprint, a run's ``study.yaml``):
    without them, runs made with these labels would get other fingerprints and refuse to resume.
    """

    name: ClassVar[str] = "awq"
    option_defaults: ClassVar[dict[str, Any]] = dict(AWQ_DEFAULTS)
    default_symmetric: ClassVar[bool] = False
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        from mlquant.quantize.rtn import check_bits, check_group_size

        check_bits(spec, 2, 8)
        check_group_size(spec)
        check_options(spec, self.option_defaults)
        check_range(spec, "n_grid", 1, 10_000)
        check_range(spec, "clip_grid", 1, 10_000)
        check_range(spec, "max_tokens", 2, 1 << 20)
        check_range(spec, "seed", 0, 2**63 - 1)
        ratio = spec.options.get("min_clip_ratio", AWQ_DEFAULTS["min_clip_ratio"])
        if not 0 < ratio <= 1:
            raise ConfigError(f"awq: option min_clip_ratio={ratio!r} is outside (0, 1] (a clip ratio is at most 1).")
        check_fields(spec, "awq")
        check_calibration(spec.calibration)

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        from mlquant.quantize.calibration import calibration_texts, encode_texts

        texts = calibration_texts(spec.calibration, int(option(spec, self.option_defaults, "seed")))
        seqs = encode_texts(model.tokenizer, texts, int(option(spec, self.option_defaults, "max_tokens")))
        records, attrs = run_awq(torch_model, seqs, pad_id(model.tokenizer), spec)
        return Transformed(torch_model, records, {"awq": attrs})


def check_fields(spec: QuantSpec, method: str) -> None:
    """Checks shared by AWQ and HQQ: weights only, simulated, asymmetric, a label that matches the fields."""
    if spec.a_bits is not None:
        raise ConfigError(f"{method}: a_bits={spec.a_bits!r}; {method.upper()} quantizes weights only.")
    if spec.backend != "simulate":
        raise ConfigError(f"{method}: backend {spec.backend!r} is not available; only 'simulate'.")
    if spec.symmetric:
        raise ConfigError(
            f"{method}: symmetric=True is not offered ({method.upper()} uses an asymmetric grid with a zero point); "
            f"drop symmetric=True (labels such as '{method}-w4g256' are asymmetric by default)."
        )
    canonical = f"{method}-w{spec.w_bits}" + (f"g{spec.group_size}" if spec.group_size else "")
    if spec.name is not None and spec.name != canonical:
        raise ConfigError(f"{method}: label {spec.name!r} does not match w_bits={spec.w_bits}, group_size={spec.group_size}.")


def check_groups_divide(linears: Iterable[tuple[str, Any]], group_size: int | None, method: str) -> None:
    """Shape check shared by AWQ and HQQ, before any work: ``group_size`` divides every Linear's input features.

    Args:
        linears: (module name, Linear) pairs.
        group_size: the spec's group size (None: one group per row, always fine).
        method: the method name the message starts with.

    Raises:
        ConfigError: naming the group size, the first Linear it does not divide and its ``in_features``.

    Example:
        >>> import torch
        >>> check_groups_divide([("a", torch.nn.Linear(64, 8))], 32, "hqq")
        >>> check_groups_divide([("a", torch.nn.Linear(64, 8))], 128, "hqq")
        Traceback (most recent call last):
        ...
        mlquant.errors.ConfigError: hqq: group_size=128 does not divide in_features=64 of a.
    """
    if not group_size:
        return
    for name, linear in linears:
        if linear.in_features % group_size:
            raise ConfigError(
                f"{method}: group_size={group_size} does not divide in_features={linear.in_features} of {name}."
            )


def asym_alias(label: str) -> dict[str, Any]:
    """Spec fields of a registered asymmetric label ``<method>-w<bits>[g<group>]``.

    Example:
        >>> asym_alias("awq-w4g128")
        {'method': 'awq', 'w_bits': 4, 'group_size': 128, 'symmetric': False}
    """
    method, _, rest = label.partition("-w")
    bits, _, group = rest.partition("g")
    return {"method": method, "w_bits": int(bits), "group_size": int(group) if group else None, "symmetric": False}


register_quantizer(AWQQuantizer(), aliases={label: asym_alias(label) for label in AWQ_LABELS})
