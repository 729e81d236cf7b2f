"""Per-language activation ranges of a model's Linear inputs, and how much of them a calibration set covers.

A calibrated quantizer (GPTQ, AWQ, SmoothQuant) only sees the activations of its calibration text. Where another
language drives some input channels of a Linear harder than the calibration text did, or lights up other outlier
channels, the quantizer has not weighted those channels, and that language pays. This module measures that:

* :func:`activation_ranges` runs texts through the model with forward pre-hooks on every Linear of the decoder
  blocks and keeps streaming statistics per input channel: the largest magnitude, the first four moments (for the
  channel's kurtosis), how often the channel holds an *outlier* (``|x| > k * rms(token)``, the token's root mean
  square over the Linear's input channels; ``k = 6`` by default, after the magnitude-6 outliers of LLM.int8(),
  made scale-free), and the exact 99.9th percentile of ``|x|`` over the Linear (from a bounded buffer of the
  largest values). No activation is stored; the hooks are removed afterwards, also on error.
* Evaluation languages read FLORES-200 devtest sentences with evaluation ids (1-812, the same ids in every
  language: parallel text); calibration sources read exactly the texts a quantizer calibrates on
  (:func:`mlquant.quantize.calibration.calibration_texts`). Custom texts can be given as a mapping.
* :meth:`ActivationTable.coverage` says, per Linear, how much of an evaluation language's range a calibration set
  covers: the share of the language's tokens with some channel above the calibration set's maximum for that channel,
  the share of entries above it, the ratio of the ranges, and which of the language's outlier channels the
  calibration text never made outliers.

The first position of each sequence (BOS) is run but left out of the statistics: it is the same in every text and
language, and its massive activations would mask everything else.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> table = activation_ranges(mq.load_model("gemma3-270m"), languages=["en", "el", "ar"],  # doctest: +SKIP
    ...                           calibration=["flores:en:128"], n_sentences=32)
    >>> table.coverage("flores:en:128", "el").to_frame().head()  # doctest: +SKIP

References:
    Dettmers, T., et al. (2022). LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale. NeurIPS
    (outlier features of magnitude >= 6). Sun, M., et al. (2024). Massive Activations in Large Language Models.
    COLM (the first token's activations).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, DataError
from mlquant.stats._types import FrameResult, format_frame

__all__ = ["ActivationTable", "ChannelStats", "CoverageTable", "activation_ranges", "flores_texts"]

#: Channels listed per Linear as its outlier channels (those with the most outliers).
TOP_CHANNELS = 8
#: Quantile of |x| reported per Linear.
QUANTILE = 0.999


@dataclass
class ChannelStats:
    """Streaming statistics of one Linear's input for one source (per input channel, float64 sums).

    Attributes:
        n: tokens seen.
        absmax: largest |x| per channel.
        s1, s2, s3, s4: sums of x, x^2, x^3, x^4 per channel.
        outliers: per channel, how many tokens had ``|x| > k * rms(token)``.
        tail: the largest |x| over all channels (enough of them for the exact 99.9th percentile).
        exceed_tokens, exceed_entries: per earlier source, tokens with some channel above that source's ``absmax``
            and entries above it.
    """

    channels: int
    capacity: int
    n: int = 0
    absmax: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s1: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s3: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s4: np.ndarray = field(default_factory=lambda: np.zeros(0))
    outliers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    exceed_tokens: dict[str, int] = field(default_factory=dict)
    exceed_entries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = self.channels
        self.absmax, self.s1, self.s2, self.s3, self.s4 = (np.zeros(c) for _ in range(5))
        self.outliers = np.zeros(c, dtype=np.int64)

    def update(self, x: np.ndarray, k: float, against: Mapping[str, np.ndarray]) -> None:
        """Add a (tokens, channels) block of inputs."""
        x64 = x.astype(np.float64)
        a = np.abs(x64)
        self.n += x.shape[0]
        self.absmax = np.maximum(self.absmax, a.max(axis=0))
        x2 = x64 * x64
        self.s1 += x64.sum(axis=0)
        self.s2 += x2.sum(axis=0)
        self.s3 += (x2 * x64).sum(axis=0)
        self.s4 += (x2 * x2).sum(axis=0)
        rms = np.sqrt(x2.mean(axis=1, keepdims=True))
        self.outliers += (a > k * rms).sum(axis=0)
        flat = np.concatenate([self.tail, a.ravel().astype(np.float32)])
        if flat.size > self.capacity:
            flat = np.partition(flat, flat.size - self.capacity)[flat.size - self.capacity :]
        self.tail = flat
        for name, limit in against.items():
            over = a > limit[None, :]
            self.exceed_tokens[name] = self.exceed_tokens.get(name, 0) + int(over.any(axis=1).sum())
            self.exceed_entries[name] = self.exceed_entries.get(name, 0) + int(over.sum())

    def quantile(self, q: float = QUANTILE) -> float:
        """``np.quantile(|x|, q)`` over every entry seen (linear interpolation), from the tail buffer."""
        total = self.n * self.channels
        if total == 0:
            return float("nan")
        pos = (total - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        ranks_from_top = total - 1 - lo  # the value at sorted index lo is the (ranks_from_top)-th largest, from 0
        if ranks_from_top >= self.tail.size:
            raise DataError(f"the tail buffer ({self.tail.size}) is too small for the {q} quantile of {total} values.")
        top = np.sort(self.tail)[::-1]
        v_lo = float(top[total - 1 - lo])
        v_hi = float(top[total - 1 - hi])
        return v_lo + (v_hi - v_lo) * (pos - lo)

    def kurtosis(self) -> np.ndarray:
        """Excess (Fisher) kurtosis per channel, biased, as ``scipy.stats.kurtosis`` defaults (NaN: constant)."""
        n = max(self.n, 1)
        mu = self.s1 / n
        m2 = self.s2 / n - mu**2
        m4 = self.s4 / n - 4 * mu * self.s3 / n + 6 * mu**2 * self.s2 / n - 3 * mu**4
        with np.errstate(divide="ignore", invalid="ignore"):
            out: np.ndarray = np.where(m2 > 1e-12 * np.maximum(self.s2 / n, 1e-300), m4 / m2**2 - 3.0, np.nan)
        return out

    def outlier_channels(self, top: int = TOP_CHANNELS) -> list[int]:
        """The channels with the most outliers (at least one), most first."""
        order = np.argsort(-self.outliers, kind="stable")
        return [int(c) for c in order[:top] if self.outliers[c] > 0]


@dataclass(frozen=True, eq=False)
class CoverageTable(FrameResult):
    """Per Linear: how much of ``lang``'s activation range the calibration source ``source`` covers."""

    source: str = ""
    lang: str = ""

    def __str__(self) -> str:
        head = f"coverage of {self.lang!r} activations by calibration {self.source!r}"
        return head + "\n" + format_frame(self._frame, digits=4, max_rows=60)


@dataclass(frozen=True, eq=False)
class ActivationTable(FrameResult):
    """One row per (source, Linear): n_tokens, channels, absmax, p99_9, outlier_share, kurtosis_max,
    kurtosis_median, outlier_channels; ``stats`` holds the per-channel statistics behind them.

    Attributes:
        stats: ``(source, linear name) -> ChannelStats``.
        calibration: the calibration sources (compared against in :meth:`coverage`).
        k: the outlier threshold in token RMS.
    """

    stats: dict[tuple[str, str], ChannelStats] = field(default_factory=dict, repr=False)
    calibration: tuple[str, ...] = ()
    k: float = 6.0

    def coverage(self, calibration_source: str, eval_lang: str) -> CoverageTable:
        """How much of ``eval_lang``'s activation range ``calibration_source`` covers, per Linear.

        Columns: ``tokens_exceeding`` (share of the language's tokens with some channel above the calibration
        set's maximum of that channel), ``entries_exceeding`` (share of entries), ``range_ratio`` (the language's
        largest |x| / the calibration set's, over the Linear), ``channels_exceeding`` (channels whose maximum is
        higher in the language), ``outlier_channels_covered`` (share of the language's outlier channels that are
        also outlier channels of the calibration text) and ``missing_outlier_channels``.

        Raises:
            ConfigError: the source was not given as ``calibration=`` or the language was not measured (both named).
        """
        if calibration_source not in self.calibration:
            raise ConfigError(
                f"coverage: {calibration_source!r} is not a calibration source of this table "
                f"(calibration sources: {list(self.calibration)}); pass it to activation_ranges(calibration=...)."
            )
        names = [name for (src, name) in self.stats if src == eval_lang]
        if not names:
            sources = sorted({src for src, _ in self.stats})
            raise ConfigError(f"coverage: no statistics for {eval_lang!r}; measured sources: {sources}.")
        rows = []
        for name in names:
            ev, cal = self.stats[(eval_lang, name)], self.stats[(calibration_source, name)]
            if calibration_source not in ev.exceed_tokens:
                raise ConfigError(
                    f"coverage: {eval_lang!r} was measured before {calibration_source!r}; list it under "
                    "languages=, and the calibration source under calibration=."
                )
            ev_out, cal_out = ev.outlier_channels(), set(cal.outlier_channels())
            cal_max = float(cal.absmax.max())
            rows.append(
                {
                    "layer": _layer_index(name),
                    "linear": name,
                    "tokens_exceeding": ev.exceed_tokens[calibration_source] / max(ev.n, 1),
                    "entries_exceeding": ev.exceed_entries[calibration_source] / max(ev.n * ev.channels, 1),
                    "range_ratio": float(ev.absmax.max()) / cal_max if cal_max > 0 else float("nan"),
                    "channels_exceeding": int((ev.absmax > cal.absmax).sum()),
                    "outlier_channels_covered": (
                        sum(c in cal_out for c in ev_out) / len(ev_out) if ev_out else float("nan")
                    ),
                    "missing_outlier_channels": ",".join(str(c) for c in ev_out if c not in cal_out),
                }
            )
        return CoverageTable(_frame=pd.DataFrame(rows), source=calibration_source, lang=eval_lang)


def _layer_index(name: str) -> int:
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return -1


def flores_texts(lang: str, n: int) -> list[str]:
    """The first ``n`` FLORES-200 devtest sentences of ``lang`` with evaluation ids (1-812), by id: parallel text.

    Raises:
        ConfigError: no FLORES data for ``lang`` under ``$MLQUANT_DATA_DIR/flores200/devtest``.

    Example:
        >>> len(flores_texts("en", 3))  # doctest: +SKIP
        3
    """
    from mlquant.data import data_dir, is_evaluation_id, read_jsonl, require

    root = data_dir()
    path = root / "flores200" / "devtest" / f"{lang}.jsonl" if root is not None else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"activation_ranges: no FLORES-200 devtest file for {lang!r} (expected "
            f"$MLQUANT_DATA_DIR/flores200/devtest/{lang}.jsonl)."
        )
    rows = sorted(
        (int(require(r, "id", (int, str))), str(require(r, "text"))) for r in read_jsonl(path)
    )
    return [text for i, text in rows if is_evaluation_id(i) and text.strip()][:n]


def _texts(source: str, n: int, calibration: bool) -> list[str]:
    if not calibration:
        return flores_texts(source, n)
    from mlquant.quantize.calibration import calibration_texts

    full = source if source.startswith("flores:") or "/" in source else f"flores:{source}:128"
    return calibration_texts(full)


@contextmanager
def _hooks(modules: Sequence[tuple[str, Any]], sink: dict[str, list[Any]]) -> Iterator[None]:
    """Forward pre-hooks that append each module's input to ``sink[name]``; always removed on exit."""
    handles = []
    try:
        for name, module in modules:

            def hook(mod: Any, args: tuple[Any, ...], name: str = name) -> None:
                sink.setdefault(name, []).append(args[0].detach())

            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_args(languages: Any, calibration: Any, n_sentences: int, k: float) -> None:
    if isinstance(languages, str) or isinstance(calibration, str):
        raise ConfigError("activation_ranges: languages and calibration are lists (or mappings), not one string.")
    if not languages and not calibration:
        raise ConfigError("activation_ranges: give at least one language or calibration source.")
    if not isinstance(n_sentences, int) or isinstance(n_sentences, bool) or n_sentences < 1:
        raise ConfigError(f"activation_ranges: n_sentences={n_sentences!r}; expected a positive integer.")
    if not (isinstance(k, (int, float)) and not isinstance(k, bool) and k > 0):
        raise ConfigError(f"activation_ranges: k={k!r}; expected a positive outlier threshold (in token RMS).")


def activation_ranges(
    model: Any,
    *,
    languages: Sequence[str] | Mapping[str, Sequence[str]],
    calibration: Sequence[str] | Mapping[str, Sequence[str]] = (),
    n_sentences: int = 32,
    layers: Sequence[int] | None = None,
    k: float = 6.0,
) -> ActivationTable:
    """Per source x Linear input: absmax, p99.9 of |x|, outlier share, channel kurtosis and outlier channels.

    Args:
        model: an :class:`~mlquant.models.HFModel` (``mq.load_model(...)``, or a quantized one).
        languages: evaluation languages (``["en", "el"]``: the first ``n_sentences`` FLORES devtest sentences with
            evaluation ids, the same ids in each language), or a mapping ``name -> texts``.
        calibration: calibration sources measured first, so that :meth:`ActivationTable.coverage` can compare the
            languages with them: calibration strings (``flores:en:128``, ``flores:en+ja:128``; a bare ``ja`` means
            ``flores:ja:128``: the texts GPTQ calibrates on), or a mapping ``name -> texts``.
        n_sentences: FLORES sentences per evaluation language (each cut to 128 tokens).
        layers: decoder block indices to hook (default: all).
        k: outlier threshold, in multiples of the token's RMS over the Linear's input channels.

    Returns:
        An :class:`ActivationTable`; ``to_frame()`` has one row per (source, Linear) with ``source``, ``kind``
        (``language`` / ``calibration``), ``layer``, ``linear``, ``n_tokens``, ``channels``, ``absmax``, ``p99_9``,
        ``outlier_share``, ``kurtosis_max``, ``kurtosis_median`` and ``outlier_channels`` (up to 8, most first).

    Raises:
        ConfigError: bad arguments, a missing FLORES language, a layer index out of range, or a model without a
            torch module; before any forward pass.

    Example:
        >>> import mlquant as mq  # doctest: +SKIP
        >>> t = activation_ranges(mq.load_model("gemma3-270m"), languages=["en", "el"], n_sentences=16)  # doctest: +SKIP
        >>> t.to_frame().groupby("source").outlier_share.mean()  # doctest: +SKIP
    """
    _check_args(languages, calibration, n_sentences, k)
    torch_model = getattr(model, "torch_model", None)
    tokenizer = getattr(model, "tokenizer", None)
    if torch_model is None or tokenizer is None:
        raise ConfigError(
            f"activation_ranges: expected an HFModel (with torch_model and tokenizer), got {type(model).__name__}."
        )
    sources: list[tuple[str, list[str], bool]] = []
    for group, is_cal in ((calibration, True), (languages, False)):
        items = group.items() if isinstance(group, Mapping) else ((s, None) for s in group)
        for name, texts in items:
            if any(name == s for s, _, _ in sources):
                raise ConfigError(f"activation_ranges: source {name!r} is listed twice.")
            got = [str(t) for t in texts] if texts is not None else _texts(str(name), n_sentences, is_cal)
            if not got:
                raise DataError(f"activation_ranges: source {name!r} has no text.")
            sources.append((str(name), got, is_cal))
    from mlquant.quantize._common import quantizable_linears

    linears = list(quantizable_linears(torch_model))
    if layers is not None:
        present = sorted({_layer_index(n) for n, _ in linears})
        bad = [i for i in layers if i not in present]
        if bad:
            raise ConfigError(f"activation_ranges: layer {bad[0]!r} is not a decoder block index (0-{max(present)}).")
        linears = [(n, m) for n, m in linears if _layer_index(n) in set(layers)]
    stats = _measure(model, linears, sources, float(k))
    rows = []
    for (src, name), st in stats.items():
        kurt = st.kurtosis()
        kind = "calibration" if any(s == src and c for s, _, c in sources) else "language"
        rows.append(
            {
                "source": src, "kind": kind, "layer": _layer_index(name), "linear": name, "n_tokens": st.n,
                "channels": st.channels, "absmax": float(st.absmax.max()), "p99_9": st.quantile(),
                "outlier_share": float(st.outliers.sum()) / max(st.n * st.channels, 1),
                "kurtosis_max": float(np.nanmax(kurt)) if np.isfinite(kurt).any() else float("nan"),
                "kurtosis_median": float(np.nanmedian(kurt)) if np.isfinite(kurt).any() else float("nan"),
                "outlier_channels": ",".join(str(c) for c in st.outlier_channels()),
            }
        )
    cal_names = tuple(s for s, _, c in sources if c)
    return ActivationTable(_frame=pd.DataFrame(rows), stats=stats, calibration=cal_names, k=float(k))


def _measure(
    model: Any, linears: list[tuple[str, Any]], sources: list[tuple[str, list[str], bool]], k: float
) -> dict[tuple[str, str], ChannelStats]:
    import torch

    from mlquant.quantize._common import pad_id
    from mlquant.quantize.calibration import encode_texts

    torch_model, tokenizer = model.torch_model, model.tokenizer
    device = next(torch_model.parameters()).device
    # The decoder alone: every hooked Linear is inside it, and the LM head (262k x 640 in Gemma 3) is not needed.
    get_decoder = getattr(torch_model, "get_decoder", None)
    body = get_decoder() if callable(get_decoder) else torch_model
    pad = pad_id(tokenizer)
    stats: dict[tuple[str, str], ChannelStats] = {}
    batch = 8
    for src, texts, is_cal in sources:
        seqs = encode_texts(tokenizer, texts, max_tokens=128)
        if not seqs:
            raise DataError(f"activation_ranges: the texts of {src!r} encode to no tokens.")
        n_tokens = sum(len(s) for s in seqs)
        against = _maxima(stats, sources, is_cal)
        sink: dict[str, list[Any]] = {}
        with _hooks(linears, sink), torch.no_grad():
            for start in range(0, len(seqs), batch):
                chunk = seqs[start : start + batch]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, s in enumerate(chunk):
                    ids[i, : len(s)] = torch.tensor(s)
                    mask[i, : len(s)] = 1
                sink.clear()
                body(input_ids=ids.to(device), attention_mask=mask.to(device))
                keep = mask.bool()
                keep[:, 0] = False  # BOS: the same in every sequence (see the module docstring)
                for name, _ in linears:
                    for captured in sink.get(name, []):
                        x = captured.reshape(len(chunk), width, -1)
                        rows = x[keep.to(x.device)].float().cpu().numpy()
                        st = stats.get((src, name))
                        if st is None:
                            capacity = math.ceil((1 - QUANTILE) * n_tokens * rows.shape[1]) + 2
                            st = stats[(src, name)] = ChannelStats(channels=rows.shape[1], capacity=capacity)
                        st.update(rows, k, {c: m[name] for c, m in against.items() if name in m})
    return stats


def _maxima(
    stats: dict[tuple[str, str], ChannelStats], sources: list[tuple[str, list[str], bool]], is_cal: bool
) -> dict[str, dict[str, np.ndarray]]:
    """Per calibration source measured so far: linear name -> per-channel absmax (languages are compared with them)."""
    if is_cal:
        return {}
    cal = {s for s, _, c in sources if c}
    out: dict[str, dict[str, np.ndarray]] = {}
    for (src, name), st in stats.items():
        if src in cal:
            out.setdefault(src, {})[name] = st.absmax.copy()
    return out
