"""FLORES-200: perplexity (``flores_ppl``) on the devtest sentences, in every FLORES language.

``flores_ppl`` scores each sentence by bits per byte, ``-log2 P(sentence) / UTF-8 bytes``: independent of
the tokenizer, comparable across languages, and still informative on a model too small to beat chance on
choice tasks. The aggregate is weighted by bytes (total bits / total bytes). Lower is better.

Example:
    >>> from mlquant.tasks.flores import FloresPPL
    >>> FloresPPL().higher_is_better
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mlquant.data import HubSource, require
from mlquant.languages import Language
from mlquant.requests import Request, RollingRequest
from mlquant.tasks import Item, ItemScore, Task, register_task

#: openlanguagedata/flores_plus renamed a few FLORES-200 codes.
FLORES_PLUS_CODES = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant"}


def flores_hub_source(lang: Language, split: str) -> HubSource:
    """FLORES+ on the hub (``openlanguagedata/flores_plus``, gated: accept its terms and log in first)."""
    code = FLORES_PLUS_CODES.get(lang.flores, lang.flores)
    return HubSource(
        "openlanguagedata/flores_plus", code, split, convert=lambda row: {"id": row["id"], "text": row["text"]}
    )


class FloresTask(Task):
    """Shared data access of the FLORES tasks: aligned devtest sentences, one item per sentence id."""

    benchmark: ClassVar[str] = "flores200"
    split: ClassVar[str] = "devtest"

    def hub_source(self, lang: Language, split: str) -> HubSource | None:
        return flores_hub_source(lang, split)

    def hub_languages(self) -> list[str]:
        from mlquant.languages import list_languages

        return [lang.code for lang in list_languages()]

    def load_items(self, lang: Language) -> list[Item]:
        return [
            Item(id=str(require(row, "id", (int, str))), data={"text": require(row, "text")}) for row in self.rows(lang)
        ]


class FloresPPL(FloresTask):
    """Bits per byte of FLORES-200 devtest sentences (lower is better)."""

    name: ClassVar[str] = "flores_ppl"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[str] = "perplexity"  # type: ignore[assignment]
    difficulty: ClassVar[str] = "easy"  # type: ignore[assignment]
    metric: ClassVar[str] = "bits_per_byte"
    higher_is_better: ClassVar[bool] = False

    def requests(self, item: Item, lang: Language) -> list[Request]:
        return [RollingRequest(item.data["text"])]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        result = outputs[0]
        return ItemScore(
            score=result.bits_per_byte,
            prompt="",
            output="",
            extracted="",
            target="",
            weight=float(result.n_bytes),
            extra={"logprob": result.logprob, "n_tokens": result.n_tokens, "n_bytes": result.n_bytes},
        )


register_task("flores_ppl", FloresPPL)
