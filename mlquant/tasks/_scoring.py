"""Scoring helpers shared by task modules: numbers written in any script, answer extraction.

Example:
    >>> from mlquant.languages import get_language
    >>> extract_number("答えは１８です。", get_language("ja"))
    '18'
"""

from __future__ import annotations

import re
import unicodedata

from mlquant.languages import Language

__all__ = ["ascii_digits", "extract_number", "normalize_number"]

# A number: digits (any script after ascii_digits), optional sign, separators between digit groups.
_NUMBER = re.compile(r"-?\d[\d,.\u00a0\u202f' ]*\d|-?\d")


def ascii_digits(text: str) -> str:
    """Replace every Unicode decimal digit (Bengali, Thai, full-width, ...) by its ASCII digit."""
    return "".join(str(unicodedata.digit(ch)) if ch.isdigit() and not ch.isascii() and unicodedata.digit(ch, None) is not None else ch for ch in text)


def normalize_number(raw: str, lang: Language) -> str | None:
    """Canonical form of a number written in ``lang``'s conventions: ``"1.234,5"`` (de) -> ``"1234.5"``.

    Returns None when ``raw`` holds no number. Integers lose trailing ``.0``.
    """
    text = ascii_digits(raw).strip().rstrip(".,")
    text = text.replace("\u00a0", "").replace("\u202f", "").replace("'", "").replace(" ", "")
    dec, thou = lang.decimal_separator, lang.thousands_separator.strip() or None
    if thou and thou != dec:
        text = text.replace(thou, "")
    if dec != ".":
        # A '.' that is not this language's decimal separator is a thousands separator (1.000 in de).
        text = text.replace(".", "").replace(dec, ".")
    else:
        text = text.replace(",", "")
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
