"""Benchmark: wall time and peak memory of mlquant's quantizers on Gemma 3 270M (protocol in bench/README.md).

Usage:
    MLQUANT_DATA_DIR=shared/data python bench/quantize.py [--threads N] [--methods gptq-w4g128,rtn-w4g128,...]
        [--calibration flores:en:128] [--reference [--reference-only gguf] [--repeat 3]] [--json out.json]

Each method runs once on a fresh copy of the model (quantize() copies it); the time includes the copy, the
calibration forward passes and the per-layer report (which is also reported on its own for GPTQ). GPTQModel's
own GPTQ is timed on the same layers only where it is installed with CUDA (it needs a CUDA build of torch >= 2.14.1);
otherwise the script says so.

``--reference`` also times, on the same 126 decoder weights, mlquant's quantize-dequantize of the formats a
reference package implements against that package (hqq's ``Quantizer``; compressed-tensors' NVFP4 / MXFP4
fake-quant; gguf's numpy ``quantize`` + ``dequantize`` of Q8_0 and of the legacy types Q4_0 / Q4_1 / Q5_0 / Q5_1,
which the k-quant mixes fall back to), and checks that both give the same weights. ``--reference-only gguf``
(comma-separated substrings of the case names) keeps some of them, and with ``--methods ''`` nothing else runs.
Each side is timed ``--repeat`` times (default 3), alternating, and the best wall and best process-CPU seconds
are reported: on a shared machine the CPU time is the fairer figure. For GGUF, mlquant is timed twice: the path
``quantize()`` runs (:func:`~mlquant.quantize.kquant.fake_quantize_gguf`, no bytes) and the bytes and back
(:func:`~mlquant.quantize.kquant.quantize_tensor` then :func:`~mlquant.quantize.kquant.dequantize_tensor`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import sys
import time
from typing import Any


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--reference", action="store_true", help="time the reference packages on the same weights")
    parser.add_argument("--reference-only", default="",
                        help="with --reference: keep the cases whose name contains one of these comma-separated "
                             "strings (e.g. 'gguf', 'hqq,nvfp4')")
    parser.add_argument("--repeat", type=int, default=3, help="with --reference: best of this many timings")
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
          f"{platform.processor() or platform.machine()}; load {load_s:.1f} s, rss {_rss_mib():.0f} MiB; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for label in [m for m in args.methods.split(",") if m]:
        spec = mq.QuantSpec.parse(label)
        kw = {"calibration": args.calibration} if "calibration" in _calibrated(spec.method) else {}
        t0, c0 = time.perf_counter(), time.process_time()
        q = mq.quantize(model, label, **kw)
        total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
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
            "cpu_seconds_total": round(cpu_total, 2),
            "seconds_report": round(report_s, 2),
            "seconds_layers": round(float(report["seconds"].sum()), 2) if report["seconds"].notna().any() else None,
            "mean_output_rel_err": round(float(report["output_rel_err"].mean()), 5),
            "mean_weight_rel_err": round(float(report["weight_rel_err"].mean()), 5),
            "bits_per_weight": round(float(report["bits_per_weight"].mean()), 3),
            "peak_rss_mib": round(_rss_mib()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q
    if args.reference:
        weights = [m.weight.detach().float() for n, m in model.torch_model.named_modules()
                   if isinstance(m, torch.nn.Linear) and ".layers." in n]
        only = [k for k in args.reference_only.split(",") if k]
        rows += reference_timings(weights, only=only, repeat=args.repeat)
    if importlib.util.find_spec("gptqmodel") is None or not torch.cuda.is_available():
        print("# GPTQModel: not timed (needs `pip install gptqmodel` with a CUDA build of torch >= 2.14.1; "
              "this machine has " + ("no CUDA" if not torch.cuda.is_available() else "no gptqmodel") + ")")
    else:  # pragma: no cover - needs the optional backend
        print("# GPTQModel is installed with CUDA: time it with its own CLI on the same model and calibration text.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"load_seconds": load_s, "threads": torch.get_num_threads(), "rows": rows,
                       "load_average_end": os.getloadavg()}, fh, indent=2)
    return 0


def _calibrated(method: str) -> set[str]:
    return {"calibration"} if method in ("gptq", "smoothquant", "w8a8-int-gptq", "awq") else set()


#: The methods timed by default: the 2024 ones of both papers, then those of 2025-26.
DEFAULT_METHODS = (
    "rtn-w4g128", "gptq-w4g128", "w8a8", "smoothquant-w8a8", "fp8-w8a8",
    "awq-w4g128", "hqq-w4g64", "mxfp4-w4", "mxfp4-w4a4", "nvfp4-w4", "nvfp4-w4a4", "w4a8-w4g128a8",
    "rtn-w4g128-rotatehadamard", "gguf-q8_0", "gguf-q6_k", "gguf-q4_k_m", "gguf-q2_k",
)


def _timed(fn: Any, weights: list[Any]) -> tuple[float, float, list[Any]]:
    """(wall seconds, process CPU seconds, outputs) of ``fn`` over the weights."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = [fn(w) for w in weights]
    return time.perf_counter() - t0, time.process_time() - c0, out


def _gguf_cases(torch: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    import importlib.metadata

    import gguf

    from mlquant.quantize.kquant import dequantize_tensor, fake_quantize_gguf, quantize_tensor

    version = importlib.metadata.version("gguf")
    def ref(qtype: str) -> Any:
        t = gguf.GGMLQuantizationType[qtype]
        return lambda w: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), t), t))

    cases = []
    for qtype in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        ours = {"mlquant": lambda w, q=qtype: fake_quantize_gguf(w, q),
                "mlquant_bytes": lambda w, q=qtype: dequantize_tensor(quantize_tensor(w, q), q)}
        cases.append((f"gguf {qtype} (gguf {version} quants.quantize+dequantize, numpy)", ref(qtype), ours))
    return cases


def reference_timings(weights: list[Any], only: list[str] | None = None, repeat: int = 3) -> list[dict[str, Any]]:
    """mlquant vs the reference package on the same weights: best wall and CPU seconds of each (``repeat`` runs,
    alternating), and the largest weight difference. ``only``: keep the cases whose name contains one of these."""
    import torch

    from mlquant.quantize.fp4 import mxfp4_fake_quant, nvfp4_fake_quant
    from mlquant.quantize.hqq import hqq_fake_quantize

    cases: list[tuple[str, Any, dict[str, Any]]] = []
    if importlib.util.find_spec("hqq") is not None:
        from hqq.core.quantize import Quantizer

        def hqq_ref(w: Any) -> Any:
            q, meta = Quantizer.quantize(w, nbits=4, group_size=64, axis=1, optimize=True, round_zero=True,
                                         bitpack=False, device="cpu")
            meta["compute_dtype"] = torch.float32
            return Quantizer.dequantize(q, meta)

        cases.append(("hqq-w4g64 (hqq 0.2.8 Quantizer)", hqq_ref, {"mlquant": lambda w: hqq_fake_quantize(w, 4, 64)}))
    if importlib.util.find_spec("compressed_tensors") is not None:
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize
        from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
        from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

        def ct_ref(scheme: str, block: int) -> Any:
            def run(w: Any) -> Any:
                qargs = PRESET_SCHEMES[scheme]["weights"]
                g = generate_gparam(w.min(), w.max()) if scheme == "NVFP4" else None
                blocks = w.reshape(w.shape[0], -1, block)
                scale, zp = calculate_qparams(blocks.amin(-1), blocks.amax(-1), qargs, global_scale=g)
                return fake_quantize(w, scale, zp, qargs, global_scale=g)
            return run

        cases.append(("nvfp4 (compressed-tensors fake_quantize)", ct_ref("NVFP4", 16), {"mlquant": nvfp4_fake_quant}))
        cases.append(("mxfp4 vllm rule (compressed-tensors fake_quantize)", ct_ref("MXFP4", 32),
                      {"mlquant": lambda w: mxfp4_fake_quant(w, "vllm")}))
    cases += _gguf_cases(torch)
    if only:
        cases = [c for c in cases if any(k.lower() in c[0].lower() for k in only)]
    rows = []
    for name, ref, ours in cases:
        best: dict[str, list[float]] = {}
        outputs: dict[str, list[Any]] = {}
        for _ in range(max(1, repeat)):
            for key, fn in [*ours.items(), ("reference", ref)]:
                wall, cpu, out = _timed(fn, weights)
                old = best.get(key, [float("inf"), float("inf")])
                best[key] = [min(old[0], wall), min(old[1], cpu)]
                outputs[key] = out
                del out
        row: dict[str, Any] = {"reference": name, "repeat": max(1, repeat)}
        for key, (wall, cpu) in best.items():
            row[f"seconds_{key}"] = round(wall, 2)
            row[f"cpu_seconds_{key}"] = round(cpu, 2)
        for key in ours:
            row[f"max_abs_weight_diff_{key}"] = max(float((x.float() - y.float()).abs().max())
                                                    for x, y in zip(outputs[key], outputs["reference"]))
        row["load_average_1min"] = round(os.getloadavg()[0], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
