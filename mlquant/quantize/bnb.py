"""bitsandbytes, native: LLM.int8 and 4-bit NF4 / FP4 (with or without double quantization).

Labels: ``bnb-int8`` (Dettmers et al., NeurIPS 2022, *LLM.int8()*, arXiv 2208.07339; option ``threshold``, the
outlier threshold, default 6.0), ``bnb-nf4`` / ``bnb-fp4`` and their double-quantized ``bnb-nf4-dq`` / ``bnb-fp4-dq``
(Dettmers et al., NeurIPS 2023, *QLoRA*, arXiv 2305.14314). The layers are bitsandbytes' own ``Linear8bitLt`` and
``Linear4bit`` running bitsandbytes' kernels (on CUDA, or on the CPU with bitsandbytes >= 0.48).

Two ways to get there (option ``load``):

* ``reload`` — the documented path: ``AutoModelForCausalLM.from_pretrained(path, quantization_config=
  BitsAndBytesConfig(...))`` on the model's transformers checkpoint (hub id or folder);
* ``replace`` — for a model without such a checkpoint (loaded from GGUF, or already modified): every decoder-block
  ``nn.Linear`` of a copy is replaced by a ``Linear8bitLt`` / ``Linear4bit`` built from the same
  ``BitsAndBytesConfig`` values, its weight wrapped in ``Int8Params`` / ``Params4bit`` and moved to the model's
  device, which is where bitsandbytes quantizes it (what transformers' own bnb loader does per tensor);
* ``auto`` (default) — ``reload`` for an unquantized model whose transformers checkpoint is on disk (a folder, or
  the hub cache it was loaded from; no download), else ``replace``.

Embeddings and the LM head stay in float in both (transformers skips ``lm_head`` by default too).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from mlquant.errors import BackendUnavailableError, ConfigError
from mlquant.quantize import Transformed
from mlquant.quantize._common import bits_per_weight, check_options, quantizable_linears
from mlquant.spec import QuantSpec, register_quantizer

if TYPE_CHECKING:
    from mlquant.models import HFModel

__all__ = ["INSTALL_HINT", "BnbQuantizer", "bnb_config"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'mlquant[bnb]'  (or: pip install 'bitsandbytes>=0.45')"
_LOADS = ("auto", "reload", "replace")


def _require_bnb() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackendUnavailableError(f"bitsandbytes is not installed; {INSTALL_HINT}")


def bnb_config(kind: str, spec: QuantSpec, threshold: float = 6.0) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for ``kind`` (``int8``, ``nf4``, ``fp4``, ``nf4-dq``, ``fp4-dq``)."""
    import torch

    # transformers' quantization configs are untyped; go through the module as Any.
    BitsAndBytesConfig: Any = importlib.import_module("transformers").BitsAndBytesConfig
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    quant_type, _, dq = kind.partition("-")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=dq == "dq",
        bnb_4bit_compute_dtype=getattr(torch, spec.dtype),
    )


def _replace_linears(torch_model: Any, cfg: Any, device: Any) -> dict[str, dict[str, Any]]:
    """Swap every decoder-block nn.Linear for a bitsandbytes layer (quantized when moved to ``device``)."""
    import torch

    bnb: Any = importlib.import_module("bitsandbytes")  # untyped, and its nn classes are not re-exported for mypy

    records: dict[str, dict[str, Any]] = {}
    for name, lin in list(quantizable_linears(torch_model)):
        start = time.perf_counter()
        weight = lin.weight.detach().to("cpu")
        has_bias = lin.bias is not None
        if cfg.load_in_8bit:
            new = bnb.nn.Linear8bitLt(
                lin.in_features, lin.out_features, has_bias, has_fp16_weights=False, threshold=cfg.llm_int8_threshold,
                device="meta",
            )
            new.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False).to(device)
            fmt = "bnb-int8"
        else:
            dq = bool(cfg.bnb_4bit_use_double_quant)
            new = bnb.nn.Linear4bit(
                lin.in_features, lin.out_features, has_bias, compute_dtype=cfg.bnb_4bit_compute_dtype,
                compress_statistics=dq, quant_type=cfg.bnb_4bit_quant_type, device="meta",
            )
            new.weight = bnb.nn.Params4bit(
                weight.clone(), requires_grad=False, compress_statistics=dq, quant_type=cfg.bnb_4bit_quant_type
            ).to(device)
            fmt = "bnb-4bit-dq" if dq else "bnb-4bit"
        if has_bias:
            new.bias = torch.nn.Parameter(lin.bias.detach().clone().to(device), requires_grad=False)
        new.requires_grad_(False)
        torch_model.set_submodule(name, new)
        records[name] = {
            "seconds": time.perf_counter() - start,
            "bits_per_weight": bits_per_weight(fmt, 8 if fmt == "bnb-int8" else 4, None, lin.in_features),
        }
    return records


class BnbQuantizer:
    """One bitsandbytes format; registered as ``bnb-int8``, ``bnb-nf4``, ``bnb-nf4-dq``, ``bnb-fp4``, ``bnb-fp4-dq``."""

    default_symmetric: ClassVar[bool] = True
    copies_weights: ClassVar[bool] = False

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"bnb-{kind}"
        self.bits = 8 if kind == "int8" else 4
        self.option_defaults: dict[str, Any] = {"load": "auto", **({"threshold": 6.0} if kind == "int8" else {})}

    def validate(self, spec: QuantSpec) -> None:
        check_options(spec, self.option_defaults, {"load": _LOADS})
        if spec.w_bits not in (None, self.bits):
            raise ConfigError(f"{self.name}: w_bits={spec.w_bits!r}; this format has {self.bits}-bit weights.")
        if spec.a_bits is not None:
            raise ConfigError(f"{self.name}: a_bits={spec.a_bits!r}; bitsandbytes quantizes weights only.")
        if spec.group_size is not None:
            raise ConfigError(f"{self.name}: group_size={spec.group_size!r} is fixed by bitsandbytes; remove it.")
        if spec.calibration is not None:
            raise ConfigError(f"{self.name}: calibration is not used by bitsandbytes; remove it.")
        if spec.backend != "native":
            raise ConfigError(f"{self.name}: backend {spec.backend!r}; bitsandbytes runs natively (backend 'native').")
        if not spec.symmetric:
            raise ConfigError(f"{self.name}: symmetric=False is not a bitsandbytes option.")
        threshold = spec.options.get("threshold")
        if threshold is not None and threshold < 0:
            raise ConfigError(f"{self.name}: option threshold={threshold!r} must be >= 0.")
        _require_bnb()

    def transform(self, torch_model: Any, model: HFModel, spec: QuantSpec) -> Transformed:
        # copies_weights is False: a reload from the checkpoint needs no copy of the float weights.
        load = spec.options.get("load", "auto")
        cfg = bnb_config(self.kind, spec, float(spec.options.get("threshold", 6.0)))
        records: dict[str, dict[str, Any]] = {}
        if load == "auto" and model.source.gguf_file is None:
            try:
                torch_model = _reload(model, cfg, local_files_only=True)
                load = "reload"
            except OSError as exc:  # no reachable checkpoint (offline, or a model built in memory)
                log.info("%s: cannot reload %s with BitsAndBytesConfig (%s); replacing its Linear layers instead",
                         self.name, model.source.model_id, str(exc).splitlines()[0])
        if torch_model is not None:
            pass
        elif load == "reload":
            if model.source.gguf_file is not None:
                raise ConfigError(f"{self.name}: {model.source.model_id} has no transformers checkpoint to reload; "
                                  "use load='replace'.")
            torch_model = _reload(model, cfg)
        else:
            load = "replace"
            torch_model = model.copy_torch_model()
            records = _replace_linears(torch_model, cfg, model.device)
        return Transformed(torch_model, records, {"load": load})


def _reload(model: HFModel, cfg: Any, local_files_only: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    device = model.device
    kwargs: dict[str, Any] = {"dtype": getattr(torch, model.spec.dtype), "quantization_config": cfg}
    if local_files_only:  # the checkpoint the model was loaded from is in the local folder or hub cache
        kwargs["local_files_only"] = True
    if device.type != "cpu":
        kwargs["device_map"] = {"": device}
    return AutoModelForCausalLM.from_pretrained(model.source.path, revision=model.source.revision, **kwargs)


for _kind in ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq"):
    _q = BnbQuantizer(_kind)
    register_quantizer(_q, aliases={_q.name: {"method": _q.name, "w_bits": _q.bits, "backend": "native"}})
