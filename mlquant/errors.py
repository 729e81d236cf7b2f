"""Exceptions raised by mlquant.

Every error names what was wrong and where (file, line, key, value) and what was expected.

Example:
    >>> from mlquant.errors import ConfigError
    >>> isinstance(ConfigError("bad"), ValueError)
    True
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "DataError",
    "MlquantError",
    "UnknownNameError",
]


class MlquantError(Exception):
    """Base class of every error mlquant raises on purpose."""


class ConfigError(MlquantError, ValueError):
    """A specification (quant spec, study YAML, language file, argument) is invalid."""


class UnknownNameError(ConfigError, LookupError):
    """A name (task, method, language, model alias) is not registered; the message suggests close matches."""


class DataError(MlquantError, ValueError):
    """A data file or row is malformed or missing; the message names file, line and field."""


class BackendUnavailableError(MlquantError, ImportError):
    """An optional backend (bitsandbytes, GPTQModel, llm-compressor, CUDA) is missing; the message says how to install it."""
