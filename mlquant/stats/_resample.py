"""The vectorized paired (cluster) bootstrap: replicate sums of every cell at once.

A cell's statistics depend on three sums over its resampling units (a unit is an item, or the cluster of items
sharing a ``group``): ``D = sum w(q-b)``, ``B = sum w b``, ``W = sum w``. A bootstrap replicate draws the ``m``
units with replacement, i.e. weights the unit sums by multinomial(m, 1/m) counts. The counts of ``R`` replicates
form an ``R x m`` matrix drawn once per unit count ``m`` (seeded by ``(seed, m)``; float32, exact integers).

Two ways to apply it:

* **per cell** (``by`` = one row per cell): a cell whose units take only a few distinct ``(d, b, w)`` values
  (0/1 accuracy: at most 4) has its units sorted by value, so the resampled count of each value is a difference
  of two columns of the count matrix's running sums: O(R) per cell instead of O(R m). Other cells (continuous
  scores) use the matrix product below. Cells share the count matrix; each cell's replicates are an exact
  bootstrap of that cell, and per-cell intervals do not depend on how cells co-vary.
* **per group** (``by`` coarser than a cell): one float32 matrix product ``counts @ unit_sums`` gives the
  replicate sums of all cells with ``m`` units. Cells with the same task and the same unit labels (the same items
  in several languages or methods: parallel data) use the same row order, so they are resampled *jointly* -- a
  replicate draws the same items in every language and group CIs account for the correlation of parallel
  items. Every other item set gets its own seeded random row order, which makes it resample independently of the
  others up to O(1/sqrt(m)). Group replicates are means of cell statistics or pooled sums, replicate by replicate.

Example:
    >>> import pandas as pd
    >>> from mlquant.stats._frame import pair
    >>> from mlquant.stats._engine import Bootstrap
    >>> df = pd.DataFrame({"quant": ["fp32"] * 20 + ["w4"] * 20, "task": "t", "lang": "en",
    ...                    "item_id": list("abcdefghijklmnopqrst") * 2, "score": [1.0, 0] * 10 + [1.0, 1, 0, 0] * 5})
    >>> ci = bootstrap_cells(pair(df), Bootstrap(n_resamples=1000, seed=1))
    >>> ci.diff.shape
    (1, 2)
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from mlquant.stats._engine import Bootstrap, GroupCI, cell_stats, intervals, jackknife_accel, point_estimates
from mlquant.stats._frame import Paired, Weighting

__all__ = ["bootstrap_cells", "bootstrap_groups"]

_CACHE_BYTES = 768 * 2**20
_BLOCK = 2**22  # replicates x columns per batch
_ACC_BYTES = 512 * 2**20
_K_MAX = 32  # distinct unit values for the per-cell shortcut


class _Counts:
    """Count matrices (and their running sums) per unit count m, deterministic in (seed, m)."""

    def __init__(self, seed: int, n_res: int) -> None:
        self.seed, self.n_res = seed, n_res
        self.store: dict[tuple[str, int], np.ndarray] = {}
        self.bytes = 0

    def _keep(self, key: tuple[str, int], mat: np.ndarray) -> np.ndarray:
        if self.bytes + mat.nbytes <= _CACHE_BYTES:
            self.store[key] = mat
            self.bytes += mat.nbytes
        return mat

    def counts(self, m: int) -> np.ndarray:
        """Multinomial(m, 1/m) counts, float32, n_res x m."""
        if ("c", m) in self.store:
            return self.store[("c", m)]
        rng = np.random.default_rng([self.seed, 0, m])
        out = np.empty((self.n_res, m), dtype=np.float32)
        step = max(1, 2**22 // m)
        for start in range(0, self.n_res, step):
            rows = min(step, self.n_res - start)
            idx = rng.integers(0, m, size=(rows, m), dtype=np.int64)
            idx += (np.arange(rows, dtype=np.int64) * m)[:, None]
            out[start : start + rows] = np.bincount(idx.ravel(), minlength=rows * m).reshape(rows, m)
        return self._keep(("c", m), out)

    def prefix(self, m: int) -> np.ndarray:
        """Running sums of the counts with a leading zero, transposed: float32, (m + 1) x n_res."""
        if ("p", m) in self.store:
            return self.store[("p", m)]
        out = np.zeros((m + 1, self.n_res), dtype=np.float32)
        np.cumsum(self.counts(m).T, axis=0, out=out[1:])
        return self._keep(("p", m), out)


def _row_orders(paired: Paired, seed: int) -> list[np.ndarray]:
    """Per cell, its units in count-matrix row order (shared by cells with the same task and unit labels)."""
    cells = paired.cells
    tasks = cells["task"].astype(str).to_numpy()
    us, ue = cells["ustart"].to_numpy(), cells["ustop"].to_numpy()
    perms: dict[bytes, np.ndarray] = {}
    orders = []
    for c in range(len(cells)):
        h = hashlib.blake2b(paired.unit_label[us[c] : ue[c]].astype(np.int64).tobytes(), digest_size=16)
        h.update(tasks[c].encode())
        key = h.digest()
        perm = perms.get(key)
        if perm is None:
            perm = np.random.default_rng([seed, 1, int.from_bytes(key[:8], "little")]).permutation(ue[c] - us[c])
            perms[key] = perm
        orders.append(us[c] + perm)
    return orders


def _gemm_sums(
    cells: np.ndarray, units: tuple[np.ndarray, ...], orders: list[np.ndarray], m_cell: np.ndarray, cache: _Counts
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Replicate sums ``(cells, D, B, W)`` (each k x R, float32) of ``cells``, by matrix products per m.

    Cells whose units all weigh 1 skip the W product (W* = m in every replicate).
    """
    ud, ub, uw = units
    n_res = cache.n_res
    unit_one = np.array([bool(np.all(uw[o] == 1)) for o in orders])
    for m in np.unique(m_cell[cells]):
        counts = cache.counts(int(m))
        for ones in (True, False):
            these = cells[(m_cell[cells] == m) & (unit_one[cells] == ones)]
            step = max(1, _BLOCK // (3 * n_res))
            for start in range(0, len(these), step):
                chunk = these[start : start + step]
                idx = np.stack([orders[c] for c in chunk], axis=0)  # k x m
                k = len(chunk)
                if ones:
                    r = np.concatenate([ud[idx], ub[idx]], axis=0) @ counts.T  # 2k x R
                    yield chunk, r[:k], r[k:], np.full((k, n_res), float(m), dtype=np.float32)
                else:
                    r = np.concatenate([ud[idx], ub[idx], uw[idx]], axis=0) @ counts.T  # 3k x R
                    yield chunk, r[:k], r[k : 2 * k], r[2 * k :]


def _stats(d: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return d / w, 100.0 * d / b


def _warn_nonfinite(rel_reps: np.ndarray, theta: np.ndarray) -> bool:  # rows = cells or groups
    return bool(np.any(~np.isfinite(rel_reps).all(axis=1) & np.isfinite(theta)))


def _finish_warning(flag: bool) -> None:
    if flag:
        warnings.warn(
            "some bootstrap resamples have a baseline score of 0, so their relative change is undefined; the "
            "relative-change interval of those rows is NaN (the diff interval is unaffected).",
            stacklevel=4,
        )


def _small_tuples(
    units: tuple[np.ndarray, np.ndarray, np.ndarray], unit_cell: np.ndarray, n_cells: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells whose units take at most ``_K_MAX`` distinct small-integer (d, b, w) values.

    Returns ``(small, mult, values)``: a boolean per cell, the multiplicity of each distinct value per cell
    (cells x K) and the values (3 x K).
    """
    ud, ub, uw = units
    lim = 63
    is_int = (
        (np.abs(ud - np.round(ud)) < 1e-9)
        & (np.abs(ub - np.round(ub)) < 1e-9)
        & (np.abs(uw - np.round(uw)) < 1e-9)
        & (np.abs(ud) <= lim)
        & (np.abs(ub) <= lim)
        & (uw <= lim)
        & (uw >= 0)
        & (ub >= -lim)
    )
    ok_cell = np.bincount(unit_cell, weights=(~is_int).astype(float), minlength=n_cells) == 0
    sel = ok_cell[unit_cell]
    if not sel.any():
        return ok_cell, np.zeros((n_cells, 0), dtype=np.int64), np.zeros((3, 0))
    code = ((np.round(ud[sel]).astype(np.int64) + 64) * 128 + np.round(ub[sel]).astype(np.int64) + 64) * 128
    code += np.round(uw[sel]).astype(np.int64)
    present = np.zeros(1 << 21, dtype=bool)
    present[code] = True
    index = np.cumsum(present) - 1
    n_codes = int(present.sum())
    codes_used = np.flatnonzero(present)
    values = np.stack([codes_used // (128 * 128) - 64, (codes_used // 128) % 128 - 64, codes_used % 128]).astype(float)
    mult = np.bincount(unit_cell[sel] * n_codes + index[code], minlength=n_cells * n_codes).reshape(n_cells, n_codes)
    small = ok_cell & ((mult > 0).sum(axis=1) <= _K_MAX)
    return small, mult, values


def bootstrap_cells(paired: Paired, spec: Bootstrap) -> GroupCI:
    """Bootstrap CIs of diff and rel_change for every cell (rows in cell order)."""
    n_res, n_cells = int(spec.n_resamples), paired.n_cells
    cs = cell_stats(paired)
    ident = np.arange(n_cells)
    acc_d = acc_r = None
    if spec.method == "bca":
        acc_d, acc_r = jackknife_accel(paired, ident, n_cells, "language")
    units = paired.unit_sums()
    m_cell = paired.cells["n_units"].to_numpy()
    small, mult, values = _small_tuples(units, paired.unit_cell, n_cells)
    unit_w = np.bincount(paired.unit_cell, weights=(units[2] != 1).astype(float), minlength=n_cells) == 0
    cache = _Counts(spec.seed, n_res)
    ci_d, ci_r = np.full((n_cells, 2), np.nan), np.full((n_cells, 2), np.nan)
    bad = False

    def finish(chunk: np.ndarray, d: np.ndarray, b: np.ndarray, w: np.ndarray, counted: bool = False) -> bool:
        # d, b, w: cells x replicates. ``counted``: d holds integers and w is the constant unit count.
        rd, rr = _stats(d, b, w)
        if counted:
            scale = w[:, 0].astype(np.float64)
            ci_d[chunk] = intervals(d, cs["diff"][chunk], spec, None if acc_d is None else acc_d[chunk], scale)
        else:
            ci_d[chunk] = intervals(rd, cs["diff"][chunk], spec, None if acc_d is None else acc_d[chunk])
        ci_r[chunk] = intervals(rr, cs["rel_change"][chunk], spec, None if acc_r is None else acc_r[chunk])
        return _warn_nonfinite(rr, cs["rel_change"][chunk])

    for m in np.unique(m_cell[small]):
        these = np.flatnonzero(small & (m_cell == m))
        prefix = cache.prefix(int(m))  # (m + 1) x R
        present = mult[these] > 0
        kmax = int(present.sum(axis=1).max())
        # Per cell, its distinct values first (stable order), padded with zero multiplicities.
        order = np.argsort(~present, axis=1, kind="stable")[:, :kmax]
        mults = np.take_along_axis(mult[these], order, axis=1)
        vals = values[:, order]  # 3 x cells x kmax
        ends = np.cumsum(mults, axis=1)  # block j covers running-sum columns (ends[j-1], ends[j]]
        # sum_j v_j (P[e_j] - P[e_{j-1}]) = sum_j P[e_j] (v_j - v_{j+1}): one gather, no differences.
        nxt = np.concatenate([vals[:, :, 1:], np.zeros((3, len(these), 1))], axis=2)
        coef = (vals - nxt).astype(np.float32)
        step = max(1, _BLOCK // (n_res * kmax))
        for start in range(0, len(these), step):
            sl = slice(start, start + step)
            chunk = these[sl]
            g = prefix[ends[sl]]  # cells x kmax x R
            counted = bool(unit_w[chunk].all())
            d = np.einsum("ckr,ck->cr", g, coef[0][sl])
            b = np.einsum("ckr,ck->cr", g, coef[1][sl])
            # Unit weights, one item per unit: W* = m and D* is an integer.
            w = np.full_like(d, float(m)) if counted else np.einsum("ckr,ck->cr", g, coef[2][sl])
            bad |= finish(chunk, d, b, w, counted=counted)
    rest = np.flatnonzero(~small)
    if len(rest):
        orders = [np.arange(a, b) for a, b in zip(paired.cells["ustart"], paired.cells["ustop"], strict=True)]
        f32 = tuple(x.astype(np.float32) for x in units)
        for chunk, d, b, w in _gemm_sums(rest, f32, orders, m_cell, cache):
            bad |= finish(chunk, d, b, w)
    _finish_warning(bad)
    return GroupCI(diff=ci_d, rel=ci_r, replicates=None)


def bootstrap_groups(
    paired: Paired,
    mappings: Sequence[tuple[np.ndarray, int]],
    weighting: Weighting,
    spec: Bootstrap,
    keep: bool = False,
) -> list[GroupCI]:
    """Bootstrap CIs of diff and rel_change of the groups of each mapping ``(group_of_cell, n_groups)``.

    All mappings are computed from one pass over the cells when their replicate accumulators fit in memory;
    otherwise each mapping is computed in batches of groups. ``keep`` returns the replicates (G x R) too.
    """
    n_res = int(spec.n_resamples)
    n_stats = 2 if weighting == "language" else 3
    units = tuple(x.astype(np.float32) for x in paired.unit_sums())
    orders = _row_orders(paired, spec.seed)
    m_cell = paired.cells["n_units"].to_numpy()
    cache = _Counts(spec.seed, n_res)
    total = sum(n for _, n in mappings) * n_res * n_stats * 8
    if total <= _ACC_BYTES:
        accs = [np.zeros((n_stats, n, n_res)) for _, n in mappings]
        cells = np.argsort(m_cell, kind="stable")
        for chunk, d, b, w in _gemm_sums(cells, units, orders, m_cell, cache):
            for (g, n_g), acc in zip(mappings, accs, strict=True):
                _add(acc, g, n_g, chunk, (d, b, w), weighting, 0)
        return [
            _finish(paired, g, n_g, acc, weighting, spec, keep) for (g, n_g), acc in zip(mappings, accs, strict=True)
        ]
    out = []
    for g, n_g in mappings:
        per = max(1, _ACC_BYTES // (n_res * n_stats * 8))
        parts = []
        for g0 in range(0, n_g, per):
            g1 = min(n_g, g0 + per)
            cells = np.flatnonzero((g >= g0) & (g < g1))
            acc = np.zeros((n_stats, g1 - g0, n_res))
            for chunk, d, b, w in _gemm_sums(cells, units, orders, m_cell, cache):
                _add(acc, g, n_g, chunk, (d, b, w), weighting, g0)
            parts.append(acc)
        out.append(_finish(paired, g, n_g, np.concatenate(parts, axis=1), weighting, spec, keep))
    return out


def _add(
    acc: np.ndarray,
    g: np.ndarray,
    n_g: int,
    chunk: np.ndarray,
    sums: tuple[np.ndarray, np.ndarray, np.ndarray],
    weighting: Weighting,
    g0: int,
) -> None:
    d, b, w = sums
    gc = g[chunk] - g0
    if weighting == "language":
        scale = 1.0 / np.bincount(g, minlength=n_g)[g[chunk]]
        rd, rr = _stats(d, b, w)
        vals: tuple[np.ndarray, ...] = (rd * scale[:, None], rr * scale[:, None])
    else:
        vals = (d, b, w)
    order = np.argsort(gc, kind="stable")
    gs = gc[order]
    first = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]
    for s, val in enumerate(vals):
        acc[s][gs[first]] += np.add.reduceat(val[order].astype(np.float64), first, axis=0)


def _finish(
    paired: Paired, g: np.ndarray, n_g: int, acc: np.ndarray, weighting: Weighting, spec: Bootstrap, keep: bool
) -> GroupCI:
    est = point_estimates(paired, g, n_g, weighting)
    theta_d, theta_r = est["diff"].to_numpy(float), est["rel_change"].to_numpy(float)
    acc_d = acc_r = None
    if spec.method == "bca":
        acc_d, acc_r = jackknife_accel(paired, g, n_g, weighting)
    if weighting == "language":
        rd, rr = acc[0], acc[1]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            rd, rr = acc[0] / acc[2], 100.0 * acc[0] / acc[1]
    ci = GroupCI(
        diff=intervals(rd, theta_d, spec, acc_d),
        rel=intervals(rr, theta_r, spec, acc_r),
        replicates={"diff": rd, "rel_change": rr} if keep else None,
    )
    _finish_warning(_warn_nonfinite(rr, theta_r))
    return ci
