"""MGSM: grade-school math word problems in 11 languages (Shi et al. 2022).

Generation with chain-of-thought, in two modes:

* ``few_shot`` (``shots`` = 1-8, default 8): the benchmark's own translated exemplars, each
  "Question: ... / Step-by-Step Answer: ... The answer is N.", then the problem and the step-by-step label;
* ``zero_shot_cot`` (``shots=0``): the problem, then the step-by-step label, nothing else.

``digits="native"`` rewrites the ASCII digits of the problem and of the exemplars with the language's native
digits (Bengali, Telugu, Thai digits; full-width digits for Chinese and Japanese), for the languages whose file
gives native digits; elsewhere it changes nothing. The answer is the number after the language's "The answer is"
phrase, else the last number; native digits and decimal / thousands separators are understood.

Example:
    >>> from mlquant.tasks.mgsm import MGSM
    >>> MGSM(shots=2).signature()
    'mgsm@1.0[max_new_tokens=256,shots=2]'
    >>> MGSM(mode="zero_shot_cot", digits="native").signature()
    'mgsm@1.0[digits=native,max_new_tokens=256,shots=0]'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from mlquant.data import HubSource, require
from mlquant.errors import ConfigError
from mlquant.languages import Language
from mlquant.requests import GenerateRequest, Request
from mlquant.tasks import Difficulty, Item, ItemScore, Task, TaskKind, register_task
from mlquant.tasks._scoring import extract_number

Mode = Literal["few_shot", "zero_shot_cot"]
Digits = Literal["ascii", "native"]


class MGSM(Task):
    """MGSM with few-shot (or 0-shot) chain-of-thought.

    Args:
        shots: exemplars in the prompt (0-8); default 8 in ``few_shot`` mode, 0 in ``zero_shot_cot`` mode.
        max_new_tokens: generation budget.
        mode: ``few_shot`` or ``zero_shot_cot``; default: from ``shots`` (0 -> ``zero_shot_cot``).
        digits: ``ascii`` (the benchmark's text) or ``native`` (problem and exemplars in the language's digits).
        source: data folder or ``hub:<id>`` (see :mod:`mlquant.data`).
    """

    name: ClassVar[str] = "mgsm"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[TaskKind] = "generate"
    difficulty: ClassVar[Difficulty] = "hard"
    metric: ClassVar[str] = "exact_match"
    benchmark: ClassVar[str] = "mgsm"

    def __init__(
        self,
        shots: int | None = None,
        max_new_tokens: int = 256,
        source: str | None = None,
        *,
        mode: Mode | None = None,
        digits: Digits = "ascii",
    ) -> None:
        super().__init__(source=source)
        if mode not in (None, "few_shot", "zero_shot_cot"):
            raise ConfigError(f"mgsm: mode={mode!r}; expected 'few_shot' or 'zero_shot_cot'.")
        if shots is None:
            shots = 0 if mode == "zero_shot_cot" else 8
        if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= 8:
            raise ConfigError(f"mgsm: shots={shots!r}; expected an integer 0-8 (MGSM has 8 exemplars).")
        if mode == "zero_shot_cot" and shots != 0:
            raise ConfigError(f"mgsm: mode='zero_shot_cot' takes no exemplars, but shots={shots}.")
        if mode == "few_shot" and shots == 0:
            raise ConfigError("mgsm: mode='few_shot' needs shots >= 1 (use mode='zero_shot_cot' for none).")
        if digits not in ("ascii", "native"):
            raise ConfigError(f"mgsm: digits={digits!r}; expected 'ascii' or 'native'.")
        self.mode: Mode = "zero_shot_cot" if shots == 0 else "few_shot"
        self.digits: Digits = digits
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"mgsm: max_new_tokens={max_new_tokens!r}; expected a positive integer.")
        self.shots = shots
        self.max_new_tokens = max_new_tokens
        self._exemplars: dict[str, list[dict[str, Any]]] = {}

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"shots": self.shots, "max_new_tokens": self.max_new_tokens}
        if self.digits != "ascii":  # the default stays out, so earlier signatures (and caches) still match
            opts["digits"] = self.digits
        return opts

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

    def _digits(self, text: str, lang: Language) -> str:
        return lang.to_native_digits(text) if self.digits == "native" else text

    def prompt(self, item: Item, lang: Language) -> str:
        """Exemplars, then the problem with the language's question label and step-by-step label.

        With ``shots=0`` (``zero_shot_cot``) the prompt is the problem and the step-by-step label only. With
        ``digits="native"`` the ASCII digits of the problem and the exemplars are written in native digits.
        """
        parts = [
            f"{self._digits(ex['question'], lang)}\n{self._digits(ex['answer'], lang)}\n\n"
            for ex in self.exemplars(lang)[: self.shots]
        ]
        question = self._digits(item.data["question"], lang)
        parts.append(f"{lang.label('question')}{question}\n{lang.label('step_by_step_answer').rstrip()}")
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
