"""A model served by any OpenAI-compatible server (vLLM, SGLang, llama.cpp server, ...), through ``/v1/completions``.

:class:`OpenAIEngine` implements the :class:`~mlquant.requests.Model` protocol over HTTP (standard library only):

* **generation**: one completion per request, greedy (``temperature: 0``) unless the request samples, with the
  request's ``stop`` (the first four non-empty ones; every one is applied again with
  :func:`~mlquant.requests.cut_at_stop`) and ``max_tokens`` (no request for ``max_new_tokens`` 0: the answer is "");
* **log-likelihood**: the prompt *context + continuation* is sent with ``echo: true, logprobs: 1, max_tokens: 0``
  (``max_tokens: 1`` where the server refuses 0; the generated token is then dropped); the log-probabilities the
  server returns for the prompt's own tokens are summed over the continuation's tokens, and a token is *greedy*
  when its log-probability is the largest of its ``top_logprobs`` (the top-1), or, where the reply to a token-id
  prompt carries vLLM's ``prompt_logprobs`` (keyed by token id, with ranks), when its rank there is 1;
* **rolling log-likelihood**: the same over the whole text. The first token of a prompt has no log-probability
  (nothing precedes it): a server that adds a BOS token scores every token of the text, one that does not cannot
  score the text's first token, and ``n_tokens`` counts only the tokens scored.

**Where the continuation starts.** With text prompts the server tokenizes, and mlquant splits the echoed tokens by
*characters*: a token belongs to the continuation when it ends after the context (as in lm-eval, the context's
trailing whitespace belongs to the continuation). The token texts are checked to spell the prompt (after a special
prefix such as ``<s>``, which vLLM counts in its ``text_offset``); where they do not (a byte-level tokenizer
returns one ``\\ufffd`` per partial UTF-8 character, a server may return ``Ġ``-style pieces), the split falls back
to the tokens of the context alone, from one more echo request per distinct context. Either way a token that
straddles the boundary (the context's end merged with the continuation's start) is scored whole, where
:class:`~mlquant.models.HFModel` tokenizes the continuation on its own (lm-eval's rule): the two can differ at such
a boundary. Give ``tokenizer=`` (the served model's Hugging Face tokenizer) to send **token ids** instead (vLLM's
completions endpoint accepts a list of ints as the prompt): the ids are then exactly those of
``HFModel.encode_pair`` and the results those of the same weights under ``HFModel``, up to the server's numerics.

Example:
    >>> engine = OpenAIEngine("http://127.0.0.1:8000", "my-model")
    >>> engine.endpoint, engine.signature()
    ('http://127.0.0.1:8000/v1/completions', 'model:my-model@http://127.0.0.1:8000/v1/completions')

Against a real vLLM server (serve the model with :func:`mlquant.engines.vllm.serve_command`; ``tests/
test_engine_openai_server.py``), token-id prompts give HFModel's log-likelihoods within 1e-4 and its greedy
generations (docs/scale.md, "Against a real server").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from mlquant.errors import ConfigError
from mlquant.models import TokenEncoder, fit_context
from mlquant.requests import (
    GenerateRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
    cut_at_stop,
)
from mlquant.spec import QuantSpec

__all__ = ["Echo", "OpenAIEngine", "ServerError", "endpoint_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Prompt = str | list[int]

#: HTTP statuses retried with exponential back-off (with connection errors and timeouts).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: HTTP statuses of an echo request that say nothing about echo (the key, the model name): raised as they are.
NOT_ABOUT_ECHO = frozenset({401, 403, 404})
#: Stop sequences sent to the server (OpenAI's limit); all of a request's are applied again to the text.
MAX_STOP = 4


class ServerError(ConfigError):
    """The server answered with an HTTP error (after any retries): ``status`` and ``reply`` (its body) are kept."""

    def __init__(self, message: str, status: int, reply: str) -> None:
        super().__init__(message)
        self.status = status
        self.reply = reply


@dataclass(frozen=True)
class Echo:
    """The echoed prompt tokens of one completion: token texts, log-probabilities (None for the first) and whether
    each token was the top-1 (None where the server gave no ``top_logprobs``)."""

    tokens: list[str]
    logprobs: list[float | None]
    greedy: list[bool | None]


def endpoint_url(base_url: str, route: str) -> str:
    """The URL of an OpenAI-compatible ``route`` (``completions``, ``chat/completions``) from a server's base URL,
    which may or may not already end in ``/v1`` or in the route itself.

    Example:
        >>> endpoint_url("http://127.0.0.1:8000", "completions")
        'http://127.0.0.1:8000/v1/completions'
        >>> endpoint_url("https://api.example.com/v1/", "chat/completions")
        'https://api.example.com/v1/chat/completions'
    """
    base = base_url.rstrip("/")
    if base.endswith("/" + route):
        return base
    if base.endswith("/v1"):
        return f"{base}/{route}"
    return f"{base}/v1/{route}"


class OpenAIEngine:
    """A model behind an OpenAI-compatible ``/v1/completions`` endpoint, as a :class:`~mlquant.requests.Model`.

    Args:
        base_url: the server (``http://127.0.0.1:8000``; ``/v1`` or the full ``/v1/completions`` path may be
            included).
        model: the model name the server serves (``--served-model-name``, or the path it was started with).
        api_key_env: environment variable holding the API key (sent as a Bearer token; checked here, read at each
            request, never stored or logged); None for a server without authentication.
        tokenizer: the served model's Hugging Face tokenizer (an object, or a hub id or folder loaded with
            ``AutoTokenizer``) to send token-id prompts split exactly as :class:`~mlquant.models.HFModel` splits
            them; None: text prompts, tokenized by the server (see the module docstring).
        spec: the spec the served model stands for in a study (a label or a :class:`QuantSpec`; default ``fp32``).
            Give ``"bf16"`` for a server that serves bfloat16 and list the same baseline in the study.
        concurrency: requests in flight at once (a thread pool of this size).
        max_retries: retries of a request on HTTP 408/429/5xx, connection errors and timeouts.
        timeout: seconds per HTTP request.
        backoff: first retry delay in seconds, doubled at each retry (a 429's ``Retry-After`` is honoured up to 60 s).
        echo_max_tokens: ``max_tokens`` of the log-likelihood requests: 0, 1, or None (default) to try 0 and fall back
            to 1 for the rest of the session when the server refuses 0.
        max_model_len: the server's context length in tokens, for token-id prompts (with ``tokenizer``); None: asked
            once from ``GET /v1/models`` (vLLM's ``max_model_len``; no limit where the server does not say). A longer
            prompt is cut as :class:`~mlquant.models.HFModel` cuts one at its ``max_length``: a log-likelihood
            context keeps BOS and its last tokens, a generation prompt its last ``max_model_len - max_new_tokens``
            tokens, a rolling text is scored in disjoint windows. Text prompts are sent whole.

    Raises:
        ConfigError: a malformed URL or argument, or an API key variable that is not set.

    Example:
        >>> engine = OpenAIEngine("http://127.0.0.1:8000/v1", "my-model", spec="bf16")
        >>> engine.spec.label, engine.n_forward, engine.quant_report is None
        ('bf16', 0, True)
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        tokenizer: Any = None,
        spec: QuantSpec | str | None = None,
        concurrency: int = 8,
        max_retries: int = 3,
        timeout: float = 300.0,
        backoff: float = 1.0,
        echo_max_tokens: int | None = None,
        max_model_len: int | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OpenAIEngine: base_url {base_url!r} must start with http:// or https://.")
        if not isinstance(model, str) or not model:
            raise ConfigError(f"OpenAIEngine: model {model!r}; expected the name the server serves the model under.")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigError(f"OpenAIEngine: concurrency={concurrency!r}; expected an integer >= 1.")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ConfigError(f"OpenAIEngine: max_retries={max_retries!r}; expected an integer >= 0.")
        if not timeout > 0 or backoff < 0:
            raise ConfigError(f"OpenAIEngine: timeout={timeout!r}, backoff={backoff!r}; expected timeout > 0, backoff >= 0.")
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 2):
            raise ConfigError(f"OpenAIEngine: max_model_len={max_model_len!r}; expected an integer >= 2 or None.")
        if echo_max_tokens not in (None, 0, 1):
            raise ConfigError(f"OpenAIEngine: echo_max_tokens={echo_max_tokens!r}; expected 0, 1 or None (try 0, then 1).")
        self.endpoint = endpoint_url(base_url, "completions")
        self.model = model
        self.name = model
        self.api_key_env = api_key_env
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ConfigError(self._missing_key())
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer: Any = tokenizer
        self.encoder = TokenEncoder(tokenizer) if tokenizer is not None else None
        self.spec = spec if isinstance(spec, QuantSpec) else QuantSpec.parse(spec or "fp32")
        self.quant_report: Any = None
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.echo_max_tokens = echo_max_tokens
        self._auto_max_tokens = echo_max_tokens is None
        self._lock = threading.Lock()
        self._requests = 0
        self._context_tokens: dict[str, list[str]] = {}
        self._max_model_len = max_model_len
        self._asked_length = max_model_len is not None

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.endpoint!r}, {self.model!r}, api_key_env={self.api_key_env!r})"

    # ----- identity -------------------------------------------------------------------------------------------------
    @property
    def n_forward(self) -> int:
        """Completion requests answered so far (retries and ``GET /v1/models`` not counted)."""
        return self._requests

    def fingerprint(self) -> str:
        """sha256 over ``engine: openai``, the endpoint, the served model name, the spec and how prompts are sent
        (text, or token ids of which tokenizer): the request cache never mixes engines or servers."""
        tok = None
        if self.tokenizer is not None:
            tok = str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__)
        blob = {"engine": "openai", "endpoint": self.endpoint, "model": self.model, "quant": self.spec.fingerprint(),
                "prompts": "token-ids" if self.tokenizer is not None else "text", "tokenizer": tok}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def signature(self) -> str:
        """``model:<served model>@<endpoint>``."""
        return f"model:{self.model}@{self.endpoint}"

    # ----- HTTP -----------------------------------------------------------------------------------------------------
    def _missing_key(self) -> str:
        return (f"OpenAIEngine: the environment variable {self.api_key_env} holding the API key for {self.endpoint} "
                "is not set (use api_key_env=None for a server without authentication).")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(self._missing_key())
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay: float = self.backoff * float(2**attempt)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 60.0))
            except ValueError:
                pass
        return delay

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (``model`` added) to the endpoint and return the JSON reply, retrying transient failures.

        Raises:
            ServerError: an HTTP error status (after the retries, for a retried one), with the server's reply; an
                HTTP 404 names the models the server serves (from ``GET /v1/models``) where it lists them.
            ConfigError: the server cannot be reached, or its reply is not a JSON object.
        """
        data = json.dumps({"model": self.model, **body}, ensure_ascii=False).encode("utf-8")
        try:
            return self._call(self.endpoint, data)
        except ServerError as exc:
            if exc.status != 404:
                raise
            try:
                served = sorted(self.served_models())
            except ConfigError:
                raise exc from None
            raise ServerError(f"{exc} The server serves {served}: give one of them as the model (in a study, map "
                              "the quant label to it in engine_options.models).", exc.status, exc.reply) from None

    def served_models(self) -> dict[str, int | None]:
        """The models the server serves (``GET /v1/models``): name -> context length (vLLM's ``max_model_len``; None
        where the server does not say).

        Raises:
            ServerError: an HTTP error status (a server without the route answers 404).
            ConfigError: the server cannot be reached, or its reply lists no models.
        """
        reply = self._call(self.endpoint[: -len("completions")] + "models", None)
        data = reply.get("data")
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise ConfigError(f"OpenAIEngine: {self.endpoint} lists no models: {json.dumps(reply)[:300]}")
        return {m["id"]: m.get("max_model_len") if isinstance(m.get("max_model_len"), int) else None for m in data}

    def _call(self, url: str, data: bytes | None) -> dict[str, Any]:
        """The JSON object ``url`` answers to a POST of ``data`` (a GET when None), retrying transient failures."""
        headers = self._headers()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method="GET" if data is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    raw = resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                if exc.code in RETRY_STATUSES and attempt < self.max_retries:
                    log.warning("OpenAIEngine: HTTP %d from %s; retrying.", exc.code, url)
                    time.sleep(self._delay(attempt, exc.headers.get("Retry-After") if exc.headers else None))
                    continue
                raise ServerError(f"OpenAIEngine: HTTP {exc.code} from {url}: {detail}", exc.code, detail) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.max_retries:
                    log.warning("OpenAIEngine: %s from %s; retrying.", exc, url)
                    time.sleep(self._delay(attempt, None))
                    continue
                raise ConfigError(f"OpenAIEngine: cannot reach {url} after {self.max_retries + 1} attempts: {exc}") from None
            try:
                reply = json.loads(raw)
            except json.JSONDecodeError:
                reply = None
            if not isinstance(reply, dict):
                raise ConfigError(f"OpenAIEngine: the reply of {url} is not a JSON object: {raw[:300]}")
            if data is not None:
                with self._lock:
                    self._requests += 1
            return reply
        raise ConfigError(f"OpenAIEngine: no request sent to {url} (max_retries={self.max_retries}).")

    def _map(self, fn: Callable[[int], T], n: int) -> list[T]:
        """``[fn(0), ..., fn(n - 1)]`` with at most ``concurrency`` calls in flight; the first error cancels the rest."""
        if n == 0:
            return []
        if self.concurrency == 1 or n == 1:
            return [fn(i) for i in range(n)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, n), thread_name_prefix="mlquant-openai") as pool:
            futures: list[Future[T]] = [pool.submit(fn, i) for i in range(n)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _choice(self, reply: dict[str, Any]) -> dict[str, Any]:
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ConfigError(f"OpenAIEngine: the reply of {self.endpoint} has no choices: {json.dumps(reply)[:300]}")
        first: dict[str, Any] = choices[0]
        return first

    # ----- echo -----------------------------------------------------------------------------------------------------
    def _no_echo(self, what: str, reply: Any) -> ConfigError:
        shown = reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)
        return ConfigError(
            f"OpenAIEngine: {self.endpoint} (model {self.model!r}) {what}; log-likelihoods need a /v1/completions "
            f"endpoint that echoes the prompt with its log-probabilities (echo: true, logprobs: 1), as vLLM and SGLang "
            f"do. The server replied: {shown[:400]}"
        )

    def echo(self, prompt: Prompt) -> Echo:
        """The prompt's tokens with their log-probabilities, from one ``echo`` completion.

        Raises:
            ConfigError: the server rejects the request or does not echo the prompt with log-probabilities.
        """
        body = {"prompt": prompt, "echo": True, "logprobs": 1, "temperature": 0.0}
        max_tokens = 0 if self.echo_max_tokens is None else self.echo_max_tokens
        try:
            reply = self.post({**body, "max_tokens": max_tokens})
        except ServerError as exc:
            if exc.status in NOT_ABOUT_ECHO:
                raise
            if max_tokens != 0 or not self._auto_max_tokens or exc.status not in (400, 422):
                raise self._no_echo(f"rejected an echo request (HTTP {exc.status})", exc.reply) from None
            log.info("OpenAIEngine: %s refused max_tokens=0 (%s); using max_tokens=1.", self.endpoint, exc.reply[:200])
            try:
                reply = self.post({**body, "max_tokens": 1})
            except ServerError as again:
                raise self._no_echo(f"rejected an echo request (HTTP {again.status})", again.reply) from None
            self.echo_max_tokens = max_tokens = 1
        choice = self._choice(reply)
        lp = choice.get("logprobs")
        if not (isinstance(lp, dict) and isinstance(lp.get("tokens"), list) and isinstance(lp.get("token_logprobs"), list)):
            raise self._no_echo("returned no logprobs", reply)
        tokens = [str(t) for t in lp["tokens"]]
        values: list[Any] = lp["token_logprobs"]
        tops: Any = lp.get("top_logprobs")
        if not isinstance(tops, list) or len(tops) != len(tokens) or len(values) != len(tokens):
            raise self._no_echo("returned no top_logprobs for every token", reply)
        if isinstance(prompt, list):
            n = len(prompt)
            if len(tokens) < n:
                raise self._no_echo(f"returned {len(tokens)} tokens for a prompt of {n} token ids (no echo?)", reply)
        else:
            text = choice.get("text")
            if not isinstance(text, str) or not text.startswith(prompt):
                raise self._no_echo("did not echo the prompt", reply)
            n = len(tokens)
            if max_tokens:
                usage = reply.get("usage")
                generated = usage.get("completion_tokens") if isinstance(usage, dict) else None
                n -= generated if isinstance(generated, int) and 0 <= generated <= n else max_tokens
        greedy: list[bool | None] = []
        logprobs: list[float | None] = []
        ranks = self._ranks(choice.get("prompt_logprobs"), prompt)
        for j, (value, top) in enumerate(zip(values[:n], tops[:n])):
            logprobs.append(None if value is None else float(value))
            if value is None or not isinstance(top, dict) or not top:
                greedy.append(None)
            elif ranks is not None and ranks[j] is not None:
                greedy.append(ranks[j] == 1)
            else:
                greedy.append(float(value) >= max(float(v) for v in top.values()))
        return Echo(tokens[:n], logprobs, greedy)

    @staticmethod
    def _ranks(table: Any, prompt: Prompt) -> list[int | None] | None:
        """The rank of each prompt token from vLLM's ``prompt_logprobs`` (keyed by token id), for a token-id prompt.

        The ``top_logprobs`` of the OpenAI format are keyed by token *text*, which two tokens can share and which
        ties cannot break; vLLM's ranks are exact. None where the reply has no such table."""
        if not isinstance(prompt, list) or not isinstance(table, list) or len(table) != len(prompt):
            return None
        ranks: list[int | None] = []
        for entry, token in zip(table, prompt):
            info = entry.get(str(token)) if isinstance(entry, dict) else None
            rank = info.get("rank") if isinstance(info, dict) else None
            ranks.append(rank if isinstance(rank, int) else None)
        return ranks

    def _scored(self, echo: Echo, positions: Sequence[int], what: str) -> tuple[float, bool, int]:
        total, is_greedy = 0.0, True
        for i in positions:
            value, greedy = echo.logprobs[i], echo.greedy[i]
            if value is None:
                raise ConfigError(f"OpenAIEngine: {self.endpoint} gave no log-probability for token {i} "
                                  f"({echo.tokens[i]!r}) of {what}.")
            if greedy is None:
                raise self._no_echo(f"gave no top_logprobs for token {i} of {what}", echo.tokens[i])
            total += value
            is_greedy = is_greedy and greedy
        return total, is_greedy, len(positions)

    # ----- tokenization (token-id prompts) --------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self._encoder().encode(text)

    def _encoder(self) -> TokenEncoder:
        if self.encoder is None:
            raise ConfigError("OpenAIEngine: token-id prompts need a tokenizer (OpenAIEngine(..., tokenizer=...)).")
        return self.encoder

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) exactly as :meth:`mlquant.models.HFModel.encode_pair` splits them (the
        shared :class:`~mlquant.models.TokenEncoder`; needs ``tokenizer``)."""
        return self._encoder().encode_pair(context, continuation)

    def context_limit(self) -> int | None:
        """Tokens a prompt may hold (``max_model_len``, else the server's from ``GET /v1/models``, asked once; None
        where the server does not say or has no such route).

        Example:
            >>> OpenAIEngine("http://127.0.0.1:8000", "my-model", max_model_len=4096).context_limit()
            4096
        """
        with self._lock:
            if self._asked_length:
                return self._max_model_len
        try:
            limit = self.served_models().get(self.model)
        except ConfigError as exc:  # a server without /v1/models: prompts go whole, as before
            log.info("OpenAIEngine: no context length from %s (%s); prompts are sent whole.", self.endpoint, exc)
            limit = None
        with self._lock:
            self._max_model_len, self._asked_length = limit, True
        return limit

    # ----- the three request kinds ----------------------------------------------------------------------------------
    def _context_split(self, context: str) -> list[str]:
        """Token texts of ``context`` alone (the fallback split), one echo request per distinct context."""
        with self._lock:
            cached = self._context_tokens.get(context)
        if cached is None:
            cached = self.echo(context).tokens if context else []
            with self._lock:
                self._context_tokens[context] = cached
        return cached

    def _loglikelihood_one(self, i: int, req: LoglikelihoodRequest) -> LoglikelihoodResult:
        what = f"request {i}'s continuation {req.continuation!r}"
        if self.tokenizer is not None:
            ctx, cont = self.encode_pair(req.context, req.continuation)
            if not cont:
                raise ConfigError(f"OpenAIEngine: request {i}: the continuation {req.continuation!r} encodes to no tokens.")
            limit = self.context_limit()
            if limit is not None:
                room = limit - (self.echo_max_tokens or 0)  # a generated token (max_tokens 1) takes a place too
                if room - len(cont) < 1:
                    raise ConfigError(f"OpenAIEngine: request {i}: {what} has {len(cont)} tokens; the server's "
                                      f"context holds {limit}.")
                ctx = fit_context(ctx, len(cont), room)  # as HFModel: BOS, then the context's last tokens
            echo = self.echo(ctx + cont)
            return LoglikelihoodResult(*self._scored(echo, range(len(ctx), len(ctx) + len(cont)), what))
        context = req.context.rstrip()
        prompt = req.context + req.continuation
        echo = self.echo(prompt)
        joined = "".join(echo.tokens)
        if joined.endswith(prompt):
            # Character split: a token is in the continuation when it ends after the (stripped) context.
            end = -(len(joined) - len(prompt))
            positions = []
            for k, token in enumerate(echo.tokens):
                end += len(token)
                if end > len(context):
                    positions.append(k)
        else:
            # The token texts do not spell the prompt: split after the context's own tokens (common prefix).
            ctx_tokens = self._context_split(context)
            k = 0
            while k < min(len(ctx_tokens), len(echo.tokens)) and ctx_tokens[k] == echo.tokens[k]:
                k += 1
            if not context:
                k = next((j for j, v in enumerate(echo.logprobs) if v is not None), len(echo.tokens))
            positions = list(range(k, len(echo.tokens)))
        if not positions:
            raise ConfigError(f"OpenAIEngine: request {i}: {what} holds no token of the echoed prompt.")
        return LoglikelihoodResult(*self._scored(echo, positions, what))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """log P(continuation | context) of each request: one echo completion each (see the module docstring)."""
        reqs = list(requests)
        return self._map(lambda i: self._loglikelihood_one(i, reqs[i]), len(reqs))

    def _rolling_one(self, req: RollingRequest) -> RollingResult:
        n_bytes = len(req.text.encode("utf-8"))
        if not req.text:
            return RollingResult(0.0, 0, 0)
        if self.tokenizer is not None:
            prefix = self._encoder().prefix_ids()
            text_ids = self._encode(req.text)[len(prefix) :]
            limit = self.context_limit()
            step = len(text_ids) if limit is None else limit - (self.echo_max_tokens or 0) - len(prefix)
            if limit is not None and step < 1:
                raise ConfigError(f"OpenAIEngine: the server's context ({limit} tokens) holds no token of a text.")
            total, n = 0.0, 0
            for start in range(0, max(len(text_ids), 1), max(step, 1)):  # HFModel's disjoint windows
                window = prefix + text_ids[start : start + step]
                part, _, count = self._scored(self.echo(window), range(len(prefix), len(window)), "a rolling text")
                total, n = total + part, n + count
            return RollingResult(total, n, n_bytes)
        else:
            echo = self.echo(req.text)
            positions = [k for k, v in enumerate(echo.logprobs) if v is not None]  # the first token has none
        total, _, n = self._scored(echo, positions, "a rolling text")
        return RollingResult(total, n, n_bytes)

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """log P(text) of each text, every token that has a log-probability (all after BOS); one request per text.

        With token-id prompts a text longer than the server's context is scored in disjoint windows, as ``HFModel``
        scores one longer than its ``max_length``; a text prompt that long is refused by the server.
        """
        reqs = list(requests)
        return self._map(lambda i: self._rolling_one(reqs[i]), len(reqs))

    def _generate_one(self, req: GenerateRequest) -> str:
        if req.max_new_tokens <= 0:  # as HFModel; servers refuse max_tokens: 0 without echo
            return ""
        prompt: Prompt = req.context
        if self.tokenizer is not None:
            prompt = self._encode(req.context)
            limit = self.context_limit()
            if limit is not None and len(prompt) + req.max_new_tokens > limit:
                prompt = prompt[-max(limit - req.max_new_tokens, 1) :]  # as HFModel: the prompt's last tokens
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": req.max_new_tokens, "temperature": req.temperature}
        if req.temperature > 0:
            body.update(top_p=req.top_p, seed=req.seed)
        stop = [s for s in dict.fromkeys(req.stop) if s][:MAX_STOP]  # vLLM refuses "" (HTTP 400)
        if stop:
            body["stop"] = stop
        reply = self.post(body)
        text = self._choice(reply).get("text")
        if not isinstance(text, str):
            raise ConfigError(f"OpenAIEngine: the reply of {self.endpoint} has no text: {json.dumps(reply)[:300]}")
        return cut_at_stop(text, req.stop)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """One completion per request (greedy unless the request samples), cut at the request's stop sequences."""
        reqs = list(requests)
        return self._map(lambda i: self._generate_one(reqs[i]), len(reqs))
