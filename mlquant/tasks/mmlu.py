"""Multilingual MMLU: 57-subject multiple-choice knowledge questions (Hendrycks et al. 2021), translated.

Two translations, chosen with ``dataset``:

- ``global_mmlu`` (default): Global-MMLU (Singh et al. 2024), hub ``CohereForAI/Global-MMLU``, 42 languages,
  splits ``dev`` (5 questions per subject) and ``test`` (14,042 per language). ``shared/data/global_mmlu`` has
  the ``dev`` split for en and ja only, so offline runs score ``split="dev"``.
- ``m_mmlu``: the Okapi translation (Lai et al. 2023), hub ``alexandrainst/m_mmlu`` (34 languages; its
  ``train`` split serves as the dev split for shots, as in lighteval; the subject is the first part of ``id``).

Prompt: the question with the language's ``question`` label, the four options as ``A. ...`` to ``D. ...``, and
the language's ``answer`` label; the continuations are the letters `` A`` .. `` D`` (lm-evaluation-harness's
MMLU formulation, without its English "The following are multiple choice questions about ..." line, since
every prompt word must come from ``languages/``). The four continuations share the context and are one token
each, so an item costs ONE forward pass of the model. With ``shots=k``, the first k dev questions of the item's
subject come first, each followed by its answer letter and a blank line; when the scored split is the dev split
itself, the item's own question is skipped (so at most 4 shots there).

Example:
    >>> MMLU(shots=5).signature()
    'mmlu@1.0[dataset=global_mmlu,shots=5,split=test]'
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from mlquant.data import HubSource, require
from mlquant.errors import ConfigError, DataError
from mlquant.languages import Language, list_languages
from mlquant.tasks import ChoiceTask, Difficulty, Item, register_task

__all__ = ["LETTERS", "MMLU", "M_MMLU_CONFIGS"]

LETTERS = ("A", "B", "C", "D")

Dataset = Literal["global_mmlu", "m_mmlu"]

#: Configurations (ISO 639-1 codes) of alexandrainst/m_mmlu, used while the language files have no ``m_mmlu``
#: dataset code: a language whose file names an ``m_mmlu`` code (or null) takes precedence.
M_MMLU_CONFIGS = frozenset(
    "ar bn ca da de en es eu fr gu hi hr hu hy id is it kn ml mr nb ne nl pt ro ru sk sr sv ta te uk vi zh".split()
)

_HUB = {"global_mmlu": "CohereForAI/Global-MMLU", "m_mmlu": "alexandrainst/m_mmlu"}
#: split names of mlquant -> split names on the hub.
_HUB_SPLITS = {"global_mmlu": {"dev": "dev", "test": "test"}, "m_mmlu": {"dev": "train", "test": "test"}}


def _from_m_mmlu(row: dict[str, Any]) -> dict[str, Any]:
    """An alexandrainst/m_mmlu row (id, instruction, option_a..d, answer) in the Global-MMLU schema."""
    sample_id = str(row.get("id", ""))
    out = {
        "sample_id": sample_id,
        "subject": sample_id.split("/")[0] if sample_id else "",
        "question": row.get("instruction"),
        "answer": row.get("answer"),
    }
    for letter in "abcd":
        out[f"option_{letter}"] = row.get(f"option_{letter}")
    return out


class MMLU(ChoiceTask):
    """Multilingual MMLU, 0-5 shots, letter answers scored in one forward pass.

    Args:
        shots: dev questions of the same subject shown first (0-5).
        dataset: ``global_mmlu`` (CohereForAI/Global-MMLU) or ``m_mmlu`` (alexandrainst/m_mmlu).
        split: the split scored, ``test`` or ``dev``.
        source: data folder or ``hub:<id>`` (see :mod:`mlquant.data`).
    """

    name: ClassVar[str] = "mmlu"
    version: ClassVar[str] = "1.0"
    difficulty: ClassVar[Difficulty] = "hard"
    benchmark: ClassVar[str] = "global_mmlu"

    def __init__(
        self, shots: int = 0, dataset: Dataset = "global_mmlu", split: str = "test", source: str | None = None
    ) -> None:
        super().__init__(source=source)
        if dataset not in _HUB:
            raise ConfigError(f"mmlu: dataset={dataset!r}; expected one of {sorted(_HUB)}.")
        if split not in ("test", "dev"):
            raise ConfigError(f"mmlu: split={split!r}; expected 'test' or 'dev'.")
        if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= 5:
            raise ConfigError(f"mmlu: shots={shots!r}; expected an integer 0-5.")
        if split == "dev" and dataset == "global_mmlu" and shots > 4:
            raise ConfigError(
                "mmlu: split='dev' with shots=5: the dev split has 5 questions per subject and the scored one is "
                "never its own shot, so at most 4 shots; use shots<=4 or split='test'."
            )
        self.shots = shots
        self.dataset: Dataset = dataset
        # Task declares benchmark and split ClassVars; an MMLU instance picks its own dataset (folder under
        # MLQUANT_DATA_DIR and key in language files) and split, so it sets them per instance.
        self.benchmark = dataset  # type: ignore[misc]  # instance value over the ClassVar, see above
        self.split = split  # type: ignore[misc]  # instance value over the ClassVar, see above
        self._dev: dict[str, dict[str, list[Item]]] = {}

    def options(self) -> dict[str, Any]:
        return {"shots": self.shots, "dataset": self.dataset, "split": self.split}

    # ----- data -------------------------------------------------------------------------------------------------
    def _hub_code(self, lang: Language) -> str | None:
        if self.dataset == "m_mmlu" and "m_mmlu" not in lang.datasets:
            return lang.code if lang.code in M_MMLU_CONFIGS else None
        return lang.dataset_code(self.dataset)

    def hub_languages(self) -> list[str]:
        return [lang.code for lang in list_languages() if self._hub_code(lang)]

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        code = self._hub_code(lang)
        if not code:
            return None
        convert = _from_m_mmlu if self.dataset == "m_mmlu" else None
        return HubSource(_HUB[self.dataset], code, _HUB_SPLITS[self.dataset].get(split, split), convert=convert)

    def _items_of(self, lang: Language, split: str) -> list[Item]:
        items = []
        for i, row in enumerate(self.rows(lang, split=split)):
            where = f"{row['_file']}, line {row['_line']}"
            answer = require(row, "answer")
            if answer not in LETTERS:
                raise DataError(f"{where}: field 'answer' is {answer!r}; expected one of A, B, C, D.")
            choices = [require(row, f"option_{letter.lower()}", (str, int, float)) for letter in LETTERS]
            data = {
                "question": str(require(row, "question")).strip(),
                "choices": [str(c).strip() for c in choices],
                "label": LETTERS.index(answer),
                "subject": str(require(row, "subject")),
            }
            items.append(Item(id=str(row.get("sample_id", i)), data=data))
        return items

    def load_items(self, lang: Language) -> list[Item]:
        return self._items_of(lang, self.split)

    def dev_items(self, lang: Language) -> dict[str, list[Item]]:
        """The dev questions of ``lang`` by subject, in file order (cached): the pool of shots."""
        if lang.code not in self._dev:
            by_subject: dict[str, list[Item]] = {}
            if self.shots:
                for item in self._items_of(lang, "dev"):
                    by_subject.setdefault(item.data["subject"], []).append(item)
            self._dev[lang.code] = by_subject
        return self._dev[lang.code]

    def shot_items(self, item: Item, lang: Language) -> list[Item]:
        """The ``shots`` dev questions of the item's subject shown before it (never the item itself)."""
        if not self.shots:
            return []
        pool = [d for d in self.dev_items(lang).get(item.data["subject"], []) if d.id != item.id]
        if len(pool) < self.shots:
            raise DataError(
                f"mmlu: subject {item.data['subject']!r} has {len(pool)} dev questions for {lang.code} "
                f"other than item {item.id!r}; shots={self.shots} needs {self.shots}."
            )
        return pool[: self.shots]

    # ----- prompting --------------------------------------------------------------------------------------------
    @staticmethod
    def _question_block(item: Item, lang: Language) -> str:
        d = item.data
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, d["choices"], strict=False))
        return f"{lang.label('question')}{d['question']}\n{options}\n{lang.label('answer').rstrip()}"

    def context(self, item: Item, lang: Language) -> str:
        shots = "".join(
            f"{self._question_block(s, lang)} {LETTERS[s.data['label']]}\n\n" for s in self.shot_items(item, lang)
        )
        return shots + self._question_block(item, lang)

    def choices(self, item: Item, lang: Language) -> list[str]:
        return [f" {letter}" for letter in LETTERS]


register_task("mmlu", MMLU)
