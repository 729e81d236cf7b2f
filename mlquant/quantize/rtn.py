"""Round-to-nearest (RTN) weight quantization, simulated: weights are quantized then dequantized.

The Cohere study's W8 and W4 (per output channel) and the group-wise variant (``rtn-w4g128``) without
GPTQ's error compensation. Symmetric grids map ``[-max|w|, max|w|]`` onto ``[-(2^(b-1)-1), 2^(b-1)-1]``;
asymmetric grids map ``[min w, max w]`` onto ``[0, 2^b - 1]`` with a zero point. Every ``nn.Linear`` inside the
decoder layers is quantized; embeddings and the LM head stay in float, as in the reference studies.

Example:
    >>> import torch
    >>> from mlquant.quantize.rtn import fake_quantize
    >>> w = torch.tensor([[0.1, -0.4, 0.25, 0.4]])
    >>> fake_quantize(w, bits=2, group_size=None, symmetric=True).tolist()
    [[0.0, -0.4000000059604645, 0.4000000059604645, 0.4000000059604645]]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import quantizable_linears
from mlquant.quantize.rotate import ROTATE_DEFAULTS, check_rotate
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = ["RTNQuantizer", "check_bits", "check_group_size", "fake_quantize", "quant_params", "quantizable_linears"]


def check_bits(spec: QuantSpec, low: int = 2, high: int = 8) -> None:
    """ConfigError unless ``spec.w_bits`` is an integer in [low, high]."""
    if not isinstance(spec.w_bits, int) or isinstance(spec.w_bits, bool) or not low <= spec.w_bits <= high:
        raise ConfigError(f"{spec.method}: w_bits={spec.w_bits!r} is invalid; expected an integer {low}-{high}.")


def check_group_size(spec: QuantSpec) -> None:
    """ConfigError unless ``spec.group_size`` is None or a positive integer."""
    g = spec.group_size
    if g is not None and (not isinstance(g, int) or isinstance(g, bool) or g < 1):
        raise ConfigError(f"{spec.method}: group_size={g!r} is invalid; expected a positive integer or None.")


def quant_params(
    w: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale and zero point per row of ``w`` (shape [rows, cols]) for a ``bits``-bit grid.

    Returns:
        (scale [rows, 1], zero [rows, 1], qmin, qmax); ``q = clamp(round(w / scale) + zero, qmin, qmax)``.
    """
    import torch

    w = w.float()
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
        scale = w.abs().amax(dim=1, keepdim=True) / qmax
        zero = torch.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        lo = w.amin(dim=1, keepdim=True).clamp(max=0)
        hi = w.amax(dim=1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale.clamp(min=1e-12))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero, qmin, qmax


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> torch.Tensor:
    """Quantize then dequantize ``w`` [out, in] per output channel, or per group of ``group_size`` input features.

    Raises:
        ConfigError: ``group_size`` does not divide the input features.
    """
    import torch

    rows, cols = w.shape
    if group_size is not None and cols % group_size:
        raise ConfigError(f"group_size={group_size} does not divide the {cols} input features of a layer.")
    g = group_size or cols
    flat = w.float().reshape(rows * (cols // g), g)
    scale, zero, qmin, qmax = quant_params(flat, bits, symmetric)
    q = torch.clamp(torch.round(flat / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).reshape(rows, cols).to(w.dtype)


class RTNQuantizer:
    """Round-to-nearest weight quantization (``rtn-w8``, ``rtn-w4``, ``rtn-w4g128``, ``rtn-w4g128-asym``).

    Option ``rotate: hadamard`` (``rtn-w4g128-rotatehadamard``) quantizes ``W Q`` with the input rotated online
    (see :mod:`mlquant.quantize.rotate`); ``rotate_seed`` picks the random signs.
    """

    name: ClassVar[str] = "rtn"
    option_defaults: ClassVar[dict[str, Any]] = dict(ROTATE_DEFAULTS)
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        check_bits(spec)
        check_group_size(spec)
        if spec.a_bits is not None:
            raise ConfigError(f"rtn: a_bits={spec.a_bits!r}; RTN quantizes weights only (use w8a8 for activations).")
        if spec.calibration is not None:
            raise ConfigError("rtn: calibration is not used by round-to-nearest; remove it.")
        if spec.backend != "simulate":
            raise ConfigError(f"rtn: backend {spec.backend!r} is not available; only 'simulate'.")
        check_rotate(spec, self.option_defaults)

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        import torch

        with torch.no_grad():
            for name, linear in quantizable_linears(torch_model):
                if spec.group_size and linear.in_features % spec.group_size:
                    raise ConfigError(
                        f"rtn: group_size={spec.group_size} does not divide in_features={linear.in_features} of {name}."
                    )
                linear.weight.copy_(fake_quantize(linear.weight, spec.w_bits or 8, spec.group_size, spec.symmetric))
        return Transformed(torch_model)


register_quantizer(RTNQuantizer())
