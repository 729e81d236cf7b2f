"""GPTQ weight quantization (Frantar et al., ICLR 2023, arXiv 2210.17323), simulated in pure torch on any device.

For each decoder block in turn, forward pre-hooks collect the inputs ``X`` of its Linear layers on calibration
text, ``H = 2 X^T X / n`` is damped (``damp`` × mean diagonal, default 1 %), and the columns of ``W`` are quantized
one at a time (blocks of 128) with the error of each column spread over the columns not yet quantized through the
upper Cholesky factor of ``H^-1``. Options:

* ``act_order`` (default True): columns processed in order of decreasing ``diag(H)``;
* ``static_groups`` (default True): group scales computed from the original weights before GPTQ, in the original
  column order (what llm-compressor does; the checkpoint needs no ``g_idx`` permutation). False: scales computed when
  GPTQ reaches each group, from the updated weights (AutoGPTQ's default; with act-order, groups follow the
  processing order and ``g_idx`` is stored);
* ``mse`` (default False): MSE-optimal clipping of each group's range (shrink factors 1 → 0.8, error norm 2.4),
  as the MSE observer of the Neural Magic / llm-compressor recipe;
* ``true_sequential`` (default True): within a block, q/k/v first, then o_proj on the outputs of the quantized
  q/k/v, then gate/up, then down (groups found automatically: Linears that receive the same input tensor form one
  group, solved together since they share ``H``);
* ``max_tokens`` (default 128): calibration texts are cut to this many tokens; ``seed`` (default 0) picks them;
* ``rotate`` (default ``none``; ``hadamard``: GPTQ quantizes ``W Q``, its Hessians are those of the rotated inputs
  ``x Q``; see :mod:`mlquant.quantize.rotate`), ``rotate_seed`` (default 0).

Each block's outputs, computed with its quantized weights, are the next block's inputs, so peak memory beyond the
model is the hidden states of the calibration set plus one block's Hessians. Weights are quantized then
dequantized (the grid of rtn.py: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]`` or asymmetric ``[0, 2^b - 1]``); each
quantized Linear keeps its scales in ``module.mlquant_qparams`` for export.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> q = mq.quantize(mq.load_model("gemma3-270m"), "gptq-w4g128", calibration="flores:ja:128")  # doctest: +SKIP
    >>> q.spec.label, q.quant_report["output_rel_err"].mean()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import (
    QPARAMS_ATTR,
    Batch,
    QParams,
    bits_per_weight,
    block_linears,
    capture_block_inputs,
    check_options,
    check_range,
    decoder_layers,
    fake_quant_int,
    group_params,
    option,
    pad_id,
    run_block,
    run_until_captured,
    stop_forward,
    weight_params,
)
from mlquant.quantize.calibration import check_calibration
from mlquant.quantize.rotate import ROTATE_DEFAULTS, check_rotate
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = ["GPTQ_DEFAULTS", "GPTQQuantizer", "gptq_solve", "run_gptq"]

log = logging.getLogger(__name__)

GPTQ_DEFAULTS: dict[str, Any] = {
    "damp": 0.01,
    "act_order": True,
    "static_groups": True,
    "mse": False,
    "true_sequential": True,
    "block_size": 128,
    "max_tokens": 128,
    "seed": 0,
}
#: Calibration sequences per forward pass (does not change the result beyond float rounding).
CALIBRATION_BATCH = 16


def gptq_solve(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    damp: float = 0.01,
    act_order: bool = True,
    static_groups: bool = True,
    mse: bool = False,
    block_size: int = 128,
) -> tuple[torch.Tensor, QParams]:
    """Quantize ``W`` [rows, cols] with GPTQ given the Hessian ``H`` [cols, cols] (= 2 X^T X / n).

    Returns:
        (dequantized weight in ``W.dtype``, its :class:`QParams`).

    Raises:
        ConfigError: ``group_size`` does not divide ``cols``.

    Example:
        >>> import torch
        >>> W = torch.randn(8, 16); X = torch.randn(64, 16)
        >>> Q, qp = gptq_solve(W, 2 * X.T @ X / 64, bits=4, group_size=8, symmetric=True)
        >>> Q.shape, qp.scale.shape
        (torch.Size([8, 16]), torch.Size([8, 2]))
    """
    import torch

    rows, cols = W.shape
    g = group_size or cols
    if cols % g:
        raise ConfigError(f"gptq: group_size={group_size} does not divide the {cols} input features of a layer.")
    dtype = W.dtype
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    n_groups = cols // g
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        perm = torch.arange(cols, device=W.device)
    invperm = torch.argsort(perm)
    dynamic = not static_groups and group_size is not None
    if not dynamic:
        scale, zero = weight_params(W, bits, group_size, symmetric, mse=mse)
        g_idx = torch.arange(cols, device=W.device) // g
    else:
        # Scales found as GPTQ reaches each group, from the updated weights (groups follow the processing order).
        scale = torch.ones(rows, n_groups, device=W.device)
        zero = torch.zeros(rows, n_groups, device=W.device)
        g_idx = torch.empty(cols, dtype=torch.long, device=W.device)
        g_idx[perm] = torch.arange(cols, device=W.device) // g
    W = W[:, perm]
    H = H[perm][:, perm]
    col_group = g_idx[perm]  # group of each processed column
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError:
        log.warning("gptq: Hessian not positive definite even after damping; falling back to round-to-nearest.")
        Hinv = torch.eye(cols, device=W.device)
    Q = torch.zeros_like(W)
    S = scale[:, col_group] if not dynamic else torch.ones_like(W)
    Z = zero[:, col_group] if not dynamic else torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if dynamic and c % g == 0:
                window = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                s, z = group_params(window, bits, symmetric, mse=mse)
                grp = int(col_group[c])
                scale[:, grp] = s[:, 0]
                zero[:, grp] = z[:, 0]
                S[:, c : c + g] = s
                Z[:, c : c + g] = z
            w = W1[:, i]
            q = fake_quant_int(w, S[:, c], Z[:, c], bits, symmetric)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:].sub_(torch.outer(err, Hinv1[i, i:]))
            Err1[:, i] = err
        Q[:, i1:i2] = Q1
        if i2 < cols:
            W[:, i2:].sub_(Err1 @ Hinv[i1:i2, i2:])
    Q = Q[:, invperm]
    qp = QParams(
        fmt="int",
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        scale=scale,
        zero=zero,
        g_idx=g_idx if dynamic and act_order else None,
    )
    return Q.to(dtype), qp


def _sequential_groups(layer: Any, batch: Batch, index: int) -> list[list[tuple[str, Any]]]:
    """Linears of a block grouped by shared input, in call order (one probe pass over one batch)."""
    import torch

    linears = block_linears(layer)
    calls: list[tuple[str, Any, int]] = []
    handles = []

    def probe(name: str, module: Any) -> Callable[..., None]:
        def hook(mod: Any, args: tuple[Any, ...]) -> None:
            calls.append((name, module, id(args[0])))

        return hook

    try:
        for name, module in linears:
            handles.append(module.register_forward_pre_hook(probe(name, module)))
        with torch.no_grad():
            run_block(layer, batch, index)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[tuple[str, Any]]] = []
    keys: list[int] = []
    seen: set[str] = set()
    for name, module, key in calls:
        if name in seen:
            continue
        seen.add(name)
        if keys and keys[-1] == key:
            groups[-1].append((name, module))
        else:
            groups.append([(name, module)])
            keys.append(key)
    for name, module in linears:  # never called on calibration text: RTN-like with identity Hessian
        if name not in seen:
            groups.append([(name, module)])
    return groups


def run_gptq(
    torch_model: Any,
    seqs: Sequence[Sequence[int]],
    pad: int,
    spec: QuantSpec,
    *,
    after_linear: Callable[[Any], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Quantize every decoder-block Linear of ``torch_model`` in place with GPTQ; return per-layer records.

    Args:
        torch_model: the model to modify (a copy).
        seqs: calibration token ids.
        pad: pad token id.
        spec: the GPTQ-type spec (bits, group size, symmetry, options as in :data:`GPTQ_DEFAULTS`).
        after_linear: called on each Linear after its weights are quantized (e.g. to install activation hooks).

    Returns:
        {full module name: {"weight_rel_err", "seconds", "bits_per_weight", "n_tokens"}}.
    """
    import torch

    opts = {k: spec.options.get(k, v) for k, v in GPTQ_DEFAULTS.items()}
    layers = decoder_layers(torch_model)
    names = {id(m): n for n, m in torch_model.named_modules()}
    records: dict[str, dict[str, Any]] = {}
    batches = capture_block_inputs(torch_model, seqs, pad, CALIBRATION_BATCH)
    if not batches:
        raise ConfigError("gptq: the calibration texts encode to no tokens.")
    n_tokens = int(sum(int(b.mask.sum()) for b in batches))
    log.info("gptq: %d calibration sequences, %d tokens, %d blocks", len(seqs), n_tokens, len(layers))
    for index, layer in enumerate(layers):
        block_start = time.perf_counter()
        groups = _sequential_groups(layer, batches[0], index)
        # true_sequential: each group sees the outputs of the groups quantized before it; else one pass for all.
        plan = [[grp] for grp in groups] if opts["true_sequential"] else [groups]
        for solve_groups in plan:
            # One Hessian per distinct input: the first Linear of each shared-input group accumulates it.
            firsts = [grp[0][1] for grp in solve_groups]
            H = {id(m): torch.zeros(m.in_features, m.in_features, device=m.weight.device) for m in firsts}
            seen: set[int] = set()
            fired: set[int] = set()
            current: dict[str, Any] = {}

            def make_hook(
                module: Any, H: dict[int, Any], seen: set[int], fired: set[int], n_first: int, current: dict[str, Any]
            ) -> Callable[..., None]:
                def hook(mod: Any, args: tuple[Any, ...]) -> None:
                    x = args[0][current["mask"]].float()
                    H[id(module)].addmm_(x.T, x)
                    seen.add(id(module))
                    fired.add(id(module))
                    if len(seen) == n_first:
                        stop_forward()

                return hook

            handles = [
                m.register_forward_pre_hook(make_hook(m, H, seen, fired, len(firsts), current)) for m in firsts
            ]
            try:
                with torch.no_grad():
                    for batch in batches:
                        seen.clear()
                        current["mask"] = batch.mask
                        run_until_captured(layer, batch, index)
            finally:
                for h in handles:
                    h.remove()
            for grp in solve_groups:
                first = grp[0][1]
                if id(first) in fired:
                    Hg = H[id(first)] * (2.0 / max(n_tokens, 1))
                else:  # never called on the calibration text: identity Hessian (= round-to-nearest)
                    Hg = torch.eye(first.in_features, device=first.weight.device)
                start = time.perf_counter()
                W = torch.cat([m.weight.detach() for _, m in grp], dim=0)
                Q, qp = gptq_solve(
                    W,
                    Hg,
                    bits=int(spec.w_bits or 8),
                    group_size=spec.group_size,
                    symmetric=spec.symmetric,
                    damp=float(opts["damp"]),
                    act_order=bool(opts["act_order"]),
                    static_groups=bool(opts["static_groups"]),
                    mse=bool(opts["mse"]),
                    block_size=int(opts["block_size"]),
                )
                elapsed = time.perf_counter() - start
                row = 0
                for _, m in grp:
                    rows = m.out_features
                    w_old = m.weight.detach().float()
                    q = Q[row : row + rows]
                    err = float((w_old - q.float()).norm() / w_old.norm().clamp(min=1e-30))
                    with torch.no_grad():
                        m.weight.copy_(q)
                    setattr(
                        m,
                        QPARAMS_ATTR,
                        QParams(qp.fmt, qp.bits, qp.group_size, qp.symmetric, qp.scale[row : row + rows].clone(),
                                qp.zero[row : row + rows].clone(), qp.g_idx),
                    )
                    records[names[id(m)]] = {
                        "weight_rel_err": err,
                        "seconds": elapsed * rows / W.shape[0],
                        "bits_per_weight": bits_per_weight("int", qp.bits, qp.group_size, m.in_features, qp.symmetric),
                        "n_tokens": n_tokens,
                    }
                    if after_linear is not None:
                        after_linear(m)
                    row += rows
        # The quantized block's outputs feed the next block.
        with torch.no_grad():
            for batch in batches:
                batch.hidden = run_block(layer, batch, index)
        log.info("gptq: block %d/%d quantized in %.1f s", index + 1, len(layers), time.perf_counter() - block_start)
    return records


class GPTQQuantizer:
    """GPTQ (``gptq-w4g128``, ``gptq-w8``, ``gptq-w3g128-asym``, ``gptq-w4g128@flores:ja:128``)."""

    name: ClassVar[str] = "gptq"
    option_defaults: ClassVar[dict[str, Any]] = {**GPTQ_DEFAULTS, **ROTATE_DEFAULTS}
    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = True

    def validate(self, spec: QuantSpec) -> None:
        validate_gptq_like(spec, self.option_defaults, bits=(2, 8))
        check_rotate(spec, self.option_defaults)
        if spec.a_bits is not None:
            raise ConfigError(f"gptq: a_bits={spec.a_bits!r}; GPTQ quantizes weights only (see w8a8-int-gptq).")

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        from mlquant.quantize.calibration import calibration_texts, encode_texts

        seed = int(option(spec, self.option_defaults, "seed"))
        texts = calibration_texts(spec.calibration, seed)
        seqs = encode_texts(model.tokenizer, texts, int(option(spec, self.option_defaults, "max_tokens")))
        return Transformed(torch_model, run_gptq(torch_model, seqs, pad_id(model.tokenizer), spec))


def validate_gptq_like(spec: QuantSpec, defaults: dict[str, Any], *, bits: tuple[int, int]) -> None:
    """Checks shared by GPTQ and W8A8-INT-GPTQ: bits, group size, options, backend, calibration."""
    from mlquant.quantize.rtn import check_bits, check_group_size

    check_bits(spec, *bits)
    check_group_size(spec)
    check_options(spec, defaults)
    check_range(spec, "damp", 1e-6, 1.0)
    check_range(spec, "block_size", 1, 1 << 20)
    check_range(spec, "max_tokens", 2, 1 << 20)
    check_range(spec, "seed", 0, 2**63 - 1)
    if spec.backend != "simulate":
        raise ConfigError(
            f"{spec.method}: backend {spec.backend!r} is not available; GPTQ runs simulated. To deploy a packed "
            "GPTQ checkpoint, quantize with backend 'simulate' and save it with format='gptq' (needs GPTQModel)."
        )
    check_calibration(spec.calibration)


register_quantizer(GPTQQuantizer())
