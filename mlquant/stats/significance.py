"""Paired significance tests per cell or group, and multiplicity adjustment across a named family.

* :func:`mcnemar` -- exact McNemar test on the discordant pairs of binary (0/1) scores: always the exact binomial
  test (never the chi-square approximation; the exact test is cheap at any n and never anti-conservative).
* :func:`permutation_test` -- paired sign-flip permutation test of the (weighted) mean difference, flipping
  whole clusters when items share a ``group``. Exact where possible (integer differences by convolution of
  binomials -- for unclustered 0/1 scores this *is* the exact McNemar test --, or full enumeration when
  ``2**k <= n_resamples``), else Monte Carlo with ``n_resamples`` seeded sign vectors.
* :func:`wilcoxon` -- Wilcoxon signed-rank test of the per-item differences (continuous scores: chrF, bits per
  byte), by :func:`scipy.stats.wilcoxon` with its defaults (zeros dropped, exact for n <= 50 without ties).
* :func:`adjust` -- Holm or Benjamini-Hochberg within each family (equal to statsmodels ``multipletests``).

All tests are two-sided.

Example:
    >>> import pandas as pd
    >>> import mlquant as mq
    >>> df = pd.DataFrame({"quant": ["fp32"] * 6 + ["w4"] * 6, "task": "t", "lang": "en",
    ...                    "item_id": [str(i) for i in range(6)] * 2,
    ...                    "score": [1, 1, 1, 1, 1, 0] + [0, 0, 0, 0, 1, 0]})
    >>> float(mq.stats.mcnemar(df).to_frame().p_value.iloc[0])
    0.125
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
import scipy.stats as ss
from statsmodels.stats.multitest import multipletests

from mlquant.errors import ConfigError, DataError
from mlquant.stats._frame import Paired, binary_cells, pair, subset
from mlquant.stats._groups import group_cells
from mlquant.stats._types import FrameResult, TestResult, format_frame, iter_results

__all__ = ["TestTable", "adjust", "mcnemar", "permutation_test", "wilcoxon"]

_METHODS = {
    "holm": "holm",
    "bh": "fdr_bh",
    "fdr_bh": "fdr_bh",
    "benjamini-hochberg": "fdr_bh",
    "bonferroni": "bonferroni",
}
_EXACT_SUPPORT = 20_000


@dataclass(frozen=True, eq=False)
class TestTable(FrameResult):
    """Results of one test over cells or groups; iterate for :class:`TestResult` records.

    Attributes:
        test: the test's name.
        baseline: the baseline quant label.
        keys: the key columns of each row (quant, and the ``by`` columns).
        adjustment: ``"holm"`` / ``"fdr_bh"`` after :func:`adjust`, else None.
        family: the columns that define the families of :func:`adjust` (``()`` = one family of all rows).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "t", "lang": "en",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 1.0, 0.0, 1.0]})
        >>> [r.p_value for r in mcnemar(df)]
        [1.0]
    """

    test: str = ""
    baseline: str = "fp32"
    keys: tuple[str, ...] = ("quant", "task", "lang")
    adjustment: str | None = None
    family: tuple[str, ...] | None = None

    def __iter__(self) -> Iterator[TestResult]:
        return iter_results(self._frame, list(self.keys))

    def __str__(self) -> str:
        head = f"{self.test} vs {self.baseline!r} (two-sided)"
        if self.adjustment:
            fam = "all rows" if not self.family else f"within each {'/'.join(self.family)}"
            head += f"; p_adjusted by {self.adjustment} {fam}"
        return head + "\n" + format_frame(self._frame, digits=4, max_rows=200)


def _setup(
    results: Any, baseline: str | None, by: str | Sequence[str], binary_only: bool, test: str
) -> tuple[Paired, np.ndarray, pd.DataFrame]:
    paired = pair(results, baseline)
    baseline = paired.baseline
    if binary_only:
        is_bin = binary_cells(paired)
        if not is_bin.any():
            raise DataError(
                f"{test} needs binary (0/1) scores, and no cell has them (metrics: "
                f"{sorted(set(paired.cells['metric'].astype(str)))}); use wilcoxon or permutation_test."
            )
        if not is_bin.all():
            skipped = paired.cells.loc[~is_bin, "task"].astype(str).unique().tolist()
            warnings.warn(
                f"{test}: {int((~is_bin).sum())} cell(s) with non-binary scores (tasks {skipped}) are skipped; "
                "use wilcoxon or permutation_test for them.",
                stacklevel=3,
            )
            paired = subset(paired, is_bin)
    g, groups = group_cells(paired, by)
    return paired, g, groups


def _table(groups: pd.DataFrame, cols: dict[str, Any], test: str, paired: Paired) -> TestTable:
    frame = groups.drop(columns=["n_cells", "n_langs"]).copy()
    keys = tuple(frame.columns)
    for name, values in cols.items():
        frame[name] = values
    frame["test"] = test
    return TestTable(_frame=frame, test=test, baseline=paired.baseline, keys=keys)


def mcnemar(results: Any, baseline: str | None = None, by: str | Sequence[str] = ("task", "lang")) -> TestTable:
    """Exact McNemar test of every quantized cell (or group) against its baseline, on binary scores.

    With ``b`` items correct in the baseline and wrong after quantization and ``c`` the reverse, the p-value is
    the two-sided exact binomial test of ``b`` successes in ``b + c`` trials with p = 1/2 (``scipy.stats.binomtest``
    gives the same number); ``b + c = 0`` gives p = 1. Always exact (see the module docstring). Counts items
    (``weight`` is ignored) and treats them as independent; for items that share a context use
    :func:`permutation_test`, which flips whole clusters. Cells with non-binary scores are skipped with a warning.

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        by: grouping columns besides quant (see :func:`mlquant.stats.relative_change`); a group pools its items.

    Returns:
        A :class:`TestTable` with ``n``, ``b`` (correct -> wrong), ``c`` (wrong -> correct), ``estimate``
        ((c - b) / n, the accuracy difference), ``statistic`` (min(b, c)) and ``p_value``.

    Raises:
        DataError: no cell has binary scores.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 5 + ["w4"] * 5, "task": "t", "lang": "en",
        ...                    "item_id": [str(i) for i in range(5)] * 2,
        ...                    "score": [1, 1, 1, 1, 1] + [0, 0, 0, 0, 0]})
        >>> mcnemar(df).to_frame()[["b", "c", "p_value"]].values.tolist()
        [[5.0, 0.0, 0.0625]]

    References:
        McNemar, Q. (1947). Note on the sampling error of the difference between correlated proportions or
        percentages. Psychometrika 12(2). Fagerland, M. W., Lydersen, S., & Laake, P. (2013). The McNemar test
        for binary matched-pairs data: mid-p and asymptotic are better than exact conditional. BMC Med Res Meth 13.
    """
    paired, g, groups = _setup(results, baseline, by, True, "mcnemar")
    gi = g[paired.cell]
    n_g = len(groups)
    b = np.bincount(gi, weights=((paired.b == 1) & (paired.q == 0)).astype(float), minlength=n_g)
    c = np.bincount(gi, weights=((paired.b == 0) & (paired.q == 1)).astype(float), minlength=n_g)
    n = np.bincount(gi, minlength=n_g)
    p = _binom_two_sided(b, c)
    cols = {"n": n, "b": b, "c": c, "estimate": (c - b) / n, "statistic": np.minimum(b, c), "p_value": p}
    return _table(groups, cols, "mcnemar-exact", paired)


def _binom_two_sided(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial p-value of b vs c discordant pairs (p = 1/2), vectorized."""
    total = b + c
    with np.errstate(invalid="ignore"):
        p = np.minimum(1.0, 2.0 * ss.binom.cdf(np.minimum(b, c), total, 0.5))
    return np.where(total > 0, p, 1.0)


def _exact_integer(a: np.ndarray, t: float) -> float:
    """Exact two-sided sign-flip p-value of the sum of ``±a`` (positive integers) at observed sum ``t``."""
    vals, counts = np.unique(a.astype(np.int64), return_counts=True)
    pmf = np.array([1.0])
    offset = 0
    for v, k in zip(vals.tolist(), counts.tolist(), strict=True):
        comp = np.zeros(2 * v * k + 1)
        comp[:: 2 * v] = ss.binom.pmf(np.arange(k + 1), k, 0.5)
        pmf = np.convolve(pmf, comp)
        offset += v * k
    values = np.arange(len(pmf)) - offset
    return float(min(1.0, pmf[np.abs(values) >= abs(t) - 1e-9].sum()))


def _enumerate(a: np.ndarray, t: float) -> float:
    """Exact two-sided sign-flip p-value by enumerating all 2**k sign vectors."""
    k = len(a)
    signs = 1.0 - 2.0 * ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1)
    null = signs @ a
    tol = 1e-12 * max(1.0, float(np.abs(a).sum()))
    return float(np.mean(np.abs(null) >= abs(t) - tol))


def permutation_test(
    results: Any,
    baseline: str | None = None,
    by: str | Sequence[str] = ("task", "lang"),
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> TestTable:
    """Paired sign-flip permutation test of the mean difference, per cell or group (two-sided).

    Under the null hypothesis that quantization does not change the expected score, the baseline and quantized
    scores of an item are exchangeable, so the sign of each unit's difference ``sum w(q - b)`` is a fair coin (a
    unit is a cluster of items sharing a ``group``, else one item). The statistic is the weighted mean difference.
    The p-value is exact when the unit differences are integers (convolution of binomials; for unclustered 0/1
    scores this equals the exact McNemar test) or when ``2**k <= n_resamples`` for ``k`` non-zero units (full
    enumeration, as :func:`scipy.stats.permutation_test` does); otherwise it is the Monte Carlo p-value
    ``(1 + #{|T*| >= |T|}) / (n_resamples + 1)`` from seeded sign vectors (column ``exact`` says which).

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        by: grouping columns besides quant; a group pools its units.
        n_resamples: Monte Carlo sign vectors where the test is not exact.
        seed: seed of the Monte Carlo draws.

    Returns:
        A :class:`TestTable` with ``n``, ``n_units``, ``estimate`` (weighted mean of q - b), ``statistic`` (the
        sum of unit differences), ``p_value`` and ``exact``.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "mt", "lang": "en",
        ...                    "item_id": list("abcd") * 2, "score": [50., 60, 70, 80, 49, 58, 66, 71]})
        >>> round(float(permutation_test(df).to_frame().p_value.iloc[0]), 6)
        0.125

    References:
        Good, P. (2005). Permutation, Parametric, and Bootstrap Tests of Hypotheses, 3rd ed., sec. 3.7.
        Dror, R., et al. (2018). The Hitchhiker's Guide to Testing Statistical Significance in NLP. ACL.
    """
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise ConfigError(f"n_resamples must be an integer >= 100, got {n_resamples!r}.")
    paired, g, groups = _setup(results, baseline, by, False, "permutation_test")
    n_g = len(groups)
    ud, _, uw = paired.unit_sums()
    gu = g[paired.unit_cell]
    t_obs = np.bincount(gu, weights=ud, minlength=n_g)
    w_tot = np.bincount(gu, weights=uw, minlength=n_g)
    p = np.full(n_g, np.nan)
    exact = np.zeros(n_g, dtype=bool)
    nz = ud != 0
    ones = nz & (np.abs(np.abs(ud) - 1.0) < 1e-12)
    # Unclustered 0/1 scores with unit weights: every non-zero difference is +-1 -> the exact McNemar p-value.
    simple = np.bincount(gu, weights=(nz & ~ones).astype(float), minlength=n_g) == 0
    n_pos = np.bincount(gu, weights=(ones & (ud > 0)).astype(float), minlength=n_g)
    n_neg = np.bincount(gu, weights=(ones & (ud < 0)).astype(float), minlength=n_g)
    p[simple] = _binom_two_sided(n_pos, n_neg)[simple]
    exact[simple] = True
    order = np.argsort(gu, kind="stable")
    bounds = np.searchsorted(gu[order], np.arange(n_g + 1))
    mc: list[int] = []
    k_max = int(np.floor(np.log2(n_resamples)))
    for gi in np.flatnonzero(~simple):
        a = ud[order[bounds[gi] : bounds[gi + 1]]]
        a = np.abs(a[a != 0])
        if np.all(np.abs(a - np.round(a)) < 1e-9) and a.sum() <= _EXACT_SUPPORT:
            p[gi], exact[gi] = _exact_integer(np.round(a), t_obs[gi]), True
        elif len(a) <= k_max:
            p[gi], exact[gi] = _enumerate(a, t_obs[gi]), True
        else:
            mc.append(int(gi))
    if mc:
        mags = [np.abs(_nonzero(ud[order[bounds[gi] : bounds[gi + 1]]])) for gi in mc]
        p[mc] = _monte_carlo(mags, t_obs[mc], np.array(mc), n_resamples, seed)
    n = np.bincount(g[paired.cell], minlength=n_g)
    n_units = np.bincount(gu, minlength=n_g)
    cols = {"n": n, "n_units": n_units, "estimate": t_obs / w_tot, "statistic": t_obs, "p_value": p, "exact": exact}
    return _table(groups, cols, "sign-flip-permutation", paired)


def _nonzero(x: np.ndarray) -> np.ndarray:
    nonzero: np.ndarray = x[x != 0]
    return nonzero


def _monte_carlo(mags: list[np.ndarray], t_obs: np.ndarray, ids: np.ndarray, n_res: int, seed: int) -> np.ndarray:
    """Monte Carlo sign-flip p-values, from one seeded sign matrix shared by all groups.

    A group with k non-zero units uses the matrix's first k columns (its entries are iid fair signs), with its
    magnitudes multiplied by seeded per-group random signs, which leaves its null law unchanged and makes the
    groups' draws uncorrelated.
    """
    k_all = np.array([len(a) for a in mags])
    signs = np.random.default_rng([seed, 2]).integers(0, 2, size=(n_res, int(k_all.max())), dtype=np.int8) * 2 - 1
    signs = signs.astype(np.float32)
    out = np.empty(len(mags))
    for k in np.unique(k_all):
        sel = np.flatnonzero(k_all == k)
        x = np.stack([mags[i] for i in sel], axis=1)
        for j, i in enumerate(sel):
            x[:, j] *= np.random.default_rng([seed, 3, int(ids[i])]).integers(0, 2, size=k) * 2 - 1
        x = x.astype(np.float32)
        null = np.abs(signs[:, :k] @ x).astype(np.float64)
        tol = 1e-5 * np.abs(x).sum(axis=0)
        hits = np.count_nonzero(null >= np.abs(t_obs[sel])[None, :] - tol[None, :], axis=0)
        out[sel] = (1.0 + hits) / (n_res + 1.0)
    return out


def wilcoxon(results: Any, baseline: str | None = None, by: str | Sequence[str] = ("task", "lang")) -> TestTable:
    """Wilcoxon signed-rank test of the per-item differences q - b, per cell or group (two-sided).

    For continuous per-item scores (chrF, bits per byte). Calls :func:`scipy.stats.wilcoxon` with its defaults
    (``zero_method="wilcox"``: zero differences are dropped; exact distribution for n <= 50 without ties, else the
    normal approximation), on groups of equal size at once. A group whose differences are all zero gets p = 1.
    Items are unweighted and independent (``weight`` and ``group`` are ignored; use :func:`permutation_test` for
    weighted or clustered items). The test is about the pseudo-median, not the mean, of the differences.

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        by: grouping columns besides quant; a group pools its items.

    Returns:
        A :class:`TestTable` with ``n``, ``n_nonzero``, ``estimate`` (mean of q - b), ``statistic`` (scipy's: the
        smaller of the positive and negative rank sums) and ``p_value``.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 6 + ["w4"] * 6, "task": "mt", "lang": "en",
        ...                    "item_id": list("abcdef") * 2,
        ...                    "score": [50., 60, 70, 80, 90, 40, 48, 57, 66, 75, 84, 33]})
        >>> float(wilcoxon(df).to_frame().p_value.iloc[0])
        0.03125

    References:
        Wilcoxon, F. (1945). Individual comparisons by ranking methods. Biometrics Bulletin 1(6).
    """
    paired, g, groups = _setup(results, baseline, by, False, "wilcoxon")
    gi = g[paired.cell]
    n_g = len(groups)
    order = np.argsort(gi, kind="stable")
    d = (paired.q - paired.b)[order]
    bounds = np.searchsorted(gi[order], np.arange(n_g + 1))
    sizes = np.diff(bounds)
    stat, p = np.full(n_g, np.nan), np.full(n_g, np.nan)
    nonzero = np.bincount(gi, weights=(paired.q != paired.b).astype(float), minlength=n_g).astype(int)
    for size in np.unique(sizes):
        these = np.flatnonzero(sizes == size)
        live = these[nonzero[these] > 0]
        stat[these[nonzero[these] == 0]], p[these[nonzero[these] == 0]] = 0.0, 1.0
        if len(live):
            mat = np.stack([d[bounds[x] : bounds[x + 1]] for x in live])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = ss.wilcoxon(mat, axis=1)
            stat[live], p[live] = res.statistic, res.pvalue
    mean = np.bincount(gi, weights=paired.q - paired.b, minlength=n_g) / np.maximum(sizes, 1)
    cols = {"n": sizes, "n_nonzero": nonzero, "estimate": mean, "statistic": stat, "p_value": p}
    return _table(groups, cols, "wilcoxon", paired)


@overload
def adjust(tests: TestTable, method: str = ..., family: str | Sequence[str] | None = ...) -> TestTable: ...
@overload
def adjust(tests: pd.DataFrame, method: str = ..., family: str | Sequence[str] | None = ...) -> pd.DataFrame: ...
@overload
def adjust(tests: Sequence[float] | np.ndarray, method: str = ..., family: None = ...) -> np.ndarray: ...
def adjust(
    tests: TestTable | pd.DataFrame | Sequence[float] | np.ndarray,
    method: Literal["holm", "bh", "fdr_bh", "benjamini-hochberg", "bonferroni"] | str = "holm",
    family: str | Sequence[str] | None = None,
) -> TestTable | pd.DataFrame | np.ndarray:
    """Adjust p-values for multiplicity within each family: Holm (FWER) or Benjamini-Hochberg (FDR).

    The family is what the user names: ``family=None`` adjusts all rows together (all cells of the study: the
    default), ``family="quant"`` adjusts within each method, ``family=("quant", "task")`` within each method and
    task. Missing p-values stay missing and do not count. The values equal
    :func:`statsmodels.stats.multitest.multipletests` (Holm and BH are computed in place, see ``_step``).

    Args:
        tests: a :class:`TestTable`, a frame with a ``p_value`` column, or a sequence of p-values.
        method: ``"holm"``, ``"bh"`` (= ``"fdr_bh"``, Benjamini-Hochberg) or ``"bonferroni"``.
        family: columns that split the rows into families (not for a plain sequence).

    Returns:
        The same kind of object with ``p_adjusted`` (a column, or the array itself), plus ``adjust_method``
        and ``family`` columns for tables.

    Raises:
        ConfigError: unknown method, a family column that the table lacks, or p-values outside [0, 1].

    Example:
        >>> adjust([0.01, 0.04, 0.03], "holm").round(3).tolist()
        [0.03, 0.06, 0.06]
        >>> adjust([0.01, 0.04, 0.03], "bh").round(3).tolist()
        [0.03, 0.04, 0.04]

    References:
        Holm, S. (1979). A simple sequentially rejective multiple test procedure. Scand J Stat 6(2).
        Benjamini, Y., & Hochberg, Y. (1995). Controlling the false discovery rate. JRSS B 57(1).
    """
    sm_method = _METHODS.get(str(method).lower())
    if sm_method is None:
        raise ConfigError(f"unknown adjustment method {method!r}; expected one of {sorted(_METHODS)}.")
    if isinstance(tests, TestTable):
        frame = _adjust_frame(tests.to_frame(), sm_method, family)
        fam = None if family is None else ((family,) if isinstance(family, str) else tuple(family))
        return TestTable(
            _frame=frame, test=tests.test, baseline=tests.baseline, keys=tests.keys, adjustment=sm_method, family=fam
        )
    if isinstance(tests, pd.DataFrame):
        return _adjust_frame(tests.copy(), sm_method, family)
    if family is not None:
        raise ConfigError("family= needs a table (TestTable or DataFrame), not a plain sequence of p-values.")
    return _adjust_array(np.asarray(tests, dtype=float), sm_method)


def _step(p: np.ndarray, method: str) -> np.ndarray:
    """Holm / Benjamini-Hochberg adjusted p-values, as ``multipletests`` computes them (golden-tested).

    Computed here because statsmodels' Holm branch calls ``gc.collect()`` on every call, which costs ~0.1 s in a
    process holding a large study; the other methods go to ``multipletests``.
    """
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ranked * np.arange(m, 0, -1))
    else:  # fdr_bh
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def _adjust_array(p: np.ndarray, method: str) -> np.ndarray:
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ConfigError("p-values must lie in [0, 1].")
    if ok.any():
        out[ok] = _step(p[ok], method) if method in ("holm", "fdr_bh") else multipletests(p[ok], method=method)[1]
    return out


def _adjust_frame(frame: pd.DataFrame, method: str, family: str | Sequence[str] | None) -> pd.DataFrame:
    if "p_value" not in frame.columns:
        raise ConfigError(f"the table has no 'p_value' column (columns: {list(frame.columns)}).")
    fam = [] if family is None else ([family] if isinstance(family, str) else list(family))
    missing = [c for c in fam if c not in frame.columns]
    if missing:
        raise ConfigError(f"family column {missing[0]!r} is not in the table (columns: {list(frame.columns)}).")
    p = frame["p_value"].to_numpy(dtype=float)
    adj = np.full(len(frame), np.nan)
    if fam:
        for idx in frame.groupby(fam, sort=False, dropna=False).indices.values():
            adj[idx] = _adjust_array(p[idx], method)
    else:
        adj = _adjust_array(p, method)
    frame["p_adjusted"] = adj
    frame["adjust_method"] = method
    frame["family"] = "all" if not fam else "/".join(fam)
    return frame
