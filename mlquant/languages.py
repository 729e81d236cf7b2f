"""Languages: frozen records loaded from the reviewed ``languages/<code>.yaml`` files.

This module owns the language schema. Every string a task puts into a prompt in a language comes from
these files (never from Python code), with the provenance of each prompt word recorded beside it.

Example:
    >>> import mlquant as mq
    >>> mq.get_language("ja").script
    'Jpan'
    >>> "en" in [lang.code for lang in mq.list_languages(script="Latn")]
    True
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mlquant._registry import did_you_mean
from mlquant.errors import ConfigError, UnknownNameError

__all__ = ["Language", "PromptWords", "get_language", "languages_dir", "list_languages", "load_language_file"]

#: Scripts (ISO 15924) that the "Latin vs non-Latin" grouping of Marchisio et al. 2024 calls Latin.
LATIN_SCRIPTS = frozenset({"Latn"})

#: sacrebleu tokenizers a language file may name.
SACREBLEU_TOKENIZERS = frozenset(
    {"13a", "intl", "zh", "ja-mecab", "ko-mecab", "char", "none", "spm", "flores101", "flores200"}
)

#: Prompt words every language file must give (the tasks use exactly these keys).
PROMPT_KEYS: dict[str, str] = {
    "question": "label before a question ('Question')",
    "answer": "label before an answer ('Answer')",
    "choices": "label before a list of options ('Choices')",
    "passage": "label before a reading passage ('Passage')",
    "step_by_step_answer": "label before a chain-of-thought answer, as in MGSM ('Step-by-Step Answer')",
    "answer_is": "phrase that introduces the final answer, as in MGSM ('The answer is')",
    "true": "the word 'True'",
    "false": "the word 'False'",
    "neither": "the word 'Neither'",
    "yes": "the word 'Yes'",
    "no": "the word 'No'",
    "also": "the word 'Also' (XNLI neutral connector)",
    "right": "the tag question 'right' (XNLI: 'premise, right? Yes, hypothesis')",
    "because": "connector for a cause (XCOPA: 'premise because choice')",
    "therefore": "connector for an effect (XCOPA: 'premise therefore choice')",
}

_TOP_KEYS: dict[str, str] = {
    "code": "ISO 639-1 code, equal to the file name",
    "name": "English name",
    "native_name": "name in the language itself",
    "script": "ISO 15924 script code (Latn, Cyrl, Arab, Hans, Jpan, ...)",
    "family": "language family (Glottolog top level)",
    "genus": "branch or genus inside the family",
    "resource_class": "Joshi et al. 2020 class, 0 (left-behind) to 5 (winners)",
    "flores": "FLORES-200 code (jpn_Jpan)",
    "datasets": "mapping benchmark -> the benchmark's code for this language, only for benchmarks that have it",
    "prompt": "mapping of prompt words (see PROMPT_KEYS)",
    "label_separator": "what follows a label: ': ' in English, '：' in Japanese",
    "numbers": "digits, native_digits, decimal_separator, thousands_separator",
    "stop_sequences": "list of strings that end a generated answer",
    "sacrebleu_tokenizer": "sacrebleu tokenizer for plain BLEU (spBLEU always uses flores200)",
    "uses_spaces": "whether words are separated by spaces (false for zh, ja, th)",
    "provenance": "mapping: where each prompt word (and the resource class) came from",
}
_NUMBER_KEYS = {"native_digits", "decimal_separator", "thousands_separator"}

#: The benchmarks mlquant knows, with where their codes come from. A language file's ``datasets`` lists only the
#: benchmarks that have the language: a missing key means "no data in this language". A key not listed here is
#: allowed (a benchmark of your own) if it is well formed and not one edit away from a known one (a typo).
DATASET_KEYS = {
    "belebele": "facebook/belebele config (FLORES-style code)",
    "xcopa": "cambridgeltl/xcopa config",
    "mgsm": "juletxara/mgsm config",
    "xwinograd": "Muennighoff/xwinograd config",
    "xstorycloze": "juletxara/xstory_cloze config",
    "xnli": "facebook/xnli config",
    "xquad": "google/xquad config",
    "global_mmlu": "CohereForAI/Global-MMLU config",
    "language_confusion": "Language Confusion Benchmark language code",
}

#: Keys that never belong under ``datasets``: the FLORES-200 code is the top-level key ``flores``.
_NOT_DATASET_KEYS = frozenset({"flores", "flores200"})

#: Form of a benchmark key: lowercase letters, digits and underscores, as the folders under MLQUANT_DATA_DIR.
_BENCHMARK_KEY = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class PromptWords:
    """The prompt words of one language; attribute names are the keys of :data:`PROMPT_KEYS`."""

    question: str
    answer: str
    choices: str
    passage: str
    step_by_step_answer: str
    answer_is: str
    true: str
    false: str
    neither: str
    yes: str
    no: str
    also: str
    right: str
    because: str
    therefore: str


@dataclass(frozen=True)
class Language:
    """One language, as reviewed in ``languages/<code>.yaml``.

    Example:
        >>> ja = get_language("ja")
        >>> ja.label("question")
        '問題：'
        >>> ja.is_latin
        False
    """

    code: str
    name: str
    native_name: str
    script: str
    family: str
    genus: str
    resource_class: int
    flores: str
    datasets: Mapping[str, str | None]
    prompt: PromptWords
    label_separator: str
    native_digits: str | None
    decimal_separator: str
    thousands_separator: str
    stop_sequences: tuple[str, ...]
    sacrebleu_tokenizer: str
    uses_spaces: bool
    provenance: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_latin(self) -> bool:
        """True for Latin-script languages (the paper's Latin / non-Latin split)."""
        return self.script in LATIN_SCRIPTS

    def label(self, key: str) -> str:
        """Prompt word ``key`` followed by this language's label separator (``'Question: '``)."""
        return str(getattr(self.prompt, key)) + self.label_separator

    def dataset_code(self, benchmark: str) -> str | None:
        """The code ``benchmark`` uses for this language, or None when the benchmark has no data in it.

        A language file lists only the benchmarks that have the language, so None means "not in the file" (or an
        explicit ``null``). It is never an error: a task asks every language and keeps those with a code.

        Example:
            >>> en = get_language("en")
            >>> en.dataset_code("mgsm"), en.dataset_code("xcopa")
            ('en', None)
        """
        return self.datasets.get(benchmark)

    def to_native_digits(self, text: str) -> str:
        """Replace ASCII digits by this language's native digits (no-op without native digits)."""
        if not self.native_digits:
            return text
        return text.translate(str.maketrans("0123456789", self.native_digits))


def languages_dir() -> Path:
    """Folder of the language files: ``$MLQUANT_LANGUAGES_DIR`` if set, else the files shipped with mlquant."""
    env = os.environ.get("MLQUANT_LANGUAGES_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "languages"
    if checkout.is_dir():  # a source checkout or an editable install
        return checkout
    return Path(str(resources.files("mlquant.language_data")))  # a wheel: the files ship inside the package


def _fail(path: Path, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _check_keys(path: Path, where: str, got: Mapping[str, Any], expected: Mapping[str, str] | set[str]) -> None:
    unknown = sorted(set(got) - set(expected))
    if unknown:
        hint = did_you_mean(unknown[0], expected)
        raise _fail(path, f"unknown key {where}{unknown[0]!r}.{hint} Expected keys: {', '.join(sorted(expected))}.")
    missing = sorted(set(expected) - set(got))
    if missing:
        raise _fail(path, f"missing key {where}{missing[0]!r}.")


def _edit_distance(a: str, b: str) -> int:
    """Letters added, dropped or changed, or two neighbours swapped, to turn ``a`` into ``b`` (restricted Damerau)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def _check_datasets(path: Path, datasets: Any) -> dict[str, str | None]:
    """Validate the ``datasets`` mapping: benchmark keys well formed and not a typo of a known one; codes strings."""
    if not isinstance(datasets, dict):
        raise _fail(
            path,
            f"key 'datasets' must be a mapping of benchmark -> code ({{}} when no benchmark has the language), "
            f"got {datasets!r}.",
        )
    known = sorted(DATASET_KEYS)
    for key, value in datasets.items():
        if not isinstance(key, str) or not _BENCHMARK_KEY.fullmatch(key):
            hint = did_you_mean(str(key).strip().lower().replace("-", "_"), known)
            raise _fail(
                path,
                f"key datasets.{key!r} is not a benchmark name: expected lowercase letters, digits and '_', "
                f"starting with a letter.{hint} Known benchmarks: {', '.join(known)}.",
            )
        if key in DATASET_KEYS:
            pass
        elif key in _NOT_DATASET_KEYS:
            raise _fail(
                path, f"key datasets.{key!r}: the FLORES-200 code is the top-level key 'flores', not a datasets entry."
            )
        elif any(_edit_distance(key, k) <= 1 for k in _NOT_DATASET_KEYS):
            raise _fail(
                path,
                f"unknown key datasets.{key!r}. Did you mean 'flores'? The FLORES-200 code is the top-level key "
                "'flores', not a datasets entry.",
            )
        else:
            near = [k for k in known if _edit_distance(key, k) <= 1]
            if near:
                raise _fail(
                    path,
                    f"unknown key datasets.{key!r}. Did you mean {' or '.join(repr(k) for k in near)}? Known "
                    f"benchmarks: {', '.join(known)}. (A new benchmark whose name is one edit away from a known one "
                    "must first be added to DATASET_KEYS in mlquant/languages.py.)",
                )
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _fail(path, f"key 'datasets.{key}' must be a non-empty dataset code string, got {value!r}.")
    return dict(datasets)


def _require_str(path: Path, key: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise _fail(path, f"key {key!r} must be a non-empty string, got {value!r}.")
    return value


def load_language_file(path: str | Path) -> Language:
    """Load and validate one language file.

    Raises:
        ConfigError: naming the file and the key that is missing, unknown or of the wrong type.

    Example:
        >>> load_language_file(languages_dir() / "en.yaml").name
        'English'
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise _fail(path, f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise _fail(path, "expected a mapping at the top level.")
    _check_keys(path, "", raw, _TOP_KEYS)
    code = _require_str(path, "code", raw["code"])
    if code != path.stem:
        raise _fail(path, f"key 'code' is {code!r} but the file is named {path.name!r}.")
    if not isinstance(raw["prompt"], dict):
        raise _fail(path, "key 'prompt' must be a mapping.")
    _check_keys(path, "prompt.", raw["prompt"], PROMPT_KEYS)
    for key, value in raw["prompt"].items():
        _require_str(path, f"prompt.{key}", value)
    numbers = raw["numbers"]
    if not isinstance(numbers, dict):
        raise _fail(path, "key 'numbers' must be a mapping.")
    _check_keys(path, "numbers.", numbers, _NUMBER_KEYS)
    native = numbers["native_digits"]
    if native is not None and (
        not isinstance(native, str)
        or len(native) != 10
        or [unicodedata.digit(ch, None) for ch in native] != list(range(10))
    ):
        raise _fail(path, f"key 'numbers.native_digits' must be null or the 10 digits 0-9 in order, got {native!r}.")
    rc = raw["resource_class"]
    if not isinstance(rc, int) or isinstance(rc, bool) or not 0 <= rc <= 5:
        raise _fail(path, f"key 'resource_class' must be an integer 0-5 (Joshi et al. 2020), got {rc!r}.")
    script = _require_str(path, "script", raw["script"])
    if len(script) != 4 or not script[0].isupper() or not script[1:].islower():
        raise _fail(path, f"key 'script' must be an ISO 15924 code like 'Latn', got {script!r}.")
    tok = raw["sacrebleu_tokenizer"]
    if tok not in SACREBLEU_TOKENIZERS:
        raise _fail(path, f"key 'sacrebleu_tokenizer' is {tok!r}; expected one of {sorted(SACREBLEU_TOKENIZERS)}.")
    stops = raw["stop_sequences"]
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _fail(path, f"key 'stop_sequences' must be a list of non-empty strings, got {stops!r}.")
    if not isinstance(raw["uses_spaces"], bool):
        raise _fail(path, f"key 'uses_spaces' must be true or false, got {raw['uses_spaces']!r}.")
    if not isinstance(raw["provenance"], dict):
        raise _fail(path, "key 'provenance' must be a mapping.")
    datasets = _check_datasets(path, raw["datasets"])
    missing_prov = sorted(set(PROMPT_KEYS) - set(raw["provenance"]))
    if missing_prov:
        raise _fail(path, f"key 'provenance' has no entry for prompt word {missing_prov[0]!r}.")
    return Language(
        code=code,
        name=_require_str(path, "name", raw["name"]),
        native_name=_require_str(path, "native_name", raw["native_name"]),
        script=script,
        family=_require_str(path, "family", raw["family"]),
        genus=_require_str(path, "genus", raw["genus"]),
        resource_class=rc,
        flores=_require_str(path, "flores", raw["flores"]),
        datasets=datasets,
        prompt=PromptWords(**raw["prompt"]),
        label_separator=_require_str(path, "label_separator", raw["label_separator"], allow_empty=True),
        native_digits=native,
        decimal_separator=_require_str(path, "numbers.decimal_separator", numbers["decimal_separator"]),
        thousands_separator=_require_str(
            path, "numbers.thousands_separator", numbers["thousands_separator"], allow_empty=True
        ),
        stop_sequences=tuple(stops),
        sacrebleu_tokenizer=tok,
        uses_spaces=raw["uses_spaces"],
        provenance={str(k): str(v) for k, v in raw["provenance"].items()},
    )


@functools.lru_cache(maxsize=4)
def _all_languages(folder: str) -> dict[str, Language]:
    paths = sorted(Path(folder).glob("*.yaml"))
    if not paths:
        raise ConfigError(f"no language files (*.yaml) in {folder}")
    return {p.stem: load_language_file(p) for p in paths}


def get_language(code: str | Language) -> Language:
    """The language with ISO 639-1 ``code``.

    Raises:
        UnknownNameError: the code has no file; the message suggests close codes.

    Example:
        >>> get_language("ja").name
        'Japanese'
    """
    if isinstance(code, Language):
        return code
    langs = _all_languages(str(languages_dir()))
    try:
        return langs[code]
    except KeyError:
        raise UnknownNameError(
            f"unknown language {code!r}.{did_you_mean(code, langs)} Known: {', '.join(sorted(langs))}."
        ) from None


def list_languages(
    *, script: str | None = None, resource_class: int | None = None, family: str | None = None
) -> list[Language]:
    """All languages, optionally filtered by script, resource class or family (sorted by code).

    Example:
        >>> [lang.code for lang in list_languages(script="Jpan")]
        ['ja']
    """
    langs = _all_languages(str(languages_dir())).values()
    return [
        lang
        for lang in sorted(langs, key=lambda x: x.code)
        if (script is None or lang.script == script)
        and (resource_class is None or lang.resource_class == resource_class)
        and (family is None or lang.family == family)
    ]
