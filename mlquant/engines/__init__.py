"""Engines: what runs a model's forward passes behind the :class:`~mlquant.requests.Model` protocol, including
models behind an inference server.

* ``hf``: transformers, in this process (:class:`~mlquant.models.HFModel`, :func:`~mlquant.models.load_model`);
* ``vllm``: vLLM in a worker process with its own venv (:class:`mlquant.engines.vllm.VLLMModel`; ``make vllm-venv``);
* any OpenAI-compatible ``/v1/completions`` server (:class:`mlquant.engines.openai.OpenAIEngine`, built from its URL).

``hf`` and ``vllm`` score the same token ids (:class:`~mlquant.models.TokenEncoder`); their fingerprints differ,
so the request cache never answers one engine with the other's results.

Example:
    >>> ENGINES
    ('hf', 'vllm')
    >>> load_engine("tgi")
    Traceback (most recent call last):
    ...
    mlquant.errors.ConfigError: engine 'tgi' is not one of ('hf', 'vllm').
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from mlquant.errors import ConfigError

if TYPE_CHECKING:
    from mlquant.requests import Model
    from mlquant.spec import QuantSpec

__all__ = ["ENGINES", "Engine", "load_engine"]

Engine = Literal["hf", "vllm"]
#: The engine names.
ENGINES: tuple[Engine, ...] = ("hf", "vllm")


def load_engine(engine: str, name: str = "gemma3-270m", quant: str | QuantSpec | None = None, **kwargs: Any) -> Model:
    """A model ``name`` (quantized by ``quant`` when given) run by ``engine``.

    ``vllm`` goes to :func:`mlquant.engines.vllm.load_vllm_model` (``kwargs``: ``python``, ``engine_args``, ...);
    ``hf`` loads with :func:`mlquant.models.load_model` (``kwargs``: ``dtype``, ``device``, ...) and quantizes with
    :func:`mlquant.quantize.quantize`.

    Raises:
        ConfigError: an unknown engine name.
        BackendUnavailableError: the vLLM venv is missing (``make vllm-venv``).

    Example:
        >>> model = load_engine("vllm", "gemma3-270m", "rtn-w4g128")  # doctest: +SKIP
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r} is not one of {ENGINES}.")
    if engine == "vllm":
        from mlquant.engines.vllm import load_vllm_model

        return load_vllm_model(name, quant, **kwargs)
    from mlquant.models import load_model
    from mlquant.quantize import quantize

    model = load_model(name, **kwargs)
    return model if quant is None else quantize(model, quant)
