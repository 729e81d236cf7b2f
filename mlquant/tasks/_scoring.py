"""Scoring helpers shared by task modules: numbers written in any script, answer extraction, and a word
tokenizer for overlap metrics that splits scripts written without spaces (Chinese, Japanese, Thai, ...) into
characters.

Example:
    >>> from mlquant.languages import get_language
    >>> extract_number("答えは１８です。", get_language("ja"))
    '18'
    >>> multilingual_tokens("Das Modell 東京に行く")
    ['das', 'modell', '東', '京', 'に', '行', 'く']
"""

from __future__ import annotations

import re
import unicodedata

from mlquant.languages import Language

__all__ = ["MultilingualTokenizer", "ascii_digits", "extract_number", "multilingual_tokens", "normalize_number"]

# A number: digits (any script after ascii_digits), optional sign, separators between digit groups.
_NUMBER = re.compile(r"-?\d[\d,.\u00a0\u202f' ]*\d|-?\d")


def ascii_digits(text: str) -> str:
    """Replace every Unicode decimal digit (Bengali, Thai, full-width, ...) by its ASCII digit."""
    return "".join(
        str(unicodedata.digit(ch)) if ch.isdigit() and not ch.isascii() and unicodedata.digit(ch, None) is not None else ch
        for ch in text
    )


def normalize_number(raw: str, lang: Language) -> str | None:
    """Canonical form of a number written in ``lang``'s conventions: ``"1.234,5"`` (de) -> ``"1234.5"``.

    Returns None when ``raw`` holds no number. Integers lose trailing ``.0``.
    """
    text = ascii_digits(raw).strip().rstrip(".,")
    text = text.replace("\u00a0", "").replace("\u202f", "").replace("'", "").replace(" ", "")
    dec, thou = lang.decimal_separator, lang.thousands_separator.strip() or None
    if thou and thou != dec:
        text = text.replace(thou, "")
    # A '.' that is not this language's decimal separator is a thousands separator (1.000 in de).
    text = text.replace(".", "").replace(dec, ".") if dec != "." else text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    if value.is_integer():
        return str(int(value))
    return repr(value)


def extract_number(output: str, lang: Language) -> str | None:
    """The final numeric answer in a model's output.

    The first number after the last occurrence of the language's ``answer_is`` phrase (MGSM's "The answer is");
    else the last number in the output. Native digits and the language's separators are understood.
    """
    text = ascii_digits(output)
    phrase = lang.prompt.answer_is
    pos = text.rfind(phrase)
    if pos != -1:
        m = _NUMBER.search(text, pos + len(phrase))
        if m:
            return normalize_number(m.group(0), lang)
    matches = _NUMBER.findall(text)
    for cand in reversed(matches):
        value = normalize_number(cand, lang)
        if value is not None:
            return value
    return None


# Scripts written without spaces between words: every character is a token. Han (CJK ideographs and their
# extensions, compatibility ideographs), Hiragana, Katakana (and half-width forms), Bopomofo, Thai, Lao, Khmer,
# Myanmar, Tibetan. Hangul is written with spaces and stays word-tokenized.
_CHAR_SCRIPTS = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3031-\u3035\u3038-\u303c"  # CJK radicals, 々〆〇, Hangzhou numerals
    "\u3040-\u30ff\u31f0-\u31ff\u3100-\u312f\u31a0-\u31bf"  # kana, bopomofo
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"  # Han, compatibility ideographs, half-width kana
    "\U00020000-\U0003134f"  # Han extensions B-H
    "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\u0f00-\u0fff"  # Thai, Lao, Khmer, Myanmar, Tibetan
)
_CHAR_TOKEN = re.compile(f"[{_CHAR_SCRIPTS}]")


def multilingual_tokens(text: str, lowercase: bool = True) -> list[str]:
    """Word tokens of ``text`` in any script, for overlap metrics (ROUGE) between outputs.

    Letters, digits and combining marks form words in space-separated scripts (Latin, Cyrillic, Greek, Arabic,
    Hebrew, Hangul, Devanagari and the other Indic scripts); each character of a script written without spaces
    (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan) is a token of its own, as is usual for character-level
    Chinese/Japanese/Thai ROUGE. Punctuation and symbols are dropped; text is case-folded unless ``lowercase=False``.
    Full-width Latin letters and digits are folded to ASCII (NFKC) first.

    Example:
        >>> multilingual_tokens("Привет, мир! ภาษาไทย 42")
        ['привет', 'мир', 'ภ', 'า', 'ษ', 'า', 'ไ', 'ท', 'ย', '42']
    """
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.casefold()
    tokens: list[str] = []
    word: list[str] = []
    for ch in text:
        if _CHAR_TOKEN.match(ch):
            if word:
                tokens.append("".join(word))
                word = []
            tokens.append(ch)
        elif unicodedata.category(ch)[0] in "LNM":  # letters, digits, combining marks (Indic vowel signs)
            word.append(ch)
        elif word:
            tokens.append("".join(word))
            word = []
    if word:
        tokens.append("".join(word))
    return tokens


class MultilingualTokenizer:
    """:func:`multilingual_tokens` behind the ``tokenize(text)`` interface that ``rouge_score`` expects.

    ``rouge_score``'s default tokenizer keeps only ``[a-z0-9]`` and so drops every non-Latin word; pass this one as
    ``RougeScorer(["rougeL"], tokenizer=MultilingualTokenizer())``.
    """

    def tokenize(self, text: str) -> list[str]:
        return multilingual_tokens(text)
