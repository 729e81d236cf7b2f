"""Golden tests of mlquant.stats against scipy.stats and statsmodels on fixed data.

Each test compares with the reference library's value on the same data *and* pins a few literal numbers, so it
fails if either the implementation or the reference changes its answer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from mlquant import stats

LANG_META = {"script": "Latn", "resource_class": 5, "family": "Indo-European"}


def paired_frame(b: np.ndarray, q: np.ndarray, task: str = "t", lang: str = "en", **extra: object) -> pd.DataFrame:
    """A two-cell frame: baseline fp32 scores b and quantized w4 scores q for the same items."""
    n = len(b)
    ids = [f"i{i:03d}" for i in range(n)]
    df = pd.DataFrame(
        {"quant": ["fp32"] * n + ["w4"] * n, "task": task, "lang": lang, "item_id": ids * 2, "score": np.r_[b, q]}
    )
    for k, v in {**LANG_META, **extra}.items():
        df[k] = v if not isinstance(v, np.ndarray) else np.r_[v, v]
    return df


def binary_pair(seed: int, n: int, p: float = 0.7, flip: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = (rng.random(n) < p).astype(float)
    q = np.where(rng.random(n) < flip, 1 - b, b)
    return b, q


# ---------------------------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(("seed", "n"), [(0, 30), (1, 100), (2, 400), (3, 1000)])
def test_mcnemar_equals_scipy_binomtest(seed: int, n: int) -> None:
    b, q = binary_pair(seed, n)
    row = stats.mcnemar(paired_frame(b, q)).to_frame().iloc[0]
    n10 = int(((b == 1) & (q == 0)).sum())
    n01 = int(((b == 0) & (q == 1)).sum())
    assert (row["b"], row["c"]) == (n10, n01)
    ref = ss.binomtest(n10, n10 + n01, 0.5).pvalue
    assert row["p_value"] == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_mcnemar_literals() -> None:
    b = np.r_[np.ones(60), np.zeros(40)]
    q = b.copy()
    q[:12] = 0  # 12 losses
    q[60:63] = 1  # 3 gains
    row = stats.mcnemar(paired_frame(b, q)).to_frame().iloc[0]
    assert row["p_value"] == pytest.approx(0.03515625, abs=1e-12)  # 2 * P(Bin(15, .5) <= 3)
    assert row["estimate"] == pytest.approx(-0.09)
    same = stats.mcnemar(paired_frame(b, b)).to_frame().iloc[0]
    assert same["p_value"] == 1.0


# ---------------------------------------------------------------------------------------------- permutation


def _scipy_perm(b: np.ndarray, q: np.ndarray, n_resamples: float = np.inf, seed: int = 0) -> float:
    res = ss.permutation_test(
        (q, b),
        lambda x, y, axis=-1: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=n_resamples,
        alternative="two-sided",
        vectorized=True,
        random_state=seed,
    )
    return float(res.pvalue)


def test_permutation_exact_enumeration_equals_scipy() -> None:
    rng = np.random.default_rng(5)
    b = rng.normal(50, 10, 11)
    q = b + rng.normal(-2, 3, 11)
    row = stats.permutation_test(paired_frame(b, q, metric="chrf")).to_frame().iloc[0]
    assert bool(row["exact"])
    assert row["p_value"] == pytest.approx(_scipy_perm(b, q), rel=1e-12)
    assert row["p_value"] == pytest.approx(14 / 2048, abs=1e-15)


def test_permutation_binary_equals_exact_mcnemar_and_scipy() -> None:
    b, q = binary_pair(7, 12, flip=0.4)
    row = stats.permutation_test(paired_frame(b, q)).to_frame().iloc[0]
    n10 = int(((b == 1) & (q == 0)).sum())
    n01 = int(((b == 0) & (q == 1)).sum())
    assert row["p_value"] == pytest.approx(ss.binomtest(n10, n10 + n01, 0.5).pvalue, rel=1e-12)
    assert row["p_value"] == pytest.approx(_scipy_perm(b, q), rel=1e-12)


def test_permutation_clusters_equal_scipy_on_cluster_totals() -> None:
    rng = np.random.default_rng(11)
    n_clusters, size = 9, 4
    b = (rng.random(n_clusters * size) < 0.6).astype(float)
    q = np.where(rng.random(n_clusters * size) < 0.3, 1 - b, b)
    groups = np.repeat([f"p{i}" for i in range(n_clusters)], size)
    row = stats.permutation_test(paired_frame(b, q, group=groups)).to_frame().iloc[0]
    assert row["n_units"] == n_clusters and bool(row["exact"])
    tb, tq = b.reshape(n_clusters, size).sum(1), q.reshape(n_clusters, size).sum(1)
    assert row["p_value"] == pytest.approx(_scipy_perm(tb, tq), rel=1e-12)


def test_permutation_monte_carlo_close_to_scipy() -> None:
    rng = np.random.default_rng(3)
    b = rng.normal(55, 15, 300)
    q = b + rng.normal(-0.4, 3, 300)
    row = stats.permutation_test(paired_frame(b, q, metric="chrf"), n_resamples=20_000, seed=1).to_frame().iloc[0]
    assert not bool(row["exact"])
    ref = _scipy_perm(b, q, n_resamples=20_000, seed=2)
    assert row["p_value"] == pytest.approx(ref, abs=0.01)
    assert row["p_value"] == pytest.approx(0.3690315484, abs=1e-9)  # pinned (seed 1)


# ---------------------------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_equals_scipy() -> None:
    rng = np.random.default_rng(2)
    frames, refs = [], []
    for k, (lang, n) in enumerate([("en", 40), ("fr", 40), ("de", 300)]):
        b = np.round(rng.normal(50, 10, n), 1)
        q = np.round(b + rng.normal(-0.5 * k, 2, n), 1)
        q[:3] = b[:3]  # zero differences
        frames.append(paired_frame(b, q, lang=lang, metric="chrf"))
        refs.append(ss.wilcoxon(q - b))
    out = stats.wilcoxon(pd.concat(frames, ignore_index=True)).to_frame().set_index("lang")
    for lang, ref in zip(["en", "fr", "de"], refs, strict=True):
        assert out.loc[lang, "statistic"] == pytest.approx(ref.statistic)
        assert out.loc[lang, "p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert out.loc["en", "p_value"] == pytest.approx(0.7354956215, abs=1e-9)


# ---------------------------------------------------------------------------------------------- bootstrap


def _scipy_boot(b: np.ndarray, q: np.ndarray, stat: str, method: str) -> tuple[float, float]:
    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return y.mean(axis) - x.mean(axis)

    def rel(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return 100 * (y.mean(axis) - x.mean(axis)) / x.mean(axis)

    res = ss.bootstrap(
        (b, q),
        diff if stat == "diff" else rel,
        paired=True,
        vectorized=True,
        n_resamples=20_000,
        method=method,
        random_state=12,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_close_to_scipy(method: str) -> None:
    b, q = binary_pair(4, 500, flip=0.1)
    t = stats.paired_bootstrap(paired_frame(b, q), n_resamples=20_000, method=method, seed=3).to_frame().iloc[0]
    lo, hi = _scipy_boot(b, q, "diff", method)
    assert t["diff_lo"] == pytest.approx(lo, abs=0.004)
    assert t["diff_hi"] == pytest.approx(hi, abs=0.004)
    lo, hi = _scipy_boot(b, q, "rel", method)
    assert t["rel_change_lo"] == pytest.approx(lo, abs=0.6)
    assert t["rel_change_hi"] == pytest.approx(hi, abs=0.6)


def test_bootstrap_continuous_weighted_close_to_scipy() -> None:
    rng = np.random.default_rng(8)
    b = rng.gamma(4, 0.2, 400)
    q = b * rng.normal(1.02, 0.03, 400)
    w = rng.integers(50, 400, 400).astype(float)
    df = paired_frame(b, q, metric="bpb", higher_is_better=False, weight=w)
    t = stats.paired_bootstrap(df, n_resamples=20_000, seed=1).to_frame().iloc[0]

    def wrel(x: np.ndarray, y: np.ndarray, ww: np.ndarray, axis: int = -1) -> np.ndarray:
        return 100 * ((y - x) * ww).sum(axis) / (x * ww).sum(axis)

    res = ss.bootstrap(
        (b, q, w), wrel, paired=True, vectorized=True, n_resamples=20_000, method="percentile", random_state=0
    )
    assert t["rel_change"] == pytest.approx(100 * ((q - b) * w).sum() / (b * w).sum())
    assert t["rel_change_lo"] == pytest.approx(res.confidence_interval.low, abs=0.03)
    assert t["rel_change_hi"] == pytest.approx(res.confidence_interval.high, abs=0.03)
    assert t["rel_drop"] == pytest.approx(t["rel_change"])  # lower is better: a positive change is a drop


def test_cluster_bootstrap_close_to_scipy_on_cluster_totals() -> None:
    rng = np.random.default_rng(9)
    n_clusters, size = 150, 4
    # Items of a cluster share a difficulty: the cluster bootstrap must see the correlation.
    level = np.repeat(rng.random(n_clusters), size)
    b = (rng.random(n_clusters * size) < level).astype(float)
    q = np.where(rng.random(n_clusters * size) < 0.15 * level, 0.0, b)
    groups = np.repeat([f"p{i}" for i in range(n_clusters)], size)
    t = stats.paired_bootstrap(paired_frame(b, q, group=groups), n_resamples=20_000, seed=0).to_frame().iloc[0]
    db = (q - b).reshape(n_clusters, size).sum(1)
    res = ss.bootstrap(
        (db, np.full(n_clusters, size)),
        lambda d, w, axis=-1: d.sum(axis) / w.sum(axis),
        paired=True,
        vectorized=True,
        n_resamples=20_000,
        method="percentile",
        random_state=0,
    )
    assert t["n_units"] == n_clusters
    assert t["diff_lo"] == pytest.approx(res.confidence_interval.low, abs=0.003)
    assert t["diff_hi"] == pytest.approx(res.confidence_interval.high, abs=0.003)


def test_bootstrap_literals_pinned() -> None:
    b, q = binary_pair(4, 500, flip=0.1)
    t = stats.paired_bootstrap(paired_frame(b, q), n_resamples=10_000, seed=0).to_frame().iloc[0]
    assert t["diff"] == pytest.approx(-0.036)
    assert (t["diff_lo"], t["diff_hi"]) == (-0.064, -0.008)
    assert (t["rel_change_lo"], t["rel_change_hi"]) == (-9.638555, -1.294394)
    bca = stats.paired_bootstrap(paired_frame(b, q), n_resamples=10_000, seed=0, method="bca").to_frame().iloc[0]
    assert (bca["diff_lo"], bca["diff_hi"]) == (-0.064, -0.01)
    assert (bca["rel_change_lo"], bca["rel_change_hi"]) == (-9.77918, -1.54321)


# ---------------------------------------------------------------------------------------------- adjust


def test_adjust_equals_multipletests() -> None:
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan, 0.5])
    ok = ~np.isnan(p)
    for ours, ref in (("holm", "holm"), ("bh", "fdr_bh")):
        got = stats.adjust(p, ours)
        assert np.isnan(got[~ok]).all()
        np.testing.assert_allclose(got[ok], multipletests(p[ok], method=ref)[1], rtol=1e-12)
    np.testing.assert_allclose(stats.adjust([0.01, 0.02, 0.03, 0.04], "holm"), [0.04, 0.06, 0.06, 0.06], rtol=1e-12)
    np.testing.assert_allclose(stats.adjust([0.01, 0.02, 0.03, 0.04], "bh"), [0.04, 0.04, 0.04, 0.04], rtol=1e-12)


def test_adjust_within_named_families() -> None:
    frame = pd.DataFrame({"quant": ["a", "a", "b", "b"], "p_value": [0.01, 0.04, 0.02, 0.03]})
    out = stats.adjust(frame, "holm", family="quant")
    np.testing.assert_allclose(out["p_adjusted"], [0.02, 0.04, 0.04, 0.04])
    assert set(out["family"]) == {"quant"}
    allrows = stats.adjust(frame, "holm")
    np.testing.assert_allclose(allrows["p_adjusted"], multipletests(frame.p_value, method="holm")[1])


# ---------------------------------------------------------------------------------------------- mixed model


def _mixed_data(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    langs = [
        ("en", "Latn", 5),
        ("fr", "Latn", 5),
        ("de", "Latn", 5),
        ("es", "Latn", 5),
        ("ja", "Jpan", 5),
        ("zh", "Hans", 5),
        ("ar", "Arab", 5),
        ("hi", "Deva", 4),
    ]
    for lang, script, rc in langs:
        b = (rng.random(40) < 0.7).astype(float)
        for quant, loss in (("fp32", 0.0), ("w8", 0.03), ("w4", 0.08)):
            extra = 0.06 if script != "Latn" and quant != "fp32" else 0.0
            q = np.where((b == 1) & (rng.random(40) < loss + extra), 0.0, b) if quant != "fp32" else b
            rows.append(
                pd.DataFrame(
                    {
                        "quant": quant,
                        "task": "xcopa",
                        "lang": lang,
                        "item_id": [str(i) for i in range(40)],
                        "score": q,
                        "script": script,
                        "resource_class": rc,
                        "family": "f",
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def test_mixed_effects_matches_statsmodels() -> None:
    df = _mixed_data()
    fit = stats.mixed_effects(df)
    data, unit = stats.drop_frame(df)
    assert unit == "points"
    data["method"] = pd.Categorical(data["method"], categories=["w8", "w4"])
    model = smf.mixedlm(
        "drop ~ C(method) + non_latin + resource_class",
        data,
        groups=data["lang"],
        re_formula="1",
        vc_formula={"item": "0 + C(item)"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # statsmodels' default optimizer sequence stops at a worse REML optimum on this data (-2851.87, not
        # converged); its derivative-free optimizers reach the best one, which is the reference.
        refs = [model.fit(reml=True, method=m) for m in ("powell", "nm")]
    ref = max(refs, key=lambda r: r.llf)
    assert fit.formula == "drop ~ C(method) + non_latin + resource_class"
    assert fit.llf == pytest.approx(ref.llf, abs=1e-4)
    for term, ref_term in (
        ("non_latin", "non_latin"),
        ("method[w4]", "C(method)[T.w4]"),
        ("resource_class", "resource_class"),
    ):
        assert fit.effect(term).estimate == pytest.approx(ref.params[ref_term], abs=1e-6)
        assert fit.effect(term).se == pytest.approx(ref.bse[ref_term], rel=1e-3)
    assert fit.variance["item"] == pytest.approx(ref.vcomp[0], rel=1e-2)
    # Literals (pinned).
    assert fit.effect("non_latin").estimate == pytest.approx(3.75, abs=1e-9)
    assert fit.effect("non_latin").se == pytest.approx(1.8105, abs=1e-3)
    assert fit.effect("method[w4]").estimate == pytest.approx(ref.params["C(method)[T.w4]"], abs=1e-9)
    assert fit.n_obs == 640 and fit.n_langs == 8 and fit.n_items == 320


# ---------------------------------------------------------------------------------------------- power


def test_power_mdd_matches_normal_power_and_simulation() -> None:
    # Continuous: z-approximation equals statsmodels' one-sample normal power solve.
    rng = np.random.default_rng(1)
    b = rng.normal(50, 10, 400)
    q = b + rng.normal(0, 4, 400)
    row = stats.power(paired_frame(b, q, metric="chrf")).to_frame().iloc[0]
    sd = np.std(q - b, ddof=1)
    es = NormalIndPower().solve_power(nobs1=400, alpha=0.05, power=0.8, ratio=0)
    assert row["method"] == "z"
    assert row["mdd"] == pytest.approx(es * sd, rel=2e-3)
    # Binary: at the MDD, the exact McNemar test has about 80 % power (simulated).
    psi, n = 0.1, 800
    mdd = float(stats.minimum_detectable_difference(n, psi))
    sim = np.random.default_rng(0)
    p_loss, p_gain = (psi + mdd) / 2, (psi - mdd) / 2
    counts = sim.multinomial(n, [p_loss, p_gain, 1 - psi], size=4000)
    pvals = np.minimum(1, 2 * ss.binom.cdf(np.minimum(counts[:, 0], counts[:, 1]), counts[:, 0] + counts[:, 1], 0.5))
    assert np.mean(pvals < 0.05) == pytest.approx(0.8, abs=0.04)
    assert mdd == pytest.approx(0.0313, abs=1e-4)
    assert int(stats.required_n(0.02, 0.1)) == 1960


def test_adjust_matches_multipletests_on_random_p_values() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 50, 1584):
        p = rng.random(size) ** 3
        p[: size // 5] = p[0]  # ties
        for ours, ref in (("holm", "holm"), ("bh", "fdr_bh"), ("bonferroni", "bonferroni")):
            np.testing.assert_allclose(stats.adjust(p, ours), multipletests(p, method=ref)[1], rtol=1e-12)
