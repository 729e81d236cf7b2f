"""Quantizers on the real Gemma 3 270M (slow): GPTQ beats RTN, SmoothQuant's folds are exact on Gemma's norms."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import mlquant as mq

pytestmark = pytest.mark.slow

DATA = Path(os.environ.get("MLQUANT_DATA_DIR", "/work/shared/data"))
LANGS = ("en", "de", "ru", "ja", "zh")
PER_LANG = 20


@pytest.fixture(scope="module")
def gemma():
    if not (DATA / "flores200" / "devtest" / "en.jsonl").is_file():
        pytest.skip("needs FLORES-200 under MLQUANT_DATA_DIR")
    os.environ.setdefault("MLQUANT_DATA_DIR", str(DATA))
    try:
        return mq.load_model("gemma3-270m")
    except mq.ConfigError as exc:
        pytest.skip(str(exc))


def _eval_texts() -> dict[str, list[str]]:
    from mlquant.data import read_jsonl
    from mlquant.quantize.calibration import is_evaluation_id

    out = {}
    for lang in LANGS:
        rows = [r for r in read_jsonl(DATA / "flores200" / "devtest" / f"{lang}.jsonl") if is_evaluation_id(r["id"])]
        out[lang] = [r["text"] for r in rows[:PER_LANG]]
    return out


def bits_per_byte(model, texts: dict[str, list[str]]) -> float:
    """Mean over languages of -log2 P(text) / bytes, pooled over each language's sentences."""
    from mlquant.requests import RollingRequest

    values = []
    for lang_texts in texts.values():
        res = model.loglikelihood_rolling([RollingRequest(t) for t in lang_texts])
        values.append(sum(-r.logprob for r in res) / math.log(2) / sum(r.n_bytes for r in res))
    return sum(values) / len(values)


def test_gptq_beats_rtn_on_gemma(gemma) -> None:
    from mlquant.quantize.report import build_report

    texts = _eval_texts()
    base = bits_per_byte(gemma, texts)
    rtn = mq.quantize(gemma, "rtn-w4g128")
    rtn_report = rtn.quant_report if rtn.quant_report is not None else build_report(gemma, rtn)
    rtn_bpb = bits_per_byte(rtn, texts)
    del rtn
    gptq = mq.quantize(gemma, "gptq-w4g128", calibration="flores:mixed:128")
    gptq_bpb = bits_per_byte(gptq, texts)
    gptq_err = gptq.quant_report["output_rel_err"].mean()
    rtn_err = rtn_report["output_rel_err"].mean()
    print(f"\nfp32 bpb {base:.4f}; rtn-w4g128 +{rtn_bpb - base:.4f} (out err {rtn_err:.4f}); "
          f"gptq-w4g128 +{gptq_bpb - base:.4f} (out err {gptq_err:.4f})")
    assert gptq_err < rtn_err
    assert gptq.quant_report["local_output_rel_err"].mean() < rtn_report["local_output_rel_err"].mean()
    assert 0 < gptq_bpb - base < rtn_bpb - base


def test_smoothing_is_exact_on_gemma_norms(gemma) -> None:
    from mlquant.quantize.calibration import calibration_texts, encode_texts
    from mlquant.quantize.smoothquant import smooth_model

    smoothed = gemma.derive(gemma.copy_torch_model(), gemma.spec)
    seqs = encode_texts(gemma.tokenizer, calibration_texts("flores:mixed:32"))
    done = smooth_model(smoothed.torch_model, seqs, gemma.tokenizer.pad_token_id, alpha=0.5, smooth_out_proj=True)
    n_layers = gemma.torch_model.config.num_hidden_layers
    assert len(done) == 4 * n_layers
    assert any("pre_feedforward_layernorm -> gate_proj, up_proj" in d for d in done)
    ids = gemma.tokenizer("The capital of France is Paris. 日本の首都は東京です。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = gemma.torch_model(input_ids=ids).logits
        b = smoothed.torch_model(input_ids=ids).logits
    assert ((a - b).norm() / a.norm()).item() < 1e-4


@pytest.mark.parametrize("label", ["w8a8", "smoothquant-w8a8", "fp8-w8a8"])
def test_w8a8_family_on_gemma(gemma, label: str) -> None:
    q = mq.quantize(gemma, label)
    report = q.quant_report
    assert len(report) == 7 * gemma.torch_model.config.num_hidden_layers
    assert report["output_rel_err"].median() < 0.2
    ids = gemma.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = gemma.torch_model(input_ids=ids).logits[0, -1]
        b = q.torch_model(input_ids=ids).logits[0, -1]
    assert a.argmax() == b.argmax()
