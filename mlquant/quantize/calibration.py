"""Calibration data for quantizers, with a language: which texts GPTQ and SmoothQuant see.

A spec's ``calibration`` is one of:

* ``"flores:<lang>:<n>"`` — ``n`` sentences of FLORES-200 devtest in ``<lang>`` (``flores:ja:128``);
* ``"flores:mixed:<n>"`` — ``n`` sentences shared round-robin over *every* FLORES language present under
  ``$MLQUANT_DATA_DIR/flores200/devtest`` (sorted by code; 33 languages in the shipped data);
* ``"flores:<l1>+<l2>+...:<n>"`` — the same round-robin over the listed languages (``flores:en+ja+zh:96``);
* a path to a UTF-8 text file with one text per line (``n`` = up to 128 lines, sampled).

Sampling is deterministic given the seed (the method option ``seed``, default 0): the sentence ids of each
language are shuffled by ``random.Random(f"{seed}:{lang}")`` and taken in that order.

**Held-out ids.** Only the FLORES *devtest* split exists locally, so calibration and evaluation share a split.
To keep them disjoint, sentence ids are partitioned:

* ids ``1..812`` (:data:`EVAL_IDS`) are for evaluation (``flores_ppl``, FLORES MT) and are never used here;
* ids ``813..1004`` (:data:`CALIBRATION_IDS`, 192 per language) are the calibration pool;
* ids ``1005..1012`` (:data:`REPORT_IDS`) in :data:`REPORT_LANGUAGES` are the held-out text on which every
  quantization report measures layer output errors (the same text for every method and calibration).

Example:
    >>> from mlquant.quantize.calibration import parse_calibration
    >>> parse_calibration("flores:ja:128")
    CalibrationSource(kind='flores', languages=('ja',), n=128, path=None)
    >>> parse_calibration("flores:en+ja:64").languages
    ('en', 'ja')
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlquant.data import CALIBRATION_IDS, EVAL_IDS, REPORT_IDS, is_evaluation_id
from mlquant.errors import ConfigError, DataError

__all__ = [
    "CALIBRATION_IDS",
    "DEFAULT_CALIBRATION",
    "EVAL_IDS",
    "REPORT_IDS",
    "REPORT_LANGUAGES",
    "CalibrationSource",
    "calibration_digest",
    "calibration_texts",
    "check_calibration",
    "encode_texts",
    "is_evaluation_id",
    "parse_calibration",
    "report_texts",
]

#: Calibration used by GPTQ / SmoothQuant when a spec gives none (its label then carries no ``@...``).
DEFAULT_CALIBRATION = "flores:en:128"
#: Languages of the held-out report text (8 scripts); missing files are skipped.
REPORT_LANGUAGES = ("en", "de", "ru", "ar", "hi", "ja", "zh", "sw")
#: Most lines a text-file calibration uses.
MAX_FILE_TEXTS = 128
_MAX_N = 100_000


@dataclass(frozen=True)
class CalibrationSource:
    """A parsed calibration string: ``kind`` is ``flores`` or ``file``."""

    kind: str
    languages: tuple[str, ...]
    n: int
    path: str | None = None


def _flores_dir() -> Path | None:
    from mlquant.data import data_dir

    root = data_dir()
    if root is None:
        return None
    folder = root / "flores200" / "devtest"
    return folder if folder.is_dir() else None


def _flores_languages() -> list[str]:
    folder = _flores_dir()
    return sorted(p.stem for p in folder.glob("*.jsonl")) if folder is not None else []


def parse_calibration(calibration: str) -> CalibrationSource:
    """Parse a calibration string (syntax only; :func:`check_calibration` also checks the data exists).

    Raises:
        ConfigError: naming the key ``calibration`` and the value.
    """
    if not isinstance(calibration, str) or not calibration.strip():
        raise ConfigError(f"calibration={calibration!r}: expected 'flores:<lang>:<n>' or a text file path.")
    if calibration.startswith("flores:"):
        parts = calibration.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2].isdigit():
            raise ConfigError(
                f"calibration={calibration!r}: expected 'flores:<lang>:<n>', e.g. 'flores:ja:128' or 'flores:mixed:128'."
            )
        n = int(parts[2])
        if not 1 <= n <= _MAX_N:
            raise ConfigError(f"calibration={calibration!r}: the number of texts {n} must be 1-{_MAX_N}.")
        langs = tuple(parts[1].split("+"))
        if any(not lang or not lang.replace("-", "").isalnum() for lang in langs) or len(set(langs)) != len(langs):
            raise ConfigError(f"calibration={calibration!r}: bad language list {parts[1]!r}.")
        if "mixed" in langs and len(langs) > 1:
            raise ConfigError(f"calibration={calibration!r}: 'mixed' cannot be combined with other languages.")
        return CalibrationSource("flores", langs, n)
    return CalibrationSource("file", (), MAX_FILE_TEXTS, calibration)


def _resolve_languages(src: CalibrationSource, calibration: str) -> list[str]:
    available = _flores_languages()
    if not available:
        raise ConfigError(
            f"calibration={calibration!r}: no FLORES-200 devtest data; set MLQUANT_DATA_DIR to a folder with "
            "flores200/devtest/<lang>.jsonl (see shared/data/MANIFEST.md)."
        )
    if src.languages == ("mixed",):
        return available
    missing = [lang for lang in src.languages if lang not in available]
    if missing:
        raise ConfigError(
            f"calibration={calibration!r}: no FLORES-200 devtest data for language {missing[0]!r} "
            f"(available: {', '.join(available)})."
        )
    return list(src.languages)


def check_calibration(calibration: str | None) -> None:
    """Raise ConfigError if ``calibration`` does not parse or its data is missing (no model needed)."""
    if calibration is None:
        return
    src = parse_calibration(calibration)
    if src.kind == "file":
        path = Path(str(src.path)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"calibration={calibration!r}: not 'flores:<lang>:<n>' and no such text file (one text per line)."
            )
        return
    langs = _resolve_languages(src, calibration)
    if src.n > len(CALIBRATION_IDS) * len(langs):
        raise ConfigError(
            f"calibration={calibration!r}: at most {len(CALIBRATION_IDS) * len(langs)} texts; the calibration pool "
            f"is FLORES devtest ids {CALIBRATION_IDS.start}-{CALIBRATION_IDS.stop - 1} of each language."
        )


def _read_flores(lang: str) -> dict[int, str]:
    from mlquant.data import read_jsonl, require

    folder = _flores_dir()
    if folder is None or not (folder / f"{lang}.jsonl").is_file():
        raise DataError(f"no FLORES-200 devtest file for {lang!r} under $MLQUANT_DATA_DIR/flores200/devtest.")
    rows = read_jsonl(folder / f"{lang}.jsonl")
    return {int(require(r, "id", int)): str(require(r, "text")) for r in rows}


def _round_robin(langs: Sequence[str], n: int, ids: range, seed: int) -> list[str]:
    """``n`` texts taken in turn from each language (its ids shuffled by the seed); a language runs out → skipped."""
    order: dict[str, list[int]] = {}
    texts: dict[str, dict[int, str]] = {}
    for lang in langs:
        texts[lang] = _read_flores(lang)
        pool = [i for i in ids if i in texts[lang] and texts[lang][i].strip()]
        random.Random(f"{seed}:{lang}").shuffle(pool)
        order[lang] = pool
    out: list[str] = []
    pos = dict.fromkeys(langs, 0)
    while len(out) < n and any(pos[lang] < len(order[lang]) for lang in langs):
        for lang in langs:
            if len(out) >= n:
                break
            if pos[lang] < len(order[lang]):
                out.append(texts[lang][order[lang][pos[lang]]])
                pos[lang] += 1
    return out


def calibration_texts(calibration: str | None, seed: int = 0) -> list[str]:
    """The calibration texts for a spec's ``calibration`` string (None: :data:`DEFAULT_CALIBRATION`).

    Deterministic for a given (calibration, seed); FLORES texts come only from :data:`CALIBRATION_IDS`.

    Raises:
        ConfigError: the string is invalid or its data is missing.

    Example:
        >>> texts = calibration_texts("flores:ja:4", seed=0)  # doctest: +SKIP
        >>> len(texts)  # doctest: +SKIP
        4
    """
    calibration = calibration or DEFAULT_CALIBRATION
    check_calibration(calibration)
    src = parse_calibration(calibration)
    if src.kind == "file":
        lines = [line.strip() for line in Path(str(src.path)).expanduser().read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            raise ConfigError(f"calibration={calibration!r}: the file has no non-empty line.")
        idx = list(range(len(lines)))
        random.Random(f"{seed}:file").shuffle(idx)
        return [lines[i] for i in sorted(idx[: src.n])]
    langs = _resolve_languages(src, calibration)
    return _round_robin(langs, src.n, CALIBRATION_IDS, seed)


def report_texts() -> list[str]:
    """The fixed held-out text of quantization reports (:data:`REPORT_IDS` × :data:`REPORT_LANGUAGES`).

    Returns an empty list when no FLORES data is available (reports then leave output errors empty).
    """
    langs = [lang for lang in REPORT_LANGUAGES if lang in _flores_languages()]
    out: list[str] = []
    for lang in langs:
        rows = _read_flores(lang)
        out.extend(rows[i] for i in REPORT_IDS if i in rows)
    return out


def encode_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int = 128) -> list[list[int]]:
    """Token ids of each text as the model scores it (BOS, else EOS, first), cut to ``max_tokens``."""
    prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    prefix = [p for p in prefix if p is not None]
    out = []
    for text in texts:
        ids = prefix + list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) > len(prefix):
            out.append(ids[:max_tokens])
    return out


def calibration_digest(calibration: str | None, seed: int = 0) -> str:
    """sha256 of the calibration texts (for fingerprints of file-based calibration, whose content may change)."""
    h = hashlib.sha256()
    for text in calibration_texts(calibration, seed):
        h.update(text.encode("utf-8") + b"\n")
    return h.hexdigest()
