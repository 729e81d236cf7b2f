"""OpenAIEngine against a real HTTP server on loopback that serves mlquant's tiny random Llama.

The server implements ``/v1/completions`` as vLLM does (echo with per-token log-probabilities, ``top_logprobs``,
``text_offset`` counted over decoded tokens including ``<bos>``, token-id or text prompts, greedy generation with stop
sequences); its log-probabilities come from a plain torch forward of the same weights, so the engine must agree with
``HFModel`` on the same requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import make_tiny

import mlquant as mq
from mlquant.engines.openai import OpenAIEngine, ServerError
from mlquant.errors import ConfigError
from mlquant.requests import GenerateRequest, LoglikelihoodRequest, Model, RollingRequest


class TinyServer:
    """An OpenAI-compatible completions server wrapping a tiny HFModel, with knobs for failure modes."""

    def __init__(
        self,
        hf: Any,
        *,
        fail_first: int = 0,
        echo: str = "yes",  # "yes" | "ignore" (answers without echoing) | "reject" (HTTP 400)
        zero_ok: bool = True,
        delay: float = 0.0,
        api_key: str | None = None,
        served: str | None = None,  # the one model name accepted (vLLM answers 404 to another); None: any
        max_model_len: int = 64,  # listed by /v1/models (with served); prompts longer than it are refused, as by vLLM
    ) -> None:
        self.hf = hf
        self.served = served
        self.max_model_len = max_model_len
        self.fail_first = fail_first
        self.echo = echo
        self.zero_ok = zero_ok
        self.delay = delay
        self.api_key = api_key
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.received = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                reply: dict[str, Any]
                if self.path == "/v1/models" and server.served is not None:
                    status, reply = 200, {"object": "list", "data": [{"id": server.served, "max_model_len": server.max_model_len}]}
                else:
                    status, reply = 404, {"error": {"message": f"no route {self.path}"}}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.received += 1
                    server.bodies.append(body)
                    failing = server.received <= server.fail_first
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    status, reply = server.answer(self.path, dict(self.headers), body, failing)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ----- the completions endpoint -----------------------------------------------------------------------------
    def answer(self, path: str, headers: dict[str, str], body: dict[str, Any], failing: bool) -> tuple[int, Any]:
        if path != "/v1/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        if failing:
            return 503, {"error": {"message": "overloaded, try again"}}
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "bad API key"}}
        if self.served is not None and body.get("model") != self.served:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        if "" in (body.get("stop") or ()):
            return 400, {"error": {"message": "stop cannot contain an empty string."}}  # as vLLM 0.32
        if not body.get("echo") and int(body.get("max_tokens", 16)) < 1:
            return 400, {"error": {"message": "max_tokens must be at least 1, got 0."}}
        prompt = body["prompt"]
        ids = list(prompt) if isinstance(prompt, list) else self.hf.encode(prompt)
        text = prompt if isinstance(prompt, str) else self.hf.tokenizer.decode(ids[1:])
        max_tokens = int(body.get("max_tokens", 16))
        if self.served is not None and len(ids) + max_tokens > self.max_model_len:
            return 400, {"error": {"message": f"This model's maximum context length is {self.max_model_len} tokens. "
                                              f"However, you requested {len(ids) + max_tokens} tokens."}}
        if body.get("echo"):
            if self.echo == "reject":
                return 400, {"error": {"message": "echo is not supported by this server"}}
            if max_tokens == 0 and not self.zero_ok:
                return 400, {"error": {"message": "max_tokens must be at least 1, got 0."}}
            if self.echo == "ignore":
                return 200, {"choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]}
            return 200, self.echo_reply(ids, text, max_tokens, body.get("logprobs"))
        ctx = text
        if isinstance(prompt, list) and prompt[:1] != self.hf.prefix_ids():  # a cut prompt: the ids as they are
            import torch

            with self.model_lock, torch.inference_mode():
                new = self.hf.torch_model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_tokens,
                                                   do_sample=False, pad_token_id=0)[0, len(ids) :]
            out = [self.hf.tokenizer.decode(new, skip_special_tokens=True)]
            return 200, {"choices": [{"index": 0, "text": out[0], "logprobs": None, "finish_reason": "length"}]}
        with self.model_lock:
            out = self.hf.generate([GenerateRequest(ctx, stop=tuple(body.get("stop") or ()), max_new_tokens=max_tokens)])
        return 200, {"choices": [{"index": 0, "text": out[0], "logprobs": None, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": len(ids), "completion_tokens": 1}}

    def echo_reply(self, ids: list[int], text: str, max_tokens: int, logprobs: Any) -> Any:
        import torch

        tok = self.hf.tokenizer
        with self.model_lock, torch.inference_mode():
            logits = self.hf.torch_model(input_ids=torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        all_ids = list(ids)
        if max_tokens:
            all_ids.append(int(lp[-1].argmax()))
            text += tok.decode(all_ids[-1:])
        tokens = [tok.decode([i]) for i in all_ids]
        token_lps: list[float | None] = [None]
        tops: list[dict[str, float] | None] = [None]
        for pos in range(1, len(all_ids)):
            row = lp[pos - 1]
            best = int(row.argmax())
            token_lps.append(float(row[all_ids[pos]]))
            # vLLM: the prompt token itself plus the top-`logprobs` tokens, keyed by decoded text.
            tops.append({tokens[pos]: float(row[all_ids[pos]]), tok.decode([best]): float(row[best])})
        offsets, at = [], 0
        for t in tokens:  # as vLLM: cumulative lengths of the decoded tokens, <bos> included
            offsets.append(at)
            at += len(t)
        lp_block = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
        return {"choices": [{"index": 0, "text": text, "logprobs": lp_block if logprobs is not None else None,
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1 if max_tokens else 0}}


@pytest.fixture(scope="module")
def hf() -> Any:
    return make_tiny("llama")


@pytest.fixture
def server(hf: Any) -> Iterator[TinyServer]:
    s = TinyServer(hf)
    yield s
    s.close()


def greedy_requests(hf: Any, n: int = 2) -> list[LoglikelihoodRequest]:
    """Requests whose one-character continuation is the model's clear argmax (printable ASCII: it re-encodes alike)."""
    import torch

    found = []
    for k in range(200):
        ctx = f"Item {k}: " + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[k % 52] * (1 + k // 52)
        with torch.inference_mode():
            top = hf.torch_model(input_ids=torch.tensor([hf.encode(ctx)])).logits[0, -1].topk(2)
        nxt = int(top.indices[0])
        char = hf.tokenizer.decode([nxt])
        if float(top.values[0] - top.values[1]) > 1e-2 and len(char) == 1 and char.isascii() and char.isprintable() and hf.encode(ctx + char)[-1] == nxt:
            found.append(LoglikelihoodRequest(ctx, char))
            if len(found) == n:
                break
    return found


def requests_for(hf: Any) -> list[LoglikelihoodRequest]:
    """Latin, Turkish and Chinese requests, a context ending in a space, and greedy continuations (argmax True)."""
    reqs = [
        LoglikelihoodRequest("The capital of France is", " Paris"),
        LoglikelihoodRequest("The capital of France is", " Lyon and more"),
        LoglikelihoodRequest("Premise: Kadın ilacı içti. Sonuç:", " İyileşti."),
        LoglikelihoodRequest("问题：天空是什么颜色？答案：", "蓝色"),
        LoglikelihoodRequest("Answer: ", "yes"),
    ]
    return reqs + greedy_requests(hf)


def check_same(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert g.n_tokens == w.n_tokens
        assert getattr(g, "is_greedy", None) == getattr(w, "is_greedy", None)


# ----- identity ---------------------------------------------------------------------------------------------------
def test_identity_fingerprint_and_protocol(hf: Any) -> None:
    engine = OpenAIEngine("http://127.0.0.1:8000/v1", "tiny")
    assert isinstance(engine, Model)
    assert engine.endpoint == "http://127.0.0.1:8000/v1/completions"
    assert engine.signature() == "model:tiny@http://127.0.0.1:8000/v1/completions"
    assert engine.spec.label == "fp32" and engine.quant_report is None and engine.n_forward == 0
    prints = {
        engine.fingerprint(),
        OpenAIEngine("http://127.0.0.1:8001", "tiny").fingerprint(),
        OpenAIEngine("http://127.0.0.1:8000", "other").fingerprint(),
        OpenAIEngine("http://127.0.0.1:8000", "tiny", spec="bf16").fingerprint(),
        OpenAIEngine("http://127.0.0.1:8000", "tiny", tokenizer=hf.tokenizer).fingerprint(),
        hf.fingerprint(),
    }
    assert len(prints) == 6
    assert OpenAIEngine("http://127.0.0.1:8000/", "tiny").fingerprint() == engine.fingerprint()


def test_bad_arguments_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="http://"):
        OpenAIEngine("127.0.0.1:8000", "tiny")
    with pytest.raises(ConfigError, match="concurrency"):
        OpenAIEngine("http://127.0.0.1:8000", "tiny", concurrency=0)
    monkeypatch.delenv("MLQUANT_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="MLQUANT_TEST_KEY"):
        OpenAIEngine("http://127.0.0.1:8000", "tiny", api_key_env="MLQUANT_TEST_KEY")


def test_encode_pair_equals_hfmodel(hf: Any) -> None:
    engine = OpenAIEngine("http://127.0.0.1:8000", "tiny", tokenizer=hf.tokenizer)
    for r in requests_for(hf):
        assert engine.encode_pair(r.context, r.continuation) == hf.encode_pair(r.context, r.continuation)


# ----- log-likelihoods --------------------------------------------------------------------------------------------
def test_loglikelihood_with_token_ids_equals_hfmodel(hf: Any, server: TinyServer) -> None:
    reqs = requests_for(hf)
    engine = OpenAIEngine(server.url, "tiny", tokenizer=hf.tokenizer, concurrency=4)
    got = engine.loglikelihood(reqs)
    want = hf.loglikelihood(reqs)
    check_same(got, want)
    assert sum(w.is_greedy for w in want) == 2 and not all(w.is_greedy for w in want)
    assert engine.n_forward == len(reqs) == server.received
    assert all(isinstance(b["prompt"], list) and b["echo"] and b["max_tokens"] == 0 for b in server.bodies)


def test_loglikelihood_with_text_prompts_equals_hfmodel(hf: Any, server: TinyServer) -> None:
    # The byte tokenizer has no merges, so the character split is lm-eval's; the non-ASCII requests decode to
    # "\ufffd" pieces and take the fallback split (one more request for their context).
    reqs = requests_for(hf)
    engine = OpenAIEngine(server.url, "tiny")
    check_same(engine.loglikelihood(reqs), hf.loglikelihood(reqs))
    assert all(isinstance(b["prompt"], str) for b in server.bodies)
    contexts = {b["prompt"] for b in server.bodies if b["prompt"] not in {r.context + r.continuation for r in reqs}}
    assert contexts == {r.context.rstrip() for r in reqs if not (r.context + r.continuation).isascii()}
    assert "The capital of France is" not in contexts


def test_rolling_equals_hfmodel(hf: Any, server: TinyServer) -> None:
    reqs = [RollingRequest("Kadın ilacı içti."), RollingRequest("Hello world, again."), RollingRequest("")]
    want = hf.loglikelihood_rolling(reqs)
    for tokenizer in (hf.tokenizer, None):
        got = OpenAIEngine(server.url, "tiny", tokenizer=tokenizer).loglikelihood_rolling(reqs)
        check_same(got, want)
        assert [g.n_bytes for g in got] == [w.n_bytes for w in want]


def test_max_tokens_zero_refused_falls_back_to_one(hf: Any) -> None:
    server = TinyServer(hf, zero_ok=False)
    try:
        reqs = requests_for(hf)[:3]
        for tokenizer in (hf.tokenizer, None):
            engine = OpenAIEngine(server.url, "tiny", tokenizer=tokenizer)
            check_same(engine.loglikelihood(reqs), hf.loglikelihood(reqs))
            assert engine.echo_max_tokens == 1
    finally:
        server.close()


# ----- generation -------------------------------------------------------------------------------------------------
def test_generation_equals_hfmodel(hf: Any, server: TinyServer) -> None:
    reqs = [GenerateRequest("Question: 2+2?", max_new_tokens=8), GenerateRequest("Soru: ", stop=("a", "e"), max_new_tokens=12),
            GenerateRequest("The", stop=("1", "2", "3", "4", "5", " "), max_new_tokens=10)]
    want = hf.generate(reqs)
    for tokenizer in (hf.tokenizer, None):
        assert OpenAIEngine(server.url, "tiny", tokenizer=tokenizer).generate(reqs) == want
    sent = [b for b in server.bodies if not b.get("echo")]
    assert all(b["temperature"] == 0.0 and "seed" not in b for b in sent)
    assert all(len(b.get("stop", ())) <= 4 for b in sent)


def test_empty_stops_and_zero_new_tokens_are_not_sent(hf: Any, server: TinyServer) -> None:
    """vLLM refuses an empty stop string and max_tokens 0 without echo (HTTP 400): the engine drops empty and
    repeated stops (the text is still cut at all of them) and answers max_new_tokens=0 with "" (as HFModel)."""
    reqs = [GenerateRequest("Soru: ", stop=("", "a", "a", "", "e", "i", "o", "u"), max_new_tokens=12),
            GenerateRequest("Nothing", max_new_tokens=0)]
    engine = OpenAIEngine(server.url, "tiny", tokenizer=hf.tokenizer)
    assert engine.generate(reqs) == hf.generate(reqs)
    assert hf.generate(reqs[1:]) == [""]
    assert [b.get("stop") for b in server.bodies] == [["a", "e", "i", "o"]] and engine.n_forward == 1


def test_an_unknown_model_name_lists_the_served_models(hf: Any) -> None:
    server = TinyServer(hf, served="tiny-served")
    try:
        engine = OpenAIEngine(server.url + "/v1", "tiny")
        assert engine.served_models() == {"tiny-served": 64}
        with pytest.raises(ServerError, match=r"HTTP 404.*does not exist.*serves \['tiny-served'\]") as err:
            engine.generate([GenerateRequest("x", max_new_tokens=2)])
        assert err.value.status == 404 and engine.n_forward == 0
        for tokenizer in (hf.tokenizer, None):  # an echo request: the same error, not "does not echo"
            with pytest.raises(ServerError, match=r"HTTP 404.*serves \['tiny-served'\]") as err:
                OpenAIEngine(server.url, "tiny", tokenizer=tokenizer).loglikelihood([LoglikelihoodRequest("a", " b")])
            assert "echo" not in str(err.value)
        right = OpenAIEngine(server.url, "tiny-served")
        assert right.generate([GenerateRequest("x", max_new_tokens=2)]) == hf.generate([GenerateRequest("x", max_new_tokens=2)])
    finally:
        server.close()
    with pytest.raises(ServerError, match="HTTP 404"):  # a server without /v1/models: the plain 404
        bare = TinyServer(hf)
        try:
            OpenAIEngine(bare.url, "tiny").served_models()
        finally:
            bare.close()


def test_prompts_longer_than_the_servers_context_are_cut_as_hfmodel_cuts_them(hf: Any) -> None:
    """With token ids, a prompt longer than the server's max_model_len (from /v1/models) is cut as HFModel cuts one
    longer than its max_length: the same results as an HFModel of that max_length; the server refuses it whole."""
    from mlquant.models import HFModel

    limit = 40
    short = HFModel(hf.torch_model, hf.tokenizer, hf.source, hf.spec, max_length=limit)
    long_ctx = "A context much longer than the server allows. " * 2
    ll = [LoglikelihoodRequest(long_ctx, " end"), LoglikelihoodRequest("short", " x")]
    gen = [GenerateRequest(long_ctx, max_new_tokens=5)]
    roll = [RollingRequest(long_ctx * 2), RollingRequest("short text")]
    server = TinyServer(hf, served="tiny", max_model_len=limit)
    try:
        engine = OpenAIEngine(server.url, "tiny", tokenizer=hf.tokenizer)
        assert engine.context_limit() == limit
        check_same(engine.loglikelihood(ll), short.loglikelihood(ll))
        assert engine.generate(gen) == short.generate(gen)
        for got, want in zip(engine.loglikelihood_rolling(roll), short.loglikelihood_rolling(roll), strict=True):
            assert (got.n_tokens, got.n_bytes) == (want.n_tokens, want.n_bytes)
            assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert all(len(b["prompt"]) + b["max_tokens"] <= limit for b in server.bodies)
        uncut = OpenAIEngine(server.url, "tiny", tokenizer=hf.tokenizer, max_model_len=10**6)
        with pytest.raises(ConfigError, match="maximum context length is 40"):
            uncut.loglikelihood(ll[:1])
    finally:
        server.close()
    with pytest.raises(ConfigError, match="max_model_len=1"):
        OpenAIEngine("http://127.0.0.1:1", "tiny", max_model_len=1)


def test_greedy_flags_come_from_vllms_ranks_for_token_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """top_logprobs are keyed by token text: two tokens decoding alike ("\ufffd") collapse into one key, and a tie
    cannot be broken. vLLM's prompt_logprobs (keyed by id, with ranks) decide where the reply carries them."""
    engine = OpenAIEngine("http://127.0.0.1:9", "m")
    ids = [2, 300, 301]
    ufffd = "\ufffd"
    lp = {"tokens": ["<bos>", ufffd, ufffd], "token_logprobs": [None, -1.0, -0.5],
          "top_logprobs": [None, {ufffd: -1.0}, {ufffd: -0.5}]}
    table = [None, {"300": {"logprob": -1.0, "rank": 2}, "77": {"logprob": -1.0, "rank": 1}},
             {"301": {"logprob": -0.5, "rank": 1}}]
    reply = {"choices": [{"text": "", "logprobs": lp, "prompt_logprobs": table}]}
    monkeypatch.setattr(engine, "post", lambda body: reply)
    assert engine.echo(ids).greedy == [None, False, True]
    reply["choices"][0].pop("prompt_logprobs")  # an OpenAI-format reply only: the text keys decide (wrongly here)
    assert engine.echo(ids).greedy == [None, True, True]


# ----- transport --------------------------------------------------------------------------------------------------
def test_retries_503_then_succeeds(hf: Any) -> None:
    server = TinyServer(hf, fail_first=2)
    try:
        engine = OpenAIEngine(server.url, "tiny", tokenizer=hf.tokenizer, max_retries=3, backoff=0.01)
        got = engine.loglikelihood(requests_for(hf)[:1])
        check_same(got, hf.loglikelihood(requests_for(hf)[:1]))
        assert server.received == 3 and engine.n_forward == 1
    finally:
        server.close()
    server = TinyServer(hf, fail_first=5)
    try:
        engine = OpenAIEngine(server.url, "tiny", max_retries=1, backoff=0.01)
        with pytest.raises(ServerError, match="HTTP 503") as err:
            engine.generate([GenerateRequest("x", max_new_tokens=2)])
        assert err.value.status == 503 and "overloaded" in err.value.reply and server.received == 2
    finally:
        server.close()


def test_unreachable_server_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "tiny", max_retries=1, backoff=0.01)
    with pytest.raises(ConfigError, match=f"cannot reach http://127.0.0.1:{port}/v1/completions after 2 attempts"):
        engine.generate([GenerateRequest("x")])


def test_concurrency_limit(hf: Any) -> None:
    server = TinyServer(hf, delay=0.15)
    try:
        engine = OpenAIEngine(server.url, "tiny", concurrency=2)
        reqs = [GenerateRequest(f"Text {i}", max_new_tokens=1) for i in range(8)]
        out = engine.generate(reqs)
        assert out == hf.generate(reqs)  # in request order
        assert server.received == 8 and server.max_in_flight == 2
    finally:
        server.close()


def test_api_key_is_sent(hf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = TinyServer(hf, api_key="sekrit")
    try:
        monkeypatch.setenv("MLQUANT_TEST_KEY", "sekrit")
        engine = OpenAIEngine(server.url, "tiny", api_key_env="MLQUANT_TEST_KEY")
        assert engine.generate([GenerateRequest("x", max_new_tokens=2)]) == hf.generate([GenerateRequest("x", max_new_tokens=2)])
        assert "sekrit" not in repr(engine) and "sekrit" not in engine.fingerprint()
        monkeypatch.setenv("MLQUANT_TEST_KEY", "wrong")
        with pytest.raises(ServerError, match="HTTP 401"):
            engine.generate([GenerateRequest("x", max_new_tokens=2)])
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["ignore", "reject"])
def test_server_without_echo_is_a_named_error(hf: Any, mode: str) -> None:
    server = TinyServer(hf, echo=mode)
    try:
        for tokenizer in (hf.tokenizer, None):
            engine = OpenAIEngine(server.url, "tiny", tokenizer=tokenizer)
            with pytest.raises(ConfigError) as err:
                engine.loglikelihood([LoglikelihoodRequest("a", " b")])
            msg = str(err.value)
            assert server.url + "/v1/completions" in msg and "echo" in msg
            assert ("echo is not supported by this server" in msg) if mode == "reject" else ('"logprobs": null' in msg)
    finally:
        server.close()


# ----- a study cell through the engine ----------------------------------------------------------------------------
def test_study_cell_through_the_engine_equals_hfmodel(hf: Any, server: TinyServer, tmp_path: Any) -> None:
    engine = OpenAIEngine(server.url, "tiny", tokenizer=hf.tokenizer, concurrency=4)
    kw: dict[str, Any] = {"quant": ["fp32"], "tasks": ["xcopa"], "languages": ["tr"], "limit": 4}
    got = mq.Study(engine, **kw).run(tmp_path / "engine").frame
    want = mq.Study(hf, **kw).run(tmp_path / "hf").frame
    assert len(got) == len(want) == 4
    got, want = got.sort_values("item_id").reset_index(drop=True), want.sort_values("item_id").reset_index(drop=True)
    assert got["item_id"].tolist() == want["item_id"].tolist()
    for g, w in zip(got.itertuples(), want.itertuples(), strict=True):
        g_lps, w_lps = json.loads(g.extra)["logprobs"], json.loads(w.extra)["logprobs"]
        assert g_lps == pytest.approx(w_lps, abs=1e-4), (g.item_id, g_lps, w_lps)
        ranked = sorted(w_lps)
        if min(b - a for a, b in zip(ranked, ranked[1:])) > 1e-3:  # no near-tie between the options
            assert (g.score, g.extracted) == (w.score, w.extracted), (g.item_id, g_lps, w_lps)
    assert got["signature"].iloc[0].split("|")[1] == engine.signature()
    assert engine.n_forward == server.received > 0
    again = mq.Study(engine, **kw)
    again.run(tmp_path / "engine")  # resumes: nothing recomputed, no request sent
    assert server.received == engine.n_forward


def test_a_study_file_with_engine_openai_runs_through_the_server(server: TinyServer, tmp_path: Any, tiny_llama_dir: Any) -> None:
    """engine/engine_options in the study file: the pool builds the engine, the cell signature names it, the cache
    key differs from the transformers engine's, and a rerun sends no request."""
    import yaml

    study_file = tmp_path / "s.yaml"
    options = {"base_url": server.url, "models": {"fp32": "tiny"}, "tokenizer": str(tiny_llama_dir)}
    study_file.write_text(yaml.safe_dump({
        "model": str(tiny_llama_dir), "quant": ["fp32"], "tasks": ["xcopa"], "languages": ["tr"], "limit": 4,
        "engine": "openai", "engine_options": options,
    }))
    study = mq.Study.from_yaml(study_file)
    frame = study.run(tmp_path / "run", progress=False).frame
    sig = mq.Study.from_yaml(study_file).signature(study.cells[0], "model:x")
    assert sig.engine == f"openai@{server.url}" and f"engine:openai@{server.url}" in frame["signature"].iloc[0]
    hf_frame = mq.Study(str(tiny_llama_dir), quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=4).run(
        tmp_path / "hf", progress=False
    ).frame
    assert sorted(frame["item_id"]) == sorted(hf_frame["item_id"])
    assert "engine:" not in hf_frame["signature"].iloc[0]  # transformers cells keep the signatures they always had
    sent = server.received
    again = mq.Study.from_yaml(study_file)
    again.run(tmp_path / "run", progress=False)
    assert server.received == sent and again.last_run.cells_skipped == 1
    reloaded = mq.Study.from_yaml(tmp_path / "run" / "study.yaml")
    assert reloaded.engine == "openai" and reloaded.engine_options == options


def test_engine_choices_and_missing_options_are_named() -> None:
    with pytest.raises(mq.ConfigError, match=r"engine='vlm' is not one of hf, vllm, openai\. Did you mean 'vllm'"):
        mq.Study("gemma3-270m", engine="vlm")
    with pytest.raises(mq.ConfigError, match="engine openai needs base_url"):
        mq.Study("gemma3-270m", engine="openai")


def test_engine_vllm_without_its_venv_fails_before_any_model(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLQUANT_VLLM_PYTHON", str(tmp_path / "no-python"))
    from mlquant.engines.vllm import installed_vllm_version

    installed_vllm_version.cache_clear()
    study = mq.Study("nosuch-org/nosuch-model", quant=["fp32"], tasks=["xcopa"], languages=["tr"], limit=2, engine="vllm")
    with pytest.raises(mq.BackendUnavailableError, match="make vllm-venv"):
        study.run(tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").rglob("*.parquet"))
