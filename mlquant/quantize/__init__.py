"""Quantization: the :class:`Quantizer` protocol, the method modules, and :func:`quantize`.

:func:`quantize` owns the pipeline every method shares: validate the spec, copy the weights (the input model is
never modified), rotate them when the spec asks (``rotate: hadamard``, for methods whose ``option_defaults`` include
:data:`~mlquant.quantize.rotate.ROTATE_DEFAULTS`), let the method *transform* the copy, then measure the per-layer
report and time it. A method writes only its transform (see ``docs/contributing.md``). Specs and the method registry
are value objects in the leaf module :mod:`mlquant.spec`, re-exported here.

Example:
    >>> from mlquant.quantize import QuantSpec
    >>> spec = QuantSpec.parse("rtn-w4g128")
    >>> spec.method, spec.w_bits, spec.group_size, spec.label
    ('rtn', 4, 128, 'rtn-w4g128')
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mlquant.errors import ConfigError
from mlquant.spec import BASELINES, Backend, MethodRules, QuantSpec, get_quantizer, list_methods, register_quantizer

if TYPE_CHECKING:
    from mlquant.models import HFModel

__all__ = [
    "BASELINES",
    "Backend",
    "QuantSpec",
    "Quantizer",
    "Transformed",
    "get_quantizer",
    "list_methods",
    "quantize",
    "register_quantizer",
    "save_quantized",
]


@dataclass
class Transformed:
    """What a method's transform returns.

    Attributes:
        torch_model: the quantized torch model (usually the copy it was given, modified in place).
        records: per-layer values the method measured itself (``weight_rel_err``, ``seconds``,
            ``bits_per_weight``, ...), keyed by the Linear's name; they become columns of the report.
        attrs: method-level facts for ``report.attrs`` (what was smoothed, how bitsandbytes loaded).
    """

    torch_model: Any
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Quantizer(MethodRules, Protocol):
    """A quantization method: the rules of its specs (:class:`~mlquant.spec.MethodRules`) plus its transform.

    Attributes:
        copies_weights: whether :func:`quantize` should hand the transform a deep copy of the torch model
            (False for methods that reload the checkpoint themselves, such as bitsandbytes; they get ``None``).
    """

    @property
    def copies_weights(self) -> bool: ...

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        """Quantize ``torch_model`` (a private copy of ``model``'s weights, or None) and return it with its records.

        ``model`` is the unquantized input (tokenizer, source, device, dtype); it must not be modified.
        """


def quantize(model: HFModel, spec: QuantSpec | str, **overrides: Any) -> HFModel:
    """Quantize ``model`` with ``spec`` (a QuantSpec or a label) and return the new model.

    The pipeline: validate the spec, copy the weights, transform them with the method, then attach the per-layer
    report (:func:`mlquant.quantize.report.build_report`) as ``quant_report``. The input model is not modified.

    Example:
        >>> import mlquant as mq  # doctest: +SKIP
        >>> q = mq.quantize(mq.load_model("gemma3-270m"), "rtn-w4g128")  # doctest: +SKIP
        >>> q.spec.label, len(q.quant_report) > 0  # doctest: +SKIP
        ('rtn-w4g128', True)
    """
    if isinstance(spec, str):
        # A label inherits the model's compute dtype (a bf16 model quantized stays a bf16-compute model).
        if spec not in BASELINES:
            overrides = {"dtype": model.spec.dtype, **overrides}
        spec = QuantSpec.parse(spec, **overrides)
    elif overrides:
        raise ConfigError("quantize(): overrides are only accepted with a label, not with a QuantSpec.")
    if spec.is_baseline:
        return model.to_dtype(spec.dtype)
    if model.spec.is_baseline and model.spec.dtype != spec.dtype:
        model = model.to_dtype(spec.dtype)  # a bf16-compute spec is quantized from (and computes in) bf16 weights
    if not model.spec.is_baseline:
        raise ConfigError(
            f"quantize(): the model is already quantized ({model.spec.label}); quantize the unquantized model."
        )
    quantizer = get_quantizer(spec.method)
    if not isinstance(quantizer, Quantizer):
        raise ConfigError(f"quantize(): method {spec.method!r} is registered without a transform(); see docs/contributing.md.")
    quantizer.validate(spec)
    from mlquant.quantize.report import build_report

    start = time.perf_counter()
    work = model.copy_torch_model() if quantizer.copies_weights else None
    rotation = _rotate(work, model, spec, quantizer.option_defaults)
    out = quantizer.transform(work, model, spec)
    out.torch_model.eval()
    quantized = model.derive(out.torch_model, spec)
    records = dict(out.records)
    if rotation is not None:
        from mlquant.quantize.rotate import rotated_weight_errors

        for name, err in rotated_weight_errors(model.torch_model, out.torch_model).items():
            records[name] = {**records.get(name, {}), "weight_rel_err": records.get(name, {}).get("weight_rel_err", err)}
    report = build_report(model, quantized, records, seconds=time.perf_counter() - start)
    report.attrs.update(out.attrs)
    if rotation is not None:
        stats, built = rotation
        for column in sorted({c for row in stats.values() for c in row}):
            report[column] = [stats.get(name, {}).get(column, float("nan")) for name in report["layer"]]
        report.attrs["rotation"] = {"kind": spec.options["rotate"], "hadamard": built}
    quantized.quant_report = report
    return quantized


def _rotate(
    work: Any, model: HFModel, spec: QuantSpec, defaults: Mapping[str, Any]
) -> tuple[dict[str, dict[str, float]], dict[int, str]] | None:
    """The rotation step (rotate.py) when the spec asks for it: rotate ``work`` in place, return the per-layer
    outlier statistics (weights, and inputs on the report text) and how each Hadamard matrix was built."""
    kind = spec.options.get("rotate", defaults.get("rotate", "none"))
    if kind == "none" or "rotate" not in defaults:
        return None
    if work is None:
        raise ConfigError(f"quantize(): {spec.method} does not quantize a copy of the weights; it cannot be rotated.")
    from mlquant.quantize._common import pad_id
    from mlquant.quantize.calibration import encode_texts, report_texts
    from mlquant.quantize.rotate import activation_outliers, rotate_model

    stats, built = rotate_model(work, int(spec.options.get("rotate_seed", defaults.get("rotate_seed", 0))))
    seqs = encode_texts(model.tokenizer, report_texts()[::4], 128)  # 2 texts per report language
    if seqs:
        for name, row in activation_outliers(work, seqs, pad_id(model.tokenizer)).items():
            stats.setdefault(name, {}).update(row)
    return stats, built


def save_quantized(model: HFModel, path: str | Path, format: str = "auto") -> Path:
    """Write a (quantized) model as a checkpoint the ecosystem loads; see :mod:`mlquant.quantize.export`.

    Example:
        >>> from mlquant.quantize import save_quantized  # doctest: +SKIP
        >>> save_quantized(mq.quantize(model, "gptq-w4g128"), "out/gemma-gptq")  # doctest: +SKIP

    Raises:
        ConfigError: the model's Linears are rotated online (``rotate: hadamard``): no format carries that.
    """
    from mlquant.quantize._common import ROTATE_ATTR
    from mlquant.quantize.export import save_quantized as _save

    if model.torch_model is not None and any(getattr(m, ROTATE_ATTR, None) for m in model.torch_model.modules()):
        raise ConfigError(
            f"save_quantized(): {model.spec.label} rotates each Linear's input online (rotate: hadamard); its weights "
            "are W·Q and no checkpoint format carries the rotation. Evaluate it in process, or quantize without rotate."
        )
    return _save(model, path, format)
