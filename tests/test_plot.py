"""mlquant.plot: the data behind every artist equals what mlquant.stats computes (no golden images).

The synthetic study: six languages of known script and resource class, 200 binary items each (xcopa; 80 %
correct with fp32), where w4 loses 80 of Japanese's 160 correct answers (a 40-point drop) and changes 3 answers
each way elsewhere, and w8 changes nothing; plus bits per byte (flores_ppl, lower is better) where w4 adds 0.05 in
Hindi only.
"""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import mlquant as mq
from mlquant.errors import ConfigError
from mlquant.results import Results

LANGS = {"en": ("Latn", 5), "fr": ("Latn", 5), "sw": ("Latn", 2), "ja": ("Jpan", 5), "ar": ("Arab", 5), "hi": ("Deva", 4)}
N = 200
CI = mq.stats.Bootstrap(n_resamples=500, seed=3)


def expected_order() -> list[str]:
    """Script (Latin first, then by name), then resource class (high first), then code."""
    return sorted(LANGS, key=lambda lang: (LANGS[lang][0] != "Latn", LANGS[lang][0], -LANGS[lang][1], lang))


def make_frame(bpb: bool = True, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    meta = {"family": "f", "item_id": [str(i) for i in range(N)]}
    for lang, (script, rc) in LANGS.items():
        base = np.zeros(N)
        base[rng.permutation(N)[:160]] = 1.0
        w4 = base.copy()
        correct, wrong = np.flatnonzero(base == 1), np.flatnonzero(base == 0)
        if lang == "ja":
            w4[correct[:80]] = 0.0
        else:
            w4[correct[:3]], w4[wrong[:3]] = 0.0, 1.0
        for quant, s in (("fp32", base), ("w8", base.copy()), ("w4", w4)):
            parts.append(pd.DataFrame({"quant": quant, "task": "xcopa", "lang": lang, "score": s, "metric": "acc",
                                       "higher_is_better": True, "difficulty": "easy", "script": script,
                                       "resource_class": rc, **meta}))
        if bpb:
            b = 1.0 + 0.5 * rng.random(N)
            for quant, shift in (("fp32", 0.0), ("w8", 0.0), ("w4", 0.05 if lang == "hi" else 0.0)):
                noise = rng.normal(0.0, 0.01, N) if quant != "fp32" else 0.0
                parts.append(pd.DataFrame({"quant": quant, "task": "flores_ppl", "lang": lang, "score": b + shift + noise,
                                           "metric": "bits_per_byte", "higher_is_better": False,
                                           "difficulty": "medium", "script": script, "resource_class": rc, **meta}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def summary(frame: pd.DataFrame) -> mq.stats.Summary:
    return mq.stats.summary(frame, n_resamples=10_000, seed=0)


def star_cells(ax) -> set[tuple[int, int]]:
    return {tuple(int(v) for v in t.xy) for t in ax.texts if t.get_text() == "*"}


def collection(ax, label: str):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


# ---------------------------------------------------------------------------------------------------- heatmap


def test_heatmap_matrix_and_stars_are_the_stats_numbers(frame: pd.DataFrame, summary: mq.stats.Summary) -> None:
    ax = mq.plot.heatmap(frame)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert cols == ["w8", "w4"]
    assert rows == [f"{task} / {lang}" for task in ("flores_ppl", "xcopa") for lang in expected_order()]
    image = np.ma.filled(ax.images[0].get_array(), np.nan)
    cells = summary.to_frame()
    want = np.full(image.shape, np.nan)
    stars = set()
    for r in cells.itertuples(index=False):
        i, j = rows.index(f"{r.task} / {r.lang}"), cols.index(r.quant)
        want[i, j] = r.rel_change
        if r.p_holm < 0.05:
            stars.add((j, i))
    np.testing.assert_allclose(image, want, rtol=0, atol=1e-12)
    assert star_cells(ax) == stars
    # the known effects: w4 halves Japanese accuracy (-50 %), raises Hindi bits per byte; w8 changes nothing
    assert image[rows.index("xcopa / ja"), 1] == pytest.approx(-50.0)
    assert (1, rows.index("xcopa / ja")) in stars and (1, rows.index("flores_ppl / hi")) in stars
    assert not any(j == 0 for j, _ in stars)
    label = ax.images[0].colorbar.ax.get_ylabel()
    assert "bits_per_byte (lower is better) a positive change is worse" in label


def test_heatmap_rel_drop_by_language_pools_tasks(frame: pd.DataFrame) -> None:
    xcopa = frame[frame.task == "xcopa"]
    ax = mq.plot.heatmap(Results(xcopa), metric="rel_drop", by="lang", alpha=0.01)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == expected_order()
    rc = mq.stats.relative_change(xcopa, by="lang").to_frame().set_index(["lang", "quant"])["rel_drop"]
    image = ax.images[0].get_array()
    for i, lang in enumerate(rows):
        for j, quant in enumerate(["w8", "w4"]):
            assert image[i, j] == pytest.approx(rc[(lang, quant)])
    p = mq.stats.adjust(mq.stats.permutation_test(xcopa, by="lang"), "holm").to_frame()
    assert star_cells(ax) == {(["w8", "w4"].index(q), rows.index(lang))
                              for q, lang, pv in zip(p.quant, p.lang, p.p_adjusted) if pv < 0.01}
    assert "positive = worse" in ax.images[0].colorbar.ax.get_ylabel()


def test_heatmap_draws_on_the_given_axes() -> None:
    fig = Figure()
    ax = fig.add_subplot()
    out = mq.plot.heatmap(make_frame(bpb=False), ax=ax, metric="diff")
    assert out is ax and len(ax.images) == 1 and ax.images[0].get_array()[5, 1] == pytest.approx(-0.4)  # ja: last


# ---------------------------------------------------------------------------------------------------- forest


def test_forest_segments_are_the_bootstrap_cis_in_script_order(frame: pd.DataFrame) -> None:
    ax = mq.plot.forest(frame, quant="w4", task="xcopa", ci=CI)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    order = expected_order()
    assert labels == [f"{lang} ({LANGS[lang][0]}, class {LANGS[lang][1]})" for lang in order]
    sub = frame[(frame.task == "xcopa") & frame.quant.isin(["fp32", "w4"])]
    rc = mq.stats.relative_change(sub, by="lang", ci=CI).to_frame().set_index("lang")
    segments = collection(ax, "_ci").get_segments()
    for y, (lang, seg) in enumerate(zip(order, segments, strict=True)):
        np.testing.assert_allclose(seg, [[rc.rel_change_lo[lang], y], [rc.rel_change_hi[lang], y]])
    points = collection(ax, "_estimate").get_offsets()
    np.testing.assert_allclose(points[:, 0], rc.rel_change[order].to_numpy())
    # highlighted (filled red) = Holm-adjusted test below 1 - confidence: Japanese only
    p = mq.stats.adjust(mq.stats.permutation_test(sub, by="lang"), "holm").to_frame().set_index("lang").p_adjusted
    faces = collection(ax, "_estimate").get_facecolors()
    red = [order[i] for i, f in enumerate(faces) if np.allclose(f, to_rgba("C3"))]
    assert red == [lang for lang in order if p[lang] < 0.05] == ["ja"]
    # dotted separators between scripts: Latn | Arab | Deva | Jpan
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [2.5, 3.5, 4.5]


def test_forest_order_by_resource_class_first(frame: pd.DataFrame) -> None:
    ax = mq.plot.forest(frame, quant="w4", task="xcopa", order=("resource_class",), ci=CI)
    langs = [t.get_text().split()[0] for t in ax.get_yticklabels()]
    assert langs == sorted(LANGS, key=lambda lang: (-LANGS[lang][1], lang))


def test_forest_refuses_mixed_directions_and_bad_names(frame: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"\['flores_ppl'\] have metrics where lower is better"):
        mq.plot.forest(frame, quant="w4", ci=CI)
    with pytest.raises(ConfigError, match=r"unknown quant 'w3'; the results have \['w8', 'w4'\]"):
        mq.plot.forest(frame, quant="w3", ci=CI)
    with pytest.raises(ConfigError, match="quant='fp32' is the baseline"):
        mq.plot.forest(frame, quant="fp32", ci=CI)
    with pytest.raises(ConfigError, match=r"unknown task 'mgsm'; the results have tasks \['flores_ppl', 'xcopa'\]"):
        mq.plot.forest(frame, quant="w4", task="mgsm", ci=CI)
    with pytest.raises(ConfigError, match="order='family' is not supported"):
        mq.plot.forest(frame, quant="w4", task="xcopa", order=("family",), ci=CI)


# ---------------------------------------------------------------------------------------------------- grouping


def test_grouping_draws_the_summary_groups_and_contrast(frame: pd.DataFrame, summary: mq.stats.Summary) -> None:
    xcopa = frame[frame.task == "xcopa"]
    s = mq.stats.summary(xcopa, n_resamples=CI.n_resamples, seed=CI.seed)
    ax = mq.plot.grouping(xcopa, ci=CI)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Latin\n3 lang.", "non-Latin\n3 lang."]
    groups = s.groups().query("grouping == 'latin'").set_index(["quant", "value"])
    for quant in ("w8", "w4"):
        line = next(ln for ln in ax.get_lines() if ln.get_label() == quant)
        want = [groups.rel_change[(quant, v)] for v in ("Latin", "non-Latin")]
        np.testing.assert_allclose(line.get_ydata(), want)
        segs = collection(ax, f"_ci {quant}").get_segments()
        np.testing.assert_allclose([seg[:, 1] for seg in segs],
                                   [[groups.rel_change_lo[(quant, v)], groups.rel_change_hi[(quant, v)]]
                                    for v in ("Latin", "non-Latin")])
    c = s.contrasts().set_index("quant")
    text = ax.get_xlabel()
    assert f"w4: non-Latin - Latin = {c.difference['w4']:+.2f} [{c.lo['w4']:+.2f}, {c.hi['w4']:+.2f}]" in text
    # a Summary already computed is drawn as is; mixed directions are split as the summary splits them
    ax2 = mq.plot.grouping(summary, by="resource_class")
    assert [t.get_text() for t in ax2.get_xticklabels()] == [
        "5\n4 lang.", "5\nlower is better\n4 lang.", "4\n1 lang.", "4\nlower is better\n1 lang.", "2\n1 lang.",
        "2\nlower is better\n1 lang."]
    c = summary.contrasts()
    w4_lower = c[(c.quant == "w4") & ~c.higher_is_better.astype(bool)].iloc[0]
    ax3 = mq.plot.grouping(summary)
    assert f"w4 (lower is better): non-Latin - Latin = {w4_lower.difference:+.2f}" in ax3.get_xlabel()


def test_grouping_names_what_it_cannot_draw(frame: pd.DataFrame) -> None:
    one = frame[frame.lang == "en"]
    with pytest.raises(ConfigError, match="by='country' is not supported; expected one of"):
        mq.plot.grouping(one, by="country", ci=CI)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="95 % percentile"):
        mq.plot.grouping(one, ci=mq.stats.Bootstrap(n_resamples=200, method="bca"))
    with pytest.raises(ConfigError, match="no grouping by 'difficulty'"):
        mq.plot.grouping(one.drop(columns="difficulty"), by="difficulty", ci=CI)  # no task has a difficulty tag


# ---------------------------------------------------------------------------------------------------- flips


def test_flip_bars_are_the_flip_counts(frame: pd.DataFrame) -> None:
    ax = mq.plot.flips(frame)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == expected_order()
    table = mq.stats.flips(frame[frame.task == "xcopa"], by="lang").to_frame().set_index(["quant", "lang"])
    bars = {c.get_label(): [b.get_height() for b in c] for c in ax.containers}
    for quant in ("w8", "w4"):
        assert bars[f"{quant}: wrong->correct"] == [table.wrong_to_correct[(quant, lang)] for lang in labels]
        assert bars[f"{quant}: correct->wrong"] == [-table.correct_to_wrong[(quant, lang)] for lang in labels]
    assert bars["w4: correct->wrong"][labels.index("ja")] == -80


def test_flips_needs_binary_scores(frame: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"task 'flores_ppl' has no binary \(0/1\) scores.*\['xcopa'\]"):
        mq.plot.flips(frame, task="flores_ppl")
    with pytest.raises(ConfigError, match=r"none of the tasks \['flores_ppl'\] \(metrics \['bits_per_byte'\]\)"):
        mq.plot.flips(frame[frame.task == "flores_ppl"])


# ---------------------------------------------------------------------------------------------------- tables


def calibration_table() -> pd.DataFrame:
    rows = []
    for method in ("gptq-w4g128", "awq-w4g128"):
        for k, cal in enumerate(("en", "ja", "sw")):
            for j, lang in enumerate(("en", "ja", "sw", "ar")):
                delta = 0.0 if cal == "en" else 0.01 * (k + 1) * (j - 1.5)
                p = 1.0 if cal == "en" else 10.0 ** -(k + j)
                rows.append({"method": method, "calibration": cal, "lang": lang, "task": "xcopa", "delta": delta,
                             "ci_low": delta - 0.01, "ci_high": delta + 0.01, "p": p, "p_holm": min(1.0, 3 * p),
                             "n": 200})
    return pd.DataFrame(rows)


class CalibrationResult:
    reference = "en"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def to_frame(self) -> pd.DataFrame:
        return self.frame


def test_calibration_matrix_draws_delta_and_holm_stars() -> None:
    table = calibration_table()
    ax = mq.plot.calibration_matrix(CalibrationResult(table), method="awq-w4g128", alpha=0.01)
    sub = table[table.method == "awq-w4g128"]
    want = sub.pivot(index="calibration", columns="lang", values="delta").loc[["en", "ja", "sw"], ["en", "ja", "sw", "ar"]]
    np.testing.assert_allclose(ax.images[0].get_array(), want.to_numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["en", "ja", "sw"]
    stars = {(["en", "ja", "sw", "ar"].index(r.lang), ["en", "ja", "sw"].index(r.calibration))
             for r in sub.itertuples() if r.p_holm < 0.01}
    assert star_cells(ax) == stars and len(stars) == 5
    assert "calibration on en" in ax.images[0].colorbar.ax.get_ylabel()


def test_calibration_matrix_bad_tables() -> None:
    table = calibration_table()
    with pytest.raises(ConfigError, match=r"several method values \['gptq-w4g128', 'awq-w4g128'\]; pass method="):
        mq.plot.calibration_matrix(table)
    with pytest.raises(ConfigError, match=r"unknown method 'rtn'; the calibration matrix has \['gptq-w4g128'"):
        mq.plot.calibration_matrix(table, method="rtn")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['p_holm'\]"):
        mq.plot.calibration_matrix(table.drop(columns="p_holm"), method="awq-w4g128")
    with pytest.raises(ConfigError, match="is empty"):
        mq.plot.calibration_matrix(table.iloc[:0])
    with pytest.raises(ConfigError, match="calibration='en', lang='en' twice"):
        mq.plot.calibration_matrix(pd.concat([table, table]), method="awq-w4g128")


def distance_table() -> pd.DataFrame:
    rows = []
    for q, scale in (("w8", 0.01), ("w4", 0.1)):
        for i, lang in enumerate(("ja", "en", "sw", "ar")):
            for metric in ("kl", "same_top_p"):
                v = scale * (i + 1) if metric == "kl" else 1 - scale * i
                rows.append({"quant": q, "lang": lang, "metric": metric, "value": v, "ci_low": v * 0.8,
                             "ci_high": v * 1.25})
    return pd.DataFrame(rows)


def test_distance_bars_and_error_bars_are_the_table() -> None:
    table = distance_table()
    ax = mq.plot.distance(table, metric="kl")
    langs = [t.get_text() for t in ax.get_xticklabels()]
    assert langs == ["en", "sw", "ar", "ja"]  # from the language files: Latn (class 5, then 2), Arab, Jpan
    kl = table[table.metric == "kl"].set_index(["quant", "lang"])
    for quant in ("w8", "w4"):
        bars = next(c for c in ax.containers if c.get_label() == quant)
        np.testing.assert_allclose([b.get_height() for b in bars], [kl.value[(quant, lang)] for lang in langs])
        segs = collection(ax, f"_ci {quant}").get_segments()
        np.testing.assert_allclose([s[:, 1] for s in segs], [[kl.ci_low[(quant, lang)], kl.ci_high[(quant, lang)]]
                                                            for lang in langs])
    with pytest.raises(ConfigError, match=r"no metric 'js'; it has \['kl', 'same_top_p'\]"):
        mq.plot.distance(table, metric="js")


def test_bits_per_byte_bars_are_the_paired_differences(frame: pd.DataFrame) -> None:
    ax = mq.plot.bits_per_byte(frame, ci=CI)
    langs = [t.get_text() for t in ax.get_xticklabels()]
    assert langs == expected_order()
    rc = mq.stats.relative_change(frame[frame.task == "flores_ppl"], by="lang", ci=CI).to_frame()
    rc = rc.set_index(["quant", "lang"])
    for quant in ("w8", "w4"):
        bars = next(c for c in ax.containers if c.get_label() == quant)
        np.testing.assert_allclose([b.get_height() for b in bars], [rc["diff"][(quant, lang)] for lang in langs])
        segs = collection(ax, f"_ci {quant}").get_segments()
        np.testing.assert_allclose([s[:, 1] for s in segs], [[rc.diff_lo[(quant, lang)], rc.diff_hi[(quant, lang)]]
                                                            for lang in langs])
    assert rc["diff"][("w4", "hi")] == pytest.approx(0.05, abs=0.005)
    with pytest.raises(ConfigError, match=r"no cell has the metric 'bits_per_byte'.*tasks \['xcopa'\]"):
        mq.plot.bits_per_byte(frame[frame.task == "xcopa"], ci=CI)


# ---------------------------------------------------------------------------------------------------- report + SVG


def test_report_figures_and_svg(frame: pd.DataFrame) -> None:
    figures = mq.plot.report_figures(Results(frame), ci=CI)
    assert [f.key for f in figures] == ["heatmap", "forest", "grouping", "flips", "bits_per_byte"]
    for f in figures:
        assert isinstance(f.figure, Figure) and f.title
        assert f.caption.endswith(".") and f.caption.count(". ") == 0, f.caption  # one sentence
    forest = figures[1].figure.axes[0]
    assert forest.get_title().startswith("w4 vs fp32 (xcopa)")  # the most degraded quant, its higher-is-better task
    heat = figures[0].figure.axes[0]
    assert "positive = worse" in heat.images[0].colorbar.ax.get_ylabel()  # rel_drop: the study mixes directions
    svg = mq.plot.to_svg(forest.figure, salt="t")
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and "<?xml" not in svg and "DOCTYPE" not in svg
    assert "ja (Jpan, class 5)" in svg and "<text" in svg  # text kept as text: searchable
    assert svg == mq.plot.to_svg(forest.figure, salt="t")
    with pytest.raises(ConfigError, match="needs a matplotlib Figure"):
        mq.plot.to_svg(forest)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("draw", ["heatmap", "flips", "bits_per_byte", "report_figures"])
def test_bad_results_are_named(draw: str) -> None:
    fn = getattr(mq.plot, draw)
    with pytest.raises(ConfigError, match=r"the results are empty \(0 rows\)"):
        fn(make_frame().iloc[:0])
    no_base = make_frame()
    no_base = no_base[no_base.quant != "fp32"]
    with pytest.raises(ConfigError, match=r"no baseline \(fp32, bf16 or fp16\) among the quant labels \['w4', 'w8'\]"):
        fn(no_base)
    with pytest.raises(ConfigError, match=r"no rows with quant == 'bf16'.*\['fp32', 'w8', 'w4'\]"):
        fn(make_frame(), baseline="bf16")
    two = pd.concat([make_frame().assign(model="a"), make_frame().assign(model="b")])
    with pytest.raises(ConfigError, match=r"2 models \['a', 'b'\]; mlquant.plot draws one model at a time"):
        fn(two)
    with pytest.raises(ConfigError, match="expects a pandas DataFrame"):
        fn([1, 2, 3])


def test_bad_arguments_are_named(frame: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"metric='recovery' is not supported; expected one of \['rel_change'"):
        mq.plot.heatmap(frame, metric="recovery")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'quant' is always the other axis"):
        mq.plot.heatmap(frame, by=("quant", "lang"))
    with pytest.raises(ConfigError, match="alpha must be in"):
        mq.plot.heatmap(frame, alpha=5)
    with pytest.raises(ConfigError, match="ax must be a matplotlib Axes"):
        mq.plot.heatmap(frame, ax="left")  # type: ignore[arg-type]


def test_import_is_cheap_and_never_touches_pyplot() -> None:
    code = (
        "import sys, mlquant as mq; a = 'matplotlib' in sys.modules; mq.plot; "
        "print(a, 'matplotlib.pyplot' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_report_figures_of_a_real_run_folder(tmp_path, tiny_llama_dir) -> None:
    study = mq.Study(str(tiny_llama_dir), quant=["fp32", "rtn-w2"], tasks=["xcopa", "flores_ppl"],
                     languages=["tr", "zh"], limit=12)
    study.run(tmp_path, progress=False)
    results = mq.Results.read(tmp_path)
    figures = mq.plot.report_figures(results, ci=CI)
    keys = [f.key for f in figures]
    assert keys[:2] == ["heatmap", "forest"] and keys[-2:] == ["flips", "bits_per_byte"]
    heat = figures[0].figure.axes[0]
    rows = [t.get_text() for t in heat.get_yticklabels()]
    drop = mq.stats.relative_change(results).to_frame().set_index(["task", "lang"])["rel_drop"]
    image = np.ma.filled(heat.images[0].get_array(), np.nan)[:, 0]
    np.testing.assert_allclose(image, [drop[tuple(r.split(" / "))] for r in rows])
    bpb = figures[-1].figure.axes[0]
    diff = mq.stats.relative_change(results.frame[results.frame.task == "flores_ppl"], by="lang").to_frame()
    heights = [b.get_height() for b in bpb.containers[0]]
    np.testing.assert_allclose(heights, diff.set_index("lang")["diff"][[t.get_text() for t in bpb.get_xticklabels()]])
    assert len(heights) == 2 and np.isfinite(heights).all()
    for f in figures:
        assert mq.plot.to_svg(f.figure).startswith("<svg")


def test_distance_draws_a_distance_table_object() -> None:
    from mlquant.distance import COLUMNS, DistanceTable

    rows = distance_table().assign(se=0.01, se_naive=0.005, n_tokens=100, n_sentences=10)[COLUMNS]
    ax = mq.plot.distance(DistanceTable(rows), metric="same_top_p")
    bars = next(c for c in ax.containers if c.get_label() == "w4")
    want = rows[(rows.metric == "same_top_p") & (rows.quant == "w4")].set_index("lang").value
    assert [b.get_height() for b in bars] == [want[t.get_text()] for t in ax.get_xticklabels()]
    assert ax.get_ylabel() == "share of tokens with the same top-1 token"


def test_calibration_matrix_draws_a_calibration_matrix_object() -> None:
    from mlquant.calibration_matrix import CalibrationMatrix

    table = calibration_table()
    matrix = CalibrationMatrix(_frame=table[table.method == "gptq-w4g128"].reset_index(drop=True), reference="en",
                               alpha=0.001)
    ax = mq.plot.calibration_matrix(matrix)  # alpha from the result: only p_holm < 0.001 is starred
    stars = {(["en", "ja", "sw", "ar"].index(r.lang), ["en", "ja", "sw"].index(r.calibration))
             for r in table[table.method == "gptq-w4g128"].itertuples() if r.p_holm < 0.001}
    assert star_cells(ax) == stars and len(stars) == 3
    assert ax.get_title().endswith("p < 0.001") and "calibration on en" in ax.images[0].colorbar.ax.get_ylabel()
