"""The scale searches of llama.cpp's k-quants (ggml-quants.c), vectorized over blocks (private to kquant).

Every function takes a batch of blocks ``x`` [B, n] (float32) and works on all B at once; loops run only over the
positions inside a block and over the search steps, never over blocks. Floating-point operations are done in the
order the C reference does them (sums accumulate element by element, ``a*b*c`` is ``(a*b)*c``), which is what makes
the results bit-exact: a pairwise ``torch.sum`` rounds differently and flips rare choices.

Rounding: ggml's ``nearest_int`` adds 1.5 * 2^23 and reads the mantissa, i.e. round half to even, which is
``torch.round``; C's ``roundf`` (used by Q8_0) rounds half away from zero (:func:`roundf`).

This module imports torch at module level; import it lazily.

Example:
    >>> import torch
    >>> roundf(torch.tensor([0.5, 1.5, -2.5])).tolist(), nearest_int(torch.tensor([0.5, 1.5, -2.5])).tolist()
    ([1.0, 2.0, -3.0], [0.0, 2.0, -2.0])
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "GROUP_MAX_EPS",
    "abs_max_signed",
    "c_float",
    "make_q3_quants",
    "make_qkx_quants",
    "make_qp_quants",
    "make_qx_quants",
    "nearest_int",
    "roundf",
    "seq_sum",
]

#: ggml's threshold under which a group counts as all zero.
GROUP_MAX_EPS = 1e-15
_F = torch.float32


def c_float(value: float) -> torch.Tensor:
    """A float32 scalar tensor (so that constants take part in float32 arithmetic, as C's ``float``)."""
    return torch.tensor(np.float32(value), dtype=_F)


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's ``nearest_int`` (round half to even), as float."""
    return torch.round(v)


#: The float32 just under 0.5 (0.5 - 2**-25).
_UNDER_HALF = float(np.nextafter(np.float32(0.5), np.float32(0)))


def roundf(v: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """C's ``roundf`` (round half away from zero): ``trunc(v + copysign(0.49999997, v))``.

    Exact for every float32: ``v + 0.5`` would round 0.49999997 up to 1, but with the float just under 0.5 a sum
    rounds across an integer only where ``v``'s fraction is at least 0.5 (checked against the textbook
    ``trunc(v) + (|v - trunc(v)| >= 0.5) * sign(v)`` on every float32 in [-128, 128]).

    Args:
        v: float32 values.
        dtype: an integer dtype to return, the cast doing the truncation (the caller guarantees the values fit);
            None: float, truncated by ``torch.trunc``.
    """
    t = v + torch.copysign(torch.tensor(_UNDER_HALF, dtype=_F), v)
    return torch.trunc(t) if dtype is None else t.to(dtype)


def seq_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension, left to right, in float32 (the C loop ``s += t[i]``)."""
    cols = t.movedim(-1, 0).contiguous()
    acc = cols[0].clone()
    for i in range(1, cols.shape[0]):
        acc = acc + cols[i]
    return acc


def abs_max_signed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the value with the largest |x| per row, first one on ties; that |x|)."""
    idx = x.abs().argmax(dim=1, keepdim=True)
    mx = x.gather(1, idx)[:, 0]
    return mx, mx.abs()


def _const(a: float, b: float, c: float) -> float:
    """``a*b + c`` evaluated in float32, as the C expression ``a*is + nmax``."""
    return float(np.float32(np.float32(np.float32(a) * np.float32(b)) + np.float32(c)))


def make_qx_quants(x: torch.Tensor, nmax: int, qw: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric levels ``l`` in [-nmax, nmax-1] and a scale minimising sum w (x - s l)^2 (``rmse_type`` 1).

    Weights are ``qw`` or ``x^2``. Returns (scale [B], L [B, n] = l + nmax; all zero for an all-zero block).
    """
    mx, amax = abs_max_signed(x)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    w = qw if qw is not None else x * x
    lo, hi = float(-nmax), float(nmax - 1)

    def sums(iscale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lev = nearest_int(iscale[:, None] * x).clamp(lo, hi)
        return lev, seq_sum(w * x * lev), seq_sum(w * lev * lev)

    lev, sumlx, suml2 = sums(c_float(-nmax) / mx)
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        lev2, slx, sl2 = sums(-c_float(_const(0.1, step, nmax)) / mx)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        lev = torch.where(better[:, None], lev2, lev)
        scale = torch.where(better, slx / sl2, scale)
        best = torch.where(better, scale * slx, best)
    L = torch.where(zero[:, None], torch.zeros_like(lev), lev + nmax)
    return torch.where(zero, torch.zeros_like(scale), scale), L


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q3_K's reference search (``do_rmse``): levels in [-nmax, nmax-1] refined one at a time, weights ``x^2``.

    Returns (scale [B], L [B, n] = l + nmax; zero for an all-zero block).
    """
    mx, amax = abs_max_signed(x)
    zero = amax < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    lo, hi = float(-nmax), float(nmax - 1)
    lev = nearest_int((c_float(-nmax) / mx)[:, None] * x).clamp(lo, hi)
    w = x * x
    sumlx, suml2 = seq_sum(w * x * lev), seq_sum(w * lev * lev)
    n = x.shape[1]
    for _ in range(5):  # a block that changed nothing in a round would change nothing in the next one either
        for i in range(n):
            wi, xi, li = w[:, i], x[:, i], lev[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            pos = slx > 0
            new_l = nearest_int(xi * sl2 / torch.where(pos, slx, torch.ones_like(slx))).clamp(lo, hi)
            slx2 = slx + wi * xi * new_l
            sl22 = sl2 + wi * new_l * new_l
            ok = pos & (new_l != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            lev[:, i] = torch.where(ok, new_l, li)
            sumlx = torch.where(ok, slx2, sumlx)
            suml2 = torch.where(ok, sl22, suml2)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    L = torch.where(zero[:, None], torch.zeros_like(lev), lev + nmax)
    return torch.where(zero, torch.zeros_like(scale), scale), L


def _err(d: torch.Tensor, mad: bool) -> torch.Tensor:
    return d.abs() if mad else d * d


def make_qkx_quants(
    x: torch.Tensor, w: torch.Tensor, nmax: int, search: tuple[float, float, int], *, mad: bool, v3: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric levels in [0, nmax] with a scale and a min (``make_qkx2_quants``, or ``make_qkx3_quants``
    when ``v3``), searching ``iscale = (rmin + rdelta*is + nmax) / (max - min)`` for ``is`` in 0..nstep.

    Args:
        x: blocks [B, n]; w: their weights [B, n].
        nmax: largest level.
        search: (rmin, rdelta, nstep).
        mad: weigh absolute errors instead of squared ones.
        v3: the qkx3 variant (levels from ``min(v, nmax)``, degenerate when ``max <= min``).

    Returns:
        (scale [B], the_min [B] (>= 0: the value subtracted), L [B, n]).
    """
    rmin, rdelta, nstep = search
    mn = x.min(dim=1).values.clamp(max=0)
    mx = x.max(dim=1).values
    sum_w, sum_x = seq_sum(w), seq_sum(w * x)
    bad = (mx <= mn) if v3 else (mx == mn)
    span = torch.where(bad, torch.ones_like(mx), mx - mn)
    iscale = c_float(nmax) / span
    scale = c_float(1.0) / iscale
    L = nearest_int(iscale[:, None] * (x - mn[:, None])).clamp(0, nmax)
    best = seq_sum(w * _err(scale[:, None] * L + mn[:, None] - x, mad))
    for step in range(nstep + 1):
        # C: (rmin + rdelta*is + nmax) / (max - min), with min the best fit so far
        top = float(np.float32(np.float32(_const(rdelta, step, rmin)) + np.float32(nmax)))
        iscale = c_float(top) / (mx - mn).masked_fill(bad, 1.0)
        v = iscale[:, None] * (x - mn[:, None])
        if v3:
            lev = torch.where(v > 0, nearest_int(torch.clamp(v, max=float(nmax))), torch.zeros_like(v))
        else:
            lev = nearest_int(torch.nan_to_num(v, nan=0.0)).clamp(0, nmax)
        sum_l, sum_l2, sum_xl = seq_sum(w * lev), seq_sum(w * lev * lev), seq_sum(w * lev * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        safe = torch.where(D > 0, D, torch.ones_like(D))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        cur = seq_sum(w * _err(this_scale[:, None] * lev + this_min[:, None] - x, mad))
        better = (D > 0) & (cur < best)
        L = torch.where(better[:, None], lev, L)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    L = torch.where(bad[:, None], torch.zeros_like(L), L)
    return torch.where(bad, torch.zeros_like(scale), scale), -mn, L


def make_qp_quants(x: torch.Tensor, nmax: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative levels in [0, nmax] for non-negative ``x`` (the sub-block scales / mins of the ``_impl``
    quantizers) with weights ``w``. Returns (scale [B], L [B, n])."""
    mx = x.max(dim=1).values.clamp(min=0)
    zero = mx < GROUP_MAX_EPS
    mx = torch.where(zero, torch.ones_like(mx), mx)
    top = float(nmax)
    iscale = c_float(nmax) / mx
    lev = nearest_int(iscale[:, None] * x)
    diff = x - (c_float(1.0) / iscale)[:, None] * lev
    best = seq_sum(w * diff * diff)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = c_float(_const(0.1, step, nmax)) / mx
        scale_is = c_float(1.0) / iscale_is
        lev = nearest_int(iscale_is[:, None] * x).clamp(max=top)
        diff = x - scale_is[:, None] * lev
        mse = seq_sum(w * diff * diff)
        better = mse < best
        best = torch.where(better, mse, best)
        iscale = torch.where(better, iscale_is, iscale)
    lev = nearest_int(iscale[:, None] * x).clamp(max=top)
    sumlx, suml2 = seq_sum(w * x * lev), seq_sum(w * lev * lev)
    for _ in range(5):
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], lev[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            cond = (slx > 0) & (sl2 > 0)
            new_l = nearest_int(xi * sl2 / torch.where(cond, slx, torch.ones_like(slx))).clamp(max=top)
            slx2 = slx + wi * xi * new_l
            sl22 = sl2 + wi * new_l * new_l
            ok = cond & (new_l != li) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            lev[:, i] = torch.where(ok, new_l, li)
            sumlx = torch.where(ok, slx2, sumlx)
            suml2 = torch.where(ok, sl22, suml2)
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero[:, None], torch.zeros_like(lev), lev)
