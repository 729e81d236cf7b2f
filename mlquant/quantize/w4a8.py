"""W4A8, simulated: int4 group-wise weights with 8-bit per-token dynamic activations (``w4a8-w4g128a8``).

The W4A8 of QServe (Lin et al. 2024, arXiv 2405.04532) and of vLLM's mixed-input kernels (Machete / CUTLASS
W4A8): weights on a symmetric int4 grid ``[-7, 7]`` with one 16-bit scale per group of ``group_size`` input features
(``rtn-w4g128``'s grid; 4 + 16/128 = 4.125 bits per weight), activations quantized on the fly per token, as
``w8a8`` / ``fp8-w8a8`` do (forward pre-hooks of :mod:`mlquant.quantize._common`).

Options:

* ``weights``: ``rtn`` (default; no calibration) or ``gptq`` (GPTQ with the options of :mod:`mlquant.quantize.gptq`,
  ``damp``, ``act_order``, ..., and calibration text; activation quantizers are installed on each Linear once its
  weights are solved, so later blocks are calibrated on the quantized activations, as in ``w8a8-int-gptq``);
* ``act``: ``int8`` (default: ``clamp(round(x / s), -127, 127) * s``, ``s = max|x_t| / 127``) or ``fp8``
  (E4M3, ``s = max|x_t| / 448``);
* ``rotate`` / ``rotate_seed``: the Hadamard rotation of :mod:`mlquant.quantize.rotate` (before both quantizers).

Example:
    >>> from mlquant.quantize import QuantSpec
    >>> spec = QuantSpec.parse("w4a8-w4g128a8", act="fp8")
    >>> spec.label
    'w4a8-w4g128a8-actfp8'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import install_act_quant, option, pad_id, quantizable_linears, rtn_linear
from mlquant.quantize.rotate import ROTATE_DEFAULTS, check_rotate
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    from mlquant.models import HFModel

__all__ = ["W4A8Quantizer"]

W4A8_CHOICES: dict[str, tuple[str, ...]] = {"weights": ("rtn", "gptq"), "act": ("int8", "fp8")}


class W4A8Quantizer:
    """``w4a8-w4g128a8`` (options ``weights: rtn|gptq``, ``act: int8|fp8``, ``rotate``, and GPTQ's)."""

    name: ClassVar[str] = "w4a8"
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    @property
    def option_defaults(self) -> dict[str, Any]:
        from mlquant.quantize.gptq import GPTQ_DEFAULTS

        return {"weights": "rtn", "act": "int8", **ROTATE_DEFAULTS, **GPTQ_DEFAULTS}

    def validate(self, spec: QuantSpec) -> None:
        from mlquant.quantize.gptq import GPTQ_DEFAULTS, validate_gptq_like

        if spec.w_bits != 4:
            raise ConfigError(f"w4a8: w_bits={spec.w_bits!r} is not one of [4] (w4a8-w4g128a8).")
        if spec.a_bits != 8:
            raise ConfigError(f"w4a8: a_bits={spec.a_bits!r} is not one of [8] (w4a8-w4g128a8).")
        if not spec.symmetric:
            raise ConfigError("w4a8: symmetric=False is not one of [True]; W4A8 kernels take symmetric int4 weights.")
        defaults = self.option_defaults
        check_rotate(spec, defaults, W4A8_CHOICES)
        if option(spec, defaults, "weights") == "gptq":
            validate_gptq_like(spec, defaults, bits=(4, 4))
            return
        from mlquant.quantize.rtn import check_group_size

        check_group_size(spec)
        gptq_only = sorted(k for k in spec.options if k in GPTQ_DEFAULTS)
        if gptq_only:
            raise ConfigError(f"w4a8: option {gptq_only[0]!r} applies only with weights='gptq' (weights='rtn' given).")
        if spec.calibration is not None:
            raise ConfigError(f"w4a8: calibration={spec.calibration!r} is used only with weights='gptq'; remove it.")
        if spec.backend != "simulate":
            raise ConfigError(f"w4a8: backend={spec.backend!r} is not one of ['simulate'].")

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        defaults = self.option_defaults
        act = str(option(spec, defaults, "act"))
        if option(spec, defaults, "weights") == "gptq":
            from mlquant.quantize.calibration import calibration_texts, encode_texts
            from mlquant.quantize.gptq import run_gptq

            texts = calibration_texts(spec.calibration, int(option(spec, defaults, "seed")))
            seqs = encode_texts(model.tokenizer, texts, int(option(spec, defaults, "max_tokens")))
            records = run_gptq(
                torch_model, seqs, pad_id(model.tokenizer), spec, after_linear=lambda m: install_act_quant(m, act)
            )
            return Transformed(torch_model, records, {"weights": "gptq", "act": act})
        records = {}
        for name, lin in quantizable_linears(torch_model):
            if spec.group_size and lin.in_features % spec.group_size:
                raise ConfigError(
                    f"w4a8: group_size={spec.group_size} does not divide in_features={lin.in_features} of {name}."
                )
            records[name] = rtn_linear(lin, 4, spec.group_size, True)
            install_act_quant(lin, act)
        return Transformed(torch_model, records, {"weights": "rtn", "act": act})


register_quantizer(W4A8Quantizer())
