"""Language confusion: does the model answer in the language the user asked for? (Marchisio et al. 2024b, LCB)

The Language Confusion Benchmark (for-ai/language-confusion) asks open questions in 15 languages, either written
in the language itself (*monolingual*: sub-sets ``aya``, ``dolly``, ``okapi``, ``native``) or written in English
with an instruction to answer in the language (*crosslingual*: ``okapi``, ``sharegpt``, ``complex_prompts``), and
checks the answers with the benchmark's own procedure (``compute_metrics.py`` @ 0cfdbb4a):

* the completion is cut at ``"\\nQ:"``, ASCII punctuation, ``—`` and ``،`` are removed, and it is split into lines;
  lines shorter than 5 tokens are ignored (tokens: jieba words for zh, MeCab words for ja, else whitespace words);
  a completion without any remaining line is *skipped* (it counts in no denominator);
* **line-level pass** (LPR): every remaining line is identified as the requested language;
* **word-level pass** (WPR; only for ar, hi, ja, ko, ru, zh, where English words stand out in another script):
  of the completions that pass line-level, those without any token from the English word list
  (``english_words.txt``: lower-case words longer than 3 letters);
* **LCPR**: the harmonic mean of LPR and WPR (Marchisio et al. 2024a, the quantization paper).

Decoding follows the benchmark: at most 100 new tokens, nucleus sampling with p = 0.75 and T = 0.3, seeded.

The benchmark identifies lines with fastText ``lid.176.bin`` (a 126 MB download). Here the detector is pluggable
(:class:`LanguageDetector`); the default is the offline ``lingua-language-detector`` (models ship on PyPI), and
:class:`FastTextDetector` runs a fastText LID model when one is at hand (``lid.176.bin`` or the compressed
``lid.176.ftz``). See ``docs/tasks.md`` for how lingua's verdicts differ from fastText's.

The per-item score is 1.0 / 0.0 for the line-level pass (NaN for a skipped completion); word-level pass and the
line details are kept in ``extra``. Task-level LPR / WPR / LCPR come from :func:`confusion_scores` (any grouping)
and, per cell, from the task hook :meth:`LanguageConfusion.aggregate` (what ``mlquant report`` shows).

Example:
    >>> lines = "Das ist ein ganz normaler deutscher Satz.\\nThis line however is written in English."
    >>> check = check_completion(lines, "de", detector=lambda text: "en" if "English" in text else "de")
    >>> check.line_pass, check.line_languages
    (False, ('de', 'en'))
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from mlquant.data import data_dir, local_file, require
from mlquant.errors import ConfigError, DataError
from mlquant.languages import Language
from mlquant.requests import GenerateRequest, Request
from mlquant.tasks import CellRows, CorpusScore, CorpusScores, Item, ItemScore, Task, cell_records, register_task
from mlquant.tasks._lid import (
    LCB_LANGUAGES,
    DetectorLike,
    FastTextDetector,
    LanguageDetector,
    LinguaDetector,
    default_detector,  # noqa: F401  (re-exported: the task's default detector)
    describe_detector,
    detect_fn,
    detector_from_string,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LCB_LANGUAGES",
    "SUBSETS",
    "WPR_LANGUAGES",
    "CompletionCheck",
    "FastTextDetector",
    "LanguageConfusion",
    "LanguageDetector",
    "LinguaDetector",
    "check_completion",
    "confusion_scores",
    "english_words",
    "format_prompt",
    "lcb_normalize",
    "lcb_tokenize",
]

log = logging.getLogger(__name__)

#: Languages for which the benchmark computes the word-level pass rate (``compute_metrics.py``).
WPR_LANGUAGES = frozenset({"ar", "hi", "ja", "ko", "ru", "zh"})
#: Sub-sets of the benchmark, as folders ``language_confusion/<setting>/<source>/<lang>.jsonl``.
SUBSETS: tuple[str, ...] = (
    "monolingual/aya",
    "monolingual/dolly",
    "monolingual/okapi",
    "monolingual/native",
    "crosslingual/okapi",
    "crosslingual/sharegpt",
    "crosslingual/complex_prompts",
)
#: Minimum number of tokens of a line that the benchmark checks.
MIN_LINE_TOKENS = 5
#: The benchmark's base-model prompt format (``few_shot_prompting.turns_to_prompt``); the same in every language.
QA_TEMPLATE = "Q: {prompt}\nA:"

Template = Literal["qa", "plain"]


_PUNCT = str.maketrans("", "", string.punctuation)


def lcb_normalize(text: str) -> str:
    """The benchmark's ``normalize``: cut at ``"\\nQ:"``, strip, drop ASCII punctuation, ``—`` to space, drop ``،``."""
    text = text.split("\nQ:")[0].strip()
    text = text.translate(_PUNCT)
    return text.replace("—", " ").replace("،", "")


_warned_fallback: set[str] = set()
# Fallback segmentation for zh / ja without jieba / fugashi: Latin-script words and digit runs, single other characters.
_FALLBACK_TOKEN = re.compile(r"[A-Za-z0-9\u00c0-\u024f']+|[^\sA-Za-z0-9\u00c0-\u024f']")


@functools.lru_cache(maxsize=1)
def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@functools.lru_cache(maxsize=1)
def _mecab() -> Any:
    from fugashi import Tagger

    return Tagger("-O wakati -b 50000")


def lcb_tokenize(line: str, lang: str) -> list[str]:
    """The benchmark's tokens of one line: jieba words (zh), MeCab/UniDic words (ja), whitespace words (others).

    Without jieba / fugashi (``pip install 'mlquant[confusion]'``), zh and ja fall back to one token per character
    (Latin words and numbers stay whole) and a warning is logged once: the 5-token line threshold then keeps more
    short lines than the benchmark does.

    Example:
        >>> lcb_tokenize("one two  three", "de")
        ['one', 'two', 'three']
    """
    if lang == "zh":
        try:
            return [t for t in _jieba().cut(line)]
        except ImportError:
            pass
    elif lang == "ja":
        try:
            return [str(t) for t in _mecab().parse(line).split()]
        except (ImportError, RuntimeError):
            pass
    else:
        return line.split()
    if lang not in _warned_fallback:
        _warned_fallback.add(lang)
        log.warning(
            "language confusion: no %s word segmenter (pip install %s); counting characters as tokens, which differs "
            "from the benchmark.",
            lang,
            "jieba" if lang == "zh" else "fugashi unidic-lite",
        )
    return [t for t in _FALLBACK_TOKEN.findall(line) if not t.isspace()]


def _english_words_file(source: str | os.PathLike[str] | None) -> Path | None:
    roots = []
    if source is not None and not str(source).startswith("hub:"):
        roots.append(Path(source))
    root = data_dir()
    if root is not None:
        roots.append(root)
    for r in roots:
        path = r / "language_confusion" / "english_words.txt"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=4)
def _read_words(path: str) -> frozenset[str]:
    with open(path, encoding="utf-8") as fh:
        words = (line.strip() for line in fh)
        return frozenset(w for w in words if w.islower() and len(w) > 3)


def english_words(source: str | os.PathLike[str] | None = None) -> frozenset[str]:
    """The benchmark's English word list, filtered as it does: lower-case words longer than 3 characters.

    Read from ``<source or MLQUANT_DATA_DIR>/language_confusion/english_words.txt``.

    Raises:
        DataError: no word list there.
    """
    path = _english_words_file(source)
    if path is None:
        where = source or os.environ.get("MLQUANT_DATA_DIR") or "<MLQUANT_DATA_DIR unset>"
        raise DataError(
            f"language confusion: {where}/language_confusion/english_words.txt does not exist; the word-level pass "
            "rate needs the benchmark's word list (file 'words' of for-ai/language-confusion)."
        )
    return _read_words(str(path))


@dataclass(frozen=True)
class CompletionCheck:
    """The benchmark's verdict on one completion.

    Attributes:
        skipped: no line had 5 tokens or more; the completion counts in no pass rate.
        line_pass: every checked line is in the requested language (None when skipped).
        word_pass: line-level pass and no English word (None when skipped, when line-level failed, or when the
            benchmark defines no word-level check for the language).
        lines: the checked lines (normalized).
        line_languages: the detector's language of each checked line (``"?"`` for unknown).
        english_words: English words found (for word-level failures).
        lang: the requested language.
    """

    skipped: bool
    line_pass: bool | None
    word_pass: bool | None
    lines: tuple[str, ...]
    line_languages: tuple[str, ...]
    english_words: tuple[str, ...] = ()
    lang: str = ""

    @property
    def line_errors(self) -> int:
        """Checked lines not identified as the requested language."""
        return sum(1 for code in self.line_languages if code != self.lang)


def check_completion(
    completion: str,
    lang: str,
    *,
    detector: DetectorLike | None = None,
    words: Iterable[str] | None = None,
) -> CompletionCheck:
    """Check one completion as ``compute_metrics.compute_metrics`` does.

    Args:
        completion: the model's output.
        lang: ISO 639-1 code of the requested language.
        detector: a :class:`LanguageDetector` or callable (default: the shared :class:`LinguaDetector`).
        words: the English word list (default: :func:`english_words` when ``lang`` has a word-level check).
    """
    detect = detect_fn(detector)
    text = lcb_normalize(completion)
    lines = []
    for line in text.split("\n"):
        tokens = lcb_tokenize(line, lang)
        if len(tokens) >= MIN_LINE_TOKENS:
            lines.append((line, tokens))
    if not lines:
        return CompletionCheck(True, None, None, (), (), (), lang)
    langs = tuple(detect(line) or "?" for line, _ in lines)
    line_pass = all(code == lang for code in langs)
    word_pass: bool | None = None
    found: tuple[str, ...] = ()
    if line_pass and lang in WPR_LANGUAGES:
        vocab = frozenset(words) if words is not None else english_words()
        found = tuple(dict.fromkeys(t.strip() for _, tokens in lines for t in tokens if t.strip() in vocab))
        word_pass = not found
    return CompletionCheck(False, line_pass, word_pass, tuple(line for line, _ in lines), langs, found, lang)


def format_prompt(prompt: str, template: Template) -> str:
    """The request text: ``"qa"`` is the benchmark's base-model format ``"Q: {prompt}\\nA:"``; ``"plain"`` the prompt."""
    if template == "qa":
        return QA_TEMPLATE.format(prompt=prompt)
    if template == "plain":
        return prompt
    raise ConfigError(f"template={template!r}; expected 'qa' or 'plain'.")


def _subsets(subsets: str | Sequence[str]) -> tuple[str, ...]:
    names = [subsets] if isinstance(subsets, str) else list(subsets)
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(SUBSETS)
        elif name in ("monolingual", "crosslingual"):
            out.extend(s for s in SUBSETS if s.startswith(name + "/"))
        elif name in SUBSETS:
            out.append(name)
        else:
            raise ConfigError(
                f"confusion: unknown sub-set {name!r}; expected 'all', 'monolingual', 'crosslingual' or one of "
                f"{', '.join(SUBSETS)}."
            )
    return tuple(dict.fromkeys(out))


class LanguageConfusion(Task):
    """The Language Confusion Benchmark with its decoding defaults and line/word-level checks.

    Args:
        subsets: ``"all"`` (default), ``"monolingual"``, ``"crosslingual"``, or sub-set names such as
            ``"monolingual/okapi"`` (see :data:`SUBSETS`).
        template: ``"qa"`` (the benchmark's zero-shot base-model format ``Q: ...\\nA:``, default) or ``"plain"``
            (the prompt alone, for a model served behind a chat template).
        max_new_tokens, temperature, top_p, seed: decoding (benchmark: 100, 0.3, 0.75; seeded).
        detector: a :class:`LanguageDetector` (default :class:`LinguaDetector` over the 15 benchmark languages).
        source: data folder (see :mod:`mlquant.data`); the benchmark is not on the Hugging Face hub.

    Example:
        >>> LanguageConfusion(subsets="monolingual/okapi").signature()
        'confusion@1.0[detector=lingua:benchmark:0.3,max_new_tokens=100,seed=0,subsets=monolingual/okapi,temperature=0.3,template=qa,top_p=0.75]'
    """

    name: ClassVar[str] = "confusion"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[str] = "generate"  # type: ignore[assignment]
    difficulty: ClassVar[str] = "medium"  # type: ignore[assignment]
    metric: ClassVar[str] = "line_pass"
    benchmark: ClassVar[str] = "language_confusion"
    split: ClassVar[str] = "monolingual/okapi"

    def __init__(
        self,
        subsets: str | Sequence[str] = "all",
        template: Template = "qa",
        max_new_tokens: int = 100,
        temperature: float = 0.3,
        top_p: float = 0.75,
        seed: int = 0,
        detector: DetectorLike | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(source=source)
        self.subsets = _subsets(subsets)
        format_prompt("", template)  # validates
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"confusion: max_new_tokens={max_new_tokens!r}; expected a positive integer.")
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ConfigError(f"confusion: temperature={temperature!r}; expected a number >= 0 (0: greedy).")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ConfigError(f"confusion: top_p={top_p!r}; expected a number in (0, 1].")
        if source is not None and str(source).startswith("hub:"):
            raise ConfigError("confusion: the benchmark is not on the Hugging Face hub; give a data folder as source.")
        if isinstance(detector, str):  # a description, e.g. from a study file: "lingua:benchmark:0.3"
            detector = detector_from_string(detector)
        detect_fn(detector)  # validates
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.detector = detector

    def options(self) -> dict[str, Any]:
        return {
            "subsets": "+".join(self.subsets) if self.subsets != SUBSETS else "all",
            "template": self.template,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "detector": describe_detector(self.detector),
        }

    # ----- data -------------------------------------------------------------------------------------------------------
    def hub_languages(self) -> list[str]:
        return []

    def languages(self, where: Literal["any", "local", "hub"] = "any") -> list[str]:
        if where == "hub":
            return []
        codes: set[str] = set()
        for subset in self.subsets:
            codes.update(_local_languages(self.benchmark, subset, self.source))
        return sorted(codes)

    def _subsets_of(self, lang: Language) -> list[str]:
        return [s for s in self.subsets if local_file(self.benchmark, s, lang.code, self.source) is not None]

    def load_items(self, lang: Language) -> list[Item]:
        subsets = self._subsets_of(lang)
        if not subsets:
            root = self.source or os.environ.get("MLQUANT_DATA_DIR") or "<MLQUANT_DATA_DIR unset>"
            raise DataError(
                f"confusion: no data for {lang.code!r} in {root}/language_confusion/{{{','.join(self.subsets)}}}/; "
                f"languages with data: {', '.join(self.languages()) or 'none'}."
            )
        items = []
        for subset in subsets:
            setting = subset.split("/")[0]
            for row in self.rows(lang, split=subset):
                data = {
                    "prompt": require(row, "prompt"),
                    "subset": subset,
                    "setting": setting,
                    "source": str(row.get("source", subset.split("/")[1])),
                    "language": str(row.get("language", lang.code)),
                }
                for key in ("location", "phrasing"):
                    if key in row:
                        data[key] = row[key]
                items.append(Item(id=f"{subset}/{require(row, 'id', (int, str))}", data=data))
        return items

    # ----- prompting and scoring --------------------------------------------------------------------------------------
    def requests(self, item: Item, lang: Language) -> list[Request]:
        return [
            GenerateRequest(
                format_prompt(item.data["prompt"], self.template),
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=self.seed,
            )
        ]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        output = str(outputs[0])
        words = english_words(self.source) if lang.code in WPR_LANGUAGES else None
        check = check_completion(output, lang.code, detector=self.detector, words=words)
        return ItemScore(
            score=math.nan if check.skipped else float(bool(check.line_pass)),
            prompt=format_prompt(item.data["prompt"], self.template),
            output=output,
            extracted=",".join(check.line_languages),
            target=lang.code,
            extra={
                "subset": item.data["subset"],
                "skipped": check.skipped,
                "line_pass": check.line_pass,
                "word_pass": check.word_pass,
                "n_lines": len(check.lines),
                "line_errors": check.line_errors,
                "line_languages": list(check.line_languages),
                "english_words": list(check.english_words[:20]),
            },
        )

    def aggregate(self, rows: CellRows, lang: Language | str | None = None) -> CorpusScores:
        """LPR, WPR and LCPR of one cell, as the benchmark computes them (:func:`confusion_scores`, macro over sub-sets).

        Fractions in [0, 1], computed from the line- and word-level verdicts in the rows' ``extra``. LCPR is the
        harmonic mean of LPR and WPR (Marchisio et al. 2024); for a language without WPR (Latin script) WPR is NaN
        and LCPR equals LPR. ``n`` is the number of scored (not skipped) completions.

        Example:
            >>> rows = [{"lang": "ja", "extra": {"skipped": False, "line_pass": True, "word_pass": True}},
            ...         {"lang": "ja", "extra": {"skipped": False, "line_pass": False, "word_pass": None}}]
            >>> scores = LanguageConfusion().aggregate(rows)
            >>> scores["lpr"], scores["wpr"], round(scores["lcpr"], 4), scores.scores[0].n
            (0.5, 1.0, 0.6667, 2)
        """
        records, code = cell_records(rows, lang)
        if not records:
            return CorpusScores()
        if code is None:
            raise ConfigError("confusion: aggregate needs the cell's language: give lang= or rows with a 'lang' column.")
        row = confusion_scores(records, by=[]).iloc[0]
        n = int(row["n_scored"])
        signature = f"{self.signature()}|average:subset"
        has_wpr = code in WPR_LANGUAGES
        return CorpusScores((
            CorpusScore("lpr", float(row["lpr"]), signature, n),
            CorpusScore("wpr", float(row["wpr"]), signature if has_wpr else "", n,
                        note="" if has_wpr else f"the benchmark has no word-level check for {code!r}"),
            CorpusScore("lcpr", float(row["lcpr"]), signature, n,
                        note="harmonic mean of LPR and WPR" if has_wpr else "= LPR (no WPR for this language)"),
        ))


def _local_languages(benchmark: str, subset: str, source: str | None) -> list[str]:
    root = Path(source) if source is not None else data_dir()
    if root is None or not (root / benchmark / subset).is_dir():
        return []
    return sorted(p.stem for p in (root / benchmark / subset).glob("*.jsonl"))


# ----- task-level pass rates ----------------------------------------------------------------------------------------
def _extra(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str) and value:
        decoded = json.loads(value)
        return decoded if isinstance(decoded, Mapping) else {}
    return {}


def _records(data: Any) -> list[dict[str, Any]]:
    """Rows (lang, subset, skipped, line_pass, word_pass, group columns) from a frame or a list."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        rows = [{str(k): v for k, v in r.items()} for r in data.to_dict("records")]
    else:
        rows = []
        for obj in data:
            if isinstance(obj, ItemScore):
                rows.append({"extra": obj.extra, "lang": obj.target})
            elif isinstance(obj, CompletionCheck):
                rows.append({"extra": {"skipped": obj.skipped, "line_pass": obj.line_pass, "word_pass": obj.word_pass},
                             "lang": obj.lang})
            elif isinstance(obj, Mapping):
                rows.append(dict(obj))
            else:
                raise ConfigError(f"confusion_scores: cannot read a {type(obj).__name__}; give a results frame, "
                                  "ItemScores, CompletionChecks or dicts.")
    out = []
    for i, row in enumerate(rows):
        extra = _extra(row.get("extra"))
        if "skipped" not in extra or "line_pass" not in extra:
            raise DataError(f"confusion_scores: row {i} has no line-level verdict in 'extra' (is it a confusion row?).")
        lang = row.get("lang") or row.get("target")
        if not lang:
            raise DataError(f"confusion_scores: row {i} has no 'lang'.")
        rec = {k: v for k, v in row.items() if k != "extra"}
        item_id = str(row.get("item_id", ""))
        subset = extra.get("subset") or ("/".join(item_id.split("/")[:2]) if item_id.count("/") >= 2 else "all")
        rec.update(lang=lang, subset=subset, skipped=bool(extra["skipped"]), line_pass=extra["line_pass"],
                   word_pass=extra.get("word_pass"))
        out.append(rec)
    return out


def _rates(rows: Sequence[Mapping[str, Any]], lang: str) -> dict[str, float]:
    """``compute_metrics`` on one (sub-set, language): LPR, WPR (NaN where undefined), counts."""
    scored = [r for r in rows if not r["skipped"]]
    line_fail = sum(1 for r in scored if not r["line_pass"])
    word_fail = sum(1 for r in scored if r["line_pass"] and r["word_pass"] is False)
    lpr = 1 - line_fail / max(1, len(scored))
    wpr = 1 - word_fail / max(1, len(scored) - line_fail) if lang in WPR_LANGUAGES else math.nan
    return {"n": len(rows), "n_scored": len(scored), "lpr": lpr, "wpr": wpr}


def _lcpr(lpr: float, wpr: float) -> float:
    if math.isnan(wpr):
        return lpr
    return 0.0 if lpr + wpr == 0 else 2 * lpr * wpr / (lpr + wpr)


def confusion_scores(
    data: pd.DataFrame | Iterable[Any],
    by: Sequence[str] | None = None,
    average: Literal["subset", "item"] = "subset",
) -> pd.DataFrame:
    """Line-level (LPR), word-level (WPR) and combined (LCPR) pass rates, as the benchmark computes them.

    Within each group, pass rates are computed per (sub-set, language) as in ``compute_metrics.py``
    (skipped completions count nowhere; WPR is over the completions that pass line-level) and, with
    ``average="subset"`` (the benchmark's per-language numbers), averaged over the group's sub-sets; with
    ``average="item"`` all of the group's completions are pooled. WPR is NaN for languages the benchmark gives none
    (Latin-script ones); LCPR is the harmonic mean of LPR and WPR, and equals LPR where WPR is undefined.
    Rates are fractions in [0, 1].

    Args:
        data: a results frame (columns ``lang``, ``item_id``, ``extra`` as written by :class:`LanguageConfusion`,
            plus any grouping columns), or a list of :class:`ItemScore` / :class:`CompletionCheck` / dicts with
            ``lang`` and ``extra``.
        by: grouping columns (default: those of ``quant``, ``model``, ``task``, ``lang`` that the data has; ``lang``
            is always included). Add ``"subset"`` for per-sub-set rates.
        average: ``"subset"`` (macro over sub-sets, default) or ``"item"`` (pooled).

    Returns:
        One row per group with ``n``, ``n_scored``, ``lpr``, ``wpr``, ``lcpr``.

    Example:
        >>> rows = [{"lang": "ja", "extra": {"skipped": False, "line_pass": True, "word_pass": True}},
        ...         {"lang": "ja", "extra": {"skipped": False, "line_pass": True, "word_pass": False}},
        ...         {"lang": "ja", "extra": {"skipped": False, "line_pass": False, "word_pass": None}},
        ...         {"lang": "ja", "extra": {"skipped": True, "line_pass": None, "word_pass": None}}]
        >>> confusion_scores(rows)[["n", "n_scored", "lpr", "wpr"]].round(4).values.tolist()
        [[4.0, 3.0, 0.6667, 0.5]]
    """
    import pandas as pd

    if average not in ("subset", "item"):
        raise ConfigError(f"confusion_scores: average={average!r}; expected 'subset' or 'item'.")
    records = _records(data)
    if not records:
        raise DataError("confusion_scores: no rows.")
    if by is None:
        by = [c for c in ("model", "quant", "task") if c in records[0]]
    by = list(dict.fromkeys([*by, "lang"]))
    for col in by:
        if col not in records[0]:
            raise ConfigError(f"confusion_scores: no column {col!r} to group by; have {sorted(records[0])}.")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(tuple(rec[c] for c in by), []).append(rec)
    out = []
    for key, rows in groups.items():
        lang = rows[0]["lang"]
        if average == "item":
            rates = _rates(rows, lang)
            lpr, wpr = rates["lpr"], rates["wpr"]
        else:
            per: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                per.setdefault(r["subset"], []).append(r)
            parts = [_rates(rs, lang) for rs in per.values()]
            lpr = sum(p["lpr"] for p in parts) / len(parts)
            wpr = math.nan if lang not in WPR_LANGUAGES else sum(p["wpr"] for p in parts) / len(parts)
        n_scored = sum(1 for r in rows if not r["skipped"])
        out.append({**dict(zip(by, key, strict=True)), "n": len(rows), "n_scored": n_scored, "lpr": lpr, "wpr": wpr,
                    "lcpr": _lcpr(lpr, wpr)})
    return pd.DataFrame(out, columns=[*by, "n", "n_scored", "lpr", "wpr", "lcpr"])


register_task("confusion", LanguageConfusion)
