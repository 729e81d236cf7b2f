"""GGUF block formats (private to kquant): quantize blocks to their packed bytes and dequantize bytes, in torch.

One function pair per type, each working on a batch of blocks ``x`` [nb, block_size] at once. The quantizers are
those of llama.cpp's ggml-quants.c: the ``*_ref`` ones without importance weights and the ``*_impl`` ones with them
(``qw``, the importance matrix laid over the block). The dequantizers follow the operation order of the ``gguf``
package (``gguf.quants``), so that their output equals ``gguf.quants.dequantize`` bit for bit.

This module imports torch at module level; import it lazily.

Example:
    >>> import torch
    >>> x = torch.linspace(-1, 1, 32)[None]
    >>> b = quantize_blocks(x, "Q8_0", None, None)
    >>> tuple(b.shape), float((dequantize_blocks(b, "Q8_0") - x).abs().max()) < 0.005
    ((1, 34), True)
"""

from __future__ import annotations

import torch

from mlquant.quantize._kquant_search import (
    GROUP_MAX_EPS,
    abs_max_signed,
    c_float,
    make_q3_quants,
    make_qkx_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    roundf,
    seq_sum,
)

__all__ = ["BLOCK_TYPES", "dequantize_blocks", "fake_quantize_blocks", "q8_0_levels", "quantize_blocks"]

#: GGUF type -> (weights per block, bytes per block).
BLOCK_TYPES: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}
_U8 = torch.uint8


# ----- helpers ----------------------------------------------------------------------------------------------------
def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).reshape(-1, 1).view(_U8)


def _f16(v: torch.Tensor) -> torch.Tensor:
    """The float32 value of ``v`` stored as fp16 (GGML_FP32_TO_FP16, round to nearest even, and back)."""
    return v.to(torch.float16).float()


def _read_f16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float().reshape(-1)


def _u8(v: torch.Tensor) -> torch.Tensor:
    """An integer-valued float tensor stored into uint8 as C does (modulo 256)."""
    return (v.long() & 0xFF).to(_U8)


def _nibbles(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return _u8(lo.long() | (hi.long() << 4))


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """[nb, 8k] of 0/1 -> [nb, k] bytes, bit t of byte j = bits[8j + t] (little-endian bit order)."""
    shifts = torch.arange(8, dtype=_U8)
    return (bits.to(_U8).reshape(bits.shape[0], -1, 8) << shifts).sum(-1, dtype=_U8)


def _crumbs(L: torch.Tensor) -> torch.Tensor:
    """2-bit levels [nb, 256] -> [nb, 64]: byte 32h + l holds L[128h + 32s + l] at bits 2s."""
    q = L.long().reshape(L.shape[0], 2, 4, 32) << (2 * torch.arange(4)).reshape(1, 1, 4, 1)
    return _u8(q.sum(2).reshape(L.shape[0], 64))


def _unpack_crumbs(qs: torch.Tensor) -> torch.Tensor:
    q = qs.long().reshape(qs.shape[0], 2, 1, 32) >> (2 * torch.arange(4)).reshape(1, 1, 4, 1)
    return (q & 3).reshape(qs.shape[0], 256)


def _imatrix_weights(x: torch.Tensor, qw: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """``qw * sqrtf(sigma2 + x*x)`` (sigma2 per block)."""
    return qw * torch.sqrt(sigma2[:, None] + x * x)


def _requant(x: torch.Tensor, d: torch.Tensor, dm: torch.Tensor | None, L: torch.Tensor, lim: tuple[int, int]) -> torch.Tensor:
    """Levels from the stored scales: ``nearest_int((x + dm) / d)`` (or ``x / d``) clamped; kept where d == 0."""
    ok = d != 0
    safe = torch.where(ok, d, torch.ones_like(d))
    num = x if dm is None else x + dm
    lev = nearest_int(num / safe).clamp(*lim)
    return torch.where(ok, lev - lim[0], L)


# ----- 32-weight formats --------------------------------------------------------------------------------------------
def q8_0_levels(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0's scale ``d`` [nb] (float32, before its fp16 rounding) and levels [nb, 32] (int8) of blocks ``x``.

    ``quantize_row_q8_0_ref``: ``d = amax / 127``, ``q = roundf(x * (1 / d))``. Written for speed (it is the whole
    cost of Q8_0): ``amax`` rather than ``max(...).values`` (no indices), and the rounding cast straight to int8
    (``|x * (1 / d)|`` is 127 up to a few rounding errors: far from 127.5, whose 128 would not fit).
    """
    d = x.abs().amax(dim=1).div_(c_float(127))
    nz = d != 0
    inv = torch.where(nz, c_float(1) / torch.where(nz, d, c_float(1)), c_float(0))
    return d, roundf(x * inv[:, None], torch.int8)


def _q8_0(x: torch.Tensor) -> torch.Tensor:
    d, q = q8_0_levels(x)
    out = torch.empty(x.shape[0], 34, dtype=_U8)
    out[:, :2] = _f16_bytes(d)
    out[:, 2:] = q.view(_U8)
    return out


def _symmetric_legacy(
    x: torch.Tensor, nmax: int, qw: torch.Tensor | None, sigma2: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 / Q5_0: (d, levels in [0, 2 nmax - 1])."""
    if qw is not None and sigma2 is not None:
        return make_qx_quants(x, nmax, _imatrix_weights(x, qw, sigma2))
    mx, _ = abs_max_signed(x)
    d = mx / c_float(-nmax)
    inv = torch.where(d != 0, c_float(1) / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.trunc(x * inv[:, None] + c_float(nmax + 0.5)).clamp(0, 2 * nmax - 1)
    return d, q


def _asymmetric_legacy(
    x: torch.Tensor, nmax: int, qw: torch.Tensor | None, sigma2: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 / Q5_1: (d, m, levels in [0, nmax]); ``w = d * q + m``."""
    if qw is not None and sigma2 is not None:
        d, the_min, L = make_qkx_quants(x, _imatrix_weights(x, qw, sigma2), nmax, (-0.9, 0.05, 36), mad=False, v3=True)
        return d, -the_min, L
    mn, mx = x.min(dim=1).values, x.max(dim=1).values
    d = (mx - mn) / c_float(nmax)
    inv = torch.where(d != 0, c_float(1) / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.trunc((x - mn[:, None]) * inv[:, None] + c_float(0.5)).clamp(0, nmax)
    return d, mn, q


def _legacy(x: torch.Tensor, qtype: str, qw: torch.Tensor | None, sigma2: torch.Tensor | None) -> torch.Tensor:
    if qtype in ("Q4_0", "Q5_0"):
        d, q = _symmetric_legacy(x, 8 if qtype == "Q4_0" else 16, qw, sigma2)
        head = [_f16_bytes(d)]
    else:
        d, m, q = _asymmetric_legacy(x, 15 if qtype == "Q4_1" else 31, qw, sigma2)
        head = [_f16_bytes(d), _f16_bytes(m)]
    q8 = q.to(_U8)  # levels in [0, 31]: the byte arithmetic needs no wider type
    qs = (q8[:, :16] & 0xF) | ((q8[:, 16:] & 0xF) << 4)
    high = [_pack_bits(q8 >> 4)] if qtype in ("Q5_0", "Q5_1") else []
    return torch.cat([*head, *high, qs], dim=1)


# ----- k-quants (super-blocks of 256) -----------------------------------------------------------------------------
def _block_sigma2(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * sum(x^2) / 256`` accumulated in order, as the ``_impl`` quantizers do."""
    return c_float(factor) * seq_sum(x * x) / c_float(256)


def _q2_k(x: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    if qw is None:
        sc, mn, L = make_qkx_quants(xs, xs.abs(), 3, (-0.5, 0.1, 15), mad=True, v3=False)
        sc, mn = sc.reshape(nb, 16), mn.reshape(nb, 16)
        max_scale = sc.max(dim=1).values.clamp(min=0)
        max_min = mn.max(dim=1).values.clamp(min=0)
        ps, pm = max_scale > 0, max_min > 0
        ls = torch.where(ps[:, None], nearest_int((c_float(15) / max_scale)[:, None] * sc), torch.zeros_like(sc))
        lm = torch.where(pm[:, None], nearest_int((c_float(15) / max_min)[:, None] * mn), torch.zeros_like(mn))
        d = torch.where(ps, max_scale / c_float(15), torch.zeros_like(max_scale))
        dmin = torch.where(pm, max_min / c_float(15), torch.zeros_like(max_min))
    else:
        sigma2 = _block_sigma2(x, 1.0)
        w = _imatrix_weights(x, qw, sigma2).reshape(nb * 16, 16)
        sc, mn, L = make_qkx_quants(xs, w, 3, (-0.9, 0.05, 36), mad=False, v3=True)
        sw = seq_sum(w).reshape(nb, 16)
        d, ls = make_qp_quants(sc.reshape(nb, 16), 15, sw)
        dmin, lm = make_qp_quants(mn.reshape(nb, 16), 15, sw)
    scales = _u8(ls.long() & 0xFF | ((lm.long() << 4) & 0xFF))
    sc_q, m_q = (scales.long() & 0xF).float(), (scales.long() >> 4).float()
    dq = (_f16(d)[:, None] * sc_q).reshape(-1, 1)
    dmq = (_f16(dmin)[:, None] * m_q).reshape(-1, 1)
    L = _requant(xs, dq, dmq, L, (0, 3)).reshape(nb, 256)
    return torch.cat([scales, _crumbs(L), _f16_bytes(d), _f16_bytes(dmin)], dim=1)


def _pack_q3_scales(ls: torch.Tensor) -> torch.Tensor:
    """16 six-bit scales -> 12 bytes (low nibbles in bytes 0-7, high crumbs in bytes 8-11)."""
    li = ls.long()
    low = (li[:, :8] & 0xF) | ((li[:, 8:] & 0xF) << 4)
    high = ((li >> 4).reshape(-1, 4, 4) << (2 * torch.arange(4)).reshape(1, 4, 1)).sum(1)
    return _u8(torch.cat([low, high], dim=1))


def _unpack_q3_scales(s: torch.Tensor) -> torch.Tensor:
    si = s.long()
    low = torch.cat([si[:, :8] & 0xF, si[:, :8] >> 4], dim=1)
    high = (si[:, 8:12].reshape(-1, 1, 4) >> (2 * torch.arange(4)).reshape(1, 4, 1)) & 3
    return (low | (high.reshape(-1, 16) << 4)) - 32


def _q3_k(x: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    if qw is None:
        sc, L = make_q3_quants(xs, 4)
        sc = sc.reshape(nb, 16)
        max_scale, _ = abs_max_signed(sc)
        ok = max_scale != 0
        iscale = c_float(-32) / torch.where(ok, max_scale, torch.ones_like(max_scale))
        ls = torch.where(ok[:, None], nearest_int(iscale[:, None] * sc).clamp(-32, 31) + 32, torch.zeros_like(sc))
        scales = _pack_q3_scales(ls)
        d = torch.where(ok, c_float(1) / iscale, torch.zeros_like(iscale))
    else:
        sigma2 = _block_sigma2(x, 2.0)
        w = _imatrix_weights(x, qw, sigma2).reshape(nb * 16, 16)
        sc, L = make_qx_quants(xs, 4, w)
        d, ls = make_qx_quants(sc.reshape(nb, 16), 32, seq_sum(w).reshape(nb, 16))
        scales = _pack_q3_scales(ls)
    dq = (_f16(d)[:, None] * _unpack_q3_scales(scales).float()).reshape(-1, 1)
    L = _requant(xs, dq, None, L, (-4, 3)).reshape(nb, 256).long()
    hmask = _u8(((L.reshape(nb, 8, 32) > 3).long() << torch.arange(8).reshape(1, 8, 1)).sum(1))
    return torch.cat([hmask, _crumbs(L & 3), scales, _f16_bytes(d)], dim=1)


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    s, m = ls.long(), lm.long()
    return _u8(torch.cat([
        s[:, :4] | ((s[:, 4:] >> 4) << 6),
        m[:, :4] | ((m[:, 4:] >> 4) << 6),
        (s[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4),
    ], dim=1))


def _unpack_k4_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    si = s.long()
    d, m, md = si[:, 0:4], si[:, 4:8], si[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0xF) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _q45_k(x: torch.Tensor, qtype: str, qw: torch.Tensor | None) -> torch.Tensor:
    nb = x.shape[0]
    nmax = 15 if qtype == "Q4_K" else 31
    xs = x.reshape(nb * 8, 32)
    if qw is None:
        av_x = torch.sqrt(seq_sum(xs * xs) / c_float(32))
        search = (-1.0, 0.1, 20) if qtype == "Q4_K" else (-0.5, 0.1, 15)
        sc, mn, L = make_qkx_quants(xs, av_x[:, None] + xs.abs(), nmax, search, mad=False, v3=False)
        sc, mn = sc.reshape(nb, 8), mn.reshape(nb, 8)
        max_scale = sc.max(dim=1).values.clamp(min=0)
        max_min = mn.max(dim=1).values.clamp(min=0)
        inv_s = torch.where(max_scale > 0, c_float(63) / max_scale, torch.zeros_like(max_scale))
        inv_m = torch.where(max_min > 0, c_float(63) / max_min, torch.zeros_like(max_min))
        ls = (nearest_int(inv_s[:, None] * sc).long() & 0xFF).clamp(max=63)
        lm = (nearest_int(inv_m[:, None] * mn).long() & 0xFF).clamp(max=63)
        d, dmin = max_scale / c_float(63), max_min / c_float(63)
    else:
        sigma2 = _block_sigma2(x, 2.0)
        w = _imatrix_weights(x, qw, sigma2).reshape(nb * 8, 32)
        sc, mn, L = make_qkx_quants(xs, w, nmax, (-0.9, 0.05, 36), mad=False, v3=True)
        sw = seq_sum(w).reshape(nb, 8)
        d, ls = make_qp_quants(sc.reshape(nb, 8), 63, sw)
        dmin, lm = make_qp_quants(mn.reshape(nb, 8), 63, sw)
    scales = _pack_k4_scales(ls, lm)
    dq = (_f16(d)[:, None] * ls.float()).reshape(-1, 1)
    dmq = (_f16(dmin)[:, None] * lm.float()).reshape(-1, 1)
    L = _requant(xs, dq, dmq, L, (0, nmax)).reshape(nb, 4, 2, 32).long()
    qs = _nibbles(L[:, :, 0] & 0xF, L[:, :, 1] & 0xF).reshape(nb, 128)
    head = [_f16_bytes(d), _f16_bytes(dmin), scales]
    if qtype == "Q4_K":
        return torch.cat([*head, qs], dim=1)
    high = ((L >> 4) & 1) << (torch.arange(8).reshape(1, 4, 2, 1))  # bit 2k + half
    qh = _u8(high.sum(dim=(1, 2)))
    return torch.cat([*head, qh, qs], dim=1)


def _q6_k(x: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16)
    sc, L = make_qx_quants(xs, 32, None if qw is None else qw.reshape(nb * 16, 16))
    sc = sc.reshape(nb, 16)
    max_scale, max_abs = abs_max_signed(sc)
    zero = max_abs < GROUP_MAX_EPS
    iscale = c_float(-128) / torch.where(zero, torch.ones_like(max_scale), max_scale)
    d = torch.where(zero, torch.zeros_like(iscale), c_float(1) / iscale)
    ls = nearest_int(iscale[:, None] * sc).clamp(max=127)
    dq = (_f16(d)[:, None] * ls).reshape(-1, 1)
    L = _requant(xs, dq, None, L, (-32, 31)).reshape(nb, 2, 4, 32).long()
    L = torch.where(zero.reshape(nb, 1, 1, 1), torch.zeros_like(L), L)
    ql = torch.stack([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4), L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], dim=2)
    qh = ((L >> 4) << (2 * torch.arange(4)).reshape(1, 1, 4, 1)).sum(2)
    scales = torch.where(zero[:, None], torch.zeros_like(ls), ls).to(torch.int8).view(_U8)
    return torch.cat([_u8(ql.reshape(nb, 128)), _u8(qh.reshape(nb, 64)), scales, _f16_bytes(d)], dim=1)


def quantize_blocks(x: torch.Tensor, qtype: str, qw: torch.Tensor | None, sigma2: torch.Tensor | None) -> torch.Tensor:
    """Packed GGUF blocks [nb, bytes per block] (uint8) of ``x`` [nb, block size] (float32).

    Args:
        x: the blocks.
        qtype: a key of :data:`BLOCK_TYPES`.
        qw: importance weights laid over the blocks (None: the reference quantizer).
        sigma2: for the 32-weight types with ``qw``: mean of x^2 over each block's whole row (ggml's ``sigma2``).
    """
    x = x.float().contiguous()
    if qtype == "Q8_0":
        return _q8_0(x)
    if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        return _legacy(x, qtype, qw, sigma2)
    if qtype == "Q2_K":
        return _q2_k(x, qw)
    if qtype == "Q3_K":
        return _q3_k(x, qw)
    if qtype in ("Q4_K", "Q5_K"):
        return _q45_k(x, qtype, qw)
    if qtype == "Q6_K":
        return _q6_k(x, qw)
    raise ValueError(f"no block quantizer for GGUF type {qtype!r}; expected one of {sorted(BLOCK_TYPES)}.")


def fake_quantize_blocks(x: torch.Tensor, qtype: str, qw: torch.Tensor | None, sigma2: torch.Tensor | None) -> torch.Tensor:
    """Blocks ``x`` quantized to ``qtype`` and dequantized back (float32, ``x``'s shape): equal, bit for bit, to
    ``dequantize_blocks(quantize_blocks(x, qtype, qw, sigma2), qtype)``.

    Q8_0 and the 32-weight legacy types skip the bytes: their levels never wrap when packed, so ``d * (q - nmax)``
    (``d * q + m``) with ``d`` and ``m`` rounded through fp16 is what the dequantizer computes from the bytes.
    The k-quants are packed and unpacked (their scales are stored in 4 or 6 bits).
    """
    x = x.float().contiguous()
    if qtype == "Q8_0":
        d, q8 = q8_0_levels(x)
        return q8 * _f16(d)[:, None]
    if qtype in ("Q4_0", "Q5_0"):
        nmax = 8 if qtype == "Q4_0" else 16
        d, q = _symmetric_legacy(x, nmax, qw, sigma2)
        return _f16(d)[:, None] * (q - nmax)
    if qtype in ("Q4_1", "Q5_1"):
        d, m, q = _asymmetric_legacy(x, 15 if qtype == "Q4_1" else 31, qw, sigma2)
        return _f16(d)[:, None] * q + _f16(m)[:, None]
    return dequantize_blocks(quantize_blocks(x, qtype, qw, sigma2), qtype)


# ----- dequantization (operation order of gguf.quants) ------------------------------------------------------------
def _dq_legacy(b: torch.Tensor, qtype: str) -> torch.Tensor:
    nb = b.shape[0]
    d = _read_f16(b[:, 0:2])[:, None]
    pos = 2
    m = None
    if qtype in ("Q4_1", "Q5_1"):
        m = _read_f16(b[:, 2:4])[:, None]
        pos = 4
    qs = b[:, pos + 4 * (qtype in ("Q5_0", "Q5_1")) :]
    q = torch.cat([qs & 0xF, qs >> 4], dim=1)  # uint8 levels
    if qtype in ("Q5_0", "Q5_1"):
        q |= ((b[:, pos : pos + 4].reshape(nb, 4, 1) >> torch.arange(8, dtype=_U8)) & 1).reshape(nb, 32) << 4
    if m is not None:
        return d * q.float() + m
    return d * (q.float() - (8 if qtype == "Q4_0" else 16))


def _dq_k(b: torch.Tensor, qtype: str) -> torch.Tensor:
    nb = b.shape[0]
    if qtype == "Q2_K":
        s = b[:, :16].long()
        dl = (_read_f16(b[:, 80:82])[:, None] * (s & 0xF).float())[:, :, None]
        ml = (_read_f16(b[:, 82:84])[:, None] * (s >> 4).float())[:, :, None]
        q = _unpack_crumbs(b[:, 16:80]).reshape(nb, 16, 16).float()
        return (dl * q - ml).reshape(nb, 256)
    if qtype == "Q3_K":
        dl = (_read_f16(b[:, 108:110])[:, None] * _unpack_q3_scales(b[:, 96:108]).float()).reshape(nb, 16, 1)
        low = _unpack_crumbs(b[:, 32:96])
        hbit = ((b[:, :32].long().reshape(nb, 1, 32) >> torch.arange(8).reshape(1, 8, 1)) & 1).reshape(nb, 256)
        q = (low - ((hbit ^ 1) << 2)).float().reshape(nb, 16, 16)
        return (dl * q).reshape(nb, 256)
    if qtype == "Q6_K":
        dl = (_read_f16(b[:, 208:210])[:, None] * b[:, 192:208].contiguous().view(torch.int8).float()).reshape(nb, 16, 1)
        ql = b[:, :128].long().reshape(nb, 2, 1, 64) >> torch.tensor([0, 4]).reshape(1, 1, 2, 1)
        ql = (ql & 0xF).reshape(nb, 2, 4, 32)
        qh = (b[:, 128:192].long().reshape(nb, 2, 1, 32) >> (2 * torch.arange(4)).reshape(1, 1, 4, 1)) & 3
        q = ((ql | (qh << 4)) - 32).float().reshape(nb, 16, 16)
        return (dl * q).reshape(nb, 256)
    sc, mn = _unpack_k4_scales(b[:, 4:16])
    d = (_read_f16(b[:, 0:2])[:, None] * sc.float())[:, :, None]
    dm = (_read_f16(b[:, 2:4])[:, None] * mn.float())[:, :, None]
    qs = b[:, -128:].long().reshape(nb, 4, 1, 32) >> torch.tensor([0, 4]).reshape(1, 1, 2, 1)
    q = (qs & 0xF).reshape(nb, 8, 32)
    if qtype == "Q5_K":
        qh = (b[:, 16:48].long().reshape(nb, 1, 32) >> torch.arange(8).reshape(1, 8, 1)) & 1
        q = q | (qh << 4)
    return (d * q.float() - dm).reshape(nb, 256)


def dequantize_blocks(b: torch.Tensor, qtype: str) -> torch.Tensor:
    """Float32 weights [nb, block size] of packed blocks ``b`` [nb, bytes per block] (uint8)."""
    if qtype not in BLOCK_TYPES:
        raise ValueError(f"no block dequantizer for GGUF type {qtype!r}; expected one of {sorted(BLOCK_TYPES)}.")
    if b.ndim != 2 or b.shape[1] != BLOCK_TYPES[qtype][1]:
        raise ValueError(f"{qtype} blocks must be [n, {BLOCK_TYPES[qtype][1]}] bytes, got {tuple(b.shape)}.")
    if qtype == "Q8_0":  # int8 * float32 is computed in float32: (float) q * d, as gguf does
        return b[:, 2:].view(torch.int8) * _read_f16(b[:, 0:2])[:, None]
    if BLOCK_TYPES[qtype][0] == 32:
        return _dq_legacy(b, qtype)
    return _dq_k(b, qtype)
