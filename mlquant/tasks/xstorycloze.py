"""XStoryCloze: choose the right ending of a four-sentence story, in 11 languages (Lin et al. 2022).

As in lm-evaluation-harness: the four story sentences joined by spaces are the shared context, and each of the
two candidate endings is a continuation after a space; languages written without spaces (zh) get no space in
either place. No prompt words are involved.

Data: the hub's ``juletxara/xstory_cloze`` (configs ``en ru zh es ar hi id te sw eu my``; its ``eval`` split is
the test set, as in lm-evaluation-harness). There is no local copy in ``shared/data``; a local file
``$MLQUANT_DATA_DIR/xstorycloze/test/<lang>.jsonl`` may hold rows in this schema::

    {"id": "...", "sentences": ["s1", "s2", "s3", "s4"], "endings": ["e1", "e2"], "label": 0}

Hub rows (``story_id``, ``input_sentence_1`` .. ``input_sentence_4``, ``sentence_quiz1``, ``sentence_quiz2``,
``answer_right_ending`` 1/2) are converted to it.

Example:
    >>> from mlquant.tasks.xstorycloze import XStoryCloze
    >>> XStoryCloze().hub_source(__import__("mlquant").get_language("zh"), "test").split
    'eval'
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import DataError
from mlquant.languages import Language
from mlquant.tasks import ChoiceTask, Difficulty, Item, register_task

__all__ = ["XStoryCloze"]


def _from_hub(row: dict[str, Any]) -> dict[str, Any]:
    answer = require(row, "answer_right_ending", int)
    if answer not in (1, 2):
        raise DataError(
            f"{row.get('_file', '<hub>')}, line {row.get('_line', '?')}: field 'answer_right_ending' is {answer}; "
            "expected 1 or 2."
        )
    return {
        "id": str(require(row, "story_id")),
        "sentences": [require(row, f"input_sentence_{i}") for i in range(1, 5)],
        "endings": [require(row, "sentence_quiz1"), require(row, "sentence_quiz2")],
        "label": answer - 1,
    }


class XStoryCloze(ChoiceTask):
    """XStoryCloze (2 endings after the story)."""

    name: ClassVar[str] = "xstorycloze"
    version: ClassVar[str] = "1.0"
    difficulty: ClassVar[Difficulty] = "easy"
    benchmark: ClassVar[str] = "xstorycloze"

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("xstorycloze")
        if not code:
            return None
        return HubSource("juletxara/xstory_cloze", code, "eval" if split == "test" else split, convert=_from_hub)

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang)):
            where = f"{row['_file']}, line {row['_line']}"
            sentences = require(row, "sentences", list)
            endings = require(row, "endings", list)
            label = require(row, "label", int)
            if len(sentences) != 4 or not all(isinstance(s, str) for s in sentences):
                raise DataError(f"{where}: field 'sentences' has {len(sentences)} values; expected 4 strings.")
            if len(endings) != 2 or not all(isinstance(s, str) for s in endings):
                raise DataError(f"{where}: field 'endings' has {len(endings)} values; expected 2 strings.")
            if label not in (0, 1):
                raise DataError(f"{where}: field 'label' is {label}; expected 0 or 1.")
            data = {"sentences": [s.strip() for s in sentences], "endings": [e.strip() for e in endings], "label": label}
            items.append(Item(id=str(row.get("id", i)), data=data))
        return items

    def context(self, item: Item, lang: Language) -> str:
        return (" " if lang.uses_spaces else "").join(item.data["sentences"])

    def choices(self, item: Item, lang: Language) -> list[str]:
        sep = " " if lang.uses_spaces else ""
        return [sep + ending for ending in item.data["endings"]]


register_task("xstorycloze", XStoryCloze)
