"""HQQ weight quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine Learning Models"),
simulated in pure torch: calibration-free, the control that separates rounding error from calibration bias.

Each group of ``group_size`` consecutive input features of a row (hqq's ``axis=1``) starts from the min-max
asymmetric grid in hqq's inverse-scale form, ``q = clamp(round(w·s + z), 0, 2^b - 1)`` with ``s = (2^b - 1) /
(max - min)`` (1 where ``max - min <= 1e-4``, at most 2e4) and ``z = -min·s`` (rounded when ``round_zero``). The
zero point is then optimised by hqq's half-quadratic proximal solver for ``min_z ||w - (q - z)/s||_p^p`` with
``p = lp_norm < 1``: each iteration dequantizes ``w_r = (q - z)/s``, shrinks the error with the generalised
soft-threshold ``e = sign(d)·relu(|d| - |d|^(p-1)/β)`` of ``d = w - w_r``, and sets ``z = mean(q - (w - e)·s)``
over the group; ``β`` is multiplied by ``kappa`` after each iteration (1.0, i.e. fixed ``β``, in hqq's default
solver ``optimize_weights_proximal_legacy``). Iterations stop after ``iters`` or as soon as the mean absolute error
over the whole weight stops decreasing, keeping the zero of that last update, exactly as hqq 0.2.8 does; the
weight is dequantized as ``(q - z)·(1/s)``. The scale is not optimised (hqq's optional scale grid search is not
defined for ``axis=1``).

The result equals hqq's ``Quantizer.quantize(W, nbits, group_size=g, axis=1, optimize=True, round_zero=...,
device="cpu")`` followed by ``Quantizer.dequantize`` in float32 (tests/test_quantize_awq_hqq.py). Options and their
defaults (those of hqq's ``BaseQuantizeConfig`` and solver): ``optimize`` (True), ``round_zero`` (True: hqq's
config sets it for 4-bit weights, False for other widths), ``lp_norm`` (0.7), ``beta`` (10.0), ``kappa`` (1.0),
``iters`` (20). Scales and zero points are stored in 16 bits each: ``bits + 32 / group_size`` bits per weight.

Example:
    >>> import torch
    >>> from mlquant.quantize.hqq import hqq_fake_quantize
    >>> w = torch.randn(8, 128)
    >>> hqq_fake_quantize(w, bits=4, group_size=64).shape
    torch.Size([8, 128])
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import check_options, check_range, option, quantizable_linears
from mlquant.quantize.awq import asym_alias, check_fields, check_groups_divide
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = ["HQQ_DEFAULTS", "HQQQuantizer", "hqq_fake_quantize", "hqq_params", "lp_error"]

HQQ_DEFAULTS: dict[str, Any] = {
    "optimize": True,
    "round_zero": True,
    "lp_norm": 0.7,
    "beta": 10.0,
    "kappa": 1.0,
    "iters": 20,
}
#: Labels registered as aliases (same fields as the general rule gives; kept for their fingerprints, see
#: :class:`HQQQuantizer`).
HQQ_LABELS = ("hqq-w4g64", "hqq-w3g64", "hqq-w2g64", "hqq-w4g128", "hqq-w8g64", "hqq-w4")


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-thresholding, the proximal operator of ``|x|^p / beta`` (as hqq's ``shrink_lp_op``)."""
    out = x.abs()
    if p == 1:
        out.sub_(1.0 / beta)
    else:
        out.sub_((1.0 / beta) * out.pow(p - 1))
    out.clamp_min_(0.0)
    return out.mul_(x.sign())


def hqq_params(
    w: torch.Tensor, bits: int, group_size: int | None, opts: dict[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HQQ's integer codes, inverse scale and zero point for ``w`` [rows, cols] (float32 math).

    Returns:
        (``q`` [rows·groups, g], ``inv_scale`` [rows·groups, 1], ``zero`` [rows·groups, 1]); the dequantized
        weight is ``((q - zero) * (1 / inv_scale)).reshape(rows, cols)``.

    Raises:
        ConfigError: ``group_size`` does not divide the columns.
    """
    import torch

    o = {**HQQ_DEFAULTS, **(opts or {})}
    cols = w.shape[1]
    g = group_size or cols
    if cols % g:
        raise ConfigError(f"hqq: group_size={group_size} does not divide the {cols} input features of a layer.")
    wf = w.detach().float().reshape(-1, g)
    lo = wf.min(dim=1, keepdim=True)[0]
    hi = wf.max(dim=1, keepdim=True)[0]
    qmax = float(round(2**bits - 1))
    denom = hi - lo
    scale = qmax / denom
    scale = torch.where(denom.abs() <= 1e-4, torch.full_like(scale, 1.0), scale).clamp(max=2e4)
    zero = -lo * scale
    if o["round_zero"]:
        zero = torch.round(zero)
    if o["optimize"]:
        beta, best = float(o["beta"]), float("inf")
        for _ in range(int(o["iters"])):
            q = torch.round(wf * scale + zero).clamp_(0, qmax)
            w_r = (q - zero) / scale
            e = _shrink(wf - w_r, beta, float(o["lp_norm"]))
            zero = torch.mean(q - (wf - e) * scale, dim=1, keepdim=True)
            beta *= float(o["kappa"])
            err = float(torch.abs(wf - w_r).mean())
            if err < best:
                best = err
            else:
                break
    q = torch.round(wf * scale + zero).clamp_(0, qmax)
    return q, scale, zero


def hqq_fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, opts: dict[str, Any] | None = None) -> torch.Tensor:
    """HQQ quantize-dequantize of ``w`` [rows, cols] (see :func:`hqq_params`), returned in ``w.dtype``."""
    q, inv_scale, zero = hqq_params(w, bits, group_size, opts)
    return ((q - zero) * (1.0 / inv_scale)).reshape(w.shape).to(w.dtype)


def lp_error(w: torch.Tensor, w_hat: torch.Tensor, p: float = 0.7) -> float:
    """``sum |w - w_hat|^p``, the objective HQQ's solver descends (p < 1 favours many exact weights).

    Example:
        >>> import torch
        >>> lp_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), p=0.5)
        1.0
    """
    return float((w.detach().float() - w_hat.detach().float()).abs().pow(p).sum())


class HQQQuantizer:
    """HQQ (``hqq-w4g64``, ``hqq-w3g64``, ``hqq-w4g64-lp_norm0.5``): calibration-free, asymmetric only.

    Every ``hqq-w<bits>[g<group>]`` label parses on the asymmetric grid (``default_symmetric`` False); the labels of
    :data:`HQQ_LABELS` are also aliases, kept for the fingerprints of the runs made with them (as AWQ's, see
    :class:`~mlquant.quantize.awq.AWQQuantizer`).
    """

    name: ClassVar[str] = "hqq"
    option_defaults: ClassVar[dict[str, Any]] = dict(HQQ_DEFAULTS)
    default_symmetric: ClassVar[bool] = False
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        from mlquant.quantize.rtn import check_bits, check_group_size

        check_bits(spec, 1, 8)
        check_group_size(spec)
        check_options(spec, self.option_defaults)
        lp = spec.options.get("lp_norm", HQQ_DEFAULTS["lp_norm"])
        if not 0 < lp <= 1:
            raise ConfigError(f"hqq: option lp_norm={lp!r} is outside (0, 1] (the half-quadratic solver needs p <= 1).")
        beta = spec.options.get("beta", HQQ_DEFAULTS["beta"])
        if not beta > 0:
            raise ConfigError(f"hqq: option beta={beta!r} must be > 0.")
        check_range(spec, "kappa", 1.0, 1e3)
        check_range(spec, "iters", 1, 100_000)
        if spec.calibration is not None:
            raise ConfigError(f"hqq: calibration={spec.calibration!r}; HQQ is calibration-free, remove it.")
        check_fields(spec, "hqq")

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        import torch

        opts = {k: option(spec, self.option_defaults, k) for k in self.option_defaults}
        bits, group = int(spec.w_bits or 4), spec.group_size
        linears = list(quantizable_linears(torch_model))
        check_groups_divide(linears, group, "hqq")
        records: dict[str, dict[str, Any]] = {}
        for name, linear in linears:
            start = time.perf_counter()
            w = linear.weight.detach().float().clone()  # float() of a float32 weight is the weight itself
            wq = hqq_fake_quantize(w, bits, group, opts)
            with torch.no_grad():
                linear.weight.copy_(wq.to(linear.weight.dtype))
            records[name] = {
                "weight_rel_err": float((w - wq).norm() / w.norm().clamp(min=1e-30)),
                "lp_error": lp_error(w, wq, float(opts["lp_norm"])),
                "bits_per_weight": bits + 32 / (group or linear.in_features),
                "seconds": time.perf_counter() - start,
            }
        return Transformed(torch_model, records, {"hqq": {"options": opts, "layers": records}})


register_quantizer(HQQQuantizer(), aliases={label: asym_alias(label) for label in HQQ_LABELS})
