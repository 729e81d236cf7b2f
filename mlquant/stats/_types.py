"""Result types shared by :mod:`mlquant.stats`: frozen dataclasses whose table comes back from ``to_frame()``.

Every public function of the package returns one of these. The table is held privately and ``to_frame()``
returns a copy, so a result cannot be changed after the fact.

Example:
    >>> import pandas as pd
    >>> r = FrameResult(_frame=pd.DataFrame({"x": [1.0]}))
    >>> r.to_frame().x.tolist()
    [1.0]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["FrameResult", "TestResult", "format_frame"]


def format_frame(frame: pd.DataFrame, digits: int = 3, max_rows: int | None = None) -> str:
    """Fixed-width text of a frame, floats rounded to ``digits``; ``max_rows`` shows the head and a count."""
    shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}", na_rep="-")
    if shown is not frame:
        text += f"\n... {len(frame) - len(shown)} more rows (to_frame() has them all)"
    return text


@dataclass(frozen=True, eq=False)
class FrameResult:
    """Base of the table-like results: a private frame, ``to_frame()``, ``len()`` and a text rendering."""

    _frame: pd.DataFrame = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """A copy of the result table (one row per cell or group)."""
        # Annotated: under python_version 3.10, pandas-stubs' ``Self`` (typing, 3.11+) degrades to Any.
        frame: pd.DataFrame = self._frame.copy()
        return frame

    def __len__(self) -> int:
        return len(self._frame)

    def __str__(self) -> str:
        return format_frame(self._frame)


@dataclass(frozen=True)
class TestResult:
    """One paired comparison: the keys of its cell or group, the estimate and the test.

    Attributes:
        keys: the cell or group keys (``{"quant": "rtn-w4", "task": "xcopa", "lang": "ja"}``).
        test: the test's name (``mcnemar-exact``, ``sign-flip-permutation``, ``wilcoxon``).
        n: paired items.
        estimate: mean paired difference quantized - baseline (weighted by ``weight`` where the test uses it).
        statistic: the test statistic.
        p_value: two-sided p-value.
        p_adjusted: the p-value adjusted for multiplicity, or None before :func:`mlquant.stats.adjust`.
        details: test-specific numbers (McNemar's discordant counts ``b`` and ``c``, ...).

    Example:
        >>> TestResult({"quant": "w4"}, "mcnemar-exact", 10, -0.2, 0.0, 0.125).p_value
        0.125
    """

    keys: Mapping[str, Any]
    test: str
    n: int
    estimate: float
    statistic: float
    p_value: float
    p_adjusted: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """A one-row frame."""
        row = {**self.keys, "test": self.test, "n": self.n, "estimate": self.estimate}
        row.update(statistic=self.statistic, p_value=self.p_value, p_adjusted=self.p_adjusted, **self.details)
        frame: pd.DataFrame = pd.DataFrame([row])  # annotated: pandas-stubs' Self is Any under python 3.10
        return frame


def iter_results(frame: pd.DataFrame, keys: list[str], test_col: str = "test") -> Iterator[TestResult]:
    """Rows of a test table as :class:`TestResult` records."""
    core = {"test", "n", "estimate", "statistic", "p_value", "p_adjusted"}
    for rec in frame.to_dict("records"):
        details = {str(k): v for k, v in rec.items() if k not in core and k not in keys}
        yield TestResult(
            keys={k: rec[k] for k in keys},
            test=str(rec.get(test_col, "")),
            n=int(rec["n"]),
            estimate=float(rec["estimate"]),
            statistic=float(rec["statistic"]),
            p_value=float(rec["p_value"]),
            p_adjusted=None if pd.isna(rec.get("p_adjusted", float("nan"))) else float(rec["p_adjusted"]),
            details=details,
        )
