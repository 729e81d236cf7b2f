"""Does bf16 agree with fp32 on the demo's model, and is it faster here? (bench/README.md, section "bench/bf16.py")

Protocol:

* Model: Gemma 3 270M as the demo loads it (``mq.load_model("gemma3-270m")``: the Q4_K_M GGUF dequantized to
  float32); ``bf16`` is that float32 model cast to bfloat16 (what the demo's ``--dtype bf16`` computes in).
* The same items for both: the demo's tasks and languages (``mlquant.demo``) with the limits given here, seed 0. Each
  dtype runs as its own study in its own fresh run folder (no shared request cache), one after the other, timed
  separately (wall clock and the process's CPU time, which includes the model load and the cast).
* Agreement: a choice item agrees when both pick the same option (``extracted``); a generation item when both
  generate the same text (``output``). Perplexity items (flores_ppl) have no prediction: reported as the mean and
  max |bits-per-byte difference| and the relative change of the cell mean.
* The demo uses bf16 only on a CPU with native bf16 (``amx_bf16`` or ``avx512_bf16`` in /proc/cpuinfo) and only if
  the agreement measured here is >= 99 % (``mlquant.demo.BF16_AGREEMENT``).

Run: ``MLQUANT_DATA_DIR=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/bf16.py --json out.json``
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlquant as mq
from mlquant.demo import DEMO_LANGUAGES, cpu_bf16_flags


def run_one(label: str, tasks: list[dict[str, Any]], root: Path) -> tuple[pd.DataFrame, float, float]:
    """Run the study of one baseline dtype in a fresh folder; its frame, wall seconds and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    study = mq.Study("gemma3-270m", quant=[label], tasks=tasks, languages=list(DEMO_LANGUAGES), seed=0, name="bf16")
    frame = study.run(root / label, progress=False).frame
    return frame, time.perf_counter() - wall, time.process_time() - cpu


def agreement(fp32: pd.DataFrame, bf16: pd.DataFrame) -> pd.DataFrame:
    """Per task and language: items, agreeing predictions (choice, generation) or |delta bpb| (perplexity)."""
    keys = ["task", "lang", "item_id"]
    # A run folder returns every cell it holds (a resumed folder may hold more than this run asked for): compare the
    # cells both have, and require every item of those cells on both sides.
    cells = set(map(tuple, fp32[["task", "lang"]].drop_duplicates().to_numpy())) & set(
        map(tuple, bf16[["task", "lang"]].drop_duplicates().to_numpy()))
    fp32, bf16 = (f[[(t, lang) in cells for t, lang in zip(f["task"], f["lang"])]] for f in (fp32, bf16))
    both = fp32.merge(bf16, on=keys, suffixes=("_a", "_b"))
    if len(both) != len(fp32) or len(both) != len(bf16):
        raise SystemExit(f"the two runs scored different items: {len(fp32)} vs {len(bf16)} rows, {len(both)} paired")
    rows = []
    for (task, lang), cell in both.groupby(["task", "lang"], sort=False):
        kind = str(cell["kind_a"].iloc[0])
        row: dict[str, Any] = {"task": task, "lang": lang, "kind": kind, "n": len(cell)}
        if kind == "perplexity":
            delta = (cell["score_b"] - cell["score_a"]).abs()
            row.update(agree=np.nan, mean_abs_delta=float(delta.mean()), max_abs_delta=float(delta.max()),
                       rel_change=float(100 * (cell["score_b"].mean() - cell["score_a"].mean()) / cell["score_a"].mean()))
        else:
            column = "extracted" if kind == "choice" else "output"
            row.update(agree=int((cell[f"{column}_a"] == cell[f"{column}_b"]).sum()),
                       score_fp32=float(cell["score_a"].mean()), score_bf16=float(cell["score_b"].mean()))
        rows.append(row)
    return pd.DataFrame(rows)


def speed(n: int) -> None:
    """CPU seconds of ``loglikelihood`` over the same ``n`` FLORES sentences (as flores_ppl scores them), fp32 vs bf16."""
    task, lang = mq.get_task("flores_ppl"), mq.get_language("en")
    requests = [r for item in task.items(lang, limit=n, seed=0) for r in task.requests(item, lang)]
    fp32 = mq.load_model("gemma3-270m")
    for label, model in (("fp32", fp32), ("bf16", fp32.to_dtype("bfloat16"))):
        best = float("inf")
        for _ in range(3):
            cpu = time.process_time()
            model.loglikelihood_rolling(requests)
            best = min(best, time.process_time() - cpu)
        print(f"{label}: {best:.2f} s CPU for {len(requests)} requests (best of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--xcopa", type=int, default=40, help="xcopa items per language")
    parser.add_argument("--belebele", type=int, default=24, help="belebele items per language (0: none)")
    parser.add_argument("--belebele-langs", default="en,fr,de,zh", help="belebele's languages (long passages: slow)")
    parser.add_argument("--mgsm", type=int, default=4, help="mgsm items per language (en ja ru th; 0: none)")
    parser.add_argument("--flores-ppl", type=int, default=16, help="flores_ppl sentences per language")
    parser.add_argument("--flores-langs", default=",".join(DEMO_LANGUAGES), help="flores_ppl's languages")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--only", choices=["fp32", "bf16"], help="run (or resume) only this dtype's study in --root and "
                        "stop: the two can then run as two processes; a last run without --only compares them")
    parser.add_argument("--speed", type=int, default=0, metavar="N",
                        help="instead: CPU seconds of loglikelihood on N FLORES sentences, fp32 vs bf16, best of 3")
    parser.add_argument("--root", type=Path, help="keep the two run folders here (a rerun resumes them; timings then "
                        "cover only what was left); default: a temporary folder, removed")
    args = parser.parse_args()
    tasks: list[dict[str, Any]] = [{"name": "xcopa", "limit": args.xcopa}]
    if args.belebele:
        tasks.append({"name": "belebele", "limit": args.belebele, "languages": args.belebele_langs.split(",")})
    tasks.append({"name": "flores_ppl", "limit": args.flores_ppl, "languages": args.flores_langs.split(",")})
    if args.mgsm:
        tasks.append({"name": "mgsm", "shots": 1, "max_new_tokens": 48, "limit": args.mgsm,
                      "languages": ["en", "ja", "ru", "th"]})
    if args.speed:
        speed(args.speed)
        return
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-bf16-"))
    if args.only:
        if args.root is None:
            raise SystemExit("--only needs --root (the folder the last run compares)")
        _, wall, cpu = run_one(args.only, tasks, root)
        print(f"{args.only}: {wall:.0f} s wall, {cpu:.0f} s CPU (what was left in {root / args.only})")
        return
    try:
        fp32, wall_a, cpu_a = run_one("fp32", tasks, root)
        bf16, wall_b, cpu_b = run_one("bf16", tasks, root)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    table = agreement(fp32, bf16)
    predicted = table[table["kind"] != "perplexity"]
    agree, n = int(predicted["agree"].sum()), int(predicted["n"].sum())
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nagreement of predictions (choice + generation): {agree}/{n} = {100 * agree / n:.2f} %")
    print(f"fp32: {wall_a:.0f} s wall, {cpu_a:.0f} s CPU; bf16: {wall_b:.0f} s wall, {cpu_b:.0f} s CPU "
          f"(native bf16 flags on this CPU: {', '.join(cpu_bf16_flags()) or 'none'}); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.json:
        blob = {"agree": agree, "n": n, "fp32_seconds": [wall_a, cpu_a], "bf16_seconds": [wall_b, cpu_b],
                "cpu_bf16_flags": cpu_bf16_flags(), "tasks": tasks, "cells": json.loads(table.to_json(orient="records"))}
        args.json.write_text(json.dumps(blob, indent=1))


if __name__ == "__main__":
    main()
