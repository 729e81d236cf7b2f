"""XWinograd: Winograd schemas in six languages (Tikhonov & Ryabinin 2021; Muennighoff et al. 2023).

Partial scoring, as in the original Winograd LM evaluation (Trinh & Le 2018) and lm-evaluation-harness: the
sentence is cut at the pronoun (the blank ``_`` of the hub's version); each option is substituted for it, and
the option whose substitution makes the *rest of the sentence* most likely wins. So the two requests have
different contexts (``prefix + option``) and the same continuation (the rest, with its original leading space or
none, which is how languages written without spaces come out right; trailing whitespace dropped). No prompt words
are involved. Where the pronoun's span takes the final stop along (10 Russian rows: ``его.``), the stop is given
back to the rest, so every item has a non-empty continuation.

Local rows (``$MLQUANT_DATA_DIR/xwinograd/test/<lang>.jsonl``, see ``shared/data/xwinograd/SOURCE.md``) keep the
original token list and the pronoun's token span; the hub's rows (``Muennighoff/xwinograd``: ``sentence`` with
``_``, ``option1``, ``option2``, ``answer`` "1"/"2") are converted to that schema, with the blank as the pronoun.

Example:
    >>> from mlquant.tasks.xwinograd import split_at_span
    >>> split_at_span("The cat ate because it was hungry.", ["The", "cat", "ate", "because", "it", "was", "hungry", "."], 4, 5)
    ('The cat ate because ', ' was hungry.')
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import DataError
from mlquant.languages import Language
from mlquant.requests import LoglikelihoodRequest, Request
from mlquant.tasks import ChoiceTask, Difficulty, Item, register_task

__all__ = ["XWinograd", "split_at_span"]

# Penn-Treebank quote tokens stand for the sentence's own quote characters.
_PTB_QUOTES = {"``": ('"', "\u201c", "\u00ab", "\u201e"), "''": ('"', "\u201d", "\u00bb")}


def split_at_span(sentence: str, tokens: Sequence[str], start: int, end: int) -> tuple[str, str] | None:
    """The text of ``sentence`` before token ``start`` and after token ``end - 1``, or None if the tokens
    cannot be found in order in the sentence."""
    pos = 0
    spans: list[tuple[int, int]] = []
    for tok in tokens[:end]:
        hits = [(sentence.find(c, pos), c) for c in (tok, *_PTB_QUOTES.get(tok, ()))]
        found = [(i, c) for i, c in hits if i >= 0]
        if not found:
            return None
        i, c = min(found)
        spans.append((i, i + len(c)))
        pos = i + len(c)
    return sentence[: spans[start][0]], sentence[spans[end - 1][1] :]


def _from_hub(row: dict[str, Any]) -> dict[str, Any]:
    """A ``Muennighoff/xwinograd`` row in the local schema: the blank ``_`` is the pronoun."""
    sentence = str(row.get("sentence", ""))
    where = f"{row.get('_file', '<hub>')}, line {row.get('_line', '?')}"
    if "_" not in sentence:
        raise DataError(f"{where}: field 'sentence' has no blank '_': {sentence!r}.")
    answer = str(row.get("answer", ""))
    if answer not in ("1", "2"):
        raise DataError(f"{where}: field 'answer' is {row.get('answer')!r}; expected '1' or '2'.")
    cut = sentence.index("_")
    prefix, rest = sentence[:cut], sentence[cut + 1 :]
    tokens = ([prefix] if prefix else []) + ["_"] + ([rest] if rest else [])
    k = 1 if prefix else 0
    options = [require(row, "option1"), require(row, "option2")]
    return {
        "sentence": sentence,
        "tokens": tokens,
        "pronoun": ["_", [k, k + 1], ["_"]],
        "candidates": [[opt, None, None, answer == str(i + 1)] for i, opt in enumerate(options)],
        "label": int(answer) - 1,
    }


class XWinograd(ChoiceTask):
    """XWinograd (2 options, partial scoring of the rest of the sentence)."""

    name: ClassVar[str] = "xwinograd"
    version: ClassVar[str] = "1.0"
    difficulty: ClassVar[Difficulty] = "easy"
    benchmark: ClassVar[str] = "xwinograd"

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("xwinograd")
        return HubSource("Muennighoff/xwinograd", code, split, convert=_from_hub) if code else None

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang)):
            where = f"{row['_file']}, line {row['_line']}"
            sentence = require(row, "sentence")
            tokens = require(row, "tokens", list)
            pronoun = require(row, "pronoun", list)
            candidates = require(row, "candidates", list)
            label = require(row, "label", int)
            if len(pronoun) < 2 or not isinstance(pronoun[1], list) or len(pronoun[1]) != 2:
                raise DataError(f"{where}: field 'pronoun' is {pronoun!r}; expected [text, [start, end], tokens].")
            start, end = pronoun[1]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(tokens)):
                raise DataError(f"{where}: field 'pronoun' span {pronoun[1]!r} is outside the {len(tokens)} tokens.")
            if len(candidates) != 2 or not all(isinstance(c, list) and c and isinstance(c[0], str) for c in candidates):
                raise DataError(f"{where}: field 'candidates' is {candidates!r}; expected two [text, ...] lists.")
            if label not in (0, 1):
                raise DataError(f"{where}: field 'label' is {label}; expected 0 or 1.")
            # A few spans take the sentence's final stop along ("его." in ru): the stop belongs to the rest.
            while end - start > 1 and all(unicodedata.category(ch).startswith("P") for ch in str(tokens[end - 1])):
                end -= 1
            parts = split_at_span(sentence, [str(t) for t in tokens], start, end)
            if parts is None:
                raise DataError(f"{where}: the tokens of field 'tokens' are not found in order in field 'sentence'.")
            prefix, rest = parts[0], parts[1].rstrip()
            if not rest.strip():
                raise DataError(f"{where}: nothing follows the pronoun in {sentence!r}; partial scoring needs a rest.")
            data = {
                "prefix": prefix,
                "rest": rest,
                "options": [candidates[0][0], candidates[1][0]],
                "label": label,
            }
            items.append(Item(id=str(row.get("id", i)), data=data))
        return items

    def context(self, item: Item, lang: Language) -> str:
        """The sentence with the blank (what the results show as the prompt)."""
        prefix: str = item.data["prefix"]  # strs, as load_items() builds them
        rest: str = item.data["rest"]
        return prefix + "_" + rest

    def choices(self, item: Item, lang: Language) -> list[str]:
        return list(item.data["options"])

    def requests(self, item: Item, lang: Language) -> list[Request]:
        d = item.data
        return [LoglikelihoodRequest(d["prefix"] + option, d["rest"]) for option in d["options"]]


register_task("xwinograd", XWinograd)
