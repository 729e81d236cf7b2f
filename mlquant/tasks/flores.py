"""FLORES-200: translation (``flores``) and perplexity (``flores_ppl``) on the devtest sentences, in every FLORES language.

``flores`` translates between English and the language (``direction="en-xx"`` or ``"xx-en"``), greedy, one line,
and scores each sentence by chrF++ (the per-item score, so statistics pair by item) and the corpus by spBLEU
(sacrebleu ``BLEU(tokenize="flores200")``) and chrF++ (``CHRF(word_order=2)``), each with its sacrebleu signature
(:func:`corpus_scores`; per cell, from its result rows: the task hook :meth:`Flores.aggregate`). sacrebleu's
``flores200`` tokenizer needs ``sentencepiece`` and a SentencePiece model it downloads on first use;
:func:`flores200_status` says whether it can run here. Without it :func:`corpus_scores` raises
:class:`~mlquant.errors.BackendUnavailableError` and :meth:`Flores.aggregate` gives spBLEU as NaN with the reason
(plain BLEU with another tokenizer is available under the name ``bleu``).

``flores_ppl`` scores each sentence by bits per byte, ``-log2 P(sentence) / UTF-8 bytes``: independent of
the tokenizer, comparable across languages, and still informative on a model too small to beat chance on
choice tasks. The aggregate is weighted by bytes (total bits / total bytes). Lower is better.

Example:
    >>> from mlquant.tasks.flores import Flores, FloresPPL
    >>> FloresPPL().higher_is_better
    False
    >>> Flores(direction="xx-en", shots=1).signature()
    'flores@1.0[direction=xx-en,max_new_tokens=256,shot_seed=0,shots=1]'
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from mlquant.data import HubSource, require
from mlquant.errors import BackendUnavailableError, ConfigError, DataError
from mlquant.languages import SACREBLEU_TOKENIZERS, Language, get_language
from mlquant.requests import GenerateRequest, Request, RollingRequest
from mlquant.tasks import CellRows, CorpusScore, CorpusScores, Item, ItemScore, Task, cell_records, register_task

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
        """Sentences with ids 1-812 only: ids 813-1012 are held out as calibration data for the quantizers
        (:data:`mlquant.data.CALIBRATION_IDS`), so no quantizer is calibrated on a sentence it is scored on."""
        from mlquant.data import is_evaluation_id

        items = []
        for row in self.rows(lang):
            sentence_id = require(row, "id", (int, str))
            if is_evaluation_id(int(sentence_id)):
                items.append(Item(id=str(sentence_id), data={"text": require(row, "text")}))
        return items


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


# ----------------------------------------------------------------------------------------------------------------------
# Translation (``flores``)
# ----------------------------------------------------------------------------------------------------------------------

Direction = Literal["en-xx", "xx-en"]

#: The sacrebleu tokenizer of spBLEU (Goyal et al. 2022; NLLB Team 2022): SentencePiece model "SPM-200".
SPBLEU_TOKENIZER = "flores200"


def _spm_model_path() -> Path:
    """Where sacrebleu looks for (and downloads) the flores200 SentencePiece model."""
    from sacrebleu.utils import SACREBLEU_DIR

    return Path(SACREBLEU_DIR) / "models" / "flores200sacrebleuspm"


def flores200_status() -> str | None:
    """None when sacrebleu's ``flores200`` tokenizer (spBLEU) can run offline here, else the reason it cannot.

    The tokenizer needs the ``sentencepiece`` package and the SentencePiece model that sacrebleu downloads on
    first use into ``$SACREBLEU/models/flores200sacrebleuspm`` (default ``~/.sacrebleu``). When the model is not
    cached, sacrebleu tries the download; on a machine without that network access spBLEU cannot be computed.

    Example:
        >>> flores200_status() is None or "flores200" in flores200_status()  # doctest: +SKIP
        True
    """
    reasons = []
    if importlib.util.find_spec("sentencepiece") is None:
        reasons.append("the `sentencepiece` package is not installed (pip install sentencepiece)")
    model = _spm_model_path()
    if not model.is_file() or model.stat().st_size == 0:
        reasons.append(f"the flores200 SentencePiece model is not cached at {model} (sacrebleu downloads it on first use)")
    return "; ".join(reasons) or None


def _bleu_metric(tokenize: str) -> Any:
    import sacrebleu

    try:
        return sacrebleu.BLEU(tokenize=tokenize)
    except (ImportError, OSError) as exc:  # URLError is an OSError
        raise BackendUnavailableError(
            f"sacrebleu's {tokenize!r} tokenizer is unavailable here ({type(exc).__name__}: {' '.join(str(exc).split())}). "
            + (
                "spBLEU needs `pip install sentencepiece` and the SentencePiece model "
                "flores200_sacrebleu_tokenizer_spm.model (NLLB's SPM-200, published by the FLORES-200 authors under "
                "dl.fbaipublicfiles.com/large_objects/nllb/models/spm_200/) saved as "
                f"{_spm_model_path()}. Without it, ask for plain BLEU with another tokenizer, e.g. "
                "corpus_scores(..., bleu_tokenize='char') or get_task('flores', bleu_tokenize='char'): "
                "that score is reported as 'bleu', never as 'spbleu'."
                if tokenize == SPBLEU_TOKENIZER
                else "Install the tokenizer's package (ja-mecab: `pip install sacrebleu[ja]`, ko-mecab: `sacrebleu[ko]`)."
            )
        ) from exc


def _bleu_key(tokenize: str) -> str:
    return "spbleu" if tokenize == SPBLEU_TOKENIZER else "bleu"


def _corpus_metrics(hyps: list[str], refs: list[str], tokenize: str, *, strict: bool) -> CorpusScores:
    """chrF++ and BLEU with ``tokenize`` of one corpus; a BLEU that cannot run here raises (``strict``) or is NaN."""
    import sacrebleu

    n = len(hyps)
    chrf = sacrebleu.CHRF(word_order=2)
    chrf_score = CorpusScore("chrf++", float(chrf.corpus_score(hyps, [refs]).score), str(chrf.get_signature()), n)
    key = _bleu_key(tokenize)
    reason = flores200_status() if tokenize == SPBLEU_TOKENIZER and not strict else None
    if reason is None:  # no known obstacle: try (sacrebleu may still fail, e.g. on its first-use download)
        try:
            bleu = _bleu_metric(tokenize)
        except BackendUnavailableError as exc:
            if strict:
                raise
            reason = str(exc)
    if reason is not None:
        bleu_score = CorpusScore(key, math.nan, "", n, note=f"not computed: {reason}")
    else:
        bleu_score = CorpusScore(key, float(bleu.corpus_score(hyps, [refs]).score), str(bleu.get_signature()), n)
    return CorpusScores((bleu_score, chrf_score))


def corpus_scores(
    hypotheses: Sequence[str], references: Sequence[str], lang: Language | str, *, bleu_tokenize: str = SPBLEU_TOKENIZER
) -> dict[str, float | str]:
    """Corpus-level spBLEU and chrF++ of translations into ``lang``, each with its sacrebleu signature.

    Args:
        hypotheses: system outputs, one per segment.
        references: one reference per segment (same order).
        lang: the target language. ``bleu_tokenize="language"`` uses its ``sacrebleu_tokenizer``.
        bleu_tokenize: sacrebleu tokenizer of BLEU. The default ``flores200`` gives spBLEU, reported under
            ``spbleu``; any other tokenizer gives plain BLEU, reported under ``bleu`` (its ``tok:`` is in the signature).

    Returns:
        ``{"spbleu": float, "spbleu_signature": str, "chrf++": float, "chrf++_signature": str}`` (``bleu`` /
        ``bleu_signature`` instead of the spBLEU keys for another tokenizer). Scores are on sacrebleu's 0-100 scale.

    Raises:
        BackendUnavailableError: the BLEU tokenizer cannot run here (flores200 without its model, see
            :func:`flores200_status`).
        ConfigError: hypotheses and references differ in number, or are empty.

    Example:
        >>> s = corpus_scores(["The cat sat."], ["The cat sat."], "en", bleu_tokenize="13a")
        >>> round(s["bleu"], 2), round(s["chrf++"], 2)
        (100.0, 100.0)
    """
    language = get_language(lang)
    if len(hypotheses) != len(references):
        raise ConfigError(f"corpus_scores: {len(hypotheses)} hypotheses but {len(references)} references.")
    if not hypotheses:
        raise ConfigError("corpus_scores: no segments to score.")
    tokenize = language.sacrebleu_tokenizer if bleu_tokenize == "language" else bleu_tokenize
    return dict(_corpus_metrics([str(h) for h in hypotheses], [str(r) for r in references], tokenize, strict=True))


def sentence_chrf(hypothesis: str, reference: str) -> tuple[float, str]:
    """Sentence-level chrF++ (sacrebleu ``CHRF(word_order=2)``, 0-100) and its signature."""
    import sacrebleu

    chrf = sacrebleu.CHRF(word_order=2)
    return float(chrf.sentence_score(hypothesis, [reference]).score), str(chrf.get_signature())


class Flores(FloresTask):
    """FLORES-200 translation between English and ``lang`` (either direction), scored by chrF++ and spBLEU.

    Items are the devtest sentence ids shared by English and ``lang`` (one item per id, so items pair across
    directions, languages and quantization methods). With ``shots > 0``, that many sentence ids are drawn from
    devtest with ``shot_seed`` (the same ids for every language and direction), shown as examples, and left out
    of the scored items: a 5-shot run scores 1007 sentences, not 1012.

    Prompt (the language names are the ``name`` fields of ``languages/``)::

        English: <shot source>
        Japanese: <shot target>

        English: <source>
        Japanese:

    Greedy generation stops at the first newline; the hypothesis is that line, stripped. The per-item score is
    the sentence chrF++; :meth:`aggregate` gives the corpus-level spBLEU and chrF++ with their signatures.

    Args:
        direction: ``"en-xx"`` (English into ``lang``) or ``"xx-en"`` (``lang`` into English).
        shots: examples in the prompt (0-16).
        shot_seed: seed of the draw of the example sentences.
        max_new_tokens: generation budget.
        bleu_tokenize: BLEU tokenizer for :meth:`aggregate` (``flores200`` = spBLEU; see :func:`corpus_scores`).
        source: data folder or ``hub:<id>`` (see :mod:`mlquant.data`).
    """

    name: ClassVar[str] = "flores"
    version: ClassVar[str] = "1.0"
    kind: ClassVar[str] = "generate"  # type: ignore[assignment]
    difficulty: ClassVar[str] = "medium"  # type: ignore[assignment]
    metric: ClassVar[str] = "chrf++"

    MAX_SHOTS: ClassVar[int] = 16

    def __init__(
        self,
        direction: Direction = "en-xx",
        shots: int = 0,
        shot_seed: int = 0,
        max_new_tokens: int = 256,
        bleu_tokenize: str = SPBLEU_TOKENIZER,
        source: str | None = None,
    ) -> None:
        super().__init__(source=source)
        if direction not in ("en-xx", "xx-en"):
            raise ConfigError(f"flores: direction={direction!r}; expected 'en-xx' or 'xx-en'.")
        if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= self.MAX_SHOTS:
            raise ConfigError(f"flores: shots={shots!r}; expected an integer 0-{self.MAX_SHOTS}.")
        if not isinstance(shot_seed, int) or isinstance(shot_seed, bool):
            raise ConfigError(f"flores: shot_seed={shot_seed!r}; expected an integer.")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"flores: max_new_tokens={max_new_tokens!r}; expected a positive integer.")
        if bleu_tokenize != "language" and bleu_tokenize not in SACREBLEU_TOKENIZERS:
            raise ConfigError(
                f"flores: bleu_tokenize={bleu_tokenize!r}; expected 'language' or one of {sorted(SACREBLEU_TOKENIZERS)}."
            )
        self.direction: Direction = direction
        self.shots = shots
        self.shot_seed = shot_seed
        self.max_new_tokens = max_new_tokens
        self.bleu_tokenize = bleu_tokenize
        self._pairs: dict[str, tuple[list[Item], list[Item]]] = {}

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"direction": self.direction, "shots": self.shots, "max_new_tokens": self.max_new_tokens}
        if self.shots:
            opts["shot_seed"] = self.shot_seed
        if self.bleu_tokenize != SPBLEU_TOKENIZER:
            opts["bleu_tokenize"] = self.bleu_tokenize
        return opts

    def languages(self, where: Literal["any", "local", "hub"] = "any") -> list[str]:
        """Every FLORES language but English (English is one side of every pair), when English data is there too."""
        have = super().languages(where)
        return [code for code in have if code != "en"] if "en" in have else []

    # ----- data -------------------------------------------------------------------------------------------------
    def _sides(self, lang: Language) -> tuple[Language, Language]:
        english = get_language("en")
        return (english, lang) if self.direction == "en-xx" else (lang, english)

    def _split(self, lang: Language) -> tuple[list[Item], list[Item]]:
        """(shot items, scored items) of ``lang``, each item holding ``source`` and ``target`` of this direction."""
        if lang.code not in self._pairs:
            if lang.code == "en":
                raise ConfigError("flores: translation needs a language other than English (English is the pivot).")
            src_lang, tgt_lang = self._sides(lang)
            src = {it.id: it.data["text"] for it in FloresTask.load_items(self, src_lang)}
            tgt_items = FloresTask.load_items(self, tgt_lang)
            tgt = {it.id: it.data["text"] for it in tgt_items}
            if set(src) != set(tgt):
                only = sorted(set(src) ^ set(tgt))[:5]
                raise DataError(
                    f"flores: the {src_lang.code} and {tgt_lang.code} devtest files are not aligned: "
                    f"{len(set(src) ^ set(tgt))} sentence ids are in only one of them (e.g. {only})."
                )
            items = [Item(id=it.id, data={"source": src[it.id], "target": tgt[it.id]}) for it in tgt_items]
            if self.shots >= len(items):
                raise ConfigError(f"flores: shots={self.shots} leaves no sentence to score ({len(items)} in devtest).")
            # The same ids for every language and direction: the draw depends on the sorted ids and the seed only.
            rng = random.Random(f"flores|shots|{self.shot_seed}")
            shot_ids = rng.sample(sorted(it.id for it in items), self.shots)
            by_id = {it.id: it for it in items}
            skip = set(shot_ids)
            self._pairs[lang.code] = ([by_id[i] for i in shot_ids], [it for it in items if it.id not in skip])
        return self._pairs[lang.code]

    def load_items(self, lang: Language) -> list[Item]:
        """Aligned (source, target) sentences of this direction, without the sentences used as shots."""
        return self._split(lang)[1]

    def shot_items(self, lang: Language | str) -> list[Item]:
        """The example sentences of the prompt (excluded from :meth:`load_items`)."""
        return self._split(get_language(lang))[0]

    # ----- prompting and scoring --------------------------------------------------------------------------------
    def prompt(self, item: Item, lang: Language) -> str:
        src_lang, tgt_lang = self._sides(lang)
        blocks = [
            f"{src_lang.name}: {shot.data['source']}\n{tgt_lang.name}: {shot.data['target']}\n\n"
            for shot in self._split(lang)[0]
        ]
        blocks.append(f"{src_lang.name}: {item.data['source']}\n{tgt_lang.name}:")
        return "".join(blocks)

    def requests(self, item: Item, lang: Language) -> list[Request]:
        return [GenerateRequest(self.prompt(item, lang), stop=("\n",), max_new_tokens=self.max_new_tokens)]

    def score(self, item: Item, lang: Language, outputs: Sequence[Any]) -> ItemScore:
        output = str(outputs[0])
        hypothesis = _hypothesis(output)
        target = item.data["target"]
        chrf, signature = sentence_chrf(hypothesis, target)
        return ItemScore(
            score=chrf,
            prompt=self.prompt(item, lang),
            output=output,
            extracted=hypothesis,
            target=target,
            extra={"chrf++_signature": signature, "direction": self.direction},
        )

    def aggregate(self, rows: CellRows, lang: Language | str | None = None) -> CorpusScores:
        """Corpus-level chrF++ and spBLEU (BLEU with another ``bleu_tokenize``) of one cell, with their signatures.

        Hypotheses are the rows' ``extracted`` answers (else the first line of ``output``), references their
        ``target``s, in the target language of the rows' ``direction`` (``extra``; default :attr:`direction`):
        the cell's language for ``en-xx``, English for ``xx-en``. Where spBLEU cannot run here (no flores200
        SentencePiece model, :func:`flores200_status`) its value is NaN and its ``note`` says why.

        Example:
            >>> rows = [{"lang": "fr", "extracted": "Le chat.", "target": "Le chat.", "extra": '{"direction": "en-xx"}'}]
            >>> Flores(bleu_tokenize="13a").aggregate(rows)["chrf++"]
            100.0
        """
        records, code = cell_records(rows, lang)
        if not records:
            return CorpusScores()
        if code is None:
            raise ConfigError("flores: aggregate needs the cell's language: give lang= or rows with a 'lang' column.")
        directions = {str(r["extra"].get("direction", self.direction)) for r in records}
        if len(directions) > 1:
            raise ConfigError(f"flores: the rows of one cell have one direction; these have {sorted(directions)}.")
        target = get_language("en") if directions == {"xx-en"} else get_language(code)
        hyps = [r["extracted"] if isinstance(r.get("extracted"), str) else _hypothesis(str(r.get("output") or ""))
                for r in records]
        refs = [r["target"] if isinstance(r.get("target"), str) else "" for r in records]
        tokenize = target.sacrebleu_tokenizer if self.bleu_tokenize == "language" else self.bleu_tokenize
        return _corpus_metrics(hyps, refs, tokenize, strict=False)


def _hypothesis(output: str) -> str:
    """The translation in a generated output: the first line of the stripped output, stripped (``""`` for none)."""
    return output.strip().split("\n", 1)[0].strip() if output.strip() else ""


register_task("flores", Flores)
