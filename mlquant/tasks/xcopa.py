"""XCOPA: causal commonsense reasoning in 11 languages (Ponti et al. 2020).

As in lm-evaluation-harness: the premise (final full stop removed) joined to the translated connector
``because`` (question "cause") or ``therefore`` (question "effect"), then each alternative as the
continuation, its first letter lowercased. Languages written without spaces get no space before either.

Example:
    >>> from mlquant.tasks.xcopa import XCopa
    >>> XCopa().kind
    'choice'
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import DataError
from mlquant.languages import Language
from mlquant.tasks import ChoiceTask, Difficulty, Item, register_task

_FINAL_STOPS = ".。．!！?？"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


class XCopa(ChoiceTask):
    """XCOPA (2 options, connector prompt)."""

    name: ClassVar[str] = "xcopa"
    version: ClassVar[str] = "1.0"
    difficulty: ClassVar[Difficulty] = "easy"
    benchmark: ClassVar[str] = "xcopa"

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("xcopa")
        return HubSource("cambridgeltl/xcopa", code, split) if code else None

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang)):
            question = require(row, "question")
            if question not in ("cause", "effect"):
                raise DataError(
                    f"{row['_file']}, line {row['_line']}: field 'question' is {question!r}; expected 'cause' or 'effect'."
                )
            label = require(row, "label", int)
            if label not in (0, 1):
                raise DataError(f"{row['_file']}, line {row['_line']}: field 'label' is {label}; expected 0 or 1.")
            data: dict[str, Any] = {
                "premise": require(row, "premise"),
                "choice1": require(row, "choice1"),
                "choice2": require(row, "choice2"),
                "question": question,
                "label": label,
            }
            items.append(Item(id=str(row.get("idx", row.get("id", i))), data=data))
        return items

    def context(self, item: Item, lang: Language) -> str:
        d = item.data
        connector = lang.prompt.because if d["question"] == "cause" else lang.prompt.therefore
        sep = " " if lang.uses_spaces else ""
        premise: str = d["premise"]  # a str: load_items() requires it
        return premise.strip().rstrip(_FINAL_STOPS) + sep + connector

    def choices(self, item: Item, lang: Language) -> list[str]:
        sep = " " if lang.uses_spaces else ""
        return [sep + _lower_first(item.data["choice1"]), sep + _lower_first(item.data["choice2"])]


register_task("xcopa", XCopa)
