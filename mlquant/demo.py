"""The demo behind ``mlquant demo``: Gemma 3 270M against three RTN quantizations, on four tasks in 8 languages.

The model, the tasks, the languages and the limits are fixed here; :func:`run_demo` runs (or resumes) the study in a
run folder and prints what it found. ``mlquant demo`` is a thin command around it.

Example:
    >>> from mlquant.demo import DEMO_LANGUAGES
    >>> len(DEMO_LANGUAGES)
    8
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_LANGUAGES = ("en", "fr", "de", "zh", "ja", "ru", "th", "sw")  # 5 scripts: Latn Hans Jpan Cyrl Thai
#: Small limits keep the demo under 10 minutes on 2 CPU cores; generation (mgsm) costs the most per item.
DEMO_TASKS: list[dict[str, Any]] = [
    {"name": "xcopa", "limit": 12},
    {"name": "belebele", "limit": 8},
    {"name": "mgsm", "shots": 1, "max_new_tokens": 48, "limit": 4, "languages": ["en", "ja", "ru", "th"]},
    {"name": "flores_ppl", "limit": 10},
]
DEMO_NOTE = (
    "Note: the demo model is Gemma 3 270M from a 4-bit Q4_K_M GGUF file, dequantized to float. Its 'fp32' baseline "
    "is therefore itself a 4-bit model: the table measures what quantizing *again* costs. The model is small and near "
    "chance on some choice tasks in some languages; bits per byte (flores_ppl) carries the signal there. Choice cells "
    "here hold 8-12 items, so their relative changes are mostly noise: `mlquant report` gives each a CI, a test and "
    "the smallest change it could detect."
)


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo.

    Attributes:
        out: the run folder (created; a finished run there is resumed, not recomputed).
        limit: items per cell for every task; None keeps each task's demo limit.
        dtype: ``auto``, ``fp32`` or ``bf16``: the baseline's compute dtype.
        progress: show progress bars.

    Example:
        >>> DemoOptions().dtype
        'auto'
    """

    out: Path = field(default_factory=lambda: Path("runs/demo"))
    limit: int | None = None
    dtype: str = "auto"
    progress: bool = True


def run_demo(options: DemoOptions, echo: Callable[[str], Any] = print) -> None:
    """Run (or resume) the demo study in ``options.out`` and print its summary through ``echo``.

    Raises:
        MlquantError: a bad option or a failure while running the study.
    """
    import pandas as pd

    import mlquant as mq
    from mlquant.report import format_table, relative_change_table, similarity_table

    started = time.time()
    out = options.out
    echo(DEMO_NOTE)
    study = mq.Study(
        "gemma3-270m",
        quant=["fp32", "rtn-w8", "rtn-w4", "rtn-w4g128"],
        tasks=DEMO_TASKS,
        languages=list(DEMO_LANGUAGES),
        limit=options.limit or 12,
        seed=0,
        name="demo",
    )
    frame = study.run(out, progress=options.progress).frame
    echo("\nRelative change 100*(q-b)/b vs fp32, paired by item (bits_per_byte: positive = worse):")
    echo(format_table(relative_change_table(frame, "fp32")))
    similar = similarity_table(frame, "fp32").reset_index()
    cols = [c for c in ("flip_rate", "chrf") if c in similar.columns]
    echo("\nSimilarity to fp32's answers, mean over languages (flip_rate: % of items whose correctness "
         "changed; chrf: 0-100 between the generated texts, 100 = identical):")
    means = similar.groupby(["task", "quant"])[cols].mean().unstack("quant")
    echo(format_table(means.to_frame() if isinstance(means, pd.Series) else means, 1))
    s = study.last_run
    echo(
        f"\n{len(frame)} item results in {out} ({s.cells_computed} cells computed, {s.cells_skipped} already there); "
        f"wall time {time.time() - started:.0f} s.\n{DEMO_NOTE}\nMore: mlquant report {out}"
    )
