"""Behaviour of mlquant.stats: pairing, conventions, groupings, errors, flips, power and summary.

Synthetic frames carry script / resource_class / family explicitly, so these tests do not depend on the
language files (one test checks the fill-in from ``languages/`` and skips when the files are absent).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from mlquant import stats
from mlquant.errors import ConfigError, DataError

LANGS = {
    "en": ("Latn", 5, "Indo-European"),
    "fr": ("Latn", 5, "Indo-European"),
    "sw": ("Latn", 2, "Atlantic-Congo"),
    "ja": ("Jpan", 5, "Japonic"),
    "ar": ("Arab", 5, "Afro-Asiatic"),
    "hi": ("Deva", 4, "Indo-European"),
}


def study(
    seed: int = 0,
    n: int = 80,
    quants: tuple[str, ...] = ("w8", "w4"),
    tasks: tuple[str, ...] = ("xcopa",),
    non_latin_loss: float = 0.0,
) -> pd.DataFrame:
    """Binary-accuracy results for LANGS x tasks x (fp32 + quants), language metadata included."""
    rng = np.random.default_rng(seed)
    parts = []
    for task in tasks:
        for lang, (script, rc, fam) in LANGS.items():
            b = (rng.random(n) < 0.7).astype(float)
            for k, quant in enumerate(("fp32", *quants)):
                loss = 0.0 if quant == "fp32" else 0.03 * k + (non_latin_loss if script != "Latn" else 0.0)
                q = np.where((b == 1) & (rng.random(n) < loss), 0.0, b)
                parts.append(
                    pd.DataFrame(
                        {
                            "quant": quant,
                            "task": task,
                            "lang": lang,
                            "item_id": [f"{task}-{i}" for i in range(n)],
                            "score": q,
                            "script": script,
                            "resource_class": rc,
                            "family": fam,
                            "difficulty": "hard" if task == "mgsm" else "easy",
                            "metric": "acc",
                            "higher_is_better": True,
                        }
                    )
                )
    return pd.concat(parts, ignore_index=True)


def two_cells(b: list[float], q: list[float], **cols: object) -> pd.DataFrame:
    n = len(b)
    df = pd.DataFrame(
        {
            "quant": ["fp32"] * n + ["w4"] * n,
            "task": "t",
            "lang": "en",
            "item_id": [str(i) for i in range(n)] * 2,
            "score": b + q,
        }
    )
    for k, v in cols.items():
        df[k] = v
    return df


class FakeResults:
    """Stands in for mlquant.results.Results: an object with a .frame."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame


# ------------------------------------------------------------------------------------------ relative change


def test_relative_change_and_recovery_formulas() -> None:
    df = two_cells([1, 1, 1, 1, 0], [1, 1, 0, 1, 0])
    rc = stats.relative_change(df).to_frame().iloc[0]
    assert (rc.quant, rc.task, rc.lang, rc.n) == ("w4", "t", "en", 5)
    assert rc.baseline == pytest.approx(0.8) and rc.quantized == pytest.approx(0.6)
    assert rc["diff"] == pytest.approx(-0.2)
    assert rc.rel_change == pytest.approx(-25.0)
    assert rc.rel_drop == pytest.approx(25.0)
    rec = stats.recovery(FakeResults(df)).to_frame().iloc[0]
    assert rec.recovery == pytest.approx(75.0)
    assert list(stats.recovery(df).to_frame().columns).index("recovery") < list(
        stats.recovery(df).to_frame().columns
    ).index("rel_change")


def test_lower_is_better_direction() -> None:
    df = two_cells([1.0, 2.0], [1.1, 2.2], metric="bpb", higher_is_better=False)
    rc = stats.relative_change(df).to_frame().iloc[0]
    assert rc.rel_change == pytest.approx(10.0)  # the formula, as reported
    assert rc.rel_drop == pytest.approx(10.0)  # positive = worse
    assert rc.recovery == pytest.approx(110.0)
    assert bool(rc.higher_is_better) is False


def test_weights_define_the_cell_aggregate() -> None:
    df = two_cells([1.0, 2.0], [1.0, 3.0], weight=[1.0, 3.0] * 2, metric="bpb", higher_is_better=False)
    rc = stats.relative_change(df).to_frame().iloc[0]
    assert rc.baseline == pytest.approx((1 + 6) / 4)
    assert rc.quantized == pytest.approx((1 + 9) / 4)


def test_intersection_of_items_with_warning() -> None:
    df = two_cells([1, 1, 0, 1], [1, 0, 0, 1])
    df = df[~((df.quant == "w4") & (df.item_id == "0"))]  # quantized cell lacks item 0
    extra = pd.DataFrame({"quant": ["w4"], "task": ["t"], "lang": ["en"], "item_id": ["99"], "score": [0.0]})
    df = pd.concat([df, extra], ignore_index=True)
    with pytest.warns(UserWarning, match="intersection of item ids") as rec:
        rc = stats.relative_change(df).to_frame().iloc[0]
    assert "(w4, t, en): 3 paired of 4 baseline / 4 quantized items" in str(rec[0].message)
    assert rc.n == 3
    assert rc.baseline == pytest.approx(2 / 3) and rc.quantized == pytest.approx(1 / 3)


def test_no_warning_when_item_sets_match() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats.relative_change(study())


def test_grouping_weighting_is_stated_and_computed() -> None:
    df = study(tasks=("xcopa", "mgsm"))
    cells = stats.relative_change(df).to_frame()
    lang_w = stats.relative_change(df, by=("latin",)).to_frame()
    item_w = stats.relative_change(df, by=("latin",), weighting="item").to_frame()
    assert set(lang_w.weighting) == {"language"} and set(item_w.weighting) == {"item"}
    assert set(lang_w.latin) == {"Latin", "non-Latin"}
    cells["latin"] = np.where(cells.lang.isin(["en", "fr", "sw"]), "Latin", "non-Latin")
    for (quant, latin), sub in cells.groupby(["quant", "latin"]):
        row = lang_w[(lang_w.quant == quant) & (lang_w.latin == latin)].iloc[0]
        assert row.rel_change == pytest.approx(sub.rel_change.mean())  # mean of cell relative changes
        assert row.n_cells == len(sub) and row.n_langs == 3
        pooled = item_w[(item_w.quant == quant) & (item_w.latin == latin)].iloc[0]
        b = (sub.baseline * sub.n).sum() / sub.n.sum()
        q = (sub.quantized * sub.n).sum() / sub.n.sum()
        assert pooled.rel_change == pytest.approx(100 * (q - b) / b)


@pytest.mark.parametrize("by", ["script", "resource_class", "family", "difficulty", ("task", "latin"), ()])
def test_groupings_by_every_key(by: str | tuple[str, ...]) -> None:
    out = stats.relative_change(study(tasks=("xcopa", "mgsm")), by=by).to_frame()
    assert {"quant", "n", "n_cells", "rel_change", "weighting"} <= set(out.columns)
    assert out.n_cells.sum() == 2 * 2 * len(LANGS)


def test_grouped_ci_and_per_cell_ci() -> None:
    df = study(n=150)
    t = stats.relative_change(df, ci=stats.Bootstrap(n_resamples=2000, seed=1)).to_frame()
    assert (t.rel_change_lo <= t.rel_change).all() and (t.rel_change <= t.rel_change_hi).all()
    assert np.allclose(t.recovery_lo, 100 + t.rel_change_lo)
    g = stats.relative_change(df, by="latin", ci=True).to_frame()
    assert (g.rel_change_lo < g.rel_change).all() and (g.rel_change < g.rel_change_hi).all()
    # A group's CI is narrower than its cells' (it averages three languages).
    w4 = t[(t.quant == "w4") & t.lang.isin(["ja", "ar", "hi"])]
    gw = g[(g.quant == "w4") & (g.latin == "non-Latin")].iloc[0]
    assert gw.rel_change_hi - gw.rel_change_lo < (w4.rel_change_hi - w4.rel_change_lo).mean()


def test_bootstrap_is_seeded() -> None:
    df = study(n=120)
    a = stats.paired_bootstrap(df, seed=3, n_resamples=1000).to_frame()
    b = stats.paired_bootstrap(df, seed=3, n_resamples=1000).to_frame()
    c = stats.paired_bootstrap(df, seed=4, n_resamples=1000).to_frame()
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.rel_change_lo, c.rel_change_lo)


def test_cluster_bootstrap_is_wider_for_correlated_clusters() -> None:
    rng = np.random.default_rng(0)
    n_clusters, size = 100, 5
    fails = np.repeat(rng.random(n_clusters) < 0.2, size)  # whole passages flip together
    b = np.ones(n_clusters * size)
    q = np.where(fails, 0.0, 1.0)
    df = two_cells(list(b), list(q))
    df["group"] = list(np.repeat([f"p{i}" for i in range(n_clusters)], size)) * 2
    items = stats.paired_bootstrap(df.drop(columns="group"), n_resamples=2000).to_frame().iloc[0]
    clusters = stats.paired_bootstrap(df, n_resamples=2000).to_frame().iloc[0]
    assert clusters.n_units == n_clusters
    assert (clusters.diff_hi - clusters.diff_lo) > 1.8 * (items.diff_hi - items.diff_lo)


def test_multiple_models_pair_within_model() -> None:
    a = study(seed=1).assign(model="small")
    b = study(seed=2).assign(model="big")
    out = stats.relative_change(pd.concat([a, b], ignore_index=True)).to_frame()
    assert list(out.columns[:4]) == ["model", "quant", "task", "lang"]
    assert len(out) == 2 * 2 * len(LANGS)
    solo = stats.relative_change(a).to_frame()
    mine = out[out.model == "small"].drop(columns="model").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, solo)


# ------------------------------------------------------------------------------------------ errors


def test_missing_baseline_is_a_config_error_naming_labels() -> None:
    with pytest.raises(ConfigError, match=r"quant == 'bf16'.*'fp32', 'w8', 'w4'"):
        stats.relative_change(study(), baseline="bf16")
    with pytest.raises(ConfigError, match="bf16"):
        stats.summary(study(), baseline="bf16")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda d: d.drop(columns="item_id"), DataError, "lacks column"),
        (lambda d: pd.concat([d, d.iloc[:1]]), DataError, "appears twice"),
        (lambda d: d.assign(score="high"), DataError, "numeric"),
        (lambda d: d.assign(weight=0.0), DataError, "positive"),
        (lambda d: d[d.quant == "fp32"], ConfigError, "nothing to compare"),
        (lambda d: d.iloc[:0], DataError, "empty"),
    ],
)
def test_bad_input_gives_clear_errors(change, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        stats.relative_change(change(study()))


def test_bad_arguments() -> None:
    df = study()
    with pytest.raises(ConfigError, match="cannot group by 'colour'"):
        stats.relative_change(df, by="colour")
    with pytest.raises(ConfigError, match="weighting"):
        stats.relative_change(df, weighting="cell")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="method"):
        stats.Bootstrap(method="studentized")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown adjustment"):
        stats.adjust([0.1], "sidak")
    with pytest.raises(ConfigError, match=".frame"):
        stats.relative_change([1, 2, 3])
    mixed = pd.concat([study(), two_cells([1.0], [1.1], metric="bpb", task="ppl", higher_is_better=False)])
    with pytest.raises(ConfigError, match="mixes metrics"):
        stats.relative_change(mixed, by=(), weighting="item")


def test_mcnemar_rejects_all_continuous_and_skips_some() -> None:
    cont = two_cells([0.5, 0.6], [0.4, 0.6], metric="chrf")
    with pytest.raises(DataError, match="binary"):
        stats.mcnemar(cont)
    both = pd.concat([study(), cont], ignore_index=True)
    with pytest.warns(UserWarning, match="non-binary"):
        assert len(stats.mcnemar(both)) == 2 * len(LANGS)


def test_pair_once_and_reuse() -> None:
    df = study()
    p = stats.pair(df, "fp32")
    pd.testing.assert_frame_equal(stats.relative_change(p).to_frame(), stats.relative_change(df).to_frame())
    with pytest.raises(ConfigError, match="paired against baseline 'fp32'"):
        stats.mcnemar(p, baseline="bf16")
    assert stats.pair(df).select(lang=["ja", "ar"]).n_cells == 4


def test_language_metadata_from_language_files() -> None:
    from mlquant.languages import languages_dir

    if not (languages_dir() / "ja.yaml").exists():
        pytest.skip("language files not available")
    df = study().drop(columns=["script", "resource_class", "family"])
    df = df[df.lang.isin(["en", "ja"])]
    out = stats.relative_change(df, by="latin").to_frame()
    assert set(out.latin) == {"Latin", "non-Latin"}
    unknown = two_cells([1.0], [0.0]).assign(lang="xx")
    with pytest.raises(ConfigError, match="'xx'"):
        stats.relative_change(unknown, by="script")


# ------------------------------------------------------------------------------------------ tests & adjust


def test_tests_return_frozen_results_with_to_frame() -> None:
    df = study()
    for table in (stats.mcnemar(df), stats.permutation_test(df), stats.wilcoxon(df)):
        frame = table.to_frame()
        assert {"quant", "task", "lang", "n", "estimate", "p_value"} <= set(frame.columns)
        first = next(iter(table))
        assert isinstance(first, stats.TestResult) and 0 <= first.p_value <= 1
        with pytest.raises(AttributeError):
            table.test = "other"  # type: ignore[misc]
    adj = stats.adjust(stats.mcnemar(df), "bh", family="quant")
    assert adj.adjustment == "fdr_bh" and adj.family == ("quant",)
    assert (adj.to_frame().p_adjusted >= adj.to_frame().p_value).all()


def test_permutation_test_pooled_by_group() -> None:
    df = study(non_latin_loss=0.15, n=100)
    out = stats.permutation_test(df, by="latin").to_frame().set_index(["quant", "latin"])
    assert out.loc[("w4", "non-Latin"), "p_value"] < 1e-4
    assert out.loc[("w4", "non-Latin"), "n"] == 300


# ------------------------------------------------------------------------------------------ flips


def test_flips_directions_items_and_margins() -> None:
    rows = []
    logprobs = {"a": [-0.1, -0.2], "b": [-0.1, -3.0], "c": [-2.0, -0.5], "d": [-0.3, -0.31]}
    base = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
    quant = {"a": 0.0, "b": 1.0, "c": 1.0, "d": 0.0}
    for q, scores in (("fp32", base), ("w4", quant)):
        for item, s in scores.items():
            rows.append(
                {
                    "quant": q,
                    "task": "belebele",
                    "lang": "en",
                    "item_id": item,
                    "score": s,
                    "target": "0",
                    "extra": json.dumps({"logprobs": logprobs[item]}),
                    "extracted": "0" if s else "1",
                }
            )
    out = stats.flips(pd.DataFrame(rows), bins=2)
    r = out.to_frame().iloc[0]
    assert (r.n, r.baseline_correct, r.correct_to_wrong, r.wrong_to_correct) == (4, 3, 2, 1)
    assert r.flip_rate == pytest.approx(0.75) and r.loss_rate == pytest.approx(2 / 3) and r.net == pytest.approx(-0.25)
    items = out.flipped_items().set_index("item_id")
    assert items.loc["a", "direction"] == "correct->wrong" and items.loc["c", "direction"] == "wrong->correct"
    assert items.loc["a", "baseline_margin"] == pytest.approx(0.1)
    assert items.loc["d", "baseline_margin"] == pytest.approx(0.01)
    margins = out.by_margin()
    assert margins.n.sum() == 4 and "drop_points" in margins.columns
    assert margins.iloc[0].margin_lo < margins.iloc[-1].margin_lo


def test_choice_margin_edge_cases() -> None:
    assert np.isnan(stats.choice_margin("not json", "0"))
    assert np.isnan(stats.choice_margin({"logprobs": [-1.0]}, "0"))
    assert np.isnan(stats.choice_margin({"logprobs": [-1.0, -2.0]}, "5"))
    assert stats.choice_margin({"logprobs": [-1.0, -2.0, -0.5]}, 2) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ power & summary


def test_power_columns_and_n_needed() -> None:
    t = stats.power(study(n=400), drop=0.02).to_frame()
    assert {"n", "baseline", "discordance", "mdd", "mdd_rel", "mdd_worst", "n_needed"} <= set(t.columns)
    assert (t.method == "mcnemar").all()
    assert (t.mdd_worst >= t.mdd).all()  # independent errors are the worst case
    row = t.iloc[0]
    assert row.n_needed == float(stats.required_n(0.02, max(row.discordance, 3 / row.n)))


def test_summary_has_cells_groups_contrast_and_text() -> None:
    s = stats.summary(study(n=200, non_latin_loss=0.1, tasks=("xcopa", "mgsm")), n_resamples=1000)
    cells = s.to_frame()
    assert {"rel_change_lo", "rel_change_hi", "p_value", "p_holm", "p_bh", "mdd", "mdd_rel"} <= set(cells.columns)
    assert len(cells) == 2 * 2 * len(LANGS)
    groups = s.groups()
    assert set(groups.grouping) == {"latin", "script", "resource_class", "family", "difficulty"}
    assert set(groups.weighting) == {"language"}
    con = s.contrasts().set_index("quant")
    assert con.loc["w4", "difference"] < 0 and con.loc["w4", "hi"] < 0  # non-Latin lose more
    text = str(s)
    assert "non-Latin - Latin" in text and "p_holm" in text and "mdd_rel" in text


@pytest.mark.filterwarnings("ignore:some bootstrap resamples")
def test_summary_without_language_metadata_notes_skipped_groupings() -> None:
    df = two_cells([1.0, 0.0, 1.0, 1.0] * 3, [1.0, 0.0, 0.0, 1.0] * 3).assign(lang="xx")
    s = stats.summary(df, n_resamples=200)
    assert any("skipped" in n for n in s.notes), s.notes
    assert len(s.to_frame()) == 1


def test_mixed_effects_result_api() -> None:
    fit = stats.mixed_effects(study(n=40, non_latin_loss=0.1))
    frame = fit.to_frame()
    assert list(frame.columns) == ["term", "estimate", "se", "ci_low", "ci_high", "p_value"]
    assert "non_latin" in frame.term.tolist()
    c = fit.effect("non_latin")
    assert c.ci_low < c.estimate < c.ci_high
    assert "non-Latin languages lose" in str(fit)
    with pytest.raises(ConfigError, match="no term"):
        fit.effect("latin")
    with pytest.raises(DataError, match="at least 3 languages"):
        stats.mixed_effects(study()[lambda d: d.lang.isin(["en", "ja"])])


def test_summary_groupings_leave_out_cells_without_a_relative_change() -> None:
    df = study(n=60, quants=("w4",), tasks=("xcopa", "mgsm"))
    zero = (df.task == "mgsm") & (df.lang == next(iter(LANGS)))
    df.loc[zero, "score"] = 0.0  # a cell whose baseline gets nothing right: relative change undefined
    s = stats.summary(df, n_resamples=500)
    cells = s.to_frame()
    assert cells["rel_change"].isna().sum() == 1
    note = next(n for n in s.notes if "no estimable relative change" in n)
    assert f"w4/mgsm/{next(iter(LANGS))}" in note
    groups = s.groups()
    assert len(groups) and np.isfinite(groups[["rel_change", "rel_change_lo", "rel_change_hi"]].to_numpy()).all()
    hard = groups[(groups.grouping == "difficulty") & (groups.value == "hard")]
    assert int(hard["n_cells"].iloc[0]) == len(LANGS) - 1
    assert "diff [CI]" in str(s)


def test_every_statistic_defaults_to_the_runs_baseline() -> None:
    """One baseline default (fp32, else bf16, else fp16), the same as the report's: a bf16 study needs no baseline=."""
    from mlquant.results import Results

    df = pd.DataFrame({"quant": ["bf16"] * 4 + ["w4"] * 4, "task": "t", "lang": "en", "item_id": list("abcd") * 2,
                       "score": [1.0, 1, 0, 1, 0, 1, 0, 1]})
    assert stats.default_baseline(df) == "bf16"
    assert stats.relative_change(df).baseline == "bf16"
    assert stats.mcnemar(df).to_frame()["quant"].tolist() == ["w4"]
    assert stats.flips(df).baseline == "bf16"
    res = Results(df)
    assert res.paired() is res.paired("bf16")  # the default is the same cached pairing
    with pytest.raises(ConfigError, match="no baseline"):
        stats.relative_change(df.assign(quant=df["quant"].replace("bf16", "w8")))


@pytest.mark.parametrize("by", [("metric",), ("higher_is_better",), ("task", "metric")])
def test_grouping_by_an_estimate_column_keeps_it_once(by: tuple[str, ...]) -> None:
    """by=("metric",) used to return the metric column four times (row["metric"] was a Series)."""
    df = pd.DataFrame({"quant": ["fp32"] * 4 + ["w4"] * 4, "task": "t", "lang": ["en", "en", "ja", "ja"] * 2,
                       "metric": "accuracy", "higher_is_better": True, "item_id": ["1", "2", "1", "2"] * 2,
                       "score": [1, 1, 1, 0, 1, 0, 0, 0.0]})
    frame = stats.relative_change(df, by=by, ci=stats.Bootstrap(n_resamples=200)).to_frame()
    assert not frame.columns.duplicated().any()
    assert frame.loc[0, "metric"] == "accuracy" and frame.loc[0, "rel_change"] == pytest.approx(-75.0)  # mean of en -50 and ja -100
