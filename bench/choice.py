#!/usr/bin/env python
"""Choice-task scoring: mlquant vs lm-evaluation-harness 0.4.x on the same Gemma 3 270M items.

One run scores the same xcopa and belebele items (mlquant's own prompts) with

* mlquant: ``HFModel.loglikelihood`` (shared-context KV cache, LM head only at the scored positions), and
* lm-eval: its HF backend (``HFLM``) through ``simple_evaluate`` with a generic multiple-choice task
  (``bench/lm_eval_tasks/mlquant_choice.yaml``) over a JSONL export of the very same (context, choices, label),

on CPU, float32, with the same number of torch threads, and prints items/s of both (each at several batch
sizes), their ratio, the share of items whose predicted option is identical, and the largest absolute
difference between the two tools' per-option log-likelihoods. Protocol and figures: bench/README.md.

lm-eval need not be importable here: ``--lm-eval-python`` names an interpreter that has it (the lm-eval half
then runs this same file as a subprocess, ``--lm-eval-worker``; that mode imports neither mlquant nor anything
but lm-eval, torch and pyyaml).

Example:
    MLQUANT_DATA_DIR=/work/shared/data .venv/bin/python bench/choice.py --lm-eval-python /tmp/lmeval-venv/bin/python
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TASKS_DIR = HERE / "lm_eval_tasks"
TASK_YAML = TASKS_DIR / "mlquant_choice.yaml"
#: Gemma 3's vocabulary: lm-eval materialises [batch, length, vocab] float32 logits and their log-softmax.
GEMMA3_VOCAB = 262144


# ----- shared helpers ----------------------------------------------------------------------------------------------
def _batch_sizes(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        out.append(part if part.startswith("auto") else int(part))
    return out


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (a large number where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _load_span(loads: list[str]) -> str:
    """'first before -> last after (1-minute peak)' of per-block load strings 'a/b -> c/d'."""
    ones = [float(part.split("/")[0]) for text in loads for part in text.split(" -> ")]
    return f"{loads[0].split(' -> ')[0]} -> {loads[-1].split(' -> ')[1]} (peak {max(ones):.1f})"


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


# ----- the lm-eval half (runs in whichever interpreter has lm-eval) -----------------------------------------------
def lm_eval_worker(spec_path: str) -> None:
    """Serve lm-eval runs: load the model once, warm up, then for each JSON line on stdin run one evaluation.

    Requests: ``{"batch_size": 8}`` (an int or "auto") answers timings and per-item log-likelihoods;
    ``{"tokens": true}`` answers the token ids lm-eval scores for every (context, option). Answers are JSON lines
    on the original stdout; everything lm-eval prints goes to stderr.
    """
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import lm_eval
    import transformers
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    (lm, load_s, _) = _timed(
        HFLM,
        pretrained=spec["model_dir"],
        tokenizer=spec["tokenizer_dir"],
        dtype="float32",
        device="cpu",
        batch_size=1,
        max_batch_size=spec["max_batch_size"],
        add_bos_token=True,
    )
    cfg = yaml.safe_load(TASK_YAML.read_text())
    cfg["dataset_kwargs"]["data_files"]["test"] = spec["items_path"]
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)

    # Time the model call itself (what simple_evaluate spends in lm.loglikelihood), besides the whole evaluation.
    clock = {"wall": 0.0, "cpu": 0.0}
    inner = lm.loglikelihood

    def timed_loglikelihood(requests: Any, *args: Any, **kwargs: Any) -> Any:
        out, wall, cpu = _timed(inner, requests, *args, **kwargs)
        clock["wall"] += wall
        clock["cpu"] += cpu
        return out

    lm.loglikelihood = timed_loglikelihood  # type: ignore[method-assign]

    def evaluate(batch_size: int | str, indices: list[int] | None, log_samples: bool) -> dict[str, Any]:
        if isinstance(batch_size, str):
            lm.batch_size_per_gpu = "auto"
            lm.batch_schedule = 1.0
            lm.batch_sizes = {}
        else:
            lm.batch_size_per_gpu = int(batch_size)
        clock["wall"] = clock["cpu"] = 0.0
        before = _load()
        res, e2e, _ = _timed(
            simple_evaluate,
            model=lm,
            tasks=[cfg],
            task_manager=manager,
            samples={"mlquant_choice": indices} if indices is not None else None,
            log_samples=log_samples,
            bootstrap_iters=0,
            verbosity="WARNING",
        )
        run: dict[str, Any] = {
            "batch_size": batch_size,
            "score_s": clock["wall"],
            "score_cpu_s": clock["cpu"],
            "e2e_s": e2e,
            "load": f"{before} -> {_load()}",
        }
        if isinstance(batch_size, str):
            run["auto_chose"] = dict(lm.batch_sizes)
        if log_samples:
            samples = res["samples"]["mlquant_choice"]
            run["lls"] = {s["doc"]["uid"]: [float(r[0]) for r in s["filtered_resps"]] for s in samples}
            run["args_ok"] = all(
                [list(a) for a in s["arguments"]] == [[s["doc"]["context"], c] for c in s["doc"]["choices"]] for s in samples
            )
        return run

    warm_s = _timed(evaluate, spec["warm_batch_size"], spec["warm_indices"], False)[1] if spec["warm_indices"] else 0.0
    versions = {
        "lm_eval": getattr(lm_eval, "__version__", "?"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    hello = {"versions": versions, "threads": torch.get_num_threads(), "load_s": load_s, "warmup_s": warm_s}
    proto.write(json.dumps(hello) + "\n")
    proto.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("tokens"):
            items = [json.loads(x) for x in Path(spec["items_path"]).read_text().splitlines()]
            answer: dict[str, Any] = {
                it["uid"]: [[list(x) for x in lm._encode_pair(it["context"], c)] for c in it["choices"]] for it in items
            }
        else:
            bs = req["batch_size"]
            probe = spec["max_batch_size"] if isinstance(bs, str) else bs
            need = 2 * probe * spec["max_tokens"] * GEMMA3_VOCAB * 4
            if need > spec["mem_fraction"] * _mem_available():
                answer = {
                    "batch_size": bs,
                    "skipped": f"needs ~{need / 2**30:.0f} GiB for logits, {_mem_available() / 2**30:.0f} GiB available",
                }
            else:
                answer = evaluate(bs, req.get("indices"), True)
        proto.write(json.dumps(answer) + "\n")
        proto.flush()


# ----- the mlquant half -------------------------------------------------------------------------------------------
def export_items(spec: dict[str, list[str]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    """mlquant's items with their own context, options and gold label, one dict per item."""
    import mlquant as mq
    from mlquant.languages import get_language

    rows = []
    for task_name, langs in spec.items():
        task = mq.get_task(task_name)
        for code in langs:
            lang = get_language(code)
            for item in task.items(lang, limit=limit, seed=seed):
                rows.append(
                    {
                        "uid": f"{task_name}|{code}|{item.id}",
                        "task": task_name,
                        "lang": code,
                        "context": task.context(item, lang),
                        "choices": list(task.choices(item, lang)),
                        "label": int(task.gold(item)),
                    }
                )
    return rows


def worker_ask(worker: subprocess.Popen[str], python: str) -> Callable[[dict[str, Any]], Any]:
    """One JSON-lines request and answer with the lm-eval worker; an empty request only reads its next line
    (the greeting). Used here and by bench/engines.py."""

    def ask(request: dict[str, Any]) -> Any:
        if worker.stdin is None or worker.stdout is None:
            raise SystemExit("the lm-eval worker has no pipes")
        if request:
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
        line = worker.stdout.readline()
        if not line:
            raise SystemExit(f"the lm-eval worker ({python}) stopped; see its messages above")
        return json.loads(line)

    return ask


def _float_cache_dirs(model: Any) -> tuple[str, str]:
    """Folders of the cached float weights and tokenizer of a GGUF-derived model (see mlquant/_loading.py)."""
    import transformers

    from mlquant._loading import cache_dir, sha256_file

    src = model.source
    sha = src.file_sha256 or sha256_file(Path(src.path) / str(src.gguf_file))
    folder = cache_dir() / "gguf-float" / sha[:32]
    return str(folder / "model"), str(folder / f"tokenizer-transformers-{transformers.__version__}")


def mlquant_run(model: Any, items: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Score every option of every item with mlquant at one batch size: timings and per-item log-likelihoods."""
    from mlquant.requests import LoglikelihoodRequest

    reqs = [LoglikelihoodRequest(r["context"], c) for r in items for c in r["choices"]]
    model.batch_size = batch_size
    before = _load()
    results, wall, cpu = _timed(model.loglikelihood, reqs)
    it = iter(results)
    return {
        "batch_size": batch_size,
        "score_s": wall,
        "score_cpu_s": cpu,
        "load": f"{before} -> {_load()}",
        "lls": {r["uid"]: [next(it).logprob for _ in r["choices"]] for r in items},
    }


def _merge(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """Add one block's run to a configuration's totals (times summed, log-likelihoods merged, loads listed)."""
    task = part.pop("task", None)
    if total is None or "skipped" in part:
        by_task = {task: part["score_s"]} if task and "score_s" in part else {}
        return dict(part, load=[part.get("load")], lls=dict(part.get("lls", {})), by_task=by_task)
    for key in ("score_s", "score_cpu_s", "e2e_s"):
        if key in part:
            total[key] += part[key]
    if task:
        total["by_task"][task] = total["by_task"].get(task, 0.0) + part["score_s"]
    total["lls"].update(part["lls"])
    total["load"].append(part["load"])
    total["args_ok"] = total.get("args_ok", True) and part.get("args_ok", True)
    if part.get("auto_chose"):
        total.setdefault("auto_chose", {}).update({f"{len(total['load'])}.{k}": v for k, v in part["auto_chose"].items()})
    return total


# ----- comparison and report --------------------------------------------------------------------------------------
def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def compare(a: dict[str, list[float]], b: dict[str, list[float]]) -> tuple[float, float]:
    """Share of items with the same predicted option, and max |Δ| of per-option log-likelihoods."""
    same = sum(_argmax(a[u]) == _argmax(b[u]) for u in a)
    delta = max(abs(x - y) for u in a for x, y in zip(a[u], b[u]))
    return same / len(a), delta


def accuracy(lls: dict[str, list[float]], items: list[dict[str, Any]]) -> float:
    return sum(_argmax(lls[r["uid"]]) == r["label"] for r in items) / len(items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xcopa", default="tr,zh,th", help="xcopa languages (default: tr,zh,th)")
    ap.add_argument("--belebele", default="en,zh,fr", help="belebele languages (default: en,zh,fr)")
    ap.add_argument("--limit", type=int, default=100, help="items per language (mlquant's seeded sample; default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in both halves (default 2)")
    ap.add_argument("--mlquant-batch-sizes", default="16,1,8,32", help="first one is the reference (default 16,1,8,32)")
    ap.add_argument(
        "--lm-eval-batch-sizes",
        default="1,8,16,32,auto",
        help="'auto' is lm-eval's search from --lm-eval-max-batch-size down; a size whose full-vocabulary logits would "
        "not fit in --mem-fraction of the available memory is skipped (default 1,8,16,32,auto)",
    )
    ap.add_argument("--lm-eval-max-batch-size", type=int, default=64, help="where lm-eval's 'auto' search starts")
    ap.add_argument("--mem-fraction", type=float, default=0.6, help="share of MemAvailable lm-eval's logits may take")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per batch size; the fastest is kept")
    ap.add_argument("--warmup", type=int, default=8, help="items (spread over tasks and languages) scored once by each tool before timing (default 8)")
    ap.add_argument(
        "--lm-eval-python",
        default=None,
        help="interpreter with lm-eval 0.4.x (default: this one, if it can import lm_eval)",
    )
    ap.add_argument("--export", metavar="JSONL", help="only write the items (uid, context, choices, label) and exit")
    ap.add_argument("--json", metavar="PATH", help="also write every figure (and per-item log-likelihoods) here")
    ap.add_argument("--lm-eval-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.lm_eval_worker:
        lm_eval_worker(args.lm_eval_worker)
        return 0

    spec = {k: [c for c in v.split(",") if c] for k, v in (("xcopa", args.xcopa), ("belebele", args.belebele))}
    spec = {k: v for k, v in spec.items() if v}
    items = export_items(spec, args.limit, args.seed)
    if args.export:
        Path(args.export).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
        print(f"wrote {len(items)} items to {args.export}")
        return 0

    lm_python = args.lm_eval_python
    if lm_python is None:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            ap.error("lm-eval is not importable here: pip install 'mlquant[bench]', or pass --lm-eval-python PATH")
        lm_python = sys.executable

    import torch

    torch.set_num_threads(args.threads)
    import transformers

    import mlquant as mq

    load_before = _load()
    ml_sizes = [int(b) for b in _batch_sizes(args.mlquant_batch_sizes)]
    lm_sizes = _batch_sizes(args.lm_eval_batch_sizes)
    with tempfile.TemporaryDirectory(prefix="mlquant-choice-") as tmp:
        items_path = Path(tmp) / "items.jsonl"
        items_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
        # The float cache exists once mlquant has loaded the model; load it first (untimed) so that it does.
        model, load_s, _ = _timed(mq.load_model, "gemma3-270m", dtype="float32", device="cpu")
        model_dir, tok_dir = _float_cache_dirs(model)
        max_tokens = max(len(model.encode(r["context"] + c)) for r in items for c in r["choices"])
        our_tokens = {r["uid"]: [[list(x) for x in model.encode_pair(r["context"], c)] for c in r["choices"]] for r in items}
        # Warm-up items spread over every task and language (so that every prompt length has been seen).
        warm_idx = sorted({round(k * (len(items) - 1) / max(args.warmup - 1, 1)) for k in range(args.warmup)}) if args.warmup else []
        worker_spec = {
            "model_dir": model_dir,
            "tokenizer_dir": tok_dir,
            "items_path": str(items_path),
            "threads": args.threads,
            "warm_batch_size": next((b for b in lm_sizes if isinstance(b, int)), 1),
            "max_batch_size": args.lm_eval_max_batch_size,
            "max_tokens": max_tokens,
            "mem_fraction": args.mem_fraction,
            "warm_indices": warm_idx,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(worker_spec))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        cmd = [lm_python, str(Path(__file__).resolve()), "--lm-eval-worker", str(Path(tmp) / "spec.json")]
        worker = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        ask = worker_ask(worker, lm_python)

        try:
            # Warm-ups (excluded from the timings): mlquant while the worker loads, then the worker's own.
            ml_warm = _timed(mlquant_run, model, [items[k] for k in warm_idx], ml_sizes[0])[1] if warm_idx else 0.0
            lm_info = ask({})
            # The two tools alternate block by block (one task and language at a time, as the study runner scores a
            # cell), so that both meet the same machine load; each configuration's time is the sum over blocks.
            blocks: dict[tuple[str, str], list[int]] = {}
            for k, r in enumerate(items):
                blocks.setdefault((r["task"], r["lang"]), []).append(k)
            ml_best: dict[int, dict[str, Any]] = {}
            lm_best: dict[Any, dict[str, Any]] = {}
            for _ in range(args.repeats):
                for i in range(max(len(ml_sizes), len(lm_sizes))):
                    ml_run: dict[str, Any] | None = None
                    lm_run: dict[str, Any] | None = None
                    for (task, _), idx in blocks.items():
                        if i < len(ml_sizes):
                            part = mlquant_run(model, [items[k] for k in idx], ml_sizes[i])
                            ml_run = _merge(ml_run, dict(part, task=task))
                        if i < len(lm_sizes) and (lm_run is None or "skipped" not in lm_run):
                            part = ask({"batch_size": lm_sizes[i], "indices": idx})
                            lm_run = _merge(lm_run, dict(part, task=task))
                    for run, best in ((ml_run, ml_best), (lm_run, lm_best)):
                        if run is None:
                            continue
                        tool = "mlquant" if best is ml_best else "lm-eval"
                        print(f"{tool} batch {run['batch_size']}: {run.get('score_s', run.get('skipped'))}", file=sys.stderr, flush=True)
                        old = best.get(run["batch_size"])
                        if old is None or "skipped" in old or ("score_s" in run and run["score_s"] < old["score_s"]):
                            best[run["batch_size"]] = run
            lm_tokens = ask({"tokens": True})
        finally:
            if worker.stdin:
                worker.stdin.close()
            worker.wait()
    load_after = _load()
    ml_runs = [ml_best[b] for b in ml_sizes]
    lm = {**lm_info, "runs": [lm_best[b] for b in lm_sizes], "tokens": lm_tokens}

    n = len(items)
    lm_runs = [r for r in lm["runs"] if "skipped" not in r]
    if not lm_runs:
        raise SystemExit("every lm-eval batch size was skipped")
    reference = lm_runs[0]
    same_tokens = sum(our_tokens[u] == lm["tokens"][u] for u in our_tokens)

    print()
    print(
        f"{n} items ({', '.join(f'{k}: {v}' for k, v in spec.items())}; {args.limit} per language, seed {args.seed}), "
        f"{sum(len(r['choices']) for r in items)} options; Gemma 3 270M float32, CPU, {args.threads} torch threads"
    )
    print(f"token ids identical to lm-eval's for {same_tokens}/{n} items; lm-eval request strings identical: "
          f"{all(r.get('args_ok', True) for r in lm_runs)}")
    print(f"agreement columns: against lm-eval at batch {reference['batch_size']} (same prediction share, max |Δ loglik|)")
    print(f"mlquant's passes: max_batch_tokens={model.max_batch_tokens} (None: 'batch' rows a pass; else the budget sizes "
          f"them, up to max(batch, 128) rows)")
    print()
    header = f"{'tool':8} {'batch':>6} {'score s':>8} {'CPU s':>7} {'items/s':>8} {'e2e s':>7} {'acc':>6} {'same':>7} {'max|Δ|':>9}  load 1m/5m"
    print(header)
    print("-" * len(header))
    rows = []
    for tool, runs in (("mlquant", ml_runs), ("lm-eval", lm["runs"])):
        for r in runs:
            if "skipped" in r:
                print(f"{tool:8} {r['batch_size']!s:>6}  skipped: {r['skipped']}")
                continue
            same, delta = compare(r["lls"], reference["lls"])
            r.update(items_per_s=n / r["score_s"], acc=accuracy(r["lls"], items), same=same, max_delta=delta)
            bs = str(r["batch_size"]) + (f"->{sorted(set(r['auto_chose'].values()))}" if r.get("auto_chose") else "")
            e2e = f"{r['e2e_s']:7.1f}" if "e2e_s" in r else f"{'-':>7}"
            print(
                f"{tool:8} {bs:>6} {r['score_s']:8.1f} {r['score_cpu_s']:7.1f} {r['items_per_s']:8.2f} {e2e} "
                f"{r['acc']:6.3f} {r['same']:7.3f} {r['max_delta']:9.2e}  {_load_span(r['load'])}"
            )
            rows.append((tool, r))

    ml_default = ml_runs[0]
    ml_top = max(ml_runs, key=lambda r: r["items_per_s"])
    lm_top = max(lm_runs, key=lambda r: r["items_per_s"])
    print()
    for label, ours in ((f"mlquant default (batch {ml_default['batch_size']})", ml_default), (f"mlquant best (batch {ml_top['batch_size']})", ml_top)):
        same, delta = compare(ours["lls"], lm_top["lls"])
        print(
            f"{label} vs lm-eval best (batch {lm_top['batch_size']}): {ours['items_per_s']:.2f} vs "
            f"{lm_top['items_per_s']:.2f} items/s = {ours['items_per_s'] / lm_top['items_per_s']:.2f}x; "
            f"same prediction {same:.1%} of items; max |Δ loglik| {delta:.2e}"
        )
    per_task = {t: sum(r["task"] == t for r in items) for t in spec}
    print(
        "per task, mlquant default vs lm-eval best: "
        + "; ".join(
            f"{t} {per_task[t] / ml_default['by_task'][t]:.2f} vs {per_task[t] / lm_top['by_task'][t]:.2f} items/s "
            f"= {lm_top['by_task'][t] / ml_default['by_task'][t]:.2f}x"
            for t in spec
            if ml_default.get("by_task", {}).get(t) and lm_top.get("by_task", {}).get(t)
        )
    )
    print(
        f"model load: mlquant {load_s:.1f} s, lm-eval {lm['load_s']:.1f} s; warm-up on {args.warmup} items (excluded): mlquant {ml_warm:.1f} s, "
        f"lm-eval {lm['warmup_s']:.1f} s; load average {load_before} before, {load_after} after"
    )
    print(
        f"versions: mlquant {mq.__version__ if hasattr(mq, '__version__') else '?'}, torch {torch.__version__}, "
        f"transformers {transformers.__version__} | lm-eval {lm['versions']['lm_eval']}, torch {lm['versions']['torch']}, "
        f"transformers {lm['versions']['transformers']}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "argv": sys.argv,
                    "n_items": n,
                    "mlquant": ml_runs,
                    "lm_eval": {k: v for k, v in lm.items() if k != "tokens"},
                    "same_tokens": same_tokens,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
