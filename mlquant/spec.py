"""Quantization specs: frozen value objects with stable labels, and the registry of method rules (a leaf module).

A :class:`QuantSpec` says *what* to do (method, weight bits, activation bits, group size, symmetry,
calibration, backend, method options); its :attr:`~QuantSpec.label` (``rtn-w4g128``) names a study cell.
Specs are validated when built, so a nonsense spec fails before any model is loaded. This module knows no model:
the methods themselves (what turns a model into a quantized one) live in :mod:`mlquant.quantize`, which registers
them here; ``mlquant.models``, ``mlquant.study`` and the runner depend on this module, never on the quantizers.

Example:
    >>> from mlquant.spec import QuantSpec
    >>> spec = QuantSpec.parse("rtn-w4g128")
    >>> spec.method, spec.w_bits, spec.group_size, spec.label
    ('rtn', 4, 128, 'rtn-w4g128')
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

from mlquant._registry import Registry, did_you_mean
from mlquant.errors import ConfigError

__all__ = ["BASELINES", "Backend", "MethodRules", "QuantSpec", "get_quantizer", "list_methods", "register_quantizer"]

#: Unquantized baselines and their torch dtype names.
BASELINES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

Backend = Literal["simulate", "native"]

_LABEL = re.compile(r"^(?P<method>[a-z][a-z0-9]*(?:-[a-z][a-z0-9]*)*?)-w(?P<w>\d+)(?:g(?P<g>\d+))?(?:a(?P<a>\d+))?$")


@dataclass(frozen=True)
class QuantSpec:
    """A quantization method and its parameters.

    Attributes:
        method: registered method name (``none`` for a baseline, ``rtn``, ``gptq``, ...).
        w_bits: weight bits (None for a baseline).
        a_bits: activation bits (None: weights only).
        group_size: weights per quantization group along the input features (None: one scale per output channel).
        symmetric: symmetric (zero point 0) or asymmetric (min/max) integer grid.
        calibration: calibration data, e.g. ``"flores:ja:128"`` or a text file path (None: no calibration).
        backend: ``simulate`` (pure torch, quantize then dequantize) or ``native`` (real kernels).
        dtype: the compute dtype of the model (``float32``, ``bfloat16``, ``float16``).
        options: method options (damping, alpha, outlier threshold, ...), validated by the method.
        name: the label the user asked for, if it differs from the canonical one.
    """

    method: str
    w_bits: int | None = None
    a_bits: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    calibration: str | None = None
    backend: Backend = "simulate"
    dtype: str = "float32"
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in BASELINES.values():
            raise ConfigError(f"quant spec: dtype {self.dtype!r} is not one of {sorted(BASELINES.values())}.")
        if self.backend not in ("simulate", "native"):
            raise ConfigError(f"quant spec: backend {self.backend!r} is not 'simulate' or 'native'.")
        object.__setattr__(self, "options", dict(self.options))
        if self.method == "none":
            if self.w_bits is not None or self.a_bits is not None or self.group_size is not None:
                raise ConfigError("quant spec: a baseline (method 'none') takes no bits or group size.")
            return
        get_quantizer(self.method).validate(self)

    # ----- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, label: str, **overrides: Any) -> QuantSpec:
        """Build a spec from a label such as ``fp32``, ``rtn-w8``, ``rtn-w4g128``, ``gptq-w4g128``, ``fp8-w8a8``.

        Keyword ``overrides`` set any field (``calibration="flores:ja:128"``, ``symmetric=False``) or,
        for names that are not fields, a method option (``damp=0.01``).

        Raises:
            ConfigError: the label does not parse or the values are invalid for the method.
            UnknownNameError: the method is not registered.

        Example:
            >>> QuantSpec.parse("rtn-w8").label
            'rtn-w8'
            >>> QuantSpec.parse("bf16").dtype
            'bfloat16'
        """
        if not isinstance(label, str) or not label:
            raise ConfigError(f"quant label must be a non-empty string, got {label!r}.")
        fields = {f for f in cls.__dataclass_fields__ if f not in ("options",)}
        options = dict(overrides.pop("options", None) or {})
        for key in list(overrides):
            if key not in fields:
                options[key] = overrides.pop(key)
        head, at, calibration = label.partition("@")
        if at:
            if not calibration or "calibration" in overrides:
                raise ConfigError(
                    f"quant label {label!r}: '@' must be followed by the calibration (e.g. gptq-w4g128@flores:ja:128), "
                    "and calibration= cannot be given as well."
                )
            return cls.parse(head, calibration=calibration, options=options, **overrides)
        if label not in BASELINES and label not in _ALIASES and _LABEL.match(label) is None:
            suffixed = cls._parse_suffixes(label, options, overrides)
            if suffixed is not None:
                return suffixed
        if label in BASELINES:
            if options:
                raise ConfigError(f"quant spec {label!r}: a baseline takes no options, got {sorted(options)}.")
            return cls(method="none", dtype=BASELINES[label], **overrides)
        _load_builtins()  # method modules register their fixed labels (w8a8, bnb-nf4, ...) on import
        alias = _ALIASES.get(label)
        if alias is not None:
            base = dict(alias)
            base_opts = dict(base.pop("options", {}))
            base_opts.update(options)
            base.update(overrides)
            return cls(options=base_opts, name=label, **base)
        m = _LABEL.match(label)
        if m is None:
            known = list(BASELINES) + list(_ALIASES) + ["<method>-w<bits>[g<group>][a<bits>]"]
            raise ConfigError(
                f"cannot parse quant label {label!r}.{did_you_mean(label, list(BASELINES) + list(_ALIASES))}"
                f" Expected one of: {', '.join(known)}."
            )
        parsed: dict[str, Any] = {"method": m["method"], "w_bits": int(m["w"])}
        parsed["symmetric"] = get_quantizer(m["method"]).default_symmetric
        if m["g"]:
            parsed["group_size"] = int(m["g"])
        if m["a"]:
            parsed["a_bits"] = int(m["a"])
        parsed.update(overrides)
        return cls(options=options, **parsed)

    @classmethod
    def _parse_suffixes(cls, label: str, options: dict[str, Any], overrides: dict[str, Any]) -> QuantSpec | None:
        """A label that :attr:`label` wrote with suffixes: ``<base>[-asym|-sym][-<option><value>...]``, or None."""
        tokens = label.split("-")
        for k in range(len(tokens) - 1, 0, -1):
            base, suffixes = "-".join(tokens[:k]), tokens[k:]
            alias = _ALIASES.get(base)
            m = _LABEL.match(base)
            if alias is None and m is None:
                continue
            quantizer = get_quantizer(str(alias["method"]) if alias is not None else m["method"])  # type: ignore[index]
            read: dict[str, Any] = {}
            for suffix in suffixes:
                if suffix in ("asym", "sym"):
                    read["symmetric"] = suffix == "sym"
                    continue
                keys = [key for key in quantizer.option_defaults if suffix.startswith(key) and len(suffix) > len(key)]
                if not keys:
                    raise ConfigError(
                        f"quant label {label!r}: suffix {suffix!r} is neither 'asym'/'sym' nor <option><value> of "
                        f"{quantizer.name} (options: {sorted(quantizer.option_defaults)})."
                    )
                key = max(keys, key=len)
                read[key] = _option_value(suffix[len(key) :], quantizer.option_defaults[key])
            symmetric = read.pop("symmetric", None)
            fields = dict(overrides)
            if symmetric is not None:
                fields.setdefault("symmetric", symmetric)
            return cls.parse(base, options={**read, **options}, **fields)
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "quant spec") -> QuantSpec:
        """Build a spec from a mapping with a ``label`` key plus overrides (the study YAML form).

        Raises:
            ConfigError: naming ``where`` and the bad key.
        """
        data = dict(data)
        label = data.pop("label", None)
        if label is None:
            raise ConfigError(f"{where}: missing key 'label' (e.g. label: gptq-w4g128).")
        try:
            if "method" not in data:
                return cls.parse(str(label), **data)
            # The resolved form written by to_dict (study.yaml of a run): every field spelled out.
            unknown = sorted(set(data) - set(cls.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"unknown key {unknown[0]!r} next to 'method'; expected {sorted(cls.__dataclass_fields__)}.")
            spec = cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if spec.label != label:
            raise ConfigError(f"{where}: label {label!r} does not match its fields, which give {spec.label!r}.")
        return spec

    # ----- identity -------------------------------------------------------------------------------------------------
    @property
    def is_baseline(self) -> bool:
        return self.method == "none"

    @property
    def label(self) -> str:
        """Stable label: ``fp32``, ``rtn-w4g128``, ``rtn-w4g128-asym``, ``gptq-w4g128@flores:ja:128``."""
        if self.is_baseline:
            return {v: k for k, v in BASELINES.items()}[self.dtype]
        base = self.name or f"{self.method}-w{self.w_bits}" + (f"g{self.group_size}" if self.group_size else "") + (
            f"a{self.a_bits}" if self.a_bits else ""
        )
        quantizer = get_quantizer(self.method)
        if not self.symmetric and quantizer.default_symmetric:
            base += "-asym"
        elif self.symmetric and not quantizer.default_symmetric:
            base += "-sym"
        non_default = {k: v for k, v in self.options.items() if quantizer.option_defaults.get(k) != v}
        if non_default:
            base += "-" + "-".join(f"{k}{v}" for k, v in sorted(non_default.items()))
        if self.calibration:
            base += f"@{self.calibration}"
        return base

    def to_dict(self) -> dict[str, Any]:
        """Every field, with method options filled with their defaults (for fingerprints and study.yaml)."""
        opts: dict[str, Any] = {}
        if not self.is_baseline:
            opts.update(get_quantizer(self.method).option_defaults)
        opts.update(self.options)
        return {
            "label": self.label,
            "method": self.method,
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "calibration": self.calibration,
            "backend": self.backend,
            "dtype": self.dtype,
            "options": opts,
            **({"name": self.name} if self.name else {}),
        }

    def fingerprint(self) -> str:
        """A canonical JSON string of :meth:`to_dict` (part of the model fingerprint)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def with_(self, **changes: Any) -> QuantSpec:
        """A copy with fields changed (validated again)."""
        return replace(self, **changes)


@runtime_checkable
class MethodRules(Protocol):
    """What a spec needs from its method: the rules of its labels and options (no model, no torch).

    A quantization method (:class:`mlquant.quantize.Quantizer`) is a ``MethodRules`` plus the transform itself.

    Attributes:
        name: the method name used in labels.
        option_defaults: every option the method accepts, with its default (unknown options are rejected).
        default_symmetric: whether the method's default grid is symmetric (labels mark the other one).
    """

    @property
    def name(self) -> str: ...

    @property
    def option_defaults(self) -> Mapping[str, Any]: ...

    @property
    def default_symmetric(self) -> bool: ...

    def validate(self, spec: QuantSpec) -> None:
        """Raise ConfigError naming the key and value if ``spec`` is invalid for this method (no model needed)."""


_QUANTIZERS: Registry[MethodRules] = Registry("quantization method")
_ALIASES: dict[str, dict[str, Any]] = {}
_BUILTIN_MODULES = ("rtn",)
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"mlquant.quantize.{module}")
        # Further method modules register themselves when present.
        for module in ("gptq", "smoothquant", "fp8", "bnb", "awq", "hqq", "fp4", "w4a8", "kquant"):
            try:
                importlib.import_module(f"mlquant.quantize.{module}")
            except ModuleNotFoundError as exc:
                if exc.name != f"mlquant.quantize.{module}":
                    raise


def _option_value(text: str, default: Any) -> Any:
    """An option value read back from a label, typed like the option's default (``damp0.05`` -> 0.05)."""
    try:
        if isinstance(default, bool):
            if text not in ("True", "False"):
                raise ValueError(text)
            return text == "True"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"quant label: option value {text!r} is not a {type(default).__name__}.") from None
    return text


def register_quantizer(
    quantizer: MethodRules, *, aliases: Mapping[str, Mapping[str, Any]] | None = None, overwrite: bool = False
) -> None:
    """Register a method; ``aliases`` map fixed labels (``smoothquant-w8a8``) to spec fields.

    Example:
        >>> from mlquant.spec import list_methods
        >>> "rtn" in list_methods()
        True
    """
    _QUANTIZERS.register(quantizer.name, quantizer, overwrite=overwrite)
    for alias, fields in dict(aliases or {}).items():
        _ALIASES[alias] = dict(fields)


def get_quantizer(method: str) -> MethodRules:
    """The registered quantizer called ``method`` (UnknownNameError with suggestions otherwise)."""
    _load_builtins()
    return _QUANTIZERS.get(method)


def list_methods() -> list[str]:
    """Registered method names and fixed labels, e.g. ``['rtn', 'smoothquant-w8a8', ...]``."""
    _load_builtins()
    return sorted(set(_QUANTIZERS.names()) | set(_ALIASES) | set(BASELINES))
