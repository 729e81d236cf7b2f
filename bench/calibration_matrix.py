"""Benchmark: the calibration-language x evaluation-language matrix of Gemma 3 270M (bits per byte on FLORES).

Usage:
    MLQUANT_DATA_DIR=shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/calibration_matrix.py \\
        [--run runs/calibration_matrix] [--methods gptq-w4g128,awq-w4g128] [--controls rtn-w4g128,hqq-w4g128] \\
        [--sources en,ja,zh,ar,en+ja+zh+ar] [--calib-n 128] [--sentences 48] [--languages en,ja,...] \\
        [--out bench/results/calibration_matrix.md]

A real :class:`mlquant.Study` (fp32, each method on each calibration source, the controls) on ``flores_ppl`` in
13 languages, run into a resumable run folder (``--add`` semantics: a later call with more methods extends it), then
:func:`mlquant.calibration_matrix.calibration_matrix` with English as the reference source. The markdown written to
``--out`` has the delta matrix with 95 % paired bootstrap CIs, the calibrated cells vs the controls and vs fp32, the
command, the wall time of every invocation (the run folder keeps ``bench_times.json``) and the sentence count.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

LANGUAGES = "en,ja,zh,ar,el,hi,ru,ko,th,tr,fr,de,vi"


def _cell(row: Any, col: str, pcol: str | None) -> str:
    import math

    value = float(row[col])
    if math.isnan(value):
        return "–"
    lo, hi = float(row[f"{col}_low" if col != "delta" else "ci_low"]), float(row[f"{col}_high" if col != "delta" else "ci_high"])
    star = ""
    if pcol is not None and not math.isnan(float(row[pcol])) and float(row[pcol]) < 0.05:
        star = "\\*"
    return f"{value:+.3f}{star} [{lo:+.3f}, {hi:+.3f}]"


def _markdown_table(frame: Any, langs: list[str], col: str, pcol: str | None, rows: list[str] | None = None) -> str:
    sources = rows or list(dict.fromkeys(frame["calibration"]))
    out = ["| calibration | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for src in sources:
        part = frame[frame["calibration"] == src].set_index("lang")
        cells = [_cell(part.loc[lang], col, pcol) if lang in part.index else "–" for lang in langs]
        out.append(f"| {src} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _scores_table(frame: Any, langs: list[str], extra: dict[str, dict[str, float]]) -> str:
    out = ["| cell | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for label, by_lang in extra.items():
        out.append(f"| {label} | " + " | ".join(f"{by_lang.get(lang, float('nan')):.4f}" for lang in langs) + " |")
    for src in dict.fromkeys(frame["calibration"]):
        part = frame[frame["calibration"] == src].set_index("lang")
        out.append(f"| {frame['method'].iloc[0]}@{src} | " + " | ".join(
            f"{float(part.loc[lang, 'score']):.4f}" if lang in part.index else "–" for lang in langs) + " |")
    return "\n".join(out)


def _span(times: list[dict[str, Any]]) -> float:
    """Seconds from the earliest start to the latest end of the recorded invocations (they may overlap)."""
    if not times:
        return 0.0
    starts = [time.mktime(time.strptime(t["started"], "%Y-%m-%d %H:%M:%S")) for t in times]
    return max(s + t["wall_s"] for s, t in zip(starts, times)) - min(starts)


def _activations(args: Any, argv: list[str] | None) -> int:
    """Activation ranges of Gemma 3 270M per language and calibration source, and the sources' coverage."""
    import pandas as pd
    import torch

    import mlquant as mq
    from mlquant.activations import activation_ranges

    sources = [x for x in args.activations.split(",") if x]
    langs = [x for x in args.languages.split(",") if x]
    model = mq.load_model("gemma3-270m")
    t0 = time.perf_counter()
    table = activation_ranges(model, languages=langs, calibration=sources, n_sentences=args.sentences)
    seconds = time.perf_counter() - t0
    frame = table.to_frame()
    per_source = frame.groupby("source", sort=False).agg(
        tokens=("n_tokens", "first"), absmax_median=("absmax", "median"), absmax_max=("absmax", "max"),
        p99_9_median=("p99_9", "median"), outlier_share=("outlier_share", "mean"),
        kurtosis_max_median=("kurtosis_max", "median"))
    rows = []
    for src in sources:
        for lang in langs:
            cov = table.coverage(src, lang).to_frame()
            worst = cov.loc[cov["tokens_exceeding"].idxmax()]
            rows.append({"calibration": src, "lang": lang, "tokens_exceeding_mean": cov["tokens_exceeding"].mean(),
                         "tokens_exceeding_max": worst["tokens_exceeding"], "worst_linear": worst["linear"],
                         "entries_exceeding_mean": cov["entries_exceeding"].mean(),
                         "range_ratio_max": cov["range_ratio"].max(),
                         "outlier_channels_covered": cov["outlier_channels_covered"].mean()})
    coverage = pd.DataFrame(rows)
    command = "MLQUANT_DATA_DIR=shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/calibration_matrix.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    lines = [
        "# Activation ranges per language and calibration coverage: Gemma 3 270M (`mlquant.activations`)", "",
        f"Written on {time.strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}; {seconds:.0f} s for "
        f"`activation_ranges` ({len(frame)} (source, Linear) rows, every Linear of the 18 decoder blocks).", "",
        f"Command: `{command.strip()}`", "",
        f"Languages: the first {args.sentences} FLORES devtest sentences with evaluation ids (parallel); calibration "
        "sources: exactly the texts GPTQ calibrates on. BOS left out. Outlier: |x| > 6 x the token's RMS.", "",
        "## Per source (over the Linears: median of absmax, max absmax, median p99.9 |x|, mean outlier share, "
        "median of the largest channel kurtosis)", "",
        per_source.reset_index().to_markdown(index=False, floatfmt=".4g"), "",
        "## Coverage: how much of each language's range the calibration text covers (over the Linears)", "",
        "`tokens_exceeding`: share of the language's tokens with some input channel above the calibration text's "
        "maximum for that channel (mean over Linears, and the worst Linear); `range_ratio_max`: the language's largest "
        "|x| / the calibration text's, worst Linear; `outlier_channels_covered`: share of the language's top outlier "
        "channels that are also outlier channels of the calibration text (mean over Linears).", "",
        coverage.to_markdown(index=False, floatfmt=".4g"), "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    frame.to_csv(out.with_suffix(".csv"), index=False)
    print("\n".join(lines), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/calibration_matrix")
    parser.add_argument("--methods", default="gptq-w4g128")
    parser.add_argument("--controls", default="rtn-w4g128")
    parser.add_argument("--sources", default="en,ja,zh,ar,en+ja+zh+ar")
    parser.add_argument("--calib-n", type=int, default=128)
    parser.add_argument("--sentences", type=int, default=48, help="FLORES sentences per language (seeded sample)")
    parser.add_argument("--languages", default=LANGUAGES)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default="bench/results/calibration_matrix.md")
    parser.add_argument("--no-run", action="store_true", help="only read the run folder and write the matrix")
    parser.add_argument("--activations", default="", help="instead of the matrix: activation_ranges of these "
                        "calibration sources (comma-separated, e.g. flores:en:128,flores:ar:128) on --languages, "
                        "--sentences each, with coverage tables, written to --out")
    parser.add_argument("--also", default="", help="more run folders (comma-separated) whose cells join the matrix "
                        "(parts of the grid run in parallel processes; a (quant, task, language) cell read from an earlier folder is not read twice)")
    args = parser.parse_args(argv)

    import torch

    import mlquant as mq
    from mlquant.calibration_matrix import calibration_grid, calibration_matrix
    from mlquant.stats import Bootstrap

    torch.set_num_threads(args.threads)
    if args.activations:
        return _activations(args, argv)
    methods = [m for m in args.methods.split(",") if m]
    controls = [c for c in args.controls.split(",") if c]
    sources = [s for s in args.sources.split(",") if s]
    langs = [x for x in args.languages.split(",") if x]
    grid = calibration_grid(methods, sources, n=args.calib_n, controls=controls)
    cut = len(grid) - len(controls)
    # Run order (a study runs its quants in order): fp32, the first control, the first method's sources, then the
    # rest, so that a partial run already holds one whole matrix.
    grid = [grid[0], *grid[cut : cut + 1], grid[1], *grid[cut + 1 :], *grid[2:cut]]
    study = mq.Study(
        "gemma3-270m", quant=grid, tasks=["flores_ppl"], languages=langs, limit=args.sentences,
        batch_size=args.batch_size, name="calibration-matrix",
    )
    run = Path(args.run)
    times_file = run / "bench_times.json"
    start = time.perf_counter()
    if not args.no_run:
        print(f"# {len(study.cells)} cells: {len(study.specs)} quants x {len(langs)} languages, "
              f"{args.sentences} sentences each", flush=True)
        results = study.run(run, add=True, progress=False)
    else:
        results = mq.Results.read(run)
    wall = time.perf_counter() - start
    times = json.loads(times_file.read_text()) if times_file.is_file() else []
    if not args.no_run:
        times.append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - wall)),
                      "wall_s": round(wall, 1), "cells_run": study.last_run.cells_computed,
                      "methods": methods, "controls": controls})
        times_file.write_text(json.dumps(times, indent=1))
    folders = [run, *(Path(x) for x in args.also.split(",") if x)]
    if len(folders) > 1:
        import pandas as pd

        frames = [results.frame]
        for folder in folders[1:]:
            # a (quant, task, language) cell already read from an earlier folder is not read twice; the same quant
            # on other languages is (the grid is split over folders by method, source and language)
            more = mq.read_results(folder)
            seen = pd.concat(frames)[["quant", "task", "lang"]].drop_duplicates()
            fresh = more.merge(seen, on=["quant", "task", "lang"], how="left", indicator=True)["_merge"] == "left_only"
            frames.append(more[fresh.to_numpy()])
            extra = folder / "bench_times.json"
            times += json.loads(extra.read_text()) if extra.is_file() else []
        results = mq.Results(pd.concat(frames, ignore_index=True))
    t0 = time.perf_counter()
    try:
        matrix = calibration_matrix(results, reference="en", task="flores_ppl", ci=Bootstrap(n_resamples=args.resamples))
    except mq.ConfigError as exc:
        print(f"# no matrix from {[str(f) for f in folders]} yet: {exc}", flush=True)
        return 1
    stats_s = time.perf_counter() - t0
    print(matrix, flush=True)
    frame = matrix.to_frame()
    frame = frame[frame["lang"].isin(langs)]
    agg = results.aggregate()
    agg = agg[agg["task"] == "flores_ppl"]
    present = [lang for lang in langs if lang in set(frame["lang"])]
    command = "MLQUANT_DATA_DIR=shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python bench/calibration_matrix.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Calibration language x evaluation language: Gemma 3 270M, bits per byte on FLORES-200",
        "",
        f"Written by `bench/calibration_matrix.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}; torch {torch.__version__}, "
        f"{args.threads} torch thread(s), {platform.machine()}, 2 vCPUs shared with other jobs.",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"- Run folder(s) {', '.join(f'`{f}`' for f in folders)} (`mq.Study` runs; "
        f"{frame['quant'].nunique()} calibrated cells' quants x {len(present)} languages x `flores_ppl`); "
        f"{args.sentences} FLORES devtest sentences per language (paired n per cell: {int(frame['n'].min())}-"
        f"{int(frame['n'].max())}; the study's seeded sample of evaluation ids "
        f"1-812; the calibration pool is ids 813-1004, so the two never overlap); calibration {args.calib_n} "
        "sentences per source (a mix takes them round-robin).",
        f"- Wall time: {_span(times):.0f} s from the first start to the last end ({sum(t['wall_s'] for t in times):.0f} s "
        f"summed over {len(times)} invocation(s), some in parallel): "
        + "; ".join(f"{t['started']}: {t['wall_s']:.0f} s, {t['cells_run']} cells run ({','.join(t['methods'])})" for t in times)
        + f"; statistics {stats_s:.1f} s ({args.resamples} bootstrap resamples).",
        "- Delta = paired per-sentence mean of bits per byte (method calibrated on the row's source) - (the same "
        "method calibrated on English); **lower is better, so a positive delta means the source is worse than "
        "English calibration for that language**. [95 % paired bootstrap CI]; \\* = Holm-adjusted sign-flip "
        "permutation p < 0.05 within the method's matrix.",
        "",
    ]
    for method, part in frame.groupby("method", sort=False):
        lines += [f"## {method}: delta vs English calibration", "", _markdown_table(part, present, "delta", "p_holm"), ""]
        for ctrl in matrix.controls.get(str(method), ()):
            short = ctrl.split("-")[0]
            lines += [f"### {method} (each source) - {ctrl} (no calibration), same bits/group", "",
                      "Negative = the calibrated method beats plain rounding in that language.", "",
                      _markdown_table(part, present, f"delta_vs_{short}", f"p_vs_{short}_holm"), ""]
        if matrix.baseline is not None:
            lines += [f"### {method} (each source) - {matrix.baseline}", "",
                      _markdown_table(part, present, "delta_vs_baseline", None), ""]
        extra = {q: dict(zip(agg[agg["quant"] == q]["lang"], agg[agg["quant"] == q]["score"]))
                 for q in [matrix.baseline, *matrix.controls.get(str(method), ())] if q}
        lines += ["### Mean bits per byte (byte-weighted) per cell", "", _scores_table(part, present, extra), ""]
    lines += ["## Full table", "", "`matrix.to_frame()` columns: " + ", ".join(f"`{c}`" for c in frame.columns), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    frame.to_csv(out.with_suffix(".csv"), index=False)
    print(f"# wrote {out} and {out.with_suffix('.csv')}; wall {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
