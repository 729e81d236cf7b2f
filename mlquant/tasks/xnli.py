"""XNLI: natural language inference in 15 languages (Conneau et al. 2018), as a log-likelihood choice task.

The lm-evaluation-harness formulation: each label is a sentence ``premise, right? Yes, hypothesis``
(entailment), ``premise, right? Also, hypothesis`` (neutral), ``premise, right? No, hypothesis`` (contradiction),
with the tag question and the three label words in the item's language (``right``, ``yes``, ``also``, ``no`` of
``languages/<code>.yaml``); punctuation ``, ``, ``?`` as in the harness for every language. The harness scores the
three whole sentences; here ``premise, right?`` is the shared context and `` Yes, hypothesis`` the continuation,
which picks the same option (the premise's log-likelihood is the same in all three) with one context pass.

Data: the hub's ``facebook/xnli`` (configs ``ar bg de el en es fr hi ru sw th tr ur vi zh``, split ``test``,
5010 pairs aligned across languages; ``label`` 0 entailment, 1 neutral, 2 contradiction). No local copy in
``shared/data``; a local file ``$MLQUANT_DATA_DIR/xnli/test/<lang>.jsonl`` may hold rows in the hub's schema
(``premise``, ``hypothesis``, ``label``, optionally ``id``).

Example:
    >>> from mlquant.languages import get_language
    >>> from mlquant.tasks import Item
    >>> task = XNLI()
    >>> item = Item("0", {"premise": "He sat.", "hypothesis": "He stood.", "label": 2})
    >>> task.context(item, get_language("en")), task.choices(item, get_language("en"))[2]
    ('He sat., right?', ' No, He stood.')
"""

from __future__ import annotations

from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import DataError
from mlquant.languages import Language
from mlquant.tasks import ChoiceTask, Difficulty, Item, register_task

__all__ = ["LABELS", "XNLI"]

#: The label order of facebook/xnli and the prompt word of each.
LABELS = ("entailment", "neutral", "contradiction")
_WORDS = ("yes", "also", "no")


def _from_hub(row: dict[str, Any]) -> dict[str, Any]:
    return {"premise": row["premise"], "hypothesis": row["hypothesis"], "label": row["label"]}


class XNLI(ChoiceTask):
    """XNLI (3 options: entailment / neutral / contradiction)."""

    name: ClassVar[str] = "xnli"
    version: ClassVar[str] = "1.0"
    difficulty: ClassVar[Difficulty] = "medium"
    benchmark: ClassVar[str] = "xnli"

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("xnli")
        return HubSource("facebook/xnli", code, split, convert=_from_hub) if code else None

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang)):
            label = require(row, "label", int)
            if label not in (0, 1, 2):
                raise DataError(
                    f"{row['_file']}, line {row['_line']}: field 'label' is {label}; expected 0, 1 or 2 "
                    "(entailment, neutral, contradiction)."
                )
            premise, hypothesis = require(row, "premise").strip(), require(row, "hypothesis").strip()
            data = {"premise": premise, "hypothesis": hypothesis, "label": label}
            items.append(Item(id=str(row.get("id", i)), data=data))
        return items

    def context(self, item: Item, lang: Language) -> str:
        return f"{item.data['premise']}, {lang.prompt.right}?"

    def choices(self, item: Item, lang: Language) -> list[str]:
        return [f" {getattr(lang.prompt, word)}, {item.data['hypothesis']}" for word in _WORDS]


register_task("xnli", XNLI)
