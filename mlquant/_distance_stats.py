"""The statistics of :mod:`mlquant.distance` (private): per-token values -> every metric with its uncertainty.

Means with the per-token (llama.cpp's) and the sentence-clustered CR1 standard errors, percentiles interpolated
between order statistics, and a cluster bootstrap that resamples whole sentences for every metric. The definitions
are in :mod:`mlquant.distance`'s docstring; that module re-exports the public names (``mq.distance``).

Example:
    >>> tokens = pd.DataFrame({"item_id": ["1", "1", "2", "2"], "kl": [0.1, 0.3, 0.2, 0.2],
    ...                        "kl_reverse": 0.2, "same_top": [True, False, True, True],
    ...                        "lp_base": -1.0, "lp_quant": [-1.2, -0.9, -1.0, -1.1]})
    >>> rows = summarize_tokens(tokens, Bootstrap(n_resamples=200)).set_index("metric")
    >>> float(rows.loc["dp_mean", "value"]) < 0 < float(rows.loc["ln_ppl_ratio", "value"])
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, DataError
from mlquant.stats import Bootstrap

__all__ = [
    "DEFAULT_CI",
    "DP_QUANTILES",
    "KL_QUANTILES",
    "METRICS",
    "TOKEN_COLUMNS",
    "check_ci",
    "cluster_se",
    "naive_se",
    "summarize_tokens",
]

#: Percentiles of the per-token KL that llama.cpp prints (name suffix -> fraction).
KL_QUANTILES: Mapping[str, float] = {"max": 1.0, "p99_9": 0.999, "p99": 0.99, "p95": 0.95, "p90": 0.90,
                                     "median": 0.5, "p10": 0.10, "p5": 0.05, "p1": 0.01, "p0_1": 0.001, "min": 0.0}
#: Percentiles of Δp that llama.cpp prints.
DP_QUANTILES: Mapping[str, float] = {"max": 1.0, "p99_9": 0.999, "p99": 0.99, "p95": 0.95, "p90": 0.90, "p75": 0.75,
                                     "median": 0.5, "p25": 0.25, "p10": 0.10, "p5": 0.05, "p1": 0.01, "p0_1": 0.001,
                                     "min": 0.0}
_MEANS = ("kl", "kl_reverse", "same_top_p", "dp_mean", "ln_ppl_ratio", "ln_ppl_base", "ln_ppl_quant")
#: Every metric of a :class:`mlquant.distance.DistanceTable`, in its row order.
METRICS: tuple[str, ...] = (
    *_MEANS[:4], "dp_rms", *_MEANS[4:], "ln_ppl_corr",
    *(f"kl_{k}" for k in KL_QUANTILES), *(f"dp_{k}" for k in DP_QUANTILES),
)
#: Columns of the per-token frames (:func:`mlquant.distance.token_distances`, the cache, :func:`summarize_tokens`).
TOKEN_COLUMNS = ["item_id", "position", "kl", "kl_reverse", "same_top", "lp_base", "lp_quant"]
#: The cluster bootstrap used when none is given.
DEFAULT_CI = Bootstrap(n_resamples=2000)
_BLOCK = 250  # bootstrap replicates per block (bounds the [replicates x tokens] weights in memory)


# ----- standard errors -------------------------------------------------------------------------------------------------
def naive_se(values: Any) -> float:
    """Per-token standard error of the mean, llama.cpp's ``mean_and_uncertainty``: sqrt((E[x²] - E[x]²) / (n - 1)).

    Example:
        >>> round(naive_se([1.0, 2.0, 3.0, 4.0]), 6)
        0.645497
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    mean = x.mean()
    return float(np.sqrt(max(float(np.mean(x * x) - mean * mean), 0.0) / (x.size - 1)))


def cluster_se(values: Any, clusters: Any) -> float:
    """Cluster-robust (CR1) standard error of the mean of ``values`` with the given cluster labels.

    With G clusters, token sums S_g, sizes n_g, N tokens and mean m: sqrt(G / (G - 1) · Σ_g (S_g - m n_g)²) / N —
    the sandwich variance of a regression on a constant with Stata's small-sample factor. NaN for one cluster.

    Example:
        >>> round(cluster_se([1.0, 1.0, 3.0, 3.0], ["a", "a", "b", "b"]), 6)  # two sentences, 1 and 3
        1.0
    """
    x = np.asarray(values, dtype=np.float64)
    codes, uniques = pd.factorize(np.asarray(clusters))
    n_groups = len(uniques)
    if n_groups < 2:
        return float("nan")
    sums = np.bincount(codes, weights=x, minlength=n_groups)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    resid = sums - x.mean() * sizes
    return float(np.sqrt(n_groups / (n_groups - 1) * np.sum(resid**2)) / x.size)


# ----- statistics of one (quant, language) -----------------------------------------------------------------------------
def _token_series(tokens: pd.DataFrame) -> dict[str, np.ndarray]:
    lp_b = tokens["lp_base"].to_numpy(np.float64)
    lp_q = tokens["lp_quant"].to_numpy(np.float64)
    return {
        "kl": tokens["kl"].to_numpy(np.float64),
        "kl_reverse": tokens["kl_reverse"].to_numpy(np.float64),
        "same_top_p": tokens["same_top"].to_numpy(np.float64),
        "dp_mean": np.exp(lp_q) - np.exp(lp_b),
        "ln_ppl_ratio": lp_b - lp_q,
        "ln_ppl_base": -lp_b,
        "ln_ppl_quant": -lp_q,
    }


def _pearson(sab: np.ndarray, sa: np.ndarray, sb: np.ndarray, saa: np.ndarray, sbb: np.ndarray, n: Any) -> Any:
    """Pearson correlation from sums (arrays: one value per bootstrap replicate)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = sab / n - (sa / n) * (sb / n)
        return cov / np.sqrt((saa / n - (sa / n) ** 2) * (sbb / n - (sb / n) ** 2))


def _weighted_quantiles(sorted_x: np.ndarray, weights: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """np.quantile (linear) of each row's resample: ``sorted_x`` repeated ``weights[r]`` times -> [rows, len(qs)]."""
    cum = np.cumsum(weights, axis=1)
    out = np.empty((weights.shape[0], qs.size))
    for r in range(weights.shape[0]):
        m = cum[r, -1]
        h = qs * (m - 1)
        k0 = np.floor(h)
        k1 = np.minimum(k0 + 1, m - 1)
        x0 = sorted_x[np.searchsorted(cum[r], k0, side="right")]
        x1 = sorted_x[np.searchsorted(cum[r], k1, side="right")]
        out[r] = x0 + (h - k0) * (x1 - x0)
    return out


def _replicates(series: dict[str, np.ndarray], codes: np.ndarray, n_groups: int, ci: Bootstrap) -> dict[str, np.ndarray]:
    """Cluster-bootstrap replicates of every metric: whole sentences drawn with replacement."""
    rng = np.random.default_rng(ci.seed)
    sizes = np.bincount(codes, minlength=n_groups).astype(np.float64)
    sums = {k: np.bincount(codes, weights=v, minlength=n_groups) for k, v in series.items()}
    dp = series["dp_mean"]
    sums["dp2"] = np.bincount(codes, weights=dp * dp, minlength=n_groups)
    lp_b, lp_q = -series["ln_ppl_base"], -series["ln_ppl_quant"]
    for name, v in (("bb", lp_b * lp_b), ("qq", lp_q * lp_q), ("bq", lp_b * lp_q)):
        sums[name] = np.bincount(codes, weights=v, minlength=n_groups)
    orders = {"kl": np.argsort(series["kl"], kind="stable"), "dp": np.argsort(dp, kind="stable")}
    quantiles = {"kl": np.array(list(KL_QUANTILES.values())), "dp": np.array(list(DP_QUANTILES.values()))}
    names = {"kl": [f"kl_{k}" for k in KL_QUANTILES], "dp": [f"dp_{k}" for k in DP_QUANTILES]}
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for start in range(0, ci.n_resamples, _BLOCK):
        size = min(_BLOCK, ci.n_resamples - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size).astype(np.float64)
        n = counts @ sizes
        rep = {k: counts @ s for k, s in sums.items()}
        for m in _MEANS:
            parts[m].append(rep[m] / n)
        parts["dp_rms"].append(np.sqrt(rep["dp2"] / n))
        parts["ln_ppl_corr"].append(
            _pearson(rep["bq"], -rep["ln_ppl_base"], -rep["ln_ppl_quant"], rep["bb"], rep["qq"], n)
        )
        for key, order in orders.items():
            values = (series["kl"] if key == "kl" else dp)[order]
            got = _weighted_quantiles(values, counts[:, codes[order]], quantiles[key])
            for j, m in enumerate(names[key]):
                parts[m].append(got[:, j])
    return {m: np.concatenate(p) for m, p in parts.items()}


def summarize_tokens(tokens: pd.DataFrame, ci: Bootstrap | None = None) -> pd.DataFrame:
    """Every metric of :data:`METRICS` from per-token values, with naive and sentence-clustered uncertainty.

    Args:
        tokens: one row per scored token, with the columns ``item_id`` (the sentence: the cluster), ``kl``,
            ``kl_reverse``, ``same_top`` (bool), ``lp_base`` and ``lp_quant`` (ln p of the true token).
        ci: the cluster bootstrap (percentile intervals; default 2,000 resamples, seed 0).

    Returns:
        One row per metric: ``metric``, ``value``, ``ci_low``, ``ci_high``, ``se`` (clustered; NaN for
        percentiles and the correlation), ``se_naive`` (per token, llama.cpp's), ``n_tokens``, ``n_sentences``.

    Raises:
        DataError: no token, or a column is missing.
    """
    ci = check_ci(ci)
    missing = sorted(set(TOKEN_COLUMNS) - {"position"} - set(tokens.columns))
    if missing:
        raise DataError(f"summarize_tokens: the token frame lacks columns {missing}; have {sorted(tokens.columns)}.")
    if len(tokens) == 0:
        raise DataError("summarize_tokens: no token to summarize (every sentence was empty?).")
    codes, uniques = pd.factorize(tokens["item_id"].astype(str))
    n_groups, n_tok = len(uniques), len(tokens)
    series = _token_series(tokens)
    dp = series["dp_mean"]
    value = {m: float(v.mean()) for m, v in series.items()}
    se = {m: cluster_se(v, codes) for m, v in series.items()}
    se_naive = {m: naive_se(v) for m, v in series.items()}
    # llama.cpp's ln-ratio SE from the two models' SEs and their covariance (= the SE of the paired difference).
    lp_b, lp_q = -series["ln_ppl_base"], -series["ln_ppl_quant"]
    cov = float(np.mean(lp_b * lp_q) - lp_b.mean() * lp_q.mean()) / (n_tok - 1) if n_tok > 1 else float("nan")
    se_naive["ln_ppl_ratio"] = float(
        np.sqrt(max(se_naive["ln_ppl_base"] ** 2 + se_naive["ln_ppl_quant"] ** 2 - 2.0 * cov, 0.0))
    )
    rms = float(np.sqrt(np.mean(dp * dp)))
    value["dp_rms"] = rms
    se["dp_rms"] = 0.5 / rms * cluster_se(dp * dp, codes) if rms > 0 else 0.0
    se_naive["dp_rms"] = 0.5 / rms * naive_se(dp * dp) if rms > 0 else 0.0
    n_arr = np.float64(n_tok)
    value["ln_ppl_corr"] = float(_pearson(
        np.sum(lp_b * lp_q), np.sum(lp_b), np.sum(lp_q), np.sum(lp_b**2), np.sum(lp_q**2), n_arr
    ))
    for prefix, qs, x in (("kl", KL_QUANTILES, series["kl"]), ("dp", DP_QUANTILES, dp)):
        for name, q in qs.items():
            value[f"{prefix}_{name}"] = float(np.quantile(x, q))
    alpha = (1.0 - ci.confidence) / 2.0
    reps = _replicates(series, codes, n_groups, ci) if n_groups >= 2 else {}
    rows = []
    for m in METRICS:
        lo, hi = (np.nanquantile(reps[m], [alpha, 1.0 - alpha]) if m in reps and np.isfinite(reps[m]).any()
                  else (np.nan, np.nan))
        rows.append({"metric": m, "value": value[m], "ci_low": float(lo), "ci_high": float(hi),
                     "se": se.get(m, np.nan), "se_naive": se_naive.get(m, np.nan),
                     "n_tokens": n_tok, "n_sentences": n_groups})
    return pd.DataFrame(rows)


def check_ci(ci: Bootstrap | None) -> Bootstrap:
    """``ci``, or the default cluster bootstrap for None.

    Raises:
        ConfigError: not a percentile :class:`~mlquant.stats.Bootstrap`.
    """
    if ci is None:
        return DEFAULT_CI
    if not isinstance(ci, Bootstrap) or ci.method != "percentile":
        got = ci.method if isinstance(ci, Bootstrap) else type(ci).__name__
        raise ConfigError(f"distance: ci.method={got!r}; the cluster bootstrap gives percentile intervals only "
                          "(ci=mq.stats.Bootstrap(n_resamples=..., confidence=..., seed=...)).")
    return ci
