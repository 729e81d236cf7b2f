"""The ``mlquant`` command line: run a study, report on a run, list what exists, run the demo.

Example:
    $ mlquant list tasks
    $ mlquant run study.yaml --out runs/mystudy
    $ mlquant report runs/mystudy
    $ mlquant demo
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer

from mlquant._registry import did_you_mean
from mlquant.errors import MlquantError

app = typer.Typer(add_completion=False, help="Measure what quantization costs an LLM, per language and task.")

LIST_WHATS = ("tasks", "methods", "languages")


#: Set by the global ``--debug`` option: errors then show their traceback.
_OPTIONS: dict[str, bool] = {"debug": False}
#: Exit code of a run stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error")) -> None:
    """Measure what quantization costs an LLM, per language and task."""
    _OPTIONS["debug"] = debug


def _fail(exc: Exception) -> None:
    """Report an error in one line (the traceback with --debug) and exit 2."""
    if _OPTIONS["debug"]:
        raise exc
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command("list")
def list_cmd(what: str = typer.Argument(..., help="tasks | methods | languages")) -> None:
    """List the registered tasks (with languages, metric, kind, difficulty), quantization methods or languages."""
    import mlquant as mq

    if what not in LIST_WHATS:
        _fail(MlquantError(f"unknown list {what!r}.{did_you_mean(what, LIST_WHATS)} Choose one of: {', '.join(LIST_WHATS)}."))
    if what == "tasks":
        for name in mq.list_tasks():
            task = mq.get_task(name)
            local = task.languages(where="local")
            hub = sorted(set(task.languages(where="hub")) - set(local))
            typer.echo(
                f"{name:<14} kind={task.kind:<10} metric={task.metric:<16} difficulty={task.difficulty:<6} "
                f"local: {' '.join(local) or '-'}" + (f" | hub only: {' '.join(hub)}" if hub else "")
            )
    elif what == "methods":
        for label in mq.list_methods():
            typer.echo(label)
    else:
        for lang in mq.list_languages():
            typer.echo(
                f"{lang.code:<3} {lang.name:<18} {lang.native_name:<14} script={lang.script} "
                f"resource={lang.resource_class} family={lang.family}"
            )


@app.command()
def run(
    study_file: Path = typer.Argument(..., help="study YAML file"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory (default runs/<file stem>)"),
    quiet: bool = typer.Option(False, help="no progress bars"),
    device: str | None = typer.Option(
        None, help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:<index> | mps; overrides the file's device"
    ),
    executor: str = typer.Option(
        "local", help="local (here) | ray (one Ray task per quant spec; needs mlquant[ray] and a shared run folder)"
    ),
    address: str | None = typer.Option(
        None, help="with --executor ray: the Ray cluster (auto, ray://head:10001; default RAY_ADDRESS or a local one)"
    ),
    cpus_per_group: float | None = typer.Option(None, help="with --executor ray: CPUs per quant spec (default 1)"),
    gpus_per_group: float | None = typer.Option(
        None, help="with --executor ray: GPUs per quant spec (default 1 on cuda, else 0)"
    ),
    add: bool = typer.Option(
        False, "--add", help="extend a run folder that holds another study (its study.yaml then records both)"
    ),
) -> None:
    """Run (or resume) the study in STUDY_FILE; finished cells are never recomputed. With --executor ray, each quant
    spec's unfinished cells go to a Ray cluster as one task; the results are the same as a local run's."""
    import mlquant as mq
    from mlquant.executors import Executor, RayExecutor
    from mlquant.report import format_table, relative_change_table

    try:
        ray_options = {"--address": address, "--cpus-per-group": cpus_per_group, "--gpus-per-group": gpus_per_group}
        given = [name for name, value in ray_options.items() if value is not None]
        chosen: str | Executor = executor
        if executor == "ray":
            chosen = RayExecutor(address=address, num_cpus=cpus_per_group, num_gpus=gpus_per_group)
        elif given:
            raise mq.ConfigError(f"{given[0]} applies to --executor ray, not --executor {executor}.")
        study = mq.Study.from_yaml(study_file, **({"device": device} if device is not None else {}))
        run_dir = out or Path("runs") / study_file.stem
        frame = study.run(run_dir, progress=not quiet, executor=chosen, add=add).frame
    except MlquantError as exc:
        _fail(exc)
        return
    stats = study.last_run
    typer.echo(
        f"cells: {stats.cells_computed} computed, {stats.cells_skipped} already finished; requests: "
        f"{stats.requests_computed} computed, {stats.cache_hits} from cache; forward passes: {stats.forward_passes}"
    )
    typer.echo(format_table(relative_change_table(frame)))
    typer.echo(f"results: {run_dir}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    html: Path | None = typer.Option(
        None, help="write the report as a self-contained HTML page here (summary, figures, tables; no external request)"
    ),
    page: bool = typer.Option(False, "--page", help="write the HTML report to RUN_DIR/report.html"),
    open_page: bool = typer.Option(
        False, "--open", help="open the HTML report in a browser (writes RUN_DIR/report.html unless --html is given)"
    ),
    baseline: str | None = typer.Option(None, help="baseline label (default fp32, bf16 or fp16)"),
    cosine: bool = typer.Option(False, help="add the embedding cosine of generated outputs (needs mlquant[embed])"),
) -> None:
    """Print the language x task x method table of a run, similarity to the baseline, corpus-level metrics (chrF++,
    spBLEU, LCPR) and the statistics summary; with --html, the same report as a static page."""
    import mlquant as mq
    from mlquant.report import build_report

    try:
        frame = mq.read_results(run_dir)
        kl_values = mq.read_results(run_dir, what="kl")
        judged = mq.read_results(run_dir, what="judged")
        built = build_report(frame, baseline, cosine=cosine, kl=kl_values, judged=judged)
        typer.echo(built.to_text())
        target = html or (run_dir / "report.html" if page or open_page else None)
        if target is not None:
            written = built.write_html(target)
            typer.echo(f"HTML report: {written}")
            if open_page:
                import webbrowser

                webbrowser.open(written.resolve().as_uri())
    except MlquantError as exc:
        _fail(exc)


@app.command()
def judge(
    run_dir: Path = typer.Argument(..., help="a run directory with open-ended outputs"),
    model: str = typer.Option(..., "--judge", help="judge: a model name/path (local), or the model name at --url"),
    url: str | None = typer.Option(None, help="OpenAI-compatible endpoint of the judge (e.g. http://host:8000/v1)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="environment variable holding the endpoint's API key"),
    baseline: str | None = typer.Option(None, help="baseline label (default fp32, bf16 or fp16)"),
    task: list[str] = typer.Option(["open_ended"], help="generation task(s) to judge (task labels of the run)"),
    max_new_tokens: int = typer.Option(512, help="budget of each verdict"),
) -> None:
    """Judge every quantized model's open-ended answers against the baseline's, in both orders.

    Verdicts are cached in the run's cache.sqlite (keyed by the judge) and written to judged/<judge>.parquet;
    ``mlquant report`` shows their win rates.
    """
    import pandas as pd

    import mlquant as mq
    from mlquant.cache import CachedModel, RequestCache
    from mlquant.report import format_table
    from mlquant.results import write_judged
    from mlquant.tasks.judge import OpenAIChatModel, judge_results, win_rates

    try:
        frame = mq.read_results(run_dir)
        base = baseline or mq.report.default_baseline(frame)
        missing = sorted(set(task) - set(frame["task"]))
        if missing:
            raise mq.ConfigError(f"judge: task(s) {missing} are not in {run_dir}; it has {sorted(set(frame['task']))}.")
        if url is not None:
            judge_model: Any = OpenAIChatModel(url, model, api_key_env)
        else:
            from mlquant.models import load_model

            judge_model = load_model(model)
        cache = RequestCache(Path(run_dir) / "cache.sqlite")
        try:
            cached = CachedModel(judge_model, cache)
            judged = judge_results(frame, cached, base, tasks=task, max_new_tokens=max_new_tokens)
        finally:
            cache.close()
        name = str(getattr(judge_model, "name", model))
        judged.insert(0, "judge", name)
        before = mq.read_results(run_dir, what="judged")
        if len(before):  # keep this judge's verdicts on the cells not judged now (e.g. another --task)
            before = before[before["judge"] == name]
            cells = ["quant", "task", "lang"]
            fresh = set(judged[cells].itertuples(index=False, name=None))
            kept = before[[c not in fresh for c in before[cells].itertuples(index=False, name=None)]]
            judged = pd.concat([kept, judged], ignore_index=True) if len(kept) else judged
        path = write_judged(run_dir, name, judged)
        typer.echo(f"verdicts: {cached.computed} computed, {cached.hits} from cache -> {path}")
        typer.echo(format_table(win_rates(judged).set_index(["quant", "task", "lang"]), 3))
    except MlquantError as exc:
        _fail(exc)


@app.command()
def kl(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    lang: list[str] = typer.Option([], help="languages (default: the study's flores_ppl languages)"),
    limit: int | None = typer.Option(None, help="sentences per language (default: the study's flores_ppl limit)"),
    quant: list[str] = typer.Option([], help="quantized models (default: all of the study)"),
) -> None:
    """KL(baseline || quantized) of next-token distributions on FLORES sentences, per sentence, for every quant.

    The models are rebuilt from the run's study.yaml; results go to kl/<quant>.parquet and into ``mlquant report``.
    """
    from mlquant.similarity import run_kl

    try:
        values = run_kl(run_dir, langs=lang or None, limit=limit, quants=quant or None)
    except MlquantError as exc:
        _fail(exc)
        return
    table = values.groupby(["quant", "lang"], sort=False)["kl"].agg(["mean", "median", "max", "size"])
    typer.echo("KL(baseline || quantized), nats per token, mean over sentences:")
    typer.echo(table.round(5).to_string())


@app.command()
def distance(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    quant: list[str] = typer.Option([], help="quantized models (default: all of the study)"),
    lang: list[str] = typer.Option([], help="languages (default: the study's languages)"),
    sentences: int = typer.Option(64, help="FLORES sentences per language (the same sentences in every language)"),
    seed: int = typer.Option(0, help="which sentences are drawn"),
    csv: Path | None = typer.Option(None, help="also write the long table (quant, lang, metric, value, CI, SEs) as CSV"),
) -> None:
    """Distance to the baseline as llama.cpp's --kl-divergence reports it (KL both ways, same top token, Δp, ln PPL
    ratio), per language on parallel FLORES sentences, with CIs and standard errors clustered by sentence.

    The models are rebuilt from the run's study.yaml; per-token values are kept under distance/ and a rerun reads them.
    """
    from mlquant.distance import run_distance

    try:
        table = run_distance(run_dir, quant=quant or None, languages=lang or None, n_sentences=sentences, seed=seed)
    except MlquantError as exc:
        _fail(exc)
        return
    _print_table(table, csv)


def _print_table(result: Any, csv: Path | None) -> None:
    """Print a result object (its ``str``) and, when asked, write its ``to_frame()`` as CSV."""
    typer.echo(str(result))
    if csv is not None:
        result.to_frame().to_csv(csv, index=False)
        typer.echo(f"wrote {csv}")


@app.command("calibration-matrix")
def calibration_matrix_cmd(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    reference: str = typer.Option("en", help="the reference calibration source: en, mix(en+ja), flores:en:128, ..."),
    method: list[str] = typer.Option([], help="a calibrated method: base label (gptq-w4g128) or name (gptq); default all"),
    task: list[str] = typer.Option([], help="task labels (default: all)"),
    csv: Path | None = typer.Option(None, "--csv", help="also write the full table (CIs, controls) as CSV here"),
) -> None:
    """Each calibrated method's paired score change per calibration source x evaluation language, against the same
    method calibrated on the reference source (and against RTN / HQQ at the same bits where the run has them)."""
    from mlquant.calibration_matrix import calibration_matrix
    from mlquant.results import Results

    try:
        matrix = calibration_matrix(Results.read(run_dir), reference=reference, method=method or None, task=task or None)
    except MlquantError as exc:
        _fail(exc)
        return
    _print_table(matrix, csv)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="run directory"),
    limit: int | None = typer.Option(None, help="items per cell for every task (default: each task's demo limit)"),
    dtype: str = typer.Option("auto", help="the baseline's dtype: auto (bf16 only where it pays and agrees) | fp32 | bf16"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Gemma 3 270M (a dequantized 4-bit GGUF) vs rtn-w8, rtn-w4, rtn-w4g128 on xcopa, belebele, mgsm, flores_ppl in
    8 languages: the significant differences first, and an HTML report in the run folder."""
    from mlquant.demo import DemoOptions, run_demo

    try:
        run_demo(DemoOptions(out=out, limit=limit, dtype=dtype, progress=not quiet), echo=typer.echo)
    except MlquantError as exc:
        _fail(exc)


@app.command("compare-engines")
def compare_engines_cmd(
    model: str = typer.Option("gemma3-270m", "--model", "-m", help="model name, hub id, folder or .gguf file"),
    a: str = typer.Option("hf", "--a", help="first engine (the reference): hf | vllm"),
    b: str = typer.Option("vllm", "--b", help="second engine: hf | vllm"),
    tasks: str = typer.Option("xcopa,belebele", help="comma-separated task names"),
    languages: str = typer.Option("tr,zh", help="comma-separated language codes"),
    limit: int | None = typer.Option(50, help="items per task and language (a study's seeded sample)"),
    seed: int = typer.Option(0, help="seed of the item sample"),
    quant: str | None = typer.Option(None, help="quantize both (e.g. rtn-w4g128); default: the model as it is"),
    quant_b: str | None = typer.Option(None, help="quantize the second differently (default: --quant)"),
    task_option: list[str] = typer.Option([], help="a task option, TASK.KEY=VALUE (e.g. flores.max_new_tokens=32)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the table (and engine start times) here"),
) -> None:
    """Score the same items with two engines (same model) and print, per task and language: agreement of the
    predictions, max/mean |delta log-likelihood|, chrF between their generations and each one's score."""
    import json

    from mlquant.compare import compare_engines, format_comparison, task_entries
    from mlquant.engines import load_engine

    engines: list[Any] = []
    try:
        entries = task_entries(tasks, task_option)
        codes = [c.strip() for c in languages.split(",") if c.strip()]
        starts = []
        for engine, q in ((a, quant), (b, quant_b or quant)):
            t0 = time.perf_counter()
            engines.append(load_engine(engine, model, q))
            starts.append(time.perf_counter() - t0)
        frame = compare_engines(engines[0], engines[1], entries, codes, limit=limit, seed=seed)
    except MlquantError as exc:
        _fail(exc)
        return
    finally:
        for built in engines:
            close = getattr(built, "close", None)
            if callable(close):
                close()
    label_a, label_b = f"{a}" + (f" {quant}" if quant else ""), f"{b}" + (f" {quant_b or quant}" if quant_b or quant else "")
    typer.echo(f"{model}: a = {label_a} (started in {starts[0]:.1f} s), b = {label_b} (started in {starts[1]:.1f} s)")
    typer.echo(format_comparison(frame))
    typer.echo("agree: items with the same predicted option (choice) or the same output (generation); |delta|: "
               "log-likelihoods, nats; chrf: b's generations against a's (100 = identical).")
    if json_out is not None:
        blob = {"model": model, "a": a, "b": b, "quant": quant, "quant_b": quant_b or quant, "limit": limit,
                "seed": seed, "start_seconds": {"a": starts[0], "b": starts[1]},
                "cells": json.loads(frame.to_json(orient="records"))}
        json_out.write_text(json.dumps(blob, indent=1, ensure_ascii=False), encoding="utf-8")
        typer.echo(f"written: {json_out}")


def main() -> None:  # pragma: no cover - console entry point (tests run it in a subprocess)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)  # without standalone mode, typer returns an Exit's code instead of exiting
    except MlquantError as exc:  # raised outside a command's own handler: one line, unless --debug
        if _OPTIONS["debug"]:
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except typer.TyperException as exc:  # usage errors, reported as typer reports them
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
        typer.secho(
            "interrupted: finished cells and every answered request are kept in the run folder; run the same command "
            "again to resume.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
