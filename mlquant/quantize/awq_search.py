"""AWQ's two searches as pure functions on tensors (used by :mod:`mlquant.quantize.awq`): the per-channel scales
for one exponent ``alpha`` and the per-group clipping ratio.

Example:
    >>> import torch
    >>> from mlquant.quantize.awq_search import awq_scales
    >>> awq_scales(torch.tensor([1.0, 4.0]), None, 1.0).tolist()
    [0.5, 2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mlquant.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["awq_scales", "clip_search", "group_view"]


def awq_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Per-channel AWQ scales for exponent ``alpha``: ``x^α`` (or ``x^α / (w^(1-α) + 1e-4)`` when ``w_mean`` is
    given), clamped at 1e-4 and divided by ``sqrt(max · min)``; non-finite values become 1.

    Example:
        >>> import torch
        >>> awq_scales(torch.tensor([1.0, 4.0]), None, 0.5).tolist()
        [0.7071067690849304, 1.4142135381698608]
        >>> awq_scales(torch.tensor([1.0, 4.0]), None, 0.0).tolist()
        [1.0, 1.0]
    """
    import torch

    x = x_mean.float()
    if w_mean is None:
        s = x.pow(alpha).clamp(min=1e-4)
    else:
        s = (x.pow(alpha) / (w_mean.float().pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return torch.where(torch.isfinite(s), s, torch.ones_like(s))


def group_view(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``w`` [rows, cols] as [rows, groups, group_size] (ConfigError when the group size does not divide)."""
    rows, cols = w.shape
    g = group_size or cols
    if cols % g:
        raise ConfigError(f"awq: group_size={group_size} does not divide the {cols} input features of a layer.")
    return w.reshape(rows, cols // g, g)


def clip_search(
    w: torch.Tensor, x: torch.Tensor, quant: Callable[[torch.Tensor], torch.Tensor], group_size: int | None,
    ratios: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ's clipping search: for each row and group of ``w`` [rows, cols], the ratio of ``max|w|`` (one of
    ``ratios``, which should start with 1) minimising ``mean_t (x_g (quant(clamp(w)) - w)_g^T)^2`` over the tokens
    ``x`` [tokens, cols].

    Returns:
        (the clamped weight, the chosen ratio per [row, group]).

    Example:
        >>> import torch
        >>> from mlquant.quantize.rtn import fake_quantize
        >>> w, x = torch.randn(4, 8), torch.randn(32, 8)
        >>> wc, r = clip_search(w, x, lambda t: fake_quantize(t, 3, 4, False), 4, [1.0, 0.9, 0.8])
        >>> r.shape, bool((r <= 1).all())
        (torch.Size([4, 2]), True)
    """
    import torch

    w = w.float()
    wg = group_view(w, group_size)  # rows, G, g
    rows, n_groups, g = wg.shape
    xg = x.float().reshape(-1, n_groups, g).permute(1, 0, 2)  # G, T, g
    max_val = wg.abs().amax(dim=2, keepdim=True)
    best_err = torch.full((rows, n_groups), float("inf"), device=w.device)
    best_ratio = torch.ones(rows, n_groups, device=w.device)
    for ratio in ratios:
        bound = max_val * ratio
        cur = torch.maximum(torch.minimum(wg, bound), -bound).reshape(rows, -1)
        diff = group_view(quant(cur).float() - w, group_size).permute(1, 2, 0)  # G, g, rows
        err = torch.bmm(xg, diff).pow_(2).mean(dim=1).T  # rows, G
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    bound = max_val * best_ratio[:, :, None]
    return torch.maximum(torch.minimum(wg, bound), -bound).reshape(rows, -1).to(w.dtype), best_ratio
