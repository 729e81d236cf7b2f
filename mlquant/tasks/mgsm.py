"""MGSM: grade-school math word problems in 11 languages (Shi et al. 2022).

Generation with chain-of-thought: ``shots`` exemplars (0-8, the benchmark's own translated exemplars, each
"Question: ... / Step-by-Step Answer: ... The answer is N."), then the problem and the step-by-step label.
With 0 shots it is 0-shot chain-of-thought. The answer is the number after the language's "The answer is"
phrase, else the last number; native digits and decimal / thousands separators are understood.

Example:
    >>> from mlquant.tasks.mgsm import MGSM
    >>> MGSM(shots=2).signature()
    'mgsm@1.0[shots=2]'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.errors import ConfigError
from mlquant.languages import Language
from mlquant.requests import GenerateRequest, Request
from mlquant.tasks import Item, ItemScore, Task, register_task
from mlquant.tasks._scoring import extract_number


class MGSM(Task):
    """MGSM with few-shot chain-of-thought exemplars.

    Args:
        shots: exemplars in the prompt (0-8).
        max_new_tokens: generation budget.
        source: data folder or ``hub:<id>`` (see :mod:`mlquant.data`).
    """

    name: ClassVar[str] = "mgsm"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[str] = "generate"  # type: ignore[assignment]
    difficulty: ClassVar[str] = "hard"  # type: ignore[assignment]
    metric: ClassVar[str] = "exact_match"
    benchmark: ClassVar[str] = "mgsm"

    def __init__(self, shots: int = 8, max_new_tokens: int = 256, source: str | None = None) -> None:
        super().__init__(source=source)
        if not isinstance(shots, int) or not 0 <= shots <= 8:
            raise ConfigError(f"mgsm: shots={shots!r}; expected an integer 0-8 (MGSM has 8 exemplars).")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"mgsm: max_new_tokens={max_new_tokens!r}; expected a positive integer.")
        self.shots = shots
        self.max_new_tokens = max_new_tokens
        self._exemplars: dict[str, list[dict[str, Any]]] = {}

    def options(self) -> dict[str, Any]:
        return {"shots": self.shots, "max_new_tokens": self.max_new_tokens}

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = lang.dataset_code("mgsm")
        if not code:
            return None
        return HubSource("juletxara/mgsm", code, "train" if split == "exemplars" else split)

    def load_items(self, lang: Language) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang)):
            question = require(row, "question")
            answer = require(row, "answer_number", (int, float))
            items.append(Item(id=str(row.get("id", i)), data={"question": question, "answer_number": answer}))
        return items

    def exemplars(self, lang: Language) -> list[dict[str, Any]]:
        """The benchmark's translated chain-of-thought exemplars for ``lang`` (cached)."""
        if lang.code not in self._exemplars:
            rows = self.rows(lang, split="exemplars") if self.shots else []
            for row in rows:
                require(row, "question")
                require(row, "answer")
            self._exemplars[lang.code] = rows
        return self._exemplars[lang.code]

    def prompt(self, item: Item, lang: Language) -> str:
        """Exemplars, then the problem with the language's question label and step-by-step label."""
        parts = [f"{ex['question']}\n{ex['answer']}\n\n" for ex in self.exemplars(lang)[: self.shots]]
        parts.append(f"{lang.label('question')}{item.data['question']}\n{lang.label('step_by_step_answer').rstrip()}")
        return "".join(parts)

    def requests(self, item: Item, lang: Language) -> list[Request]:
        return [GenerateRequest(self.prompt(item, lang), stop=lang.stop_sequences, max_new_tokens=self.max_new_tokens)]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        output = str(outputs[0])
        extracted = extract_number(output, lang)
        target = item.data["answer_number"]
        target_str = str(int(target)) if float(target).is_integer() else repr(float(target))
        return ItemScore(
            score=float(extracted == target_str),
            prompt=self.prompt(item, lang),
            output=output,
            extracted=extracted or "",
            target=target_str,
        )


register_task("mgsm", MGSM)
