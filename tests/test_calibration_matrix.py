"""calibration_matrix and calibration_grid: planted calibration effects recovered, refusals, the grid's specs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mlquant as mq
from mlquant.calibration_matrix import CalibrationMatrix, calibration_grid, calibration_matrix, calibration_name
from mlquant.errors import ConfigError, DataError
from mlquant.stats import Bootstrap

LANGS = ("en", "ja", "ar", "el")
N = 120
CI = Bootstrap(n_resamples=2000, seed=3)


def _frame(effects: dict[tuple[str, str], float], quants: list[str], binary: bool = False, seed: int = 0) -> pd.DataFrame:
    """Per-item bits per byte (or 0/1): an item effect shared by every quant, plus a planted shift per (quant, lang)."""
    rng = np.random.default_rng(seed)
    rows = []
    for lang in LANGS:
        item = rng.normal(1.2, 0.15, N)
        for quant in quants:
            if binary:
                p = np.clip(0.7 - effects.get((quant, lang), 0.0), 0, 1)
                score = (rng.random(N) < p).astype(float)
            else:
                score = item + effects.get((quant, lang), 0.0) + rng.normal(0, 0.02, N)
            rows.append(pd.DataFrame({
                "quant": quant, "task": "flores_ppl" if not binary else "xcopa", "lang": lang,
                "item_id": [str(i) for i in range(N)], "score": score,
                "metric": "bits_per_byte" if not binary else "acc", "higher_is_better": binary,
                "weight": 1.0,
            }))
    return pd.concat(rows, ignore_index=True)


QUANTS = ["fp32", "rtn-w4g128", "gptq-w4g128@flores:en:128", "gptq-w4g128@flores:ja:128",
          "gptq-w4g128@flores:en+ja+zh+ar:128"]


def _planted() -> dict[tuple[str, str], float]:
    eff = {}
    for lang in LANGS:
        eff[("rtn-w4g128", lang)] = 0.10
        eff[("gptq-w4g128@flores:en:128", lang)] = 0.05
        eff[("gptq-w4g128@flores:ja:128", lang)] = 0.05
        eff[("gptq-w4g128@flores:en+ja+zh+ar:128", lang)] = 0.05
    eff[("gptq-w4g128@flores:ja:128", "ar")] = 0.05 + 0.04  # ja-calibrated hurts Arabic by 0.04 bits/byte
    eff[("gptq-w4g128@flores:en+ja+zh+ar:128", "ja")] = 0.05 - 0.03  # the mix helps Japanese
    return eff


def test_a_planted_calibration_effect_is_recovered_with_sign_ci_and_holm_marks() -> None:
    m = calibration_matrix(_frame(_planted(), QUANTS), ci=CI)
    t = m.to_frame().set_index(["calibration", "lang"])
    assert list(m.to_frame().columns[:10]) == ["method", "calibration", "lang", "task", "delta", "ci_low", "ci_high",
                                                 "p", "p_holm", "n"]
    assert set(m.to_frame()["calibration"]) == {"en", "ja", "mix(en+ja+zh+ar)"}
    ja_ar = t.loc[("ja", "ar")]
    assert ja_ar["delta"] == pytest.approx(0.04, abs=0.01)
    assert ja_ar["ci_low"] < 0.04 < ja_ar["ci_high"]
    assert ja_ar["harm"] > 0 and ja_ar["p_holm"] < 0.05 and ja_ar["significant"]
    mix_ja = t.loc[("mix(en+ja+zh+ar)", "ja")]
    assert mix_ja["delta"] == pytest.approx(-0.03, abs=0.01) and mix_ja["ci_high"] < 0 and mix_ja["significant"]
    # Null cells: no planted effect, so no Holm mark (and the CI covers 0) for all of them.
    nulls = t.drop(index=[("ja", "ar"), ("mix(en+ja+zh+ar)", "ja")]).drop(index="en", level=0)
    assert not nulls["significant"].any()
    assert ((nulls["ci_low"] < 0) & (nulls["ci_high"] > 0)).mean() >= 0.8
    # Holm within the matrix: p_holm >= p, and equal to statsmodels' on the tested cells.
    from statsmodels.stats.multitest import multipletests

    tested = m.to_frame().dropna(subset=["p"])
    assert np.allclose(tested["p_holm"], multipletests(tested["p"], method="holm")[1])
    # The reference row: delta 0, no test.
    ref = t.loc["en"]
    assert (ref["delta"] == 0).all() and ref["p"].isna().all()
    # Controls: every GPTQ cell beats RTN by ~0.05 except ja@ar (~0.01); vs fp32 it costs ~0.05.
    assert t.loc[("en", "el"), "delta_vs_rtn"] == pytest.approx(-0.05, abs=0.01)
    assert t.loc[("ja", "ar"), "delta_vs_rtn"] == pytest.approx(-0.01, abs=0.01)
    assert t.loc[("en", "el"), "delta_vs_baseline"] == pytest.approx(0.05, abs=0.01)
    assert t["delta_vs_hqq"].isna().all() and m.controls == {"gptq-w4g128": ("rtn-w4g128",)}
    text = str(m)
    assert "lower is better" in text and "ja - rtn-w4g128" in text
    ar_col = text.splitlines()[1].split().index("ar")
    ja_line = next(line for line in text.splitlines() if line.split()[0] == "ja")
    assert ja_line.split()[ar_col].endswith("*")


def test_binary_scores_use_mcnemar_and_direction() -> None:
    eff = {("gptq-w4g128@flores:ja:128", "ar"): 0.35}  # accuracy 0.7 -> 0.35 in Arabic
    quants = ["fp32", "gptq-w4g128@flores:en:128", "gptq-w4g128@flores:ja:128"]
    m = calibration_matrix(_frame(eff, quants, binary=True), ci=CI)
    t = m.to_frame().set_index(["calibration", "lang"])
    row = t.loc[("ja", "ar")]
    assert row["test"] == "mcnemar-exact" and row["delta"] < -0.2 and row["harm"] > 0 and row["significant"]
    assert "higher is better" in str(m)


def test_default_calibration_label_counts_as_english_and_reference_by_string() -> None:
    quants = ["fp32", "gptq-w4g128", "gptq-w4g128@flores:ja:128"]
    eff = {("gptq-w4g128@flores:ja:128", "ar"): 0.04}
    m = calibration_matrix(_frame(eff, quants), ci=CI, reference="flores:en:128")
    frame = m.to_frame()
    assert set(frame["calibration"]) == {"en", "ja"}
    assert (frame.loc[frame["calibration"] == "en", "quant"] == "gptq-w4g128").all()
    assert frame.set_index(["calibration", "lang"]).loc[("ja", "ar"), "delta"] == pytest.approx(0.04, abs=0.01)


def test_results_object_and_filters() -> None:
    res = mq.Results(_frame(_planted(), QUANTS))
    m = calibration_matrix(res, ci=CI, method="gptq", task="flores_ppl", metric="bits_per_byte")
    assert isinstance(m, CalibrationMatrix) and len(m) == 3 * len(LANGS)
    assert list(m.pivot().columns) == list(LANGS)


def test_refuses_a_run_without_a_reference_calibrated_cell() -> None:
    frame = _frame({}, ["fp32", "gptq-w4g128@flores:ja:128", "gptq-w4g128@flores:ar:128"])
    with pytest.raises(ConfigError, match=r"'gptq-w4g128' has no cell calibrated on the reference 'en'.*\['ar', 'ja'\]"):
        calibration_matrix(frame, ci=CI)


def test_refuses_a_run_without_calibrated_methods_and_unknown_filters() -> None:
    frame = _frame({}, ["fp32", "rtn-w4g128"])
    with pytest.raises(ConfigError, match="no calibrated method.*rtn-w4g128"):
        calibration_matrix(frame, ci=CI)
    planted = _frame(_planted(), QUANTS)
    with pytest.raises(ConfigError, match="method 'awq' has no calibrated cell"):
        calibration_matrix(planted, method="awq", ci=CI)
    with pytest.raises(ConfigError, match="task 'mgsm' is not in the results"):
        calibration_matrix(planted, task="mgsm", ci=CI)
    with pytest.raises(DataError, match="lack column"):
        calibration_matrix(planted.drop(columns=["item_id"]), ci=CI)
    with pytest.raises(ConfigError, match="alpha"):
        calibration_matrix(planted, alpha=1.5, ci=CI)


def test_calibration_names() -> None:
    assert calibration_name("flores:ar:64") == "ar"
    assert calibration_name("flores:en+ja+zh+ar:128") == "mix(en+ja+zh+ar)"
    assert calibration_name("flores:mixed:128") == "mixed"
    assert calibration_name("/data/my_texts.txt") == "my_texts.txt"


def test_grid_builds_the_specs_and_labels_of_a_study() -> None:
    grid = calibration_grid(["gptq-w4g128"], ["en", "ja", "zh", "ar", "en+ja+zh+ar"], n=128, controls=["rtn-w4g128"])
    assert grid[0] == "fp32" and grid[-1] == "rtn-w4g128"
    assert grid[1] == {"label": "gptq-w4g128", "calibration": ["flores:en:128", "flores:ja:128", "flores:zh:128",
                                                                "flores:ar:128", "flores:en+ja+zh+ar:128"]}
    study = mq.Study("gemma3-270m", quant=grid, tasks=["flores_ppl"], languages=["en", "el"], limit=4)
    labels = [s.label for s in study.specs]
    assert labels == ["fp32", "gptq-w4g128@flores:en:128", "gptq-w4g128@flores:ja:128", "gptq-w4g128@flores:zh:128",
                      "gptq-w4g128@flores:ar:128", "gptq-w4g128@flores:en+ja+zh+ar:128", "rtn-w4g128"]
    assert len(study.cells) == 7 * 2
    assert calibration_grid(["gptq-w4g128"], ["flores:ja:64"], baseline=None) == [
        {"label": "gptq-w4g128", "calibration": ["flores:ja:64"]}]


def test_grid_refuses_bad_input_before_any_model() -> None:
    with pytest.raises(ConfigError, match="rtn-w4g128.*calibration"):
        calibration_grid(["rtn-w4g128"], ["en"])
    with pytest.raises(ConfigError, match="source 'en' is listed twice"):
        calibration_grid(["gptq-w4g128"], ["en", "en"])
    with pytest.raises(ConfigError, match="xx"):
        calibration_grid(["gptq-w4g128"], ["xx"])
    with pytest.raises(ConfigError, match="control 'gptq-w4g128@flores:en:8'"):
        calibration_grid(["gptq-w4g128"], ["en"], controls=["gptq-w4g128@flores:en:8"])
    with pytest.raises(ConfigError, match="n=0"):
        calibration_grid(["gptq-w4g128"], ["en"], n=0)


def test_an_asymmetric_method_is_compared_with_rtn_on_the_same_grid() -> None:
    quants = ["fp32", "rtn-w4g128", "rtn-w4g128-asym", "awq-w4g128@flores:en:128", "awq-w4g128@flores:ja:128"]
    eff = {(q, lang): v for lang in LANGS for q, v in
           [("rtn-w4g128", 0.2), ("rtn-w4g128-asym", 0.1), ("awq-w4g128@flores:en:128", 0.05),
            ("awq-w4g128@flores:ja:128", 0.05)]}
    m = calibration_matrix(_frame(eff, quants), ci=CI)
    frame = m.to_frame()
    assert m.controls == {"awq-w4g128": ("rtn-w4g128-asym",)} and (frame["rtn_label"] == "rtn-w4g128-asym").all()
    assert frame["delta_vs_rtn"].to_numpy() == pytest.approx(-0.05, abs=0.01)
    only_sym = _frame(eff, [q for q in quants if q != "rtn-w4g128-asym"])
    assert calibration_matrix(only_sym, ci=CI).controls == {"awq-w4g128": ("rtn-w4g128",)}
