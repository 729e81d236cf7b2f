"""GGUF quantization as llama.cpp does it (k-quants and their ``_M`` mixes), simulated bit-exactly in torch.

What most people run locally is a GGUF file made by ``llama-quantize``. The labels here reproduce its file types:

=================  ===========================================================================================
label              what llama.cpp stores (``llama_tensor_get_type``)
=================  ===========================================================================================
``gguf-q8_0``      every Linear Q8_0 (8.5 bits/weight)
``gguf-q6_k``      Q6_K (6.5625)
``gguf-q5_k_m``    Q5_K; attn_v and ffn_down Q6_K in the "use_more_bits" layers
``gguf-q4_k_m``    Q4_K; attn_v and ffn_down Q6_K in the "use_more_bits" layers
``gguf-q3_k_m``    Q3_K; attn_v Q5_K (first 2 layers) else Q4_K, attn_output Q4_K, ffn_down Q5_K / Q4_K
``gguf-q2_k``      Q2_K; attn_v Q3_K (Q4_K when n_head / n_head_kv >= 4), attn_output and ffn_down Q3_K
=================  ===========================================================================================

A tensor whose row (``in_features``) is not a multiple of the type's block falls back as llama.cpp does
(Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K / Q3_K -> Q4_0, then F16); Gemma 3 270M's 640-wide rows do.
Each weight is quantized to the real block format (:func:`quantize_tensor` gives the packed bytes) and dequantized
back (:func:`dequantize_tensor`), so the simulated model computes with exactly the weights llama.cpp would store.

With ``calibration`` (``gguf-q4_k_m@flores:ja:128``) an importance matrix is computed from that text as
``llama-imatrix`` does (the mean of the squared input activations of each column of each Linear, on the float
model) and the ``*_impl`` quantizers weight each weight's error by it. Option ``pure: true`` gives every tensor the
mix's base type (``llama-quantize --pure``); ``max_tokens`` and ``seed`` choose the calibration text as for GPTQ.
Embeddings and the LM head stay in float, as for every method here (llama.cpp would store Gemma's tied
``token_embd`` as Q8_0 in Q4_K_M: see :func:`gguf_tensor_type`).

Example:
    >>> import torch
    >>> from mlquant.quantize.kquant import fake_quantize_gguf, gguf_tensor_type
    >>> w = torch.randn(4, 256)
    >>> err = [float((fake_quantize_gguf(w, t) - w).norm() / w.norm()) for t in ("Q8_0", "Q4_K", "Q2_K")]
    >>> err[0] < err[1] < err[2]
    True
    >>> gguf_tensor_type("blk.0.ffn_down.weight", 2048, "q4_k_m", n_layers=18)
    TensorType(type='Q6_K', intended='Q6_K')
    >>> gguf_tensor_type("blk.0.attn_q.weight", 640, "q4_k_m", n_layers=18)
    TensorType(type='Q5_0', intended='Q4_K')
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import check_options, check_range, decoder_layers, option, quantizable_linears
from mlquant.quantize.calibration import check_calibration
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mlquant.models import HFModel

__all__ = [
    "BITS_PER_WEIGHT",
    "GGUF_DEFAULTS",
    "MIXES",
    "GGUFQuantizer",
    "GGUFTensor",
    "TensorType",
    "collect_imatrix",
    "dequantize_tensor",
    "fake_quantize_gguf",
    "gguf_name",
    "gguf_tensor_type",
    "quantize_tensor",
    "read_gguf_tensors",
]

log = logging.getLogger(__name__)

#: GGUF type -> (weights per block, bytes per block); F16 stores each weight in 2 bytes.
_SIZES: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "F16": (1, 2),
}
#: Storage bits per weight of each type (block bytes * 8 / block size, scales included).
BITS_PER_WEIGHT: dict[str, float] = {t: 8 * size / block for t, (block, size) in _SIZES.items()}
#: llama.cpp file types (``llama-quantize`` names, lower case) -> their base tensor type.
MIXES: dict[str, str] = {
    "q8_0": "Q8_0", "q6_k": "Q6_K", "q5_k_m": "Q5_K", "q4_k_m": "Q4_K", "q3_k_m": "Q3_K", "q2_k": "Q2_K",
}
_NOMINAL_BITS = {"q8_0": 8, "q6_k": 6, "q5_k_m": 5, "q4_k_m": 4, "q3_k_m": 3, "q2_k": 2}
#: A row that is not a multiple of the type's block falls back (llama-quant.cpp, tensor_type_fallback).
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
#: HF module name (last part) -> GGUF tensor name inside ``blk.N.``.
HF_TO_GGUF = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output", "qkv_proj": "attn_qkv",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down", "gate_up_proj": "ffn_up",
}
GGUF_DEFAULTS: dict[str, Any] = {"pure": False, "max_tokens": 128, "seed": 0}
#: Most weights quantized in one batch: bounds the memory of the scale searches, and keeps a batch's temporaries in
#: cache (on Gemma 3 270M's weights, 2^18 = 1 MiB of float32 took half the time of 2^20 for Q8_0, and no longer for
#: the k-quants).
_CHUNK = 1 << 18


class TensorType(NamedTuple):
    """The type llama.cpp stores a tensor in (``type``) and the one its rules asked for before any fallback."""

    type: str
    intended: str


# ----- per-tensor type choice (llama-quant.cpp) ------------------------------------------------------------------
def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _mixed_type(cat: str, layer: int, mix: str, n_layers: int, n_gqa: int) -> str | None:
    """The mix's choice for a block tensor (None: the base type)."""
    if cat == "attn_v":
        if mix == "q2_k":
            return "Q4_K" if n_gqa >= 4 else "Q3_K"
        if mix == "q3_k_m":
            return "Q5_K" if layer < 2 else "Q4_K"
        if mix in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, n_layers):
            return "Q6_K"
    elif cat == "ffn_down":
        if mix == "q2_k":
            return "Q3_K"
        if mix == "q3_k_m":
            return "Q5_K" if layer < n_layers // 16 else "Q4_K"
        if mix in ("q4_k_m", "q5_k_m") and _use_more_bits(layer, n_layers):
            return "Q6_K"
    elif cat == "attn_output":
        return {"q2_k": "Q3_K", "q3_k_m": "Q4_K"}.get(mix)
    return None


def gguf_tensor_type(
    name: str, n_cols: int, mix: str, n_layers: int, *, n_gqa: int = 1, tied_embeddings: bool = False
) -> TensorType:
    """The type ``llama-quantize`` gives tensor ``name`` (GGUF name, ``blk.3.attn_v.weight``) in file type ``mix``.

    A port of ``llama_tensor_get_type`` (llama.cpp, src/llama-quant.cpp) for dense models and the file types of
    :data:`MIXES`: the per-category rules (``use_more_bits`` layers for attn_v / ffn_down, output and tied token
    embeddings Q6_K, or Q8_0 when their rows do not fit 256-blocks) and then the shape fallback. Not modelled: MoE
    (n_expert) and 70B-specific rules, Falcon, user overrides.

    Args:
        name: the GGUF tensor name; the layer index is read from ``blk.<i>.`` (for a dense model llama.cpp's
            per-category counters equal it).
        n_cols: the row length (``ne[0]``, the Linear's ``in_features``).
        mix: a key of :data:`MIXES` (``q4_k_m``).
        n_layers: number of decoder blocks.
        n_gqa: attention heads per KV head (Q2_K gives attn_v Q4_K when >= 4).
        tied_embeddings: the model has no ``output.weight`` (token_embd gets the output's type).

    Raises:
        ConfigError: unknown mix.
    """
    if mix not in MIXES:
        raise ConfigError(f"gguf: unknown file type {mix!r}; expected one of {sorted(MIXES)}.")
    base = MIXES[mix]
    cat = _category(name)
    m = re.match(r"blk\.(\d+)\.", name)
    layer = int(m.group(1)) if m else -1
    new = base
    if cat == "output" or (tied_embeddings and cat == "token_embd"):
        if n_cols % _SIZES[base][0]:
            new = "Q8_0"
        elif new != "Q8_0":
            new = "Q6_K"
    elif m is not None:
        new = _mixed_type(cat, layer, mix, n_layers, n_gqa) or base
    return TensorType(_fit(new, n_cols), new)


def _fit(qtype: str, n_cols: int) -> str:
    if n_cols % _SIZES[qtype][0] == 0:
        return qtype
    fallback = _FALLBACK.get(qtype)
    if fallback is None or n_cols % _SIZES[fallback][0]:
        return "F16"
    return fallback


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of an HF module: ``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q.weight``.

    Example:
        >>> gguf_name("model.layers.3.mlp.down_proj"), gguf_name("lm_head"), gguf_name("model.layers.0.foo")
        ('blk.3.ffn_down.weight', 'output.weight', None)
    """
    parts = hf_name.split(".")
    if parts[-1] == "lm_head":
        return "output.weight"
    if parts[-1] == "embed_tokens":
        return "token_embd.weight"
    idx = next((int(p) for p in parts if p.isdigit()), None)
    short = HF_TO_GGUF.get(parts[-1])
    if idx is None or short is None:
        return None
    return f"blk.{idx}.{short}.weight"


# ----- tensors <-> bytes -------------------------------------------------------------------------------------------
def _check(w: torch.Tensor, qtype: str, imatrix: torch.Tensor | None) -> None:
    if qtype not in _SIZES:
        raise ConfigError(f"gguf: unknown type {qtype!r}; expected one of {sorted(_SIZES)}.")
    if w.ndim != 2 or w.shape[1] % _SIZES[qtype][0]:
        raise ConfigError(f"gguf: {qtype} needs a 2-D weight with rows a multiple of {_SIZES[qtype][0]}, "
                          f"got shape {tuple(w.shape)}.")
    if imatrix is not None and tuple(imatrix.shape) != (w.shape[1],):
        raise ConfigError(f"gguf: the importance matrix has shape {tuple(imatrix.shape)}; expected ({w.shape[1]},).")


def _quantize_rows(w: torch.Tensor, qtype: str, imatrix: torch.Tensor | None, fake: bool = False) -> torch.Tensor:
    """The packed bytes of ``w`` [rows, bytes per row], or with ``fake`` its dequantized weights [rows, cols], made a
    chunk of rows at a time (the chunk's temporaries stay in cache; the output is written in place)."""
    import torch

    from mlquant.quantize._kquant_blocks import fake_quantize_blocks, quantize_blocks
    from mlquant.quantize._kquant_search import c_float, seq_sum

    rows, cols = w.shape
    block, size = _SIZES[qtype]
    per_row = cols // block
    w = w.detach().float().cpu()
    step = max(1, _CHUNK // cols)
    out = torch.empty(rows, cols if fake else per_row * size, dtype=torch.float32 if fake else torch.uint8)
    use_w = imatrix is not None and qtype != "Q8_0"  # Q8_0 ignores the importance matrix, as in ggml
    qw_row = imatrix.detach().float().cpu().reshape(per_row, block) if use_w and imatrix is not None else None
    for start in range(0, rows, step):
        chunk = w[start : start + step]
        n = chunk.shape[0]
        blocks = chunk.reshape(n * per_row, block)
        qw = qw_row.repeat(n, 1) if qw_row is not None else None
        sigma2 = None
        if qw is not None and block == 32:  # the 32-weight _impl quantizers use the whole row's mean square
            sigma2 = (seq_sum(chunk * chunk) / c_float(cols)).repeat_interleave(per_row)
        blocks_out = (fake_quantize_blocks if fake else quantize_blocks)(blocks, qtype, qw, sigma2)
        out[start : start + n] = blocks_out.reshape(n, -1)
    return out


def quantize_tensor(w: torch.Tensor, qtype: str, imatrix: torch.Tensor | None = None) -> np.ndarray:
    """The GGUF bytes of weight ``w`` [rows, cols] in type ``qtype``: uint8 [rows, bytes per row], the layout
    ``gguf.quants.quantize`` returns. With ``imatrix`` [cols], llama.cpp's importance-weighted ``*_impl`` quantizers.

    Raises:
        ConfigError: unknown type, a row length that is not a multiple of the block, or an imatrix of wrong shape.

    Example:
        >>> import torch
        >>> quantize_tensor(torch.ones(2, 256), "Q4_K").shape
        (2, 144)
    """
    import torch

    _check(w, qtype, imatrix)
    if qtype == "F16":
        return w.detach().float().cpu().to(torch.float16).view(torch.uint8).numpy()
    return _quantize_rows(w, qtype, imatrix).numpy()


def dequantize_tensor(data: Any, qtype: str) -> torch.Tensor:
    """Float32 weights [rows, cols] of GGUF bytes ``data`` (numpy or torch uint8 [rows, bytes per row]).

    Equal, bit for bit, to ``gguf.quants.dequantize(data, qtype)``.

    Example:
        >>> import torch
        >>> w = torch.randn(3, 64)
        >>> float((dequantize_tensor(quantize_tensor(w, "Q8_0"), "Q8_0") - w).abs().max()) < 0.05
        True
    """
    import torch

    from mlquant.quantize._kquant_blocks import dequantize_blocks

    if qtype not in _SIZES:
        raise ConfigError(f"gguf: unknown type {qtype!r}; expected one of {sorted(_SIZES)}.")
    b = torch.as_tensor(data)
    if b.dtype != torch.uint8 or b.ndim != 2 or b.shape[1] % _SIZES[qtype][1]:
        raise ConfigError(f"gguf: {qtype} data must be uint8 [rows, k * {_SIZES[qtype][1]}], got {b.dtype} "
                          f"{tuple(b.shape)}.")
    rows = b.shape[0]
    if qtype == "F16":
        return b.contiguous().view(torch.float16).float()
    size = _SIZES[qtype][1]
    return dequantize_blocks(b.reshape(-1, size), qtype).reshape(rows, -1)


def fake_quantize_gguf(w: torch.Tensor, qtype: str, imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """``w`` quantized to GGUF type ``qtype`` and dequantized back (float32, ``w``'s shape)."""
    import torch

    _check(w, qtype, imatrix)
    if qtype == "F16":
        return w.detach().float().to(torch.float16).float()
    return _quantize_rows(w, qtype, imatrix, fake=True).to(w.device)


# ----- reading a GGUF file's tensors ------------------------------------------------------------------------------
#: ggml type ids (ggml.h) of the types read here.
_GGML_IDS = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K", 11: "Q3_K",
             12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class GGUFTensor(NamedTuple):
    """A tensor of a GGUF file: its type name, its shape (``ne``: row length first) and its bytes [rows, row bytes]."""

    type: str
    shape: tuple[int, ...]
    data: Any


def read_gguf_tensors(path: Any) -> dict[str, GGUFTensor]:
    """The tensors of a GGUF file, memory-mapped, read without parsing the metadata values (fast: ``GGUFReader``
    spends a minute on a 262k-token vocabulary). Types outside :data:`BITS_PER_WEIGHT` and F32 / BF16 are named
    ``type<id>`` with their data set to None.

    Raises:
        DataError: not a GGUF file.
    """
    import struct

    import numpy as np

    from mlquant.errors import DataError

    raw = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(raw.data)
    if bytes(buf[:4]) != b"GGUF":
        raise DataError(f"{path}: not a GGUF file (no GGUF magic).")
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, pos)
    pos += 16
    alignment = 32

    def string(p: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, p)
        return bytes(buf[p + 8 : p + 8 + n]).decode("utf-8", "replace"), p + 8 + n

    def skip(vtype: int, p: int) -> int:
        if vtype == 8:
            return string(p)[1]
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", buf, p)
            p += 12
            if etype in _SCALAR:
                return int(p + count * _SCALAR[etype])
            for _ in range(count):
                p = skip(etype, p)
            return p
        return p + _SCALAR[vtype]

    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if key == "general.alignment" and vtype == 4:
            (alignment,) = struct.unpack_from("<I", buf, pos)
        pos = skip(vtype, pos)
    infos = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        ttype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, tuple(int(d) for d in dims), int(ttype), int(offset)))
    start = (pos + alignment - 1) // alignment * alignment
    out: dict[str, GGUFTensor] = {}
    sizes = {**_SIZES, "F32": (1, 4), "BF16": (1, 2)}
    for name, dims, ttype, offset in infos:
        tname = _GGML_IDS.get(ttype, f"type{ttype}")
        if tname not in sizes:
            out[name] = GGUFTensor(tname, dims, None)
            continue
        block, size = sizes[tname]
        rows = 1
        for d in dims[1:]:
            rows *= d
        row_bytes = dims[0] // block * size
        data = raw[start + offset : start + offset + rows * row_bytes].reshape(rows, row_bytes)
        out[name] = GGUFTensor(tname, dims, data)
    return out


# ----- importance matrix -------------------------------------------------------------------------------------------
def collect_imatrix(torch_model: Any, seqs: list[list[int]], pad: int, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Mean of the squared inputs of each column of every quantizable Linear over the tokens of ``seqs``
    (``llama-imatrix``'s values / counts), run on the model as given. Keyed by module name; float32 [in_features]."""
    import torch

    from mlquant.quantize._common import make_batches

    linears = dict(quantizable_linears(torch_model))
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    counts = dict.fromkeys(linears, 0)
    state: dict[str, Any] = {}

    def hook(name: str) -> Any:
        def pre(mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0][state["mask"]].detach().double().cpu()
            sums[name] += (x * x).sum(dim=0)
            counts[name] += x.shape[0]

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    device = next(torch_model.parameters()).device
    try:
        with torch.no_grad():
            for ids, mask in make_batches(seqs, batch_size, pad):
                state["mask"] = mask.bool().to(device)
                torch_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in linears if counts[n] > 0}


# ----- the quantizer -----------------------------------------------------------------------------------------------
class GGUFQuantizer:
    """One llama.cpp file type; registered as ``gguf-q8_0``, ``gguf-q6_k``, ``gguf-q5_k_m``, ``gguf-q4_k_m``,
    ``gguf-q3_k_m``, ``gguf-q2_k``."""

    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True
    option_defaults: ClassVar[dict[str, Any]] = dict(GGUF_DEFAULTS)

    def __init__(self, mix: str) -> None:
        self.mix = mix
        self.name = f"gguf-{mix}"
        self.bits = _NOMINAL_BITS[mix]

    def validate(self, spec: QuantSpec) -> None:
        check_options(spec, self.option_defaults)
        check_range(spec, "max_tokens", 2, 1 << 20)
        check_range(spec, "seed", 0, 2**63 - 1)
        if spec.w_bits not in (None, self.bits):
            raise ConfigError(f"{self.name}: w_bits={spec.w_bits!r}; this file type is fixed (use another label).")
        if spec.a_bits is not None:
            raise ConfigError(f"{self.name}: a_bits={spec.a_bits!r}; GGUF weight types quantize weights only.")
        if spec.group_size is not None:
            raise ConfigError(f"{self.name}: group_size={spec.group_size!r}; GGUF block sizes are fixed (32 / 256).")
        if not spec.symmetric:
            raise ConfigError(f"{self.name}: symmetric=False is not an option; the block formats are fixed.")
        if spec.backend != "simulate":
            raise ConfigError(f"{self.name}: backend {spec.backend!r} is not available; only 'simulate'.")
        check_calibration(spec.calibration)

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        import torch

        imatrix: dict[str, torch.Tensor] = {}
        if spec.calibration:
            from mlquant.quantize._common import pad_id
            from mlquant.quantize.calibration import calibration_texts, encode_texts

            texts = calibration_texts(spec.calibration, int(option(spec, self.option_defaults, "seed")))
            seqs = encode_texts(model.tokenizer, texts, int(option(spec, self.option_defaults, "max_tokens")))
            if not seqs:
                raise ConfigError(f"{self.name}: the calibration texts encode to no tokens.")
            imatrix = collect_imatrix(torch_model, seqs, pad_id(model.tokenizer))
        cfg = torch_model.config
        n_layers = len(decoder_layers(torch_model))
        heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
        n_gqa = heads // int(getattr(cfg, "num_key_value_heads", None) or heads)
        pure = bool(option(spec, self.option_defaults, "pure"))
        records: dict[str, dict[str, Any]] = {}
        types: dict[str, str] = {}
        fallbacks: dict[str, str] = {}
        bits = weights = 0.0
        with torch.no_grad():
            for name, lin in quantizable_linears(torch_model):
                start = time.perf_counter()
                gname = gguf_name(name) or f"blk.-1.{name}"
                cols = lin.in_features
                choice = TensorType(_fit(MIXES[self.mix], cols), MIXES[self.mix]) if pure else gguf_tensor_type(
                    gname, cols, self.mix, n_layers, n_gqa=n_gqa)
                w = lin.weight.detach()
                wq = fake_quantize_gguf(w.float(), choice.type, imatrix.get(name))
                err = float((w.float() - wq).norm() / w.float().norm().clamp(min=1e-30))
                lin.weight.copy_(wq.to(w.dtype))
                types[name] = choice.type
                if choice.type != choice.intended:
                    fallbacks[name] = f"{choice.intended} -> {choice.type} ({cols} columns)"
                bpw = BITS_PER_WEIGHT[choice.type]
                bits += bpw * w.numel()
                weights += w.numel()
                records[name] = {"weight_rel_err": err, "seconds": time.perf_counter() - start, "bits_per_weight": bpw}
        attrs = {
            "gguf_file_type": self.mix.upper(),
            "gguf_types": types,
            "gguf_fallbacks": fallbacks,
            "bits_per_weight": bits / weights if weights else float("nan"),
            "imatrix": spec.calibration,
            "not_quantized": "embeddings and LM head (float)",
        }
        log.info("%s: %d Linears, %.3f bits/weight, %d fallbacks", self.name, len(types), attrs["bits_per_weight"],
                 len(fallbacks))
        return Transformed(torch_model, records, attrs)


for _mix in MIXES:
    _q = GGUFQuantizer(_mix)
    register_quantizer(_q, aliases={_q.name: {"method": _q.name, "w_bits": _q.bits}})
