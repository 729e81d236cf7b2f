"""The mlquant command line."""

from __future__ import annotations

from typer.testing import CliRunner

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


def test_run_bad_study_file_is_a_clear_error(tmp_path) -> None:
    study = tmp_path / "bad.yaml"
    study.write_text("model: x/y\nquant: [fp32]\ntasks: [xcopo]\n")
    result = runner.invoke(app, ["run", str(study)])
    assert result.exit_code == 2 and "unknown task 'xcopo'" in result.output and "Did you mean 'xcopa'" in result.output
