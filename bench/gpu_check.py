#!/usr/bin/env python
"""The prepared device check of issue 10: a random-init Llama of ~1B parameters on a GPU, in one short run.

What it shows, each step timed and written to one JSON record:

1. ``load_model(folder, device="auto", dtype="auto")`` lands on cuda (then mps, then cpu) in bf16 where the device
   supports it, float32 on the CPU;
2. ``device_map="auto"`` (accelerate) places the same checkpoint and the model's first layer is on that device;
3. simulated quantizers run on the model's device — RTN, HQQ (calibration-free), W8A8, FP8 and GPTQ (calibrated on
   a text file written here, so no benchmark data is needed on the device machine) — on the plain model and RTN and
   GPTQ on the ``device_map`` model; every quantized Linear weight stays on the device, and the quantized model's
   log-likelihoods are finite and within a plausible distance of the baseline's;
4. the device's baseline log-likelihoods against the same checkpoint run in float32 on the CPU (kernel agreement).

The model is random (nothing can be downloaded on the device machine): a Llama config with a byte-level tokenizer,
saved to a temporary folder and loaded back through :func:`mlquant.load_model`, as a user's checkpoint would be.
``--tiny`` builds a small one instead; ``tests/test_gpu_check.py`` runs ``--tiny --device cpu`` so the script's
code path is exercised on every ``make test`` (the CUDA run is done by hand where a GPU is lent; see docs/scale.md).

Example:
    python bench/gpu_check.py --json /tmp/gpu_check.json              # a GPU machine, ~1.1B parameters
    python bench/gpu_check.py --tiny --device cpu --json /tmp/t.json  # the CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: (hidden, layers, heads, kv heads, intermediate) of the ~1.1B model and of the --tiny one.
SIZES = {"1b": (2048, 22, 16, 4, 5632), "tiny": (64, 2, 4, 2, 128)}
#: The quantizers run on the plain model and (a subset) on the device_map model; {g} is the group size (128, or 32
#: for the tiny model, whose 64 input features 128 does not divide).
LABELS = ("rtn-w4g{g}", "hqq-w4g{g}", "w8a8", "fp8-w8a8", "gptq-w4g{g}")
SHARDED_LABELS = ("rtn-w4g{g}", "gptq-w4g{g}")
TEXTS = (
    "The capital of France is Paris.",
    "Quantization changes the weights of a model and sometimes its answers.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "東京は日本の首都です。",
)


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 bytes + <bos>, <eos>, <pad>): ids do not depend on any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<bos>", "<eos>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_checkpoint(folder: Path, size: str, seed: int) -> int:
    """Write a random-init Llama checkpoint (bf16 on disk) and its tokenizer to ``folder``; return its parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, inter = SIZES[size]
    config = LlamaConfig(
        vocab_size=259, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        bos_token_id=256, eos_token_id=257, pad_token_id=258, torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _requests() -> list[Any]:
    from mlquant.requests import LoglikelihoodRequest

    return [LoglikelihoodRequest(t[: len(t) // 2], t[len(t) // 2 :]) for t in TEXTS]


def _loglik(model: Any) -> list[float]:
    return [float(r.logprob) for r in model.loglikelihood(_requests())]


def _weights_on(model: Any, device_type: str) -> bool:
    import torch

    return all(m.weight.device.type == device_type for m in model.torch_model.modules() if isinstance(m, torch.nn.Linear))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def quantize_on_device(model: Any, labels: tuple[str, ...], calibration: str, group: int) -> list[dict[str, Any]]:
    """Quantize ``model`` by each label where it lives; time, placement, report error and log-likelihood shift."""
    import mlquant as mq

    base = _loglik(model)
    rows: list[dict[str, Any]] = []
    for label in (pattern.format(g=group) for pattern in labels):
        extra = {"calibration": calibration} if label.startswith("gptq") else {}
        _sync()
        t0 = time.perf_counter()
        q = mq.quantize(model, label, **extra)
        _sync()
        seconds = time.perf_counter() - t0
        lls = _loglik(q)
        report = q.quant_report
        err = float(report["weight_rel_err"].mean()) if report is not None and "weight_rel_err" in report else math.nan
        rows.append({
            "label": q.spec.label, "seconds": round(seconds, 3), "device": str(q.device),
            "weights_on_device": _weights_on(q, model.device.type), "mean_weight_rel_err": err,
            "loglik_finite": all(math.isfinite(x) for x in lls),
            "max_abs_dloglik_vs_baseline": max(abs(a - b) for a, b in zip(lls, base)),
        })
        del q
    return rows


def run(size: str, device: str, seed: int) -> dict[str, Any]:
    """The whole check; returns the JSON record (``ok`` is False when any assertion of the docstring failed)."""
    import torch

    import mlquant as mq

    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "mlquant": mq.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "size": size,
    }
    with tempfile.TemporaryDirectory(prefix="mlquant-gpu-check-") as tmp:
        folder = Path(tmp) / "llama"
        t0 = time.perf_counter()
        out["parameters"] = build_checkpoint(folder, size, seed)
        out["build_s"] = round(time.perf_counter() - t0, 2)
        calib = Path(tmp) / "calibration.txt"
        calib.write_text("\n".join(TEXTS * 8) + "\n", encoding="utf-8")
        calibration = str(calib)
        group = 32 if size == "tiny" else 128

        t0 = time.perf_counter()
        model = mq.load_model(str(folder), device=device, dtype="auto")
        out["load_s"] = round(time.perf_counter() - t0, 2)
        out["device"], out["dtype"] = str(model.device), model.spec.dtype
        out["quantized"] = quantize_on_device(model, LABELS, calibration, group)
        device_lls = _loglik(model)
        del model

        sharded = mq.load_model(str(folder), device=device, dtype="auto", device_map="auto")
        out["device_map"] = {str(k): str(v) for k, v in (getattr(sharded.torch_model, "hf_device_map", None) or {}).items()}
        out["device_map_first_layer"] = str(sharded.device)
        out["quantized_device_map"] = quantize_on_device(sharded, SHARDED_LABELS, calibration, group)
        del sharded

        cpu = mq.load_model(str(folder), device="cpu", dtype="float32")
        cpu_lls = _loglik(cpu)
        out["baseline_vs_cpu_fp32_max_abs_dloglik"] = max(abs(a - b) for a, b in zip(device_lls, cpu_lls))
    want = "cuda" if torch.cuda.is_available() and device in ("auto", "cuda") else device.split(":")[0]
    rows = out["quantized"] + out["quantized_device_map"]
    out["ok"] = bool(
        out["device"].startswith(want)
        and out["device_map_first_layer"].startswith(want)
        and all(r["weights_on_device"] and r["loglik_finite"] for r in rows)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cpu, ...")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model instead of ~1.1B parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the record to this file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    record = run("tiny" if args.tiny else "1b", args.device, args.seed)
    record["total_s"] = round(time.perf_counter() - t0, 2)
    text = json.dumps(record, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
