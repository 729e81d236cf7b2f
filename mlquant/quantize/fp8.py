"""FP8 W8A8 (E4M3), simulated with torch's ``float8_e4m3fn`` dtype for the rounding: ``fp8-w8a8`` (and ``fp8-w8``).

The format of Micikevicius et al. 2022, *FP8 Formats for Deep Learning* (arXiv 2209.05433), as served by vLLM and
evaluated by Kurtic et al. 2024 (arXiv 2411.02355):

* weights: one scale per output channel, ``s_r = max_c |W_rc| / 448``, ``W_hat = e4m3(W / s_r) * s_r``;
* activations (``fp8-w8a8`` only): one scale per token, computed on the fly by a forward pre-hook,
  ``s_t = max_j |x_tj| / 448``, ``x_hat = e4m3(x / s_t) * s_t``.

``e4m3(.)`` is a cast to ``torch.float8_e4m3fn`` (round to nearest even, values clamped to ±448 first) and back to
float32. Embeddings and the LM head stay in float. No calibration is needed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import (
    FP8_E4M3_MAX,
    QPARAMS_ATTR,
    QParams,
    bits_per_weight,
    check_options,
    fp8_fake_quant,
    install_act_quant,
    quantizable_linears,
)
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    from mlquant.models import HFModel

__all__ = ["FP8Quantizer"]


class FP8Quantizer:
    """``fp8-w8a8``: E4M3 weights per output channel, E4M3 activations per token (dynamic)."""

    name: ClassVar[str] = "fp8"
    option_defaults: ClassVar[dict[str, Any]] = {}
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        if spec.w_bits != 8:
            raise ConfigError(f"fp8: w_bits={spec.w_bits!r}; FP8 (E4M3) has 8 bits (use fp8-w8a8).")
        if spec.a_bits not in (None, 8):
            raise ConfigError(f"fp8: a_bits={spec.a_bits!r}; FP8 activations have 8 bits (use fp8-w8a8).")
        if spec.group_size is not None:
            raise ConfigError(f"fp8: group_size={spec.group_size!r}; FP8 weights have one scale per output channel.")
        if not spec.symmetric:
            raise ConfigError("fp8: symmetric=False is meaningless for a floating-point format.")
        if spec.calibration is not None:
            raise ConfigError("fp8: calibration is not used (scales are per channel and per token); remove it.")
        if spec.backend != "simulate":
            raise ConfigError(f"fp8: backend {spec.backend!r} is not available; only 'simulate'.")
        check_options(spec, self.option_defaults)

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        import torch

        records: dict[str, dict[str, Any]] = {}
        for name, lin in quantizable_linears(torch_model):
            t0 = time.perf_counter()
            w = lin.weight.detach().float().clone()
            wq = fp8_fake_quant(w, dim=1)
            with torch.no_grad():
                lin.weight.copy_(wq.to(lin.weight.dtype))
            scale = w.abs().amax(dim=1, keepdim=True) / FP8_E4M3_MAX
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            setattr(lin, QPARAMS_ATTR, QParams("fp8", 8, None, True, scale, torch.zeros_like(scale)))
            if spec.a_bits == 8:
                install_act_quant(lin, "fp8")
            records[name] = {
                "weight_rel_err": float((w - wq).norm() / w.norm().clamp(min=1e-30)),
                "seconds": time.perf_counter() - t0,
                "bits_per_weight": bits_per_weight("fp8", 8, None, lin.in_features),
            }
        return Transformed(torch_model, records)


register_quantizer(FP8Quantizer())
