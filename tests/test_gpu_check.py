"""bench/gpu_check.py, the prepared device check of issue 10, run on the CPU with its tiny model.

The CUDA run (``python bench/gpu_check.py``: ~1.1B parameters, bf16) needs a GPU and is done by hand where one is
lent; this test keeps its code path working on every ``make test``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_tiny_cpu_run_passes_every_check(gpu_check: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLQUANT_DATA_DIR", raising=False)  # the device machine has no benchmark data
    out = tmp_path / "check.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["ok"] is True and record["device"] == "cpu" and record["dtype"] == "float32"
    labels = [r["label"].split("@")[0] for r in record["quantized"]]
    assert labels == ["rtn-w4g32", "hqq-w4g32", "w8a8", "fp8-w8a8", "gptq-w4g32"]
    for row in record["quantized"] + record["quantized_device_map"]:
        assert row["weights_on_device"] and row["loglik_finite"]
        assert 0 < row["max_abs_dloglik_vs_baseline"] < 5  # quantization moved the model, within reason
        assert 0 < row["mean_weight_rel_err"] < 0.5
    # the same checkpoint on the same device and dtype: identical log-likelihoods
    assert record["baseline_vs_cpu_fp32_max_abs_dloglik"] == 0.0
    # device_map="auto" on a CPU is {"": "cpu"}; its RTN equals the plain model's
    assert record["device_map_first_layer"] == "cpu"
    assert record["quantized_device_map"][0]["mean_weight_rel_err"] == record["quantized"][0]["mean_weight_rel_err"]


def test_placement_check_sees_a_weight_elsewhere(gpu_check: Any, tiny_llama: Any) -> None:
    assert gpu_check._weights_on(tiny_llama, "cpu") is True
    assert gpu_check._weights_on(tiny_llama, "cuda") is False
