"""Pieces shared by the quantizers (private): option checks, integer / FP8 grids, activation-quantization hooks,
quantization parameters kept on each Linear for export, and the decoder-block runner used by GPTQ and SmoothQuant.

Importing this module does not import torch; every function that needs torch imports it inside.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlquant.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from mlquant.spec import QuantSpec

#: Largest finite value of float8 e4m3fn.
FP8_E4M3_MAX = 448.0
#: Attribute set on a quantized Linear: its :class:`QParams` (used by export and reports).
QPARAMS_ATTR = "mlquant_qparams"
#: Attribute set on a Linear whose inputs are quantized on the fly: ``"int8"`` or ``"fp8"``.
ACT_ATTR = "mlquant_act"
#: Attribute set on a Linear whose float weight was rescaled by SmoothQuant: (input scale, output scale or None).
SMOOTH_ATTR = "mlquant_smooth"
#: Attribute set on a Linear whose weight is ``W Q`` and whose input is rotated online ``x -> x Q`` (rotate.py).
ROTATE_ATTR = "mlquant_rotate"


# ----- spec checks ------------------------------------------------------------------------------------------------
def check_options(spec: QuantSpec, defaults: Mapping[str, Any], choices: Mapping[str, Sequence[Any]] | None = None) -> None:
    """ConfigError for unknown options, options of the wrong type, or values outside ``choices``."""
    choices = dict(choices or {})
    for key, value in spec.options.items():
        if key not in defaults:
            raise ConfigError(
                f"{spec.method}: unknown option {key!r}; expected one of {sorted(defaults) or 'none'}."
            )
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(
                f"{spec.method}: option {key}={value!r} has the wrong type; expected {type(default).__name__}."
            )
        if key in choices and value not in choices[key]:
            raise ConfigError(f"{spec.method}: option {key}={value!r} is not one of {list(choices[key])}.")


def check_range(spec: QuantSpec, key: str, low: float, high: float) -> None:
    value = spec.options.get(key)
    if value is not None and not low <= value <= high:
        raise ConfigError(f"{spec.method}: option {key}={value!r} is outside [{low}, {high}].")


def option(spec: QuantSpec, defaults: Mapping[str, Any], key: str) -> Any:
    return spec.options.get(key, defaults[key])


# ----- model structure --------------------------------------------------------------------------------------------
def decoder_layers(torch_model: Any) -> list[Any]:
    """The decoder blocks of a causal LM (``model.layers``), in order.

    Raises:
        ConfigError: the model has no ``layers`` list under its base model.
    """
    body = getattr(torch_model, torch_model.base_model_prefix, torch_model)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(torch_model).__name__}: cannot find the decoder layers (expected <base>.layers).")
    return list(layers)


def block_linears(layer: Any) -> list[tuple[str, Any]]:
    """(relative name, module) of every ``nn.Linear`` in a decoder block, in registration order."""
    import torch

    return [(n, m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]


def layer_prefix(torch_model: Any, index: int) -> str:
    for name, module in torch_model.named_modules():
        if module is decoder_layers(torch_model)[index]:
            return str(name)
    return f"layers.{index}"


# ----- quantization parameters ------------------------------------------------------------------------------------
@dataclass
class QParams:
    """How a Linear's weight was quantized; ``W_hat[r, c] = (q[r, c] - zero[r, g_idx[c]]) * scale[r, g_idx[c]]``.

    Attributes:
        fmt: ``int`` or ``fp8``.
        bits: weight bits.
        group_size: columns per group (None: one group per output channel).
        symmetric: zero point fixed at 0.
        scale: [rows, groups] float32.
        zero: [rows, groups] (integer-valued float32; zeros when symmetric).
        g_idx: [cols] group of each input column (None: ``c // group_size``).
    """

    fmt: str
    bits: int
    group_size: int | None
    symmetric: bool
    scale: Any
    zero: Any
    g_idx: Any = None


def int_grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): ``[-(2^(b-1)-1), 2^(b-1)-1]`` when symmetric (as rtn.py), ``[0, 2^b-1]`` otherwise."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def params_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for ranges [lo, hi] (lo <= 0 <= hi), the same formulas as :func:`rtn.quant_params`."""
    import torch

    _, qmax = int_grid(bits, symmetric)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / qmax
        zero = torch.round(-lo / scale.clamp(min=1e-12))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


def fake_quant_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """``(clamp(round(w / scale) + zero, qmin, qmax) - zero) * scale`` (broadcasting)."""
    import torch

    qmin, qmax = int_grid(bits, symmetric)
    return (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero) * scale


def group_params(
    w: torch.Tensor, bits: int, symmetric: bool, *, mse: bool = False, norm: float = 2.4, grid: int = 100,
    maxshrink: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [rows, 1] for each row of ``w`` [rows, g]; ``mse=True`` shrinks the range to minimise
    ``sum |Q(w) - w|^norm`` over shrink factors ``1, 0.99, ..., 1 - maxshrink`` (llm-compressor's MSE observer)."""
    import torch

    w = w.float()
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    scale, zero = params_from_range(lo, hi, bits, symmetric)
    if not mse:
        return scale, zero
    best = (fake_quant_int(w, scale, zero, bits, symmetric) - w).abs_().pow_(norm).sum(dim=1, keepdim=True)
    for i in range(1, int(maxshrink * grid)):
        p = 1 - i / grid
        s, z = params_from_range(p * lo, p * hi, bits, symmetric)
        err = (fake_quant_int(w, s, z, bits, symmetric) - w).abs_().pow_(norm).sum(dim=1, keepdim=True)
        better = err < best
        best = torch.where(better, err, best)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def weight_params(
    w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool, *, mse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [rows, groups] for ``w`` [rows, cols] in groups of ``group_size`` columns (None: per row)."""
    rows, cols = w.shape
    g = group_size or cols
    if cols % g:
        raise ConfigError(f"group_size={group_size} does not divide the {cols} input features of a layer.")
    scale, zero = group_params(w.reshape(rows * (cols // g), g), bits, symmetric, mse=mse)
    return scale.reshape(rows, cols // g), zero.reshape(rows, cols // g)


def fake_quant_weight(w: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Dequantized weight for ``w`` under ``qp`` (integer grids only)."""
    import torch

    cols = w.shape[1]
    g_idx = qp.g_idx if qp.g_idx is not None else torch.arange(cols, device=w.device) // (qp.group_size or cols)
    return fake_quant_int(w.float(), qp.scale[:, g_idx], qp.zero[:, g_idx], qp.bits, qp.symmetric).to(w.dtype)


def fp8_fake_quant(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """E4M3 quantize-dequantize with one scale per slice along ``dim`` reduced (``scale = amax / 448``).

    ``x_hat = float8_e4m3fn(x / scale) * scale``, computed in float32 and cast back to ``x.dtype``.
    """
    import torch

    xf = x.float()
    scale = xf.abs().amax(dim=dim, keepdim=True) / FP8_E4M3_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (xf / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(x.dtype)


def int8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 quantize-dequantize with one scale per token (last dim): ``scale = amax / 127``."""
    import torch

    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(xf / scale), -127, 127) * scale).to(x.dtype)


class ActQuant:
    """Forward pre-hook quantizing a Linear's input per token on the fly (``int8`` or ``fp8``).

    Subclasses (the FP4 formats of fp4.py) override :meth:`quantize` and :attr:`kinds`; :func:`remove_act_quant`
    removes them all.
    """

    kinds: tuple[str, ...] = ("int8", "fp8")

    def __init__(self, kind: str) -> None:
        if kind not in self.kinds:
            raise ConfigError(f"activation quantization {kind!r} is not one of {list(self.kinds)}.")
        self.kind = kind

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return int8_per_token(x) if self.kind == "int8" else fp8_fake_quant(x, dim=-1)

    def __call__(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self.quantize(args[0]), *args[1:])


def install_act_quant(linear: Any, kind: str, hook: ActQuant | None = None) -> None:
    """Quantize ``linear``'s inputs per token from now on (idempotent); ``hook`` overrides ``ActQuant(kind)``.

    The hook runs after every hook already there (an input rotation, see rotate.py, comes first).
    """
    if getattr(linear, ACT_ATTR, None) == kind:
        return
    linear.register_forward_pre_hook(hook if hook is not None else ActQuant(kind))
    setattr(linear, ACT_ATTR, kind)


def remove_act_quant(linear: Any) -> None:
    """Undo :func:`install_act_quant`: drop the activation-quantizing hooks of ``linear`` (other hooks stay).

    torch has no public way to remove a hook by its function once the handle is gone (a deep copy of a model keeps
    the hooks, not the handles), hence the walk over ``_forward_pre_hooks``.

    Raises:
        ConfigError: ``linear`` has an online input rotation (``rotate: hadamard``): its weight is ``W Q`` and only
            computes the right thing with the rotation hook, so a checkpoint of its weights alone (every export
            format, and the vLLM engine, which serves such a checkpoint) would be silently wrong.
    """
    if getattr(linear, ROTATE_ATTR, None) is not None:
        raise ConfigError(
            f"{type(linear).__name__} has an online Hadamard rotation of its input (rotate={getattr(linear, ROTATE_ATTR)!r}): "
            "its weight is W·Q and is only right together with the rotation hook, which no checkpoint format or the "
            "vLLM engine carries. Evaluate it with the transformers engine, or quantize without rotate."
        )
    hooks = linear._forward_pre_hooks
    for key in [k for k, hook in hooks.items() if isinstance(hook, ActQuant)]:
        del hooks[key]
    if hasattr(linear, ACT_ATTR):
        delattr(linear, ACT_ATTR)


def rtn_linear(linear: Any, bits: int, group_size: int | None, symmetric: bool) -> dict[str, Any]:
    """Round ``linear``'s weight to an integer grid in place (groups of ``group_size`` input features, None: per
    output channel), keep its :class:`QParams`, and return its report record (weight error, seconds, bits).

    Raises:
        ConfigError: ``group_size`` does not divide the input features.
    """
    import time

    import torch

    start = time.perf_counter()
    w = linear.weight.detach().float().clone()
    scale, zero = weight_params(w, bits, group_size, symmetric)
    qp = QParams("int", bits, group_size, symmetric, scale, zero)
    wq = fake_quant_weight(w, qp)
    with torch.no_grad():
        linear.weight.copy_(wq.to(linear.weight.dtype))
    setattr(linear, QPARAMS_ATTR, qp)
    return {
        "weight_rel_err": float((w - wq).norm() / w.norm().clamp(min=1e-30)),
        "seconds": time.perf_counter() - start,
        "bits_per_weight": bits_per_weight("int", bits, group_size, linear.in_features, symmetric),
    }


def bits_per_weight(fmt: str, bits: int, group_size: int | None, in_features: int, symmetric: bool = True) -> float:
    """Storage bits per weight including scales: 16-bit scales (and ``bits``-bit zero points when asymmetric)
    per group; bitsandbytes formats as stored by bitsandbytes (see docs/quantizers.md)."""
    if fmt == "bnb-int8":
        return 8 + 32 / in_features  # int8 weights + one fp32 absmax (SCB) per output row
    if fmt == "bnb-4bit":
        return 4 + 32 / 64  # 4-bit codes + one fp32 absmax per block of 64
    if fmt == "bnb-4bit-dq":
        return 4 + 8 / 64 + 32 / (64 * 256)  # absmax as int8 per 64, fp32 per 256 blocks
    g = group_size or in_features
    return bits + (16 + (0 if symmetric else bits)) / g


# ----- decoder-block runner ---------------------------------------------------------------------------------------
class _Captured(Exception):
    pass


@dataclass
class Batch:
    """A right-padded calibration batch: ``hidden`` is the input of the current block, ``kwargs[i]`` block i's kwargs."""

    ids: Any
    mask: Any
    hidden: Any
    kwargs: list[dict[str, Any]]


def make_batches(seqs: Sequence[Sequence[int]], batch_size: int, pad: int) -> Iterator[tuple[Any, Any]]:
    import torch

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        rows = [seqs[i] for i in order[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[k, : len(r)] = 1
        yield ids, mask


def capture_block_inputs(torch_model: Any, seqs: Sequence[Sequence[int]], pad: int, batch_size: int = 16) -> list[Batch]:
    """Run the embeddings once per batch and record the input of block 0 and the keyword arguments of every block.

    Every block's ``forward`` is replaced by a recorder that returns its input unchanged, so no block is computed;
    the recorded kwargs (masks, rotary embeddings, ...) are those the model itself passes to each block.
    """
    import torch

    layers = decoder_layers(torch_model)
    body = getattr(torch_model, torch_model.base_model_prefix, torch_model)
    device = next(torch_model.parameters()).device
    batches: list[Batch] = []
    record: dict[int, tuple[Any, dict[str, Any]]] = {}

    def recorder(index: int) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden = args[0] if args else kwargs.pop("hidden_states")
            record[index] = (hidden, dict(kwargs))
            return hidden

        return forward

    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        with torch.no_grad():
            for ids, mask in make_batches(seqs, batch_size, pad):
                record.clear()
                body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                if len(record) != len(layers):
                    raise ConfigError("could not capture the inputs of every decoder block.")
                batches.append(Batch(ids, mask.bool().to(device), record[0][0], [record[i][1] for i in range(len(layers))]))
    finally:
        for layer in layers:
            if "forward" in layer.__dict__:
                del layer.forward
    return batches


def run_block(layer: Any, batch: Batch, index: int) -> Any:
    """The output hidden states of block ``index`` on ``batch.hidden``."""
    out = layer(batch.hidden, **batch.kwargs[index])
    return out[0] if isinstance(out, tuple) else out


def run_until_captured(layer: Any, batch: Batch, index: int) -> None:
    """Run the block, stopping early when a hook raises :class:`_Captured`."""
    try:
        run_block(layer, batch, index)
    except _Captured:
        pass


def stop_forward() -> None:
    raise _Captured()


def quantizable_linears(torch_model: Any) -> Iterator[tuple[str, Any]]:
    """(name, module) of every ``nn.Linear`` inside the decoder layers (not embeddings, not the LM head)."""
    import torch

    head = torch_model.get_output_embeddings()
    for name, module in torch_model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head and ".layers." in f".{name}":
            yield name, module


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's padding id (else its EOS, else its BOS, else 0)."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0
