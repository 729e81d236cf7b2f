"""Random Hadamard rotation of each Linear's input, QuaRot / SpinQuant style, as a step before quantization.

QuaRot (Ashkboos et al. 2024, arXiv 2404.00456) and SpinQuant (Liu et al. 2024, arXiv 2405.16406) multiply
activations and weights by an orthogonal matrix ``Q`` before quantizing: ``x W^T = (x Q)(W Q)^T``, and a random
Hadamard ``Q`` spreads an outlier channel evenly over all channels, so the per-group/per-token maxima that set the
quantization scales shrink relative to the typical values (lower kurtosis, lower max/RMS).

This module implements the form that works for every architecture: **one rotation per Linear, on its input**
(QuaRot's "online" rotation, applied to every decoder Linear). The weight is replaced by ``W Q`` (then quantized by
the method) and a forward pre-hook rotates the input online, ``x -> x Q``. Nothing is fused into the residual
stream, so sandwich norms (Gemma 2/3: a norm after each sub-block) do not matter. The hook is installed *before*
the method runs (prepended to the Linear's hooks), so GPTQ's Hessians, and W4A4/W4A8 activation quantizers, see
the rotated activations.

``Q = diag(d) H / sqrt(n)``: ``d`` random ±1 (seeded: option ``rotate_seed``), ``H`` a Hadamard matrix of order
``n`` = in_features:

* ``n`` a power of two: Sylvester's construction (Walsh-Hadamard);
* ``n = 2^k * m`` with a Hadamard matrix of order ``m' = m * 2^j`` given by Paley's construction (I: ``m' = p + 1``
  with ``p ≡ 3 (mod 4)`` prime; II: ``m' = 2(p + 1)`` with ``p ≡ 1 (mod 4)`` prime): ``H_{n/m'} ⊗ H_{m'}``
  (QuaRot uses such Kronecker products too; Gemma 3's 640 = 32 × 20 uses Paley I with p = 19);
* otherwise (odd sizes, or no Paley order fits): a block-diagonal of Sylvester blocks over the binary expansion of
  ``n`` (e.g. 7 = 4 + 2 + 1). Still orthogonal, but channels mix only within their block.

Real kernels use a fast Walsh-Hadamard transform (O(n log n)); here ``x Q`` is a dense float32 matmul (O(n²)),
the same values up to float rounding.

Example:
    >>> from mlquant.quantize.rotate import hadamard_matrix
    >>> H, how = hadamard_matrix(20)
    >>> how, bool(((H @ H.T) - 20 * __import__("torch").eye(20, dtype=H.dtype)).abs().max() < 1e-9)
    ('paley1(19)', True)
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlquant.errors import ConfigError
from mlquant.quantize._common import ROTATE_ATTR, check_options, check_range, quantizable_linears

if TYPE_CHECKING:
    import torch

    from mlquant.spec import QuantSpec

__all__ = [
    "ROTATE_CHOICES",
    "ROTATE_DEFAULTS",
    "ROTATION_COLUMNS",
    "Rotation",
    "activation_outliers",
    "check_rotate",
    "hadamard_matrix",
    "outlier_stats",
    "random_hadamard",
    "rotate_model",
    "rotated_weight_errors",
]

#: Options a method adds to its ``option_defaults`` to opt in to the rotation step of :func:`mlquant.quantize.quantize`.
ROTATE_DEFAULTS: dict[str, Any] = {"rotate": "none", "rotate_seed": 0}
ROTATE_CHOICES: dict[str, tuple[str, ...]] = {"rotate": ("none", "hadamard")}
#: Per-layer report columns added when a model is rotated (weights: all entries; inputs: on the report text).
ROTATION_COLUMNS = (
    "w_kurtosis", "w_kurtosis_rotated", "w_max_rms", "w_max_rms_rotated",
    "x_kurtosis", "x_kurtosis_rotated", "x_max_rms", "x_max_rms_rotated",
)


def check_rotate(
    spec: QuantSpec, defaults: Mapping[str, Any], choices: Mapping[str, Sequence[Any]] | None = None
) -> None:
    """ConfigError naming the key, value and choices for a bad ``rotate`` / ``rotate_seed``, for unknown options,
    and for values outside the method's own ``choices``."""
    check_options(spec, defaults, {**ROTATE_CHOICES, **dict(choices or {})})
    check_range(spec, "rotate_seed", 0, 2**63 - 1)


# ----- Hadamard matrices ------------------------------------------------------------------------------------------
def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def _sylvester(n: int) -> torch.Tensor:
    import torch

    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _jacobsthal(p: int) -> torch.Tensor:
    """``Q[i, j] = χ(j - i)`` with χ the quadratic character mod the prime ``p``."""
    import torch

    squares = {(k * k) % p for k in range(1, p)}
    chi = torch.tensor([0.0] + [1.0 if k in squares else -1.0 for k in range(1, p)], dtype=torch.float64)
    idx = (torch.arange(p)[None, :] - torch.arange(p)[:, None]) % p
    return chi[idx]


def _paley(order: int) -> tuple[torch.Tensor, str] | None:
    """A Hadamard matrix of ``order`` from Paley's constructions, or None when neither applies."""
    import torch

    p = order - 1
    if p % 4 == 3 and _is_prime(p):  # Paley I: H = I + S, S = [[0, 1^T], [-1, Q]] skew
        S = torch.zeros(order, order, dtype=torch.float64)
        S[0, 1:] = 1
        S[1:, 0] = -1
        S[1:, 1:] = _jacobsthal(p)
        return torch.eye(order, dtype=torch.float64) + S, f"paley1({p})"
    p = order // 2 - 1
    if order % 2 == 0 and p % 4 == 1 and _is_prime(p):  # Paley II: C symmetric conference matrix
        C = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        C[0, 1:] = 1
        C[1:, 0] = 1
        C[1:, 1:] = _jacobsthal(p)
        plus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)  # for the ±1 entries of C
        zero = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)  # for its zero diagonal
        H = torch.kron(C, plus) + torch.kron(torch.eye(p + 1, dtype=torch.float64), zero)
        return H, f"paley2({p})"
    return None


def hadamard_matrix(n: int) -> tuple[torch.Tensor, str]:
    """An ``n`` × ``n`` matrix ``H`` with ±1 entries and ``H H^T = n I`` when it is a Hadamard matrix (float64),
    else a block-diagonal of Sylvester blocks (``H H^T = diag(block sizes)``, see the module docstring); and how it
    was built (``sylvester(n)``, ``sylvester(32)⊗paley1(19)``, ``blockdiag(4,2,1)``).

    Raises:
        ConfigError: ``n`` < 1.
    """
    import torch

    if n < 1:
        raise ConfigError(f"rotate: cannot build a Hadamard matrix of order {n}.")
    if n & (n - 1) == 0:
        return _sylvester(n), f"sylvester({n})"
    k = (n & -n).bit_length() - 1  # n = 2^k * m, m odd
    m = n >> k
    for j in range(k + 1):
        found = _paley(m << j)
        if found is not None:
            base, how = found
            outer = n // base.shape[0]
            if outer == 1:
                return base, how
            return torch.kron(_sylvester(outer), base), f"sylvester({outer})⊗{how}"
    sizes = [1 << b for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1]
    H = torch.zeros(n, n, dtype=torch.float64)
    at = 0
    for size in sizes:
        H[at : at + size, at : at + size] = _sylvester(size)
        at += size
    return H, "blockdiag(" + ",".join(map(str, sizes)) + ")"


def random_hadamard(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """The orthogonal ``Q = diag(d) H D_norm`` (float64) with random signs ``d`` drawn from ``seed`` and ``n``, and
    its description. Rows of ``H`` are normalised to unit length, so ``Q Q^T = I`` (to float64 rounding).

    Example:
        >>> import torch
        >>> Q, _ = random_hadamard(12, seed=1)
        >>> bool((Q @ Q.T - torch.eye(12, dtype=Q.dtype)).abs().max() < 1e-12)
        True
    """
    import torch

    H, how = hadamard_matrix(n)
    H = H / H.norm(dim=1, keepdim=True)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + n)
    d = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    return d[:, None] * H, how


# ----- the online rotation ----------------------------------------------------------------------------------------
class Rotation:
    """Forward pre-hook ``x -> x Q`` (computed in float32, cast back to ``x.dtype``), shared by every Linear with the
    same input size. The last result is reused when the next Linear gets the very same input tensor (q/k/v,
    gate/up), which also keeps GPTQ's grouping of Linears by shared input."""

    def __init__(self, Q: torch.Tensor, how: str) -> None:
        self.Q = Q.float()
        self.how = how
        self._last: tuple[Any, Any] | None = None

    def __call__(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if self._last is not None and self._last[0]() is x:
            return (self._last[1], *args[1:])
        if self.Q.device != x.device:
            self.Q = self.Q.to(x.device)
        y = (x.float() @ self.Q).to(x.dtype)
        self._last = (weakref.ref(x), y)
        return (y, *args[1:])

    def __deepcopy__(self, memo: dict[int, Any]) -> Rotation:
        new = Rotation(self.Q.clone(), self.how)
        memo[id(self)] = new
        return new


def outlier_stats(x: torch.Tensor) -> tuple[float, float]:
    """(kurtosis ``E[(x-μ)^4] / σ^4`` (3 for a Gaussian), max|x| / RMS(x)) over all entries of ``x``.

    Example:
        >>> import torch
        >>> k, r = outlier_stats(torch.tensor([1.0, -1.0, 1.0, -1.0]))
        >>> round(k, 3), round(r, 3)
        (1.0, 1.0)
    """
    x = x.detach().double().flatten()
    c = x - x.mean()
    var = float(c.pow(2).mean())
    kurt = float(c.pow(4).mean()) / var**2 if var > 0 else math.nan
    rms = float(x.pow(2).mean().sqrt())
    return kurt, (float(x.abs().max()) / rms if rms > 0 else math.nan)


def rotate_model(torch_model: Any, seed: int = 0) -> tuple[dict[str, dict[str, float]], dict[int, str]]:
    """Rotate every decoder Linear of ``torch_model`` in place: ``W <- W Q``, input hook ``x -> x Q``.

    Returns:
        ({layer name: weight kurtosis and max/RMS before and after}, {in_features: how its ``H`` was built}).

    Raises:
        ConfigError: the model was rotated already.
    """
    import torch

    rotations: dict[int, Rotation] = {}
    stats: dict[str, dict[str, float]] = {}
    for name, lin in quantizable_linears(torch_model):
        if getattr(lin, ROTATE_ATTR, None) is not None:
            raise ConfigError(f"rotate: {name} is rotated already; rotate the unrotated model once.")
        n = lin.in_features
        if n not in rotations:
            Q, how = random_hadamard(n, seed)
            rotations[n] = Rotation(Q.to(lin.weight.device), how)
        rot = rotations[n]
        w = lin.weight.detach().float()
        w_rot = w @ rot.Q.to(w.device)
        k0, r0 = outlier_stats(w)
        k1, r1 = outlier_stats(w_rot)
        stats[name] = {"w_kurtosis": k0, "w_kurtosis_rotated": k1, "w_max_rms": r0, "w_max_rms_rotated": r1}
        with torch.no_grad():
            lin.weight.copy_(w_rot.to(lin.weight.dtype))
        lin.register_forward_pre_hook(rot, prepend=True)
        setattr(lin, ROTATE_ATTR, "hadamard")
    return stats, {n: r.how for n, r in sorted(rotations.items())}


def _rotation_of(linear: Any) -> Rotation | None:
    for hook in linear._forward_pre_hooks.values():
        if isinstance(hook, Rotation):
            return hook
    return None


def activation_outliers(torch_model: Any, seqs: list[list[int]], pad: int) -> dict[str, dict[str, float]]:
    """Kurtosis and max/RMS of each rotated Linear's input on ``seqs`` (padding excluded), before and after ``Q``.

    The model runs once with its rotation hooks (and any activation quantizers) in place; the statistics are those
    of the input each Linear receives (``x``) and of ``x Q``.
    """
    import torch

    from mlquant.quantize._common import make_batches

    kept: dict[str, list[Any]] = {}
    state: dict[str, Any] = {}
    handles = []

    def keep(name: str) -> Any:
        def hook(mod: Any, args: tuple[Any, ...]) -> None:
            kept.setdefault(name, []).append(args[0].detach()[state["mask"]].float())

        return hook

    for name, lin in quantizable_linears(torch_model):
        rot = _rotation_of(lin)
        if rot is not None:
            handles.append(lin.register_forward_pre_hook(keep(name), prepend=True))
    body = getattr(torch_model, torch_model.base_model_prefix, torch_model)
    device = next(torch_model.parameters()).device
    try:
        with torch.no_grad():
            for ids, mask in make_batches(seqs, 4, pad):
                state["mask"] = mask.bool().to(device)
                body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, dict[str, float]] = {}
    modules = dict(quantizable_linears(torch_model))
    for name, chunks in kept.items():
        x = torch.cat(chunks)
        rot = _rotation_of(modules[name])
        Q = rot.Q.to(x.device) if rot is not None else torch.eye(x.shape[1], device=x.device)
        k0, r0 = outlier_stats(x)
        k1, r1 = outlier_stats(x @ Q)
        out[name] = {"x_kurtosis": k0, "x_kurtosis_rotated": k1, "x_max_rms": r0, "x_max_rms_rotated": r1}
    return out


def rotated_weight_errors(original: Any, quantized: Any) -> dict[str, float]:
    """``||W_q - W Q|| / ||W Q||`` for every rotated Linear of ``quantized`` (``W`` from ``original``): the weight
    error in the basis the method quantized (the report's default compares with the unrotated ``W``)."""
    orig = dict(quantizable_linears(original))
    out: dict[str, float] = {}
    for name, lin in quantizable_linears(quantized):
        rot = _rotation_of(lin)
        if rot is None or name not in orig:
            continue
        ref = orig[name].weight.detach().float() @ rot.Q.to(lin.weight.device)
        out[name] = float((lin.weight.detach().float() - ref).norm() / ref.norm().clamp(min=1e-30))
    return out
