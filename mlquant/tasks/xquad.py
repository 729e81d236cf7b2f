"""XQuAD: extractive question answering in 12 languages (Artetxe et al. 2020), scored by SQuAD F1 / exact match.

Generation: ``<passage label><context>\\n\\n<question label><question>\\n\\n<answer label>`` with the labels of
``languages/<code>.yaml`` (the lm-evaluation-harness xquad layout), greedy, stopped at the first newline; the
answer is that line, stripped. The per-item score is the SQuAD token F1 against the best gold answer;
exact match is kept in ``extra``.

Normalization, per language (:func:`normalize_answer`): lowercase; every Unicode punctuation character
(categories ``P*``) removed; the articles ``a``, ``an``, ``the`` removed for English only; then tokens are
whitespace-separated words, or single characters for languages written without spaces (``uses_spaces: false``
in the language file: zh, ja, th), as in the MLQA evaluation script.

Data: local ``$MLQUANT_DATA_DIR/xquad/test/<lang>.jsonl`` (one paragraph per line, SQuAD nesting; see
``shared/data/xquad/SOURCE.md``), else the hub's ``google/xquad`` (configs ``xquad.<lang>``, split
``validation``, one question per row), converted to one paragraph per row. Items are questions (ids are the
SQuAD ids, shared across languages); questions of one paragraph form a cluster (``Item.group``).

Example:
    >>> from mlquant.languages import get_language
    >>> squad_f1("The Eiffel Tower!", ["eiffel tower"], get_language("en"))
    1.0
    >>> round(squad_f1("東京都", ["東京"], get_language("ja")), 3)
    0.8
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import ConfigError, DataError
from mlquant.languages import Language
from mlquant.requests import GenerateRequest, Request
from mlquant.tasks import Difficulty, Item, ItemScore, Task, TaskKind, register_task

__all__ = ["XQuAD", "answer_tokens", "normalize_answer", "squad_exact_match", "squad_f1"]

_EN_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str, lang: Language) -> str:
    """SQuAD normalization for ``lang``: lowercase, no punctuation (Unicode ``P*``), no English articles,
    whitespace collapsed."""
    text = text.lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    if lang.code == "en":
        text = _EN_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str, lang: Language) -> list[str]:
    """Tokens of the normalized answer: words, or characters where the language has no spaces."""
    norm = normalize_answer(text, lang)
    if lang.uses_spaces:
        return norm.split()
    return [ch for ch in norm if not ch.isspace()]


def _f1(prediction: list[str], gold: list[str]) -> float:
    if not prediction or not gold:
        return float(prediction == gold)
    common = sum((Counter(prediction) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_f1(prediction: str, golds: Sequence[str], lang: Language) -> float:
    """Token F1 of ``prediction`` against the best of ``golds`` (0-1)."""
    pred = answer_tokens(prediction, lang)
    return max(_f1(pred, answer_tokens(g, lang)) for g in golds)


def squad_exact_match(prediction: str, golds: Sequence[str], lang: Language) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer (spaces ignored where the language has none)."""

    def norm(text: str) -> str:
        n = normalize_answer(text, lang)
        return n if lang.uses_spaces else n.replace(" ", "")

    pred = norm(prediction)
    return float(any(pred == norm(g) for g in golds))


def _from_hub(row: dict[str, Any]) -> dict[str, Any]:
    """A google/xquad row (one question) as a one-question paragraph of the local schema."""
    answers = row.get("answers") or {}
    texts, starts = answers.get("text", []), answers.get("answer_start", [])
    context = row.get("context", "")
    return {
        "id": hashlib.sha256(str(context).encode("utf-8")).hexdigest()[:16],
        "context": context,
        "qas": [
            {
                "id": row.get("id"),
                "question": row.get("question"),
                "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts, strict=False)],
            }
        ],
    }


class XQuAD(Task):
    """XQuAD extractive QA (generation; SQuAD F1 per item, exact match in ``extra``).

    Args:
        max_new_tokens: generation budget (answers are short spans).
        source: data folder or ``hub:<id>`` (see :mod:`mlquant.data`).
    """

    name: ClassVar[str] = "xquad"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[TaskKind] = "generate"
    difficulty: ClassVar[Difficulty] = "medium"
    metric: ClassVar[str] = "f1"
    benchmark: ClassVar[str] = "xquad"

    def __init__(self, max_new_tokens: int = 32, source: str | None = None) -> None:
        super().__init__(source=source)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"xquad: max_new_tokens={max_new_tokens!r}; expected a positive integer.")
        self.max_new_tokens = max_new_tokens

    def options(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens}

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("xquad")
        if not code:
            return None
        return HubSource("google/xquad", code, "validation" if split == "test" else split, convert=_from_hub)

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for row in self.rows(lang):
            where = f"{row['_file']}, line {row['_line']}"
            context = require(row, "context")
            qas = require(row, "qas", list)
            group = str(row.get("id", "")) or None
            for qa in qas:
                if not isinstance(qa, dict):
                    raise DataError(f"{where}: field 'qas' holds {qa!r}; expected objects with id, question, answers.")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not answers:
                    raise DataError(f"{where}: question {qa.get('id')!r} has no 'answers' list.")
                texts = [a.get("text") for a in answers if isinstance(a, dict)]
                if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                    raise DataError(f"{where}: question {qa.get('id')!r} has an answer without a non-empty 'text'.")
                question = qa.get("question")
                if not isinstance(question, str) or "id" not in qa:
                    raise DataError(f"{where}: a question in field 'qas' lacks a string 'question' or an 'id'.")
                data = {"context": context, "question": question, "answers": texts}
                items.append(Item(id=str(qa["id"]), data=data, group=group))
        return items

    def prompt(self, item: Item, lang: Language) -> str:
        d = item.data
        return (
            f"{lang.label('passage')}{d['context'].strip()}\n\n{lang.label('question')}{d['question'].strip()}\n\n"
            f"{lang.label('answer').rstrip()}"
        )

    def requests(self, item: Item, lang: Language) -> list[Request]:
        return [GenerateRequest(self.prompt(item, lang), stop=("\n",), max_new_tokens=self.max_new_tokens)]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        output = str(outputs[0])
        answer = output.strip().split("\n", 1)[0].strip() if output.strip() else ""
        golds = item.data["answers"]
        return ItemScore(
            score=squad_f1(answer, golds, lang),
            prompt=self.prompt(item, lang),
            output=output,
            extracted=answer,
            target=golds[0],
            extra={"exact_match": squad_exact_match(answer, golds, lang), "answers": list(golds)},
        )


register_task("xquad", XQuAD)
