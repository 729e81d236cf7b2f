"""4-bit floating point with block scales, simulated: MXFP4 and NVFP4 (``mxfp4-w4``, ``mxfp4-w4a4``, ``nvfp4-w4``,
``nvfp4-w4a4``).

Both store E2M1 elements (1 sign, 2 exponent, 1 mantissa bit: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}; no inf/NaN), rounded
to nearest with ties to even, saturating at ±6, with one scale per block of consecutive input features:

* **MXFP4** (OCP *Microscaling Formats (MX) Specification* v1.0, 2023, §5 and §6.3): blocks of 32, one shared E8M0
  scale (a power of two ``2^e``, ``e`` in [-127, 127]). The spec's rule: ``e = floor(log2(max_i |V_i|)) - 2``
  (2 = the exponent of E2M1's largest normal, 6 = 1.5 · 2^2); elements above 6 after scaling saturate to ±6.
  Option ``scale_rule: vllm`` instead rounds the block maximum to the nearest power of two first (its mantissa
  rounds up from 1.75, so a block max such as 7·2^k maps to 3.5 → 4 rather than saturating to 6): the rule of
  vLLM's reference MXFP4 code, used by compressed-tensors / llm-compressor (and by the test against them).
  4 + 8/32 = **4.25 bits per weight**.
* **NVFP4** (NVIDIA, *Blackwell* / *Introducing NVFP4*, 2025; TensorRT Model Optimizer and compressed-tensors
  implement it): blocks of 16, an FP8 E4M3 block scale, and an FP32 per-tensor global scale
  ``g = 448 · 6 / max|W|`` so that the block scales ``fp8(g · max_block|W| / 6)`` use E4M3's range;
  ``W_hat = e2m1(W / (s_fp8 / g)) · (s_fp8 / g)``. 4 + 8/16 = **4.5 bits per weight** (+ 32 bits per tensor).

Weights are quantized once (``-w4``); with ``a4`` (``-w4a4``) every decoder Linear's input is also quantized on the
fly, per token, in blocks of its input features (MXFP4: E8M0 scale per block; NVFP4: E4M3 block scales under a
per-token FP32 global scale, so a token's result does not depend on the other tokens of the batch; a deployed NVFP4
kernel uses one per-tensor input global scale calibrated offline). Embeddings and the LM head stay in float.
Packing: two E2M1 codes per byte, the first (even) element in the low nibble (:func:`pack_e2m1`), as
compressed-tensors writes ``weight_packed``.

Example:
    >>> import torch
    >>> from mlquant.quantize.fp4 import round_e2m1
    >>> round_e2m1(torch.tensor([0.25, 0.75, 1.25, 2.5, 5.0, 7.0, -0.3])).tolist()
    [0.0, 1.0, 1.0, 2.0, 4.0, 6.0, -0.5]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import ActQuant, install_act_quant, quantizable_linears
from mlquant.quantize.rotate import ROTATE_DEFAULTS, check_rotate
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = [
    "E2M1_MAX",
    "FP4_ATTR",
    "FP4ActQuant",
    "FP4Params",
    "FP4Quantizer",
    "fp4_bits_per_weight",
    "mxfp4_fake_quant",
    "mxfp4_quantize",
    "nvfp4_fake_quant",
    "nvfp4_quantize",
    "pack_e2m1",
    "round_e2m1",
    "unpack_e2m1",
]

#: Largest E2M1 magnitude.
E2M1_MAX = 6.0
#: E2M1 magnitudes in code order (code = index, sign in bit 3).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
#: Largest E4M3 (float8_e4m3fn) value.
E4M3_MAX = 448.0
#: Elements per block of each format.
BLOCK = {"mxfp4": 32, "nvfp4": 16}
#: Attribute set on a quantized Linear: its :class:`FP4Params`.
FP4_ATTR = "mlquant_fp4"
SCALE_RULES = ("ocp", "vllm")


@dataclass
class FP4Params:
    """How a Linear's weight was quantized: ``W_hat[r, c] = code[r, c] * scale[r, c // block]``.

    Attributes:
        fmt: ``mxfp4`` or ``nvfp4``.
        block: elements per block.
        scale: [rows, blocks] float32 effective block scales (MXFP4: ``2^e``; NVFP4: ``s_fp8 / g``).
        global_scale: NVFP4's ``g`` (float), None for MXFP4.
    """

    fmt: str
    block: int
    scale: Any
    global_scale: float | None = None


# ----- E2M1 ---------------------------------------------------------------------------------------------------------
def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value, ties to even, saturating at ±6 (float32; the sign of zero is kept).

    The grid has step 0.5 below 2, 1 in [2, 4) and 2 in [4, 6], so ``round_half_even(|x| / step) * step``.
    """
    import torch

    a = x.float().abs().clamp(max=E2M1_MAX)
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.copysign(torch.round(a / step) * step, x.float())


def pack_e2m1(q: torch.Tensor) -> torch.Tensor:
    """Pack E2M1 values ``q`` [..., n] (n even, on the grid) into uint8 [..., n/2]: code = magnitude index | sign << 3,
    element ``2i`` in the low nibble, ``2i + 1`` in the high one.

    Raises:
        ConfigError: odd last dimension.

    Example:
        >>> import torch
        >>> pack_e2m1(torch.tensor([[0.5, -6.0]])).tolist(), unpack_e2m1(torch.tensor([[0xF1]], dtype=torch.uint8)).tolist()
        ([[241]], [[0.5, -6.0]])
    """
    import torch

    if q.shape[-1] % 2:
        raise ConfigError(f"fp4: cannot pack {q.shape[-1]} E2M1 values per row into bytes (needs an even count).")
    mag = (q.float().abs() * 2).round().to(torch.int64)  # 0, 1, 2, 3, 4, 6, 8, 12
    lookup = torch.tensor([0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7], dtype=torch.uint8, device=q.device)
    codes = lookup[mag.clamp(max=12)] | (torch.signbit(q).to(torch.uint8) << 3)
    pairs = codes.reshape(*q.shape[:-1], q.shape[-1] // 2, 2)
    out: torch.Tensor = pairs[..., 0] | (pairs[..., 1] << 4)
    return out


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_e2m1`: uint8 [..., m] -> float32 E2M1 values [..., 2m]."""
    import torch

    values = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=packed.device)
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2).to(torch.int64)
    mag = values[codes & 7]
    return torch.where((codes & 8) > 0, -mag, mag)


# ----- MXFP4 --------------------------------------------------------------------------------------------------------
def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    n = x.shape[-1]
    if n % block:
        raise ConfigError(f"fp4: the block size {block} does not divide the last dimension ({n}).")
    return x.float().reshape(*x.shape[:-1], n // block, block)


def _dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q`` [..., n] times its block scale ``scale`` [..., n / block], flattened back to [..., n]."""
    blocks = scale.shape[-1]
    out = q.reshape(*q.shape[:-1], blocks, q.shape[-1] // blocks) * scale[..., None]
    return out.reshape(q.shape)


def mx_exponent(amax: torch.Tensor, rule: str = "ocp") -> torch.Tensor:
    """The E8M0 scale exponents ``e`` (int32, clamped to [-127, 127]) for block maxima ``amax``.

    ``ocp``: ``floor(log2(amax)) - 2``; ``vllm``: the same after rounding ``amax`` to a power of two (mantissa
    ≥ 1.75 rounds up). An all-zero block gets ``-127``.
    """
    import torch

    mant, exp = torch.frexp(amax.float())  # amax = mant * 2^exp, mant in [0.5, 1)
    floor_log2 = exp - 1
    if rule == "vllm":
        floor_log2 = floor_log2 + (mant >= 0.875).to(floor_log2.dtype)
    elif rule != "ocp":
        raise ConfigError(f"mxfp4: option scale_rule={rule!r} is not one of {list(SCALE_RULES)}.")
    e = torch.where(amax > 0, floor_log2 - 2, torch.full_like(floor_log2, -127))
    return e.clamp(-127, 127).to(torch.int32)


def mxfp4_quantize(x: torch.Tensor, rule: str = "ocp", block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(E2M1 values [..., n], E8M0 biased exponents uint8 [..., n/block]) of ``x`` in blocks along its last dim."""
    import torch

    xb = _blocks(x, block)
    e = mx_exponent(xb.abs().amax(dim=-1), rule)
    scale = torch.ldexp(torch.ones_like(e, dtype=torch.float32), e)
    q = round_e2m1(xb / scale[..., None])
    return q.flatten(-2), (e + 127).to(torch.uint8)


def mxfp4_fake_quant(x: torch.Tensor, rule: str = "ocp", block: int = 32) -> torch.Tensor:
    """MXFP4 quantize-dequantize of ``x`` along its last dim, in ``x.dtype``.

    Example:
        >>> import torch
        >>> mxfp4_fake_quant(torch.tensor([[7.0, 1.0] + [0.0] * 30]))[0, :2].tolist()
        [6.0, 1.0]
        >>> mxfp4_fake_quant(torch.tensor([[7.0, 1.0] + [0.0] * 30]), rule="vllm")[0, :2].tolist()
        [8.0, 1.0]
    """
    import torch

    q, e = mxfp4_quantize(x, rule, block)
    scale = torch.ldexp(torch.ones(e.shape, device=x.device), e.to(torch.int32) - 127)
    return _dequant(q, scale).to(x.dtype)


# ----- NVFP4 --------------------------------------------------------------------------------------------------------
def nvfp4_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """``448 · 6 / amax`` (float32; 1 where that is not finite, e.g. an all-zero tensor)."""
    import torch

    g = E4M3_MAX * E2M1_MAX / amax.float().clamp(min=torch.finfo(torch.float32).tiny)
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0)


def nvfp4_quantize(
    x: torch.Tensor, global_scale: torch.Tensor | None = None, block: int = 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E2M1 values [..., n], E4M3 block scales as float32 [..., n/block], global scale) of ``x`` along its last dim.

    ``global_scale`` defaults to the per-tensor one (:func:`nvfp4_global_scale` of ``max|x|``, shape [1]); one per
    row has shape ``x.shape[:-1] + (1,)``.
    """
    import torch

    xb = _blocks(x, block)
    g = nvfp4_global_scale(x.abs().amax()).reshape(1) if global_scale is None else global_scale.float()
    s = (g * (xb.abs().amax(dim=-1) / E2M1_MAX)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
    s = torch.where(s == 0, torch.full_like(s, 0.125), s)  # an all-zero block: any scale; compressed-tensors' choice
    eff = s / g
    q = round_e2m1(xb / eff[..., None])
    return q.flatten(-2), s, g


def nvfp4_fake_quant(x: torch.Tensor, per_token: bool = False, block: int = 16) -> torch.Tensor:
    """NVFP4 quantize-dequantize along the last dim, in ``x.dtype``; ``per_token``: one global scale per row of
    ``x``'s last dim (activations), else one for the whole tensor (weights).

    Example:
        >>> import torch
        >>> x = torch.linspace(-1, 1, 32).reshape(2, 16)
        >>> err = float((nvfp4_fake_quant(x) - x).abs().max())  # at most half the top step, (6 - 4) / 2 * (1 / 6)
        >>> 0 < err <= 1 / 6 + 1e-6
        True
    """
    g = nvfp4_global_scale(x.abs().amax(dim=-1, keepdim=True)) if per_token else None
    q, s, g = nvfp4_quantize(x, g, block)
    return _dequant(q, s / g).to(x.dtype)


def fp4_bits_per_weight(fmt: str, rows: int, cols: int) -> float:
    """Storage bits per weight: 4-bit codes + an 8-bit scale per block (+ NVFP4's 32-bit global scale per tensor)."""
    bits = 4 + 8 / BLOCK[fmt]
    return bits + (32 / (rows * cols) if fmt == "nvfp4" else 0.0)


# ----- activation hook and quantizer ------------------------------------------------------------------------------
class FP4ActQuant(ActQuant):
    """Forward pre-hook: MXFP4 / NVFP4 quantize-dequantize of a Linear's input, per token, in blocks of features."""

    kinds: tuple[str, ...] = ("mxfp4", "nvfp4")

    def __init__(self, kind: str, rule: str = "ocp") -> None:
        super().__init__(kind)
        self.rule = rule

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mxfp4":
            return mxfp4_fake_quant(x, self.rule, BLOCK["mxfp4"])
        return nvfp4_fake_quant(x, per_token=True, block=BLOCK["nvfp4"])


class FP4Quantizer:
    """``mxfp4-w4``, ``mxfp4-w4a4``, ``nvfp4-w4``, ``nvfp4-w4a4`` (options ``rotate``, ``rotate_seed``; MXFP4 also
    ``scale_rule``: ``ocp`` (default) or ``vllm``)."""

    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    def __init__(self, fmt: str) -> None:
        self.name = fmt
        self.block = BLOCK[fmt]
        extra = {"scale_rule": "ocp"} if fmt == "mxfp4" else {}
        self.option_defaults: dict[str, Any] = {**extra, **ROTATE_DEFAULTS}

    def validate(self, spec: QuantSpec) -> None:
        fmt = self.name
        if spec.w_bits != 4:
            raise ConfigError(f"{fmt}: w_bits={spec.w_bits!r} is not one of [4]; E2M1 elements have 4 bits ({fmt}-w4).")
        if spec.a_bits not in (None, 4):
            raise ConfigError(f"{fmt}: a_bits={spec.a_bits!r} is not one of [None, 4] ({fmt}-w4 or {fmt}-w4a4).")
        if spec.group_size is not None:
            raise ConfigError(
                f"{fmt}: group_size={spec.group_size!r} is not one of [None]: the {fmt.upper()} block size is fixed at "
                f"{self.block} elements; leave it out ({fmt}-w4)."
            )
        if not spec.symmetric:
            raise ConfigError(f"{fmt}: symmetric=False is not one of [True]; a floating-point format has no zero point.")
        if spec.calibration is not None:
            raise ConfigError(f"{fmt}: calibration={spec.calibration!r} is not used (scales are per block); remove it.")
        if spec.backend != "simulate":
            raise ConfigError(f"{fmt}: backend={spec.backend!r} is not one of ['simulate'].")
        check_rotate(spec, self.option_defaults, {"scale_rule": SCALE_RULES})

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        import torch

        fmt = self.name
        rule = str(spec.options.get("scale_rule", "ocp"))
        records: dict[str, dict[str, Any]] = {}
        for name, lin in quantizable_linears(torch_model):
            if lin.in_features % self.block:
                raise ConfigError(
                    f"{fmt}: the block size {self.block} does not divide in_features={lin.in_features} of {name}."
                )
            start = time.perf_counter()
            w = lin.weight.detach().float()
            if fmt == "mxfp4":
                q, e = mxfp4_quantize(w, rule, self.block)
                scale = torch.ldexp(torch.ones(e.shape, device=w.device), e.to(torch.int32) - 127)
                params = FP4Params(fmt, self.block, scale)
            else:
                q, s, g = nvfp4_quantize(w, None, self.block)
                scale = s / g
                params = FP4Params(fmt, self.block, scale, float(g))
            wq = _dequant(q, scale)
            err = float((w - wq).norm() / w.norm().clamp(min=1e-30))
            with torch.no_grad():
                lin.weight.copy_(wq.to(lin.weight.dtype))
            setattr(lin, FP4_ATTR, params)
            if spec.a_bits == 4:
                install_act_quant(lin, fmt, FP4ActQuant(fmt, rule))
            records[name] = {
                "weight_rel_err": err,
                "seconds": time.perf_counter() - start,
                "bits_per_weight": fp4_bits_per_weight(fmt, lin.out_features, lin.in_features),
            }
        attrs = {"format": fmt, "block": self.block, **({"scale_rule": rule} if fmt == "mxfp4" else {})}
        return Transformed(torch_model, records, attrs)


register_quantizer(FP4Quantizer("mxfp4"))
register_quantizer(FP4Quantizer("nvfp4"))
