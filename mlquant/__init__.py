"""mlquant: what does quantizing this LLM cost, in each language and on each kind of task?

``import mlquant as mq`` is cheap: torch and transformers load only when a model is loaded or quantized.

Example:
    >>> import mlquant as mq
    >>> mq.get_language("ja").script
    'Jpan'
    >>> mq.QuantSpec.parse("rtn-w4g128").label
    'rtn-w4g128'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlquant.errors import BackendUnavailableError, ConfigError, DataError, MlquantError, UnknownNameError
from mlquant.languages import Language, get_language, list_languages
from mlquant.quantize import list_methods, quantize
from mlquant.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
from mlquant.spec import QuantSpec
from mlquant.tasks import Item, ItemScore, Task, get_task, list_tasks, register_task
from mlquant.version import __version__

if TYPE_CHECKING:
    from mlquant.models import FakeModel, HFModel, Model, load_model

_LAZY = {
    "FakeModel": "mlquant.models",
    "HFModel": "mlquant.models",
    "Model": "mlquant.models",
    "load_model": "mlquant.models",
    "Study": "mlquant.study",
    "Results": "mlquant.results",
    "read_results": "mlquant.results",
    "stats": "mlquant.stats",
    "plot": "mlquant.plot",
    "report": "mlquant.report",
    "results": "mlquant.results",
    "distance": "mlquant.distance",
    "run_distance": "mlquant.distance",
    "DistanceTable": "mlquant.distance",
    "calibration_matrix": "mlquant.calibration_matrix",
    "calibration_grid": "mlquant.calibration_matrix",
    "CalibrationMatrix": "mlquant.calibration_matrix",
    "activation_ranges": "mlquant.activations",
}

__all__ = [
    "__version__",
    "MlquantError",
    "ConfigError",
    "UnknownNameError",
    "DataError",
    "BackendUnavailableError",
    "Language",
    "get_language",
    "list_languages",
    "QuantSpec",
    "list_methods",
    "quantize",
    "LoglikelihoodRequest",
    "RollingRequest",
    "GenerateRequest",
    "Item",
    "ItemScore",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Import heavy parts (models, study, results, stats, plot) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlquant' has no attribute {name!r}")
    import importlib

    mod = importlib.import_module(module)
    value = mod if module.endswith("." + name) else getattr(mod, name)
    globals()[name] = value
    return value
