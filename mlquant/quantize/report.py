"""The quantization report: one row per quantized Linear, set on the quantized model as ``.quant_report``.

Columns:

* ``quant`` (spec label), ``layer`` (module name), ``block`` (decoder block index), ``module`` (``q_proj``, ...),
  ``in_features``, ``out_features``;
* ``bits_per_weight``: storage bits per weight including scales (16-bit scales per group, ``bits``-bit zero points
  when asymmetric; bitsandbytes as it stores them);
* ``weight_rel_err``: ``||W - W_q|| / ||W||`` (Frobenius), where ``W`` is the float weight the method quantized
  (after SmoothQuant's rescaling, if any) and ``W_q`` the dequantized weight;
* ``output_rel_err``: ``||Y_q - Y|| / ||Y||`` of the layer's outputs on the held-out report text
  (:func:`mlquant.quantize.calibration.report_texts`), ``Y`` from the original model and ``Y_q`` from the quantized
  one, each run end to end (so it includes the error carried in from earlier layers and activation quantization);
* ``local_output_rel_err``: the error of the layer alone: ``||f_q(X) - X W^T|| / ||X W^T + b||`` with ``X`` the
  quantized model's own input to that layer and ``f_q`` the quantized layer (activation quantization included);
* ``seconds``: wall time spent quantizing that layer (NaN where the method does not time layers one by one).

``report.attrs`` holds ``label``, ``method``, ``total_seconds`` and ``report_text`` (what the output errors used).

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> q = mq.quantize(mq.load_model("gemma3-270m"), "rtn-w4g128")  # doctest: +SKIP
    >>> q.quant_report[["layer", "weight_rel_err", "output_rel_err"]].head()  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from mlquant.quantize._common import (
    QPARAMS_ATTR,
    SMOOTH_ATTR,
    bits_per_weight,
    make_batches,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from mlquant.models import HFModel

__all__ = ["REPORT_COLUMNS", "build_report", "effective_weight", "reference_weight"]

REPORT_COLUMNS = [
    "quant",
    "layer",
    "block",
    "module",
    "in_features",
    "out_features",
    "bits_per_weight",
    "weight_rel_err",
    "output_rel_err",
    "local_output_rel_err",
    "seconds",
]
#: Report texts per forward pass.
REPORT_BATCH = 4


def effective_weight(module: Any) -> torch.Tensor:
    """The float weight a Linear computes with (dequantized for bitsandbytes layers)."""
    weight = module.weight
    cls = type(module).__name__
    if cls == "Linear8bitLt" and weight.dtype == torch_int8():
        # bitsandbytes moves the row scales from the weight to the layer's state at the first forward pass.
        scb = getattr(weight, "SCB", None)
        if scb is None:
            scb = getattr(getattr(module, "state", None), "SCB", None)
        if scb is None:
            raise ValueError(f"{cls}: no row scales (SCB) on the weight or the layer state; cannot dequantize.")
        return cast("torch.Tensor", weight.data.float() * scb.float()[:, None] / 127.0)
    if cls == "Linear4bit" and getattr(weight, "quant_state", None) is not None:
        import bitsandbytes.functional as F

        data, state = weight.data, weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):  # repacked for the CPU kernel at the first forward
            # Private in bitsandbytes 0.50, and the only inverse of its CPU repacking.
            from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse  # type: ignore[attr-defined]

            data, state = _convert_weight_packed_for_cpu_inverse(data.clone(), copy.copy(state))
        return F.dequantize_4bit(data, state).float()
    return cast("torch.Tensor", weight.detach().float())


def torch_int8() -> Any:
    import torch

    return torch.int8


def reference_weight(original: Any, quantized: Any) -> torch.Tensor:
    """The float weight the method set out to quantize: the original one, rescaled as SmoothQuant did."""
    w = cast("torch.Tensor", original.weight.detach().float())
    smooth = getattr(quantized, SMOOTH_ATTR, None)
    if smooth is not None:
        s_in, s_out = smooth
        if s_in is not None:
            w = w * s_in.to(w.device)[None, :]
        if s_out is not None:
            w = w / s_out.to(w.device)[:, None]
    return w


def _linears(torch_model: Any) -> dict[str, Any]:
    from mlquant.quantize._common import quantizable_linears

    return dict(quantizable_linears(torch_model))


def _bits(module: Any, spec: Any) -> float:
    cls = type(module).__name__
    if cls == "Linear8bitLt":
        return bits_per_weight("bnb-int8", 8, None, module.in_features)
    if cls == "Linear4bit":
        dq = bool(getattr(getattr(module.weight, "quant_state", None), "nested", False))
        return bits_per_weight("bnb-4bit-dq" if dq else "bnb-4bit", 4, None, module.in_features)
    qp = getattr(module, QPARAMS_ATTR, None)
    if qp is not None:
        return bits_per_weight(qp.fmt, qp.bits, qp.group_size, module.in_features, qp.symmetric)
    if spec.w_bits:
        return bits_per_weight("int", spec.w_bits, spec.group_size, module.in_features, spec.symmetric)
    return float(module.weight.element_size() * 8)


def _output_errors(original: HFModel, quantized: HFModel, texts: Sequence[str]) -> dict[str, tuple[float, float]]:
    import torch

    from mlquant.quantize.calibration import encode_texts

    orig_lin, q_lin = _linears(original.torch_model), _linears(quantized.torch_model)
    common = [n for n in q_lin if n in orig_lin]
    seqs = encode_texts(original.tokenizer, texts, 128)
    if not seqs or not common:
        return {}
    acc = {n: [0.0, 0.0, 0.0, 0.0] for n in common}  # e2e diff², ref², local diff², local ref²
    pad = original.tokenizer.pad_token_id or 0
    o_body = getattr(original.torch_model, original.torch_model.base_model_prefix)
    q_body = getattr(quantized.torch_model, quantized.torch_model.base_model_prefix)
    state: dict[str, Any] = {}
    stored: dict[str, torch.Tensor] = {}
    raw: dict[str, torch.Tensor] = {}

    def keep_out(name: str) -> Any:
        def hook(mod: Any, args: Any, out: torch.Tensor) -> None:
            stored[name] = out.detach()[state["mask"]].float()

        return hook

    def keep_in(name: str) -> Any:
        def hook(mod: Any, args: Any) -> None:
            raw[name] = args[0].detach()[state["mask"]].float()

        return hook

    def compare(name: str) -> Any:
        orig_mod = orig_lin[name]

        def hook(mod: Any, args: Any, out: torch.Tensor) -> None:
            yq = out.detach()[state["mask"]].float()
            smooth = getattr(mod, SMOOTH_ATTR, None)
            s_out = smooth[1] if smooth is not None else None
            y = stored.pop(name)
            if s_out is not None:  # SmoothQuant divided this layer's outputs by s_out: compare in the original units
                y = y / s_out.to(y.device)
            a = acc[name]
            a[0] += float((yq - y).pow(2).sum())
            a[1] += float(y.pow(2).sum())
            x = raw.pop(name)
            w = reference_weight(orig_mod, mod).to(x.device)
            yl = x @ w.T
            if mod.bias is not None:
                yl = yl + mod.bias.detach().float()
            a[2] += float((yq - yl).pow(2).sum())
            a[3] += float(yl.pow(2).sum())

        return hook

    handles = []
    try:
        for n in common:
            handles.append(orig_lin[n].register_forward_hook(keep_out(n)))
            handles.append(q_lin[n].register_forward_pre_hook(keep_in(n), prepend=True))
            handles.append(q_lin[n].register_forward_hook(compare(n)))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
            for ids, mask in make_batches(seqs, REPORT_BATCH, pad):
                for body, model in ((o_body, original), (q_body, quantized)):
                    state["mask"] = mask.bool().to(model.device)
                    body(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {
        n: (math.sqrt(a[0] / a[1]) if a[1] > 0 else math.nan, math.sqrt(a[2] / a[3]) if a[3] > 0 else math.nan)
        for n, a in acc.items()
    }


def build_report(
    original: HFModel,
    quantized: HFModel,
    records: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    seconds: float | None = None,
    texts: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The per-layer report of ``quantized`` against ``original`` (see the module docstring for the columns).

    Args:
        original: the model before quantization.
        quantized: the quantized model (its Linear layers have the same names).
        records: per-layer values the method measured itself (``weight_rel_err``, ``seconds``, ``bits_per_weight``).
        seconds: total wall time of the quantization.
        texts: held-out text for the output errors (default: :func:`~mlquant.quantize.calibration.report_texts`).
    """
    import pandas as pd

    from mlquant.quantize.calibration import REPORT_IDS, REPORT_LANGUAGES, report_texts

    records = dict(records or {})
    if texts is None:
        texts = report_texts()
        described = (
            f"flores200 devtest ids {REPORT_IDS.start}-{REPORT_IDS.stop - 1} in {'+'.join(REPORT_LANGUAGES)}"
            if texts
            else "none (no FLORES data)"
        )
    else:
        described = f"{len(texts)} given texts"
    errors = _output_errors(original, quantized, texts) if texts else {}
    orig_lin = _linears(original.torch_model)
    spec = quantized.spec
    rows = []
    for name, module in _linears(quantized.torch_model).items():
        rec = records.get(name, {})
        parts = name.split(".")
        block = next((int(p) for p in parts if p.isdigit()), -1)
        if "weight_rel_err" in rec:
            w_err = float(rec["weight_rel_err"])
        elif name in orig_lin:
            ref = reference_weight(orig_lin[name], module)
            w_err = float((effective_weight(module) - ref).norm() / ref.norm().clamp(min=1e-30))
        else:
            w_err = math.nan
        out_err, local_err = errors.get(name, (math.nan, math.nan))
        rows.append(
            {
                "quant": spec.label,
                "layer": name,
                "block": block,
                "module": parts[-1],
                "in_features": int(module.in_features),
                "out_features": int(module.out_features),
                "bits_per_weight": float(rec.get("bits_per_weight", _bits(module, spec))),
                "weight_rel_err": w_err,
                "output_rel_err": out_err,
                "local_output_rel_err": local_err,
                "seconds": float(rec.get("seconds", math.nan)),
            }
        )
    df = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    df.attrs.update(
        {
            "label": spec.label,
            "method": spec.method,
            "total_seconds": float(seconds) if seconds is not None else math.nan,
            "report_text": described,
        }
    )
    return df
