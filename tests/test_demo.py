"""The demo (mlquant.demo, `mlquant demo`): its dtype decision, its summary, its quiet run and its report."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from mlquant.demo import DemoOptions, choose_dtype, cpu_bf16_flags, findings_text, quiet_dependencies, run_demo
from mlquant.errors import ConfigError


def test_cpu_flags_are_read_from_the_flags_lines(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\nbugs\t\t: avx512_bf16\n")
    assert cpu_bf16_flags(info) == ["amx_bf16"]  # "bugs" is not "flags"
    assert cpu_bf16_flags(tmp_path / "absent") == []


def test_dtype_is_bf16_only_on_a_native_cpu_with_enough_agreement() -> None:
    assert choose_dtype("auto", flags=[], agreement=1.0, items=100).label == "fp32"
    assert "no native bf16" in choose_dtype("auto", flags=[], agreement=1.0, items=100).reason
    assert choose_dtype("auto", flags=["avx512_bf16"], agreement=0.99, items=100).label == "bf16"
    low = choose_dtype("auto", flags=["avx512_bf16"], agreement=0.985, items=400)
    assert low.label == "fp32" and "98.5 % of 400 items" in low.reason
    assert choose_dtype("auto", flags=["amx_bf16"], agreement=float("nan"), items=0).label == "fp32"  # never measured
    # This machine's decision as the module records it: the measured agreement (bench/bf16.py) is at least 99 %.
    assert choose_dtype("auto", flags=["amx_bf16"]).label == "bf16"
    assert choose_dtype("bf16", flags=[]).label == "bf16" and choose_dtype("fp32", flags=["amx_bf16"]).label == "fp32"
    with pytest.raises(ConfigError, match="dtype 'fp16' is not one of 'auto', 'fp32', 'bf16'"):
        choose_dtype("fp16")


def test_findings_lead_with_what_survives_holm_and_give_every_change_its_ci() -> None:
    cells = pd.DataFrame({
        "quant": ["w4", "w4", "w8"], "task": "xcopa", "lang": ["zh", "th", "zh"], "metric": "accuracy",
        "higher_is_better": True, "n": 8, "baseline": [0.25, 0.5, 0.25], "quantized": [1.0, 0.125, 0.25],
        "diff": [0.75, -0.375, 0.0], "rel_change": [300.0, -75.0, 0.0], "rel_change_lo": [50.0, -100.0, -50.0],
        "rel_change_hi": [500.0, -20.0, 50.0], "p_holm": [0.2, 0.01, 1.0], "mdd_rel": [150.0, 60.0, 150.0],
    })
    lines = findings_text(cells)
    assert lines[0].startswith("Significant after Holm across all 3 cells") and lines[0].endswith(": 1")
    assert "th" in lines[1] and "-75.0 % [-100.0, -20.0]" in lines[1] and "worse" in lines[1]
    rest = "\n".join(lines[2:])
    assert "Not significant (2 cells)" in rest
    # The +300 % from 8 items is shown only with its interval and its MDD, among the non-significant cells.
    assert "+300.0 % [+50.0, +500.0]" in rest and "mdd_rel 150 %" in rest
    assert all("%" not in line or "[" in line for line in lines[1:] if line.startswith("  "))
    # A relative CI that is undefined (a baseline of 0 in some resample) gives way to the difference and its CI.
    undefined = cells.assign(rel_change_lo=float("nan"), rel_change_hi=float("nan"), diff_lo=-0.5, diff_hi=0.9)
    text = "\n".join(findings_text(undefined))
    assert "nan" not in text and "diff +0.75 [-0.5, +0.9] (too few correct items for a relative CI)" in text


def test_quiet_dependencies_silences_their_warnings_and_bars_only() -> None:
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_dependencies():
            assert not hf_logging.is_progress_bar_enabled()
            warnings.warn_explicit("old api", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
            warnings.warn_explicit("torch says", UserWarning, "x.py", 1, module="torch.nn.modules")
            warnings.warn_explicit("mine", UserWarning, "x.py", 1, module="mlquant.study")
            warnings.warn_explicit("other lib", FutureWarning, "x.py", 1, module="transformersx")
        warnings.warn_explicit("after", FutureWarning, "x.py", 1, module="transformers.x")
    assert [str(w.message) for w in seen] == ["mine", "other lib", "after"]
    assert hf_logging.is_progress_bar_enabled()


def test_bad_options_fail_before_any_model_is_loaded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dtype 'f32'"):
        run_demo(DemoOptions(out=tmp_path / "a", dtype="f32", model="no/such-model"))
    with pytest.raises(ConfigError, match="--limit 0"):
        run_demo(DemoOptions(out=tmp_path / "b", limit=0, model="no/such-model"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_demo_runs_reports_and_writes_the_html_beside_the_run(tmp_path: Path, tiny_llama_dir: Path, capfd) -> None:
    lines: list[str] = []
    out = tmp_path / "demo"
    options = DemoOptions(out=out, limit=2, dtype="fp32", progress=False, model=str(tiny_llama_dir),
                          quants=("rtn-w8", "rtn-w4g32"))
    report = run_demo(options, lines.append)
    text = "\n".join(lines)
    assert report == out / "report.html" and report.read_text(encoding="utf-8").lower().startswith("<!doctype html>")
    assert f"fp32 ({tiny_llama_dir})" in text and "itself a 4-bit model" not in text  # that note: the embedded model
    assert "Compute dtype: fp32: asked for" in text
    assert text.index("Significant after Holm across all") < text.index("Report: ")
    assert "rtn-w4g32" in text and ", 0 already there)" in text, text
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "FutureWarning" not in err, err
    again: list[str] = []
    run_demo(options, again.append)
    assert "(0 cells computed," in "\n".join(again)
