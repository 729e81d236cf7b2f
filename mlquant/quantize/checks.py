"""Checks of a quant spec against a model's configuration, before any weight is loaded.

:func:`check_spec_against_config` needs only the ``transformers`` config (``AutoConfig.from_pretrained`` reads
``config.json`` alone), so a study can reject ``gptq-w4g96`` on a model with 640 hidden features before loading.

Example:
    >>> from types import SimpleNamespace
    >>> from mlquant.spec import QuantSpec
    >>> cfg = SimpleNamespace(hidden_size=640, intermediate_size=2048, num_attention_heads=4, head_dim=256)
    >>> check_spec_against_config(QuantSpec.parse("rtn-w4g128"), cfg)
    >>> check_spec_against_config(QuantSpec.parse("rtn-w4g96"), cfg)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlquant.errors.ConfigError: quant spec 'rtn-w4g96': group_size=96 does not divide hidden_size=640 ... e.g. 128.
"""

from __future__ import annotations

import math
from typing import Any

from mlquant.errors import ConfigError
from mlquant.spec import QuantSpec

__all__ = ["check_spec_against_config", "linear_input_sizes"]


def linear_input_sizes(config: Any) -> dict[str, int]:
    """Input features of the decoder Linears: ``hidden_size`` (q/k/v, gate/up), ``intermediate_size`` (down_proj),
    ``num_attention_heads * head_dim`` (o_proj). Nested ``text_config`` (multimodal configs) is followed."""
    config = getattr(config, "text_config", None) or config
    sizes: dict[str, int] = {}
    hidden = getattr(config, "hidden_size", None)
    if hidden:
        sizes["hidden_size"] = int(hidden)
    inter = getattr(config, "intermediate_size", None)
    if inter:
        sizes["intermediate_size"] = int(inter)
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (int(hidden) // int(heads) if hidden and heads else None)
    if heads and head_dim:
        sizes["num_attention_heads*head_dim"] = int(heads) * int(head_dim)
    return sizes


_WHAT = {
    "hidden_size": "the input features of q/k/v and gate/up",
    "intermediate_size": "the input features of down_proj",
    "num_attention_heads*head_dim": "the input features of o_proj",
}


def check_spec_against_config(spec: QuantSpec, config: Any) -> None:
    """Raise ConfigError if ``spec`` cannot apply to a model with ``config`` (group size must divide every Linear's
    input features).

    Raises:
        ConfigError: naming the spec, ``group_size`` and the config key it does not divide.
    """
    g = spec.group_size
    if spec.is_baseline or g is None:
        return
    sizes = linear_input_sizes(config)
    for key, value in sizes.items():
        if value % g:
            common = 0
            for v in sizes.values():
                common = math.gcd(common, v)
            hint = max((2**k for k in range(3, 12) if common % 2**k == 0), default=None)
            raise ConfigError(
                f"quant spec {spec.label!r}: group_size={g} does not divide {key}={value} ({_WHAT[key]}); "
                f"choose a divisor of {', '.join(str(v) for v in sizes.values()).rsplit(', ', 1)[0]} and "
                f"{list(sizes.values())[-1]}" + (f", e.g. {hint}." if hint else ".")
            )
