"""Simulation tests of mlquant.stats: coverage with a planted effect, error rates under the null.

* A 5-point extra accuracy drop planted in non-Latin languages: the mixed model's 95 % CI of ``non_latin``
  contains 5 in at least 90 of 100 seeds.
* No planted drop: Holm- and BH-adjusted tests over all cells of a study reject (anywhere) in at most 5 % of
  100 seeds, for the exact McNemar test (binary scores) and the Monte Carlo permutation test (continuous scores).
* The paired bootstrap CI of a cell covers the true difference in at least 90 of 100 seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlquant import stats

PLANTED = 5.0  # accuracy points


def planted_study(seed: int, n_langs: int = 12, n_items: int = 30, planted: float = PLANTED) -> pd.DataFrame:
    """Binary results, parallel items across languages; non-Latin languages lose ``planted`` points more.

    Baseline accuracy of item i is p_i ~ U(0.3, 0.95) (shared by all languages); quantization turns a correct
    answer wrong with probability ``0.04 + 0.03 * method + u_lang (+ planted / (100 * 0.625) if non-Latin)``
    and a wrong answer right with probability 0.02, so the expected extra drop of non-Latin languages is
    ``E[p] * planted / (100 * 0.625) = planted`` points.
    """
    rng = np.random.default_rng(seed)
    item_p = rng.uniform(0.3, 0.95, n_items)
    ids = np.array([str(i) for i in range(n_items)], dtype=object)
    parts = []
    for lang_i in range(n_langs):
        non_latin = lang_i % 2 == 1
        u_lang = rng.normal(0.0, 0.01)
        base = (rng.random(n_items) < item_p).astype(float)
        meta = {
            "script": "Arab" if non_latin else "Latn",
            "resource_class": 3,
            "family": "f",
            "task": "t",
            "lang": f"l{lang_i:02d}",
            "item_id": ids,
        }
        parts.append(pd.DataFrame({"quant": "fp32", "score": base, **meta}))
        for k, method in enumerate(("w8", "w4")):
            loss = float(np.clip(0.04 + 0.03 * k + u_lang + (planted / 100 / 0.625 if non_latin else 0.0), 0, 1))
            u = rng.random(n_items)
            q = np.where(base == 1, u >= loss, u < 0.02).astype(float)
            parts.append(pd.DataFrame({"quant": method, "score": q, **meta}))
    return pd.concat(parts, ignore_index=True)


def null_study(seed: int, continuous: bool) -> pd.DataFrame:
    """12 languages x 2 methods x 2 tasks x 150 items where quantization changes nothing in expectation."""
    rng = np.random.default_rng(seed)
    parts = []
    ids = np.array([str(i) for i in range(150)], dtype=object)
    for task in ("a", "b"):
        for lang_i in range(12):
            meta = {
                "task": task,
                "lang": f"l{lang_i:02d}",
                "item_id": ids,
                "script": "Latn",
                "resource_class": 3,
                "family": "f",
            }
            if continuous:
                base = rng.normal(50, 10, 150)
                parts.append(pd.DataFrame({"quant": "fp32", "score": base, "metric": "chrf", **meta}))
                for method in ("w8", "w4"):
                    q = base + rng.normal(0, 2, 150)  # symmetric noise: no shift
                    parts.append(pd.DataFrame({"quant": method, "score": q, "metric": "chrf", **meta}))
            else:
                p = rng.uniform(0.5, 0.9)
                base = (rng.random(150) < p).astype(float)
                parts.append(pd.DataFrame({"quant": "fp32", "score": base, **meta}))
                for method in ("w8", "w4"):
                    loss = 0.08
                    gain = loss * p / (1 - p)  # expected losses = expected gains
                    u = rng.random(150)
                    q = np.where(base == 1, u >= loss, u < gain).astype(float)
                    parts.append(pd.DataFrame({"quant": method, "score": q, **meta}))
    return pd.concat(parts, ignore_index=True)


def test_mixed_model_recovers_planted_non_latin_drop() -> None:
    covered, estimates = 0, []
    for seed in range(100):
        fit = stats.mixed_effects(planted_study(seed))
        c = fit.effect("non_latin")
        covered += c.ci_low <= PLANTED <= c.ci_high
        estimates.append(c.estimate)
    assert covered >= 90, f"CI covered the planted {PLANTED} points in only {covered} of 100 seeds"
    assert abs(np.mean(estimates) - PLANTED) < 0.5  # unbiased on average


def test_adjusted_tests_reject_at_most_5_percent_under_null() -> None:
    rejected = {"mcnemar/holm": 0, "mcnemar/bh": 0, "permutation/holm": 0, "permutation/bh": 0}
    for seed in range(100):
        mc = stats.mcnemar(null_study(seed, continuous=False))
        perm = stats.permutation_test(null_study(seed, continuous=True), n_resamples=2000, seed=seed)
        for name, table in (("mcnemar", mc), ("permutation", perm)):
            assert len(table) == 48  # the family: all cells of the study
            for method in ("holm", "bh"):
                p_adj = stats.adjust(table, method).to_frame()["p_adjusted"]
                rejected[f"{name}/{method}"] += bool((p_adj < 0.05).any())
    assert all(v <= 5 for v in rejected.values()), rejected


def test_bootstrap_ci_covers_the_true_difference() -> None:
    covered = 0
    n = 300
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        b = (rng.random(n) < 0.7).astype(float)
        q = np.where((b == 1) & (rng.random(n) < 0.1), 0.0, b)  # true diff = -0.07
        df = pd.DataFrame(
            {
                "quant": ["fp32"] * n + ["w4"] * n,
                "task": "t",
                "lang": "en",
                "item_id": [str(i) for i in range(n)] * 2,
                "score": np.r_[b, q],
            }
        )
        t = stats.paired_bootstrap(df, n_resamples=2000, seed=seed).to_frame().iloc[0]
        covered += t.diff_lo <= -0.07 <= t.diff_hi
    assert covered >= 90
