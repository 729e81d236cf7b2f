"""Benchmark of mlquant.stats on a full study grid: 33 languages x 6 methods x 8 tasks x 1,000 items.

Protocol (see bench/README.md, section "bench/stats.py"):

* Synthetic tidy results, built once and not timed: a baseline ("fp32") and 6 quantized methods, 33 languages,
  8 tasks of 1,000 items each -- 6 accuracy tasks (0/1 scores; one of them with items in clusters of 4 sharing a
  passage, as Belebele), 1 chrF task (continuous 0-100) and 1 bits-per-byte task (continuous, lower is better,
  weighted by bytes). 1,584 quantized cells, 1.58 M quantized + 0.26 M baseline rows.
* Timed, best of ``--repeat`` runs: ``paired_bootstrap`` (10,000 resamples, percentile) over all 1,584 cells;
  ``mcnemar`` on the 1,188 binary cells; ``permutation_test`` (10,000 Monte Carlo sign vectors where not exact)
  on all cells; ``wilcoxon`` on the 396 continuous cells; ``adjust`` (Holm and BH) over all cells. Twice: each
  call on the tidy frame (every call pairs the items itself), then on ``stats.pair(df)`` made once (its time
  counted; ``mcnemar`` skips the continuous cells itself, ``wilcoxon`` gets ``paired.select(metric=...)``).
  Printed: each step and the totals, as wall-clock and CPU (process) time -- on a shared machine the wall time
  includes waiting for the CPU; the CPU time of the single-threaded steps is what an idle machine's wall time is
  (BLAS matrix products may use both cores, so their CPU time can exceed their idle wall time).

Run: ``PYTHONPATH=. .venv/bin/python bench/stats.py`` (``--bca`` adds the BCa bootstrap, ``--repeat N``).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mlquant import stats
from mlquant.results import Results

LANGS = 33
METHODS = ("w8", "w4", "w4g128", "gptq-w4g128", "w8a8", "nf4")
ITEMS = 1000


def build(seed: int = 0) -> pd.DataFrame:
    """The synthetic grid (see the module docstring)."""
    rng = np.random.default_rng(seed)
    tasks = [(f"acc{i}", "accuracy", True) for i in range(6)] + [("mt", "chrf", True), ("ppl", "bpb", False)]
    parts = []
    ids = np.array([f"{i:04d}" for i in range(ITEMS)], dtype=object)
    for t_i, (task, metric, hib) in enumerate(tasks):
        group = np.array([f"p{i // 4}" for i in range(ITEMS)], dtype=object) if t_i == 0 else None
        weight = rng.integers(50, 400, ITEMS).astype(float) if metric == "bpb" else np.ones(ITEMS)
        for lang_i in range(LANGS):
            lang = f"l{lang_i:02d}"
            if metric == "accuracy":
                base = (rng.random(ITEMS) < rng.uniform(0.4, 0.9)).astype(float)
            elif metric == "chrf":
                base = np.clip(rng.normal(55, 15, ITEMS), 0, 100)
            else:
                base = rng.gamma(4.0, 0.2, ITEMS)
            for quant in ("fp32", *METHODS):
                if quant == "fp32":
                    score = base
                elif metric == "accuracy":
                    score = np.where(rng.random(ITEMS) < 0.05, 1 - base, base)
                elif metric == "chrf":
                    score = np.clip(base + rng.normal(-0.5, 3, ITEMS), 0, 100)
                else:
                    score = base * rng.normal(1.01, 0.02, ITEMS)
                parts.append(
                    pd.DataFrame(
                        {
                            "quant": quant,
                            "task": task,
                            "lang": lang,
                            "item_id": ids,
                            "group": group,
                            "score": score,
                            "weight": weight,
                            "metric": metric,
                            "higher_is_better": hib,
                            "script": "Latn" if lang_i % 2 else "Cyrl",
                            "resource_class": 1 + lang_i % 5,
                            "family": "f",
                        }
                    )
                )
    return pd.concat(parts, ignore_index=True)


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Best wall-clock and best CPU (process) time of ``repeat`` runs, and the last result."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, out


def main() -> None:
    """Build the grid, time each step, print the timings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bca", action="store_true", help="also time the BCa bootstrap")
    args = ap.parse_args()
    t0 = time.perf_counter()
    df = build()
    binary = df[df["metric"] == "accuracy"].reset_index(drop=True)
    continuous = df[df["metric"] != "accuracy"].reset_index(drop=True)
    print(
        f"grid: {LANGS} languages x {len(METHODS)} methods x 8 tasks x {ITEMS} items = {len(df):,} rows "
        f"(built in {time.perf_counter() - t0:.1f} s, not timed); cpus: {os.cpu_count()}; "
        f"load average: {os.getloadavg()[0]:.2f}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modes = (
            ("from the frame (each call pairs the items)", None),
            ("on stats.pair(df) once", 1),
            ("on mq.Results(df): pairs on the first call, then reuses", 2),
        )
        for label, source in modes:
            print(f"\n-- {label}")
            total = np.zeros(2)
            if source == 2:
                # A fresh Results per repeat, so that the first call pays the pairing every time.
                fresh: list[Results] = []
                sec, cpu, _ = _time(
                    lambda: fresh.append(Results(df)) or stats.paired_bootstrap(fresh[-1], n_resamples=10_000),
                    args.repeat,
                )
                total += (sec, cpu)
                print(f"{'paired_bootstrap 10k percentile (+ pairing)':<45s} {sec:7.3f} s wall {cpu:7.3f} s cpu")
                res = fresh[-1]
                total += _run(res, res, lambda: res.paired("fp32").select(metric=["chrf", "bpb"]), args, skip_first=True)
            elif source is not None:
                sec, cpu, paired = _time(lambda: stats.pair(df, "fp32"), args.repeat)
                total += (sec, cpu)
                print(f"{'pair (1.58 M quantized rows)':<45s} {sec:7.3f} s wall {cpu:7.3f} s cpu")
                total += _run(paired, paired, lambda p=paired: p.select(metric=["chrf", "bpb"]), args)
            else:
                total += _run(df, binary, lambda: continuous, args)
            print(
                f"{'total (bootstrap + tests + adjust)':<45s} {total[0]:7.3f} s wall {total[1]:7.3f} s cpu"
                "  (target < 2 s)"
            )


def _run(
    full: Any, binary: Any, continuous: Callable[[], Any], args: argparse.Namespace, skip_first: bool = False
) -> np.ndarray:
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("paired_bootstrap 10k percentile, 1584 cells", lambda: stats.paired_bootstrap(full, n_resamples=10_000)),
        ("mcnemar, 1188 binary cells", lambda: stats.mcnemar(binary)),
        ("permutation_test 10k, 1584 cells", lambda: stats.permutation_test(full, n_resamples=10_000)),
        ("wilcoxon, 396 continuous cells", lambda: stats.wilcoxon(continuous())),
    ]
    if args.bca:
        steps.append(
            (
                "paired_bootstrap 10k BCa (not in total)",
                lambda: stats.paired_bootstrap(full, n_resamples=10_000, method="bca"),
            )
        )
    total = np.zeros(2)
    perm = None
    for name, fn in steps[1:] if skip_first else steps:
        sec, cpu, out = _time(fn, args.repeat)
        if name.startswith("permutation"):
            perm = out
        if "not in total" not in name:
            total += (sec, cpu)
        print(f"{name:<45s} {sec:7.3f} s wall {cpu:7.3f} s cpu")
    assert perm is not None
    sec_h, cpu_h, _ = _time(lambda: stats.adjust(perm, "holm"), args.repeat)
    sec_b, cpu_b, _ = _time(lambda: stats.adjust(perm, "bh"), args.repeat)
    total += (sec_h + sec_b, cpu_h + cpu_b)
    print(f"{'adjust holm + bh, 1584 p-values':<45s} {sec_h + sec_b:7.3f} s wall {cpu_h + cpu_b:7.3f} s cpu")
    exact = perm.to_frame()["exact"].mean()
    print(f"(permutation p-values exact in {exact:.0%} of cells, Monte Carlo in the rest)")
    return total


if __name__ == "__main__":
    main()
