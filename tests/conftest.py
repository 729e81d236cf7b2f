"""Shared fixtures: the data folder, offline hub settings, a tiny random Llama / Gemma 3 built from a config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Tests never touch the network: the hub is read only through local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "MLQUANT_DATA_DIR" not in os.environ and DATA.is_dir():
    os.environ["MLQUANT_DATA_DIR"] = str(DATA)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def byte_tokenizer():
    """A byte-level tokenizer (no merges) with <bos>=256, <eos>=257, <pad>=258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # sorted: ByteLevel.alphabet() is a set, whose order (and so every token id) changed from one process to the next
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<bos>", "<eos>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def make_tiny(arch: str = "llama", seed: int = 0, batch_size: int = 16):
    """A tiny random causal LM behind HFModel: ``llama`` or ``gemma3`` (sliding window of 8 tokens)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    from mlquant._loading import ModelSource
    from mlquant.models import HFModel
    from mlquant.quantize import QuantSpec

    torch.manual_seed(seed)
    common = dict(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, bos_token_id=256, eos_token_id=257, pad_token_id=258,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=8, **common))
    model.eval()
    src = ModelSource(f"tiny-{arch}", f"tiny-{arch}", revision=str(seed))
    return HFModel(model, byte_tokenizer(), src, QuantSpec.parse("fp32"), batch_size=batch_size)


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture
def tiny_gemma3():
    return make_tiny("gemma3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama saved as a local checkpoint folder (loads through mlquant.load_model)."""
    model = make_tiny("llama")
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.torch_model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma 3 270M (slow tests only)."""
    from mlquant.models import load_model

    return load_model("gemma3-270m")


@contextmanager
def head_numerics(model: Any, numerics: str) -> Iterator[None]:
    """``model.head_numerics`` set to ``numerics`` inside the block (``"log_softmax"``: torch's float32 normaliser, as
    lm-eval and vLLM compute log-probabilities; bench/head.py), back to ``"exact"`` after it."""
    model.head_numerics = numerics
    try:
        yield
    finally:
        model.head_numerics = "exact"
