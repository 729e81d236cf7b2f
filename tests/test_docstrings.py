"""Every docstring example in the package runs and prints what it says (examples marked +SKIP need a model/run)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mlquant

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(mlquant.__path__, prefix="mlquant.") if info.name != "mlquant.__main__"
)


@pytest.mark.parametrize("name", ["mlquant", *MODULES])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see output)"


def test_the_public_stats_functions_have_examples() -> None:
    from mlquant import stats

    for name in ("relative_change", "recovery", "paired_bootstrap", "mcnemar", "permutation_test", "wilcoxon",
                 "adjust", "mixed_effects", "power", "summary"):
        doc = getattr(stats, name).__doc__ or ""
        assert ">>>" in doc and "References:" in doc, f"mq.stats.{name} needs a runnable example and References"
