"""The mlquant command line."""

from __future__ import annotations

import re

import pandas as pd
from typer.testing import CliRunner

import mlquant as mq
from mlquant.cli import app

runner = CliRunner()


def test_list_tasks_shows_languages_metric_kind_difficulty() -> None:
    result = runner.invoke(app, ["list", "tasks"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("xcopa"))
    assert "kind=choice" in line and "metric=accuracy" in line and "difficulty=easy" in line and " tr " in line


def test_list_methods_and_languages() -> None:
    methods = runner.invoke(app, ["list", "methods"])
    assert methods.exit_code == 0 and "rtn" in methods.output.split()
    langs = runner.invoke(app, ["list", "languages"])
    assert langs.exit_code == 0 and "日本語" in langs.output and len(langs.output.splitlines()) == 33


def test_unknown_list_suggests() -> None:
    result = runner.invoke(app, ["list", "task"])
    assert result.exit_code == 2 and "Did you mean 'tasks'" in result.output


def test_run_and_report(tmp_path, tiny_llama_dir) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(f"model: {tiny_llama_dir}\nquant: [fp32, rtn-w4g32]\ntasks: [xcopa]\nlanguages: [tr]\nlimit: 4\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(study), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "rtn-w4g32" in result.output and str(out) in result.output
    again = runner.invoke(app, ["run", str(study), "--out", str(out), "--quiet"])
    assert "forward passes: 0" in again.output
    report = runner.invoke(app, ["report", str(out), "--html", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "xcopa" in report.output and (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    assert "Similarity to the baseline's outputs" in report.output and "flip_rate" in report.output
    assert "flip_rate" in (tmp_path / "r.html").read_text()
    beside = runner.invoke(app, ["report", str(out), "--page"])
    assert beside.exit_code == 0, beside.output
    assert f"HTML report: {out / 'report.html'}" in beside.output and (out / "report.html").is_file()


def test_run_bad_study_file_is_a_clear_error(tmp_path) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text("model: x/y\nquant: [fp32]\ntasks: [xcopo]\n")
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 2 and "unknown task 'xcopo'" in result.output and "Did you mean 'xcopa'" in result.output


def _run_study(tmp_path, model_dir, quant: str, task: str):
    """Write a one-task study file for ``model_dir``, run it with the CLI, return the run folder."""
    study = tmp_path / "s.yaml"
    study.write_text(f"model: {model_dir}\nquant: [{quant}]\ntasks: [{task}]\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(study), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_judge_command_caches_verdicts_and_report_shows_win_rates(tmp_path, tiny_llama_dir) -> None:
    task = ("{name: open_ended, subsets: [aya], max_new_tokens: 4, languages: [zh], limit: 2}, "
            "{name: open_ended, label: oe-tr, subsets: [aya], max_new_tokens: 4, languages: [tr], limit: 2}")
    out = _run_study(tmp_path, tiny_llama_dir, "fp32, rtn-w4g32", task)
    bad = runner.invoke(app, ["judge", str(out), "--judge", str(tiny_llama_dir), "--task", "xcopa"])
    assert bad.exit_code == 2 and "not in" in bad.output and "open_ended" in bad.output
    first = runner.invoke(app, ["judge", str(out), "--judge", str(tiny_llama_dir), "--max-new-tokens", "3"])
    assert first.exit_code == 0, first.output
    import re

    computed, hits = map(int, re.search(r"verdicts: (\d+) computed, (\d+) from cache", first.output).groups())
    assert computed >= 1 and computed + hits == 4  # 2 items x 2 orders (identical prompts are asked once)
    judged = mq.read_results(out, what="judged")
    assert len(judged) == 2 and set(judged["outcome"]) <= {"win", "tie", "loss"}
    assert set(judged.columns) >= {"judge", "quant", "task", "lang", "item_id", "verdict_ab", "verdict_ba"}
    again = runner.invoke(app, ["judge", str(out), "--judge", str(tiny_llama_dir), "--max-new-tokens", "3"])
    assert "verdicts: 0 computed, 4 from cache" in again.output, again.output
    report = runner.invoke(app, ["report", str(out), "--html", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    assert "Pairwise judge" in report.output and "win_rate" in report.output
    assert "Pairwise judge" in (tmp_path / "r.html").read_text()
    # Judging another task adds to this judge's file; the verdicts already there stay.
    other = runner.invoke(app, ["judge", str(out), "--judge", str(tiny_llama_dir), "--max-new-tokens", "3",
                                "--task", "oe-tr"])
    assert other.exit_code == 0, other.output
    both = mq.read_results(out, what="judged")
    assert both.groupby("task").size().to_dict() == {"oe-tr": 2, "open_ended": 2}


def test_kl_command_rebuilds_models_stores_values_and_resumes(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    out = _run_study(tmp_path, tiny_llama_dir, "fp32, rtn-w8, rtn-w4g32", "{name: flores_ppl, languages: [ja, de], limit: 3}")
    result = runner.invoke(app, ["kl", str(out)])
    assert result.exit_code == 0, result.output
    kl = mq.read_results(out, what="kl")
    assert len(kl) == 2 * 2 * 3 and set(kl["lang"]) == {"ja", "de"} and (kl["limit"] == 3).all()
    mean = kl.groupby("quant")["kl"].mean()
    assert 0 < mean["rtn-w8"] < mean["rtn-w4g32"]  # 4-bit moves the distributions more than 8-bit
    # Same sentences as the study's cells.
    cells = mq.read_results(out)
    assert set(kl["item_id"]) == set(cells["item_id"])
    # Another limit for one language adds to the files; the sentences already there are kept.
    more = runner.invoke(app, ["kl", str(out), "--lang", "ja", "--limit", "2"])
    assert more.exit_code == 0, more.output
    kl2 = mq.read_results(out, what="kl")
    assert len(kl2) == 2 * (2 * 3 + 2) and set(kl2.loc[kl2["limit"] == 2, "lang"]) == {"ja"}
    # A second call recomputes nothing.
    import mlquant.similarity as sim

    monkeypatch.setattr(sim, "flores_kl", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = runner.invoke(app, ["kl", str(out)])
    assert again.exit_code == 0, again.output
    report = runner.invoke(app, ["report", str(out), "--html", str(tmp_path / "r.html")])
    assert report.exit_code == 0 and "kl" in report.output
    assert re.search(r"<th[^>]*>kl</th>", (tmp_path / "r.html").read_text())
    bad = runner.invoke(app, ["kl", str(out), "--quant", "rtn-w3"])
    assert bad.exit_code == 2 and "rtn-w3" in bad.output
    not_a_run = runner.invoke(app, ["kl", str(tmp_path)])
    assert not_a_run.exit_code == 2 and "has no study.yaml" in not_a_run.output
    # llama.cpp-style distances of the same run: a table, a CSV in the long format, and a rerun that reads the cache.
    from mlquant.distance import COLUMNS

    csv = tmp_path / "distance.csv"
    dist = runner.invoke(app, ["distance", str(out), "--lang", "ja", "--sentences", "2", "--csv", str(csv)])
    assert dist.exit_code == 0, dist.output
    assert "KL 95% CI" in dist.output and list(pd.read_csv(csv).columns) == COLUMNS
    assert set(pd.read_csv(csv)["quant"]) == {"rtn-w8", "rtn-w4g32"}
    bad_n = runner.invoke(app, ["distance", str(out), "--sentences", "0"])
    assert bad_n.exit_code == 2 and "0" in bad_n.output


def test_calibration_matrix_command_prints_the_matrix_and_writes_csv(tmp_path, tiny_llama_dir) -> None:
    """GPTQ calibrated on en and ja + an RTN control, bits per byte in two languages: the matrix against en."""
    quant = ("fp32, rtn-w4g32, {label: gptq-w4g32, calibration: ['flores:en:8', 'flores:ja:8']}")
    out = _run_study(tmp_path, tiny_llama_dir, quant, "{name: flores_ppl, languages: [en, ja], limit: 4}")
    csv = tmp_path / "matrix.csv"
    result = runner.invoke(app, ["calibration-matrix", str(out), "--csv", str(csv)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(csv)
    assert set(table["lang"]) == {"en", "ja"} and set(table["calibration"]) >= {"ja"}
    assert {"delta", "ci_low", "ci_high", "p_holm", "delta_vs_rtn"} <= set(table.columns)
    missing = runner.invoke(app, ["calibration-matrix", str(out), "--reference", "ar"])
    assert missing.exit_code == 2 and "ar" in missing.output
