"""Belebele: multiple-choice reading comprehension on FLORES passages (Bandarkar et al. 2024).

Scored by log-likelihood of the answer letter after a prompt listing the four options (the
lm-evaluation-harness formulation), with the labels ``Passage``, ``Question`` and ``Answer`` in the item's
language. Items sharing a passage form a cluster (``Item.group``) for the cluster bootstrap.

Example:
    >>> from mlquant.tasks.belebele import Belebele
    >>> Belebele().difficulty
    'medium'
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import DataError
from mlquant.languages import Language
from mlquant.tasks import ChoiceTask, Difficulty, Item, register_task

LETTERS = ("A", "B", "C", "D")


def _from_hub(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "link": row["link"],
        "question_number": row["question_number"],
        "passage": row["flores_passage"],
        "question": row["question"],
        "choices": [row[f"mc_answer{i}"] for i in range(1, 5)],
        "label": int(row["correct_answer_num"]) - 1,
    }


class Belebele(ChoiceTask):
    """Belebele reading comprehension (4 options, letter answer)."""

    name: ClassVar[str] = "belebele"
    version: ClassVar[str] = "1.0"
    difficulty: ClassVar[Difficulty] = "medium"
    benchmark: ClassVar[str] = "belebele"

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("belebele")
        return HubSource("facebook/belebele", code, split, convert=_from_hub) if code else None

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang)):
            choices = require(row, "choices", list)
            if len(choices) != 4:
                raise DataError(
                    f"{row['_file']}, line {row['_line']}: field 'choices' has {len(choices)} options; expected 4."
                )
            label = require(row, "label", int)
            if not 0 <= label < 4:
                raise DataError(f"{row['_file']}, line {row['_line']}: field 'label' is {label}; expected 0-3.")
            data = {
                "passage": require(row, "passage"),
                "question": require(row, "question"),
                "choices": [str(c) for c in choices],
                "label": label,
            }
            link = str(row.get("link", ""))
            item_id = f"{link}#{row['question_number']}" if link and "question_number" in row else str(row.get("id", i))
            items.append(Item(id=item_id, data=data, group=link or None))
        return items

    def context(self, item: Item, lang: Language) -> str:
        d = item.data
        options = "\n".join(f"{letter}: {choice}" for letter, choice in zip(LETTERS, d["choices"], strict=False))
        return (
            f"{lang.label('passage')}{d['passage']}\n{lang.label('question')}{d['question'].strip()}\n"
            f"{options}\n{lang.label('answer').rstrip()}"
        )

    def choices(self, item: Item, lang: Language) -> list[str]:
        return [f" {letter}" for letter in LETTERS]


register_task("belebele", Belebele)
