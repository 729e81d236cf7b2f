"""The demo behind ``mlquant demo``: Gemma 3 270M against three RTN quantizations, on four tasks in 8 languages.

The model, the tasks, the languages and the limits are fixed here; :func:`run_demo` runs (or resumes) the study in a
run folder, prints what is significant after Holm's correction across all of the run's cells (with bootstrap CIs),
and writes the HTML report beside the run (``report.html``). ``mlquant demo`` is a thin command around it.

The baseline is the embedded model as mlquant loads it: the Q4_K_M GGUF dequantized to float, so the baseline is
itself a 4-bit model and the demo measures what quantizing it *again* costs; the output says so. Its compute dtype
is float32 unless the CPU computes bf16 natively and bf16 agreed with float32 often enough (:func:`choose_dtype`).

Example:
    >>> from mlquant.demo import DEMO_LANGUAGES, choose_dtype
    >>> len(DEMO_LANGUAGES)
    8
    >>> choose_dtype("auto", flags=[]).label
    'fp32'
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlquant.errors import ConfigError

DEMO_LANGUAGES = ("en", "fr", "de", "zh", "ja", "ru", "th", "sw")  # 5 scripts: Latn Hans Jpan Cyrl Thai
DEMO_QUANTS = ("rtn-w8", "rtn-w4", "rtn-w4g128")
#: Per-task limits sized so that the demo stays near 10 minutes of CPU time on one core (bench/README.md, section
#: "make demo"; per quant, measured: a FLORES sentence ~0.28 s, an xcopa item ~0.5 s, a Belebele item ~1.2 s, an MGSM
#: item ~5 s; with xcopa at 20 the whole demo took 10.4 CPU minutes, with xcopa 16 and MGSM 4 it took 10.6 on a
#: clean clone beside another job, hence MGSM 2: it shows the generation path, not a finding). Bits per byte (flores_ppl: one
#: forward pass per sentence, every sentence paired) carries the signal that survives Holm's correction, so it gets
#: 16 sentences in each language; xcopa has only zh th sw of these languages; Belebele's passages are long and MGSM
#: generates, so they get few items in two languages each.
DEMO_TASKS: tuple[dict[str, Any], ...] = (
    {"name": "flores_ppl", "limit": 16},
    {"name": "xcopa", "limit": 16},
    {"name": "belebele", "limit": 8, "languages": ["en", "zh"]},
    {"name": "mgsm", "shots": 1, "max_new_tokens": 48, "limit": 2, "languages": ["en", "ja"]},
)
#: The baseline as the output names it: what it is, not just its dtype.
BASELINE_NAME = "Gemma 3 270M Q4_K_M GGUF dequantized"

#: The native-bf16 CPU flags of /proc/cpuinfo: AMX tiles (Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake,
#: Zen 4). Without one, torch emulates bf16 matrix products through float32 and gains nothing.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: Share of items on which the demo model in bf16 predicted what it predicts in float32 (bench/bf16.py; protocol and
#: figures in bench/README.md). bf16 is used only when this is at least :data:`BF16_MIN_AGREEMENT`.
BF16_AGREEMENT = 119 / 120  # xcopa zh/th/sw, 40 items each: 1 prediction differed (th); 2026-12-01
BF16_AGREEMENT_ITEMS = 120
BF16_MIN_AGREEMENT = 0.99
#: Items shown among the cells that did not survive Holm (the largest changes).
SHOW_NOT_SIGNIFICANT = 6


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The native-bf16 flags (:data:`BF16_FLAGS`) that this CPU reports; ``[]`` for none or no readable file.

    Args:
        cpuinfo: the file to read (``/proc/cpuinfo`` on Linux; absent elsewhere, which gives ``[]``).

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "cpuinfo"
        >>> _ = f.write_text("flags\\t\\t: fpu sse2 avx512f avx512_bf16 amx_tile\\n")
        >>> cpu_bf16_flags(f)
        ['avx512_bf16']
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    return [f for f in BF16_FLAGS if f in flags]


@dataclass(frozen=True)
class DtypeChoice:
    """The baseline's compute dtype and why.

    Attributes:
        label: ``fp32`` or ``bf16`` (the baseline's quant label).
        reason: one sentence for the output.
    """

    label: str
    reason: str

    @property
    def torch_dtype(self) -> str:
        """The torch dtype name (``float32`` or ``bfloat16``)."""
        return {"fp32": "float32", "bf16": "bfloat16"}[self.label]


def choose_dtype(
    requested: str, flags: list[str] | None = None, agreement: float = BF16_AGREEMENT, items: int = BF16_AGREEMENT_ITEMS
) -> DtypeChoice:
    """Pick the demo's compute dtype: ``auto`` is bf16 only on a native-bf16 CPU and only if bf16 agreed with fp32.

    Args:
        requested: ``auto``, ``fp32`` or ``bf16``.
        flags: the CPU's native-bf16 flags (default: :func:`cpu_bf16_flags` of this machine).
        agreement: the measured share of items where bf16's prediction equals fp32's (:data:`BF16_AGREEMENT`).
        items: the number of items behind ``agreement``.

    Raises:
        ConfigError: ``requested`` is not one of the three.

    Example:
        >>> choose_dtype("auto", flags=["amx_bf16"], agreement=0.995, items=400).label
        'bf16'
        >>> choose_dtype("auto", flags=["amx_bf16"], agreement=0.97, items=400).reason
        'fp32: bf16 agreed with fp32 on 97.0 % of 400 items (bench/bf16.py), below the 99 % required'
    """
    if requested not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"demo: dtype {requested!r} is not one of 'auto', 'fp32', 'bf16'.")
    if requested != "auto":
        return DtypeChoice(requested, f"{requested}: asked for (--dtype {requested})")
    flags = cpu_bf16_flags() if flags is None else flags
    measured = f"{100 * agreement:.1f} % of {items} items (bench/bf16.py)"
    if not flags:
        return DtypeChoice(
            "fp32", "fp32: this CPU has no native bf16 (no amx_bf16 or avx512_bf16 flag), so bf16 would be emulated "
            "and gain nothing" + (f"; bf16 agreed with fp32 on {measured}" if agreement == agreement else "")
        )
    if not agreement >= BF16_MIN_AGREEMENT:  # NaN (never measured) counts as a failure
        required = f"{100 * BF16_MIN_AGREEMENT:.0f} %"
        return DtypeChoice("fp32", f"fp32: bf16 agreed with fp32 on {measured}, below the {required} required")
    native = ", ".join(flags)
    return DtypeChoice("bf16", f"bf16: this CPU computes it natively ({native}) and it agreed with fp32 on {measured}")


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo.

    Attributes:
        out: the run folder (created; a finished run there is resumed, not recomputed).
        limit: items per cell for every task; None keeps each task's demo limit (:data:`DEMO_TASKS`).
        dtype: ``auto``, ``fp32`` or ``bf16``: the compute dtype of the baseline and the quantized models.
        progress: show one progress bar per cell.
        model: the model (default: the embedded Gemma 3 270M; another name, folder or .gguf file is named as it is
            in the output).
        quants: the quantizations compared with the baseline.

    Example:
        >>> DemoOptions().dtype
        'auto'
    """

    out: Path = field(default_factory=lambda: Path("runs/demo"))
    limit: int | None = None
    dtype: str = "auto"
    progress: bool = True
    model: str = "gemma3-270m"
    quants: tuple[str, ...] = DEMO_QUANTS

    @property
    def baseline_name(self) -> str:
        """What the baseline is, for the output: :data:`BASELINE_NAME` for the embedded model, else its name."""
        return BASELINE_NAME if self.model == "gemma3-270m" else self.model


def demo_study(options: DemoOptions, choice: DtypeChoice) -> Any:
    """The demo's :class:`mlquant.Study` (nothing runs yet).

    Raises:
        ConfigError: a limit that is not a positive integer.
    """
    from mlquant.study import Study

    if options.limit is not None and (not isinstance(options.limit, int) or options.limit < 1):
        raise ConfigError(f"demo: --limit {options.limit!r}; expected a positive integer (or none: the demo's limits).")
    tasks = [dict(t, limit=options.limit) if options.limit else dict(t) for t in DEMO_TASKS]
    quants: list[Any] = [choice.label]
    quants += [q if choice.label == "fp32" else {"label": q, "dtype": choice.torch_dtype} for q in options.quants]
    return Study(options.model, quant=quants, tasks=tasks, languages=list(DEMO_LANGUAGES), seed=0, name="demo")


@contextlib.contextmanager
def quiet_dependencies() -> Iterator[None]:
    """Inside: no transformers progress bar ("Loading weights") and no FutureWarning/UserWarning that
    transformers, torch or accelerate issue about their own deprecations; mlquant's own warnings still show.
    Both are restored on exit."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, UserWarning):
                warnings.filterwarnings("ignore", category=category, module=r"(transformers|torch|accelerate)(\.|$)")
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _change(row: Any) -> str:
    """One cell's change in words: scores, relative change with its CI, Holm p, n."""
    hib = bool(row.higher_is_better)
    worse = (row.diff < 0) if hib else (row.diff > 0)
    if math.isfinite(row.rel_change_lo) and math.isfinite(row.rel_change_hi):
        change = f"{row.rel_change:+7.1f} % [{row.rel_change_lo:+.1f}, {row.rel_change_hi:+.1f}]"
    else:  # a baseline of 0 in some bootstrap resample: no relative interval, so the difference and its interval
        lo, hi = getattr(row, "diff_lo", math.nan), getattr(row, "diff_hi", math.nan)
        change = f"diff {row.diff:+.3g} [{lo:+.3g}, {hi:+.3g}] (too few correct items for a relative CI)"
    return (
        f"{row.quant:<11} {row.task:<11} {row.lang:<3} {row.metric:<14} {row.baseline:>8.4g} -> {row.quantized:<8.4g} "
        f"{change}  {'worse' if worse else 'better'}  p_holm {row.p_holm:.2g}  n {int(row.n)}"
    )


def findings_text(cells: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """The summary's lines: the cells that survive Holm first, then the largest of the others with their CIs.

    Args:
        cells: :meth:`mlquant.stats.Summary.to_frame` (one row per quant x task x language).
        alpha: the family-wise level.

    Example:
        >>> cells = pd.DataFrame({"quant": ["w4", "w4"], "task": "t", "lang": ["en", "ja"], "metric": "accuracy",
        ...     "higher_is_better": True, "n": 40, "baseline": [0.8, 0.6], "quantized": [0.5, 0.55],
        ...     "diff": [-0.3, -0.05], "rel_change": [-37.5, -8.3], "rel_change_lo": [-50.0, -25.0],
        ...     "rel_change_hi": [-25.0, 8.0], "p_holm": [0.001, 0.9], "mdd_rel": [20.0, 30.0]})
        >>> print(findings_text(cells)[1])
          w4          t           en  accuracy            0.8 -> 0.5        -37.5 % [-50.0, -25.0]  worse  p_holm 0.001  n 40
    """
    total = len(cells)
    ranked = cells.assign(_abs=cells["rel_change"].abs()).sort_values(["p_holm", "_abs"], ascending=[True, False])
    significant = ranked[ranked["p_holm"] < alpha]
    lines = [f"Significant after Holm across all {total} cells (alpha {alpha}; paired by item; 95 % bootstrap CI of the "
             f"relative change 100*(q-b)/b; exact McNemar or sign-flip permutation test): {len(significant)}"]
    lines += ["  " + _change(r) for r in significant.itertuples(index=False)]
    if not len(significant):
        lines.append("  none: at this many items no cell's change is distinguishable from noise.")
    rest = ranked[~(ranked["p_holm"] < alpha)].sort_values("_abs", ascending=False).head(SHOW_NOT_SIGNIFICANT)
    if len(rest):
        lines += ["", f"Not significant ({total - len(significant)} cells); the largest changes, with the smallest change "
                  "each cell could detect (mdd_rel, 80 % power) -- no evidence either way:"]
        lines += [f"  {_change(r)}  mdd_rel {r.mdd_rel:.0f} %" for r in rest.itertuples(index=False)]
    return lines


def run_demo(options: DemoOptions, echo: Callable[[str], Any] = print) -> Path:
    """Run (or resume) the demo study in ``options.out``, print its summary through ``echo``, write the report.

    Returns:
        The HTML report's path (``<out>/report.html``).

    Raises:
        ConfigError: a bad option (before any model is loaded).
        MlquantError: a failure while running the study.
    """
    from mlquant.report import build_report
    from mlquant.stats import summary as stats_summary

    started, cpu = time.perf_counter(), time.process_time()
    choice = choose_dtype(options.dtype)
    study = demo_study(options, choice)
    baseline = f"{choice.label} ({options.baseline_name})"
    echo(f"mlquant demo: {baseline} vs {', '.join(options.quants)}; {', '.join(t['name'] for t in DEMO_TASKS)}; "
         f"languages {' '.join(DEMO_LANGUAGES)}.")
    if options.model == "gemma3-270m":
        echo(f"Baseline: {baseline}. It is itself a 4-bit model (Q4_K_M), so every change below is what quantizing "
             "it *again* costs.")
    echo(f"Compute dtype: {choice.reason}.")
    out = Path(options.out)
    with quiet_dependencies():
        results = study.run(out, progress=options.progress)
    frame = results.frame
    with warnings.catch_warnings():
        # A baseline of 0 in some bootstrap resample (few correct items): the lines below print the difference and
        # its interval instead, and say why, so the statistics' own warning would only repeat it.
        warnings.filterwarnings("ignore", message="some bootstrap resamples have a baseline score of 0")
        summary = stats_summary(frame[frame["score"].notna()], baseline=choice.label)
        contrasts = summary.contrasts()
        report = build_report(results, choice.label).write_html(out / "report.html")
    echo("")
    for line in findings_text(summary.to_frame()):
        echo(line)
    for r in contrasts.itertuples(index=False):
        hib = getattr(r, "higher_is_better", None)
        which = "" if hib is None else (" (higher is better: accuracy)" if str(hib) == "True" else
                                        " (lower is better: bits per byte)")
        echo(f"{r.quant}{which}: non-Latin {r.non_latin:+.1f} % vs Latin {r.latin:+.1f} % (mean relative change per cell); "
             f"difference {r.difference:+.1f} points, 95 % CI [{r.lo:+.1f}, {r.hi:+.1f}]")
    s = study.last_run
    echo(
        f"\nReport: {report} (figures, every table, every cell's statistics). Text version: mlquant report {out}\n"
        f"{len(frame)} item results in {out} ({s.cells_computed} cells computed, {s.cells_skipped} already there); "
        f"{time.perf_counter() - started:.0f} s wall, {time.process_time() - cpu:.0f} s CPU. Baseline: {baseline}."
    )
    return report
