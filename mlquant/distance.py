"""Distance of a quantized model to its baseline, token by token, per language, with CIs clustered by sentence.

The figures of llama.cpp's ``llama-perplexity --kl-divergence`` (tools/perplexity/perplexity.cpp), computed on the
same parallel FLORES sentences in every language, so that languages are comparable:

* ``kl`` — mean KL(P_base || P_quant) of the next-token distributions (nats per token), ``kl_reverse`` the other
  direction, and the distribution of the per-token KL: ``kl_max``, ``kl_p99_9``, ``kl_p99``, ``kl_p95``, ``kl_p90``,
  ``kl_median``, ``kl_p10``, ``kl_p5``, ``kl_p1``, ``kl_p0_1``, ``kl_min``;
* ``same_top_p`` — share of tokens (0-1) where both models' most likely next token is the same;
* Δp = p_quant(true token) - p_base(true token): ``dp_mean``, ``dp_rms`` (root mean square) and ``dp_max``,
  ``dp_p99_9`` ... ``dp_p75``, ``dp_median``, ``dp_p25`` ... ``dp_p0_1``, ``dp_min`` (probabilities, 0-1);
* ``ln_ppl_ratio`` — ln(PPL(Q)/PPL(base)) = mean over tokens of ln p_base - ln p_quant, with llama.cpp's paired
  standard error; ``ln_ppl_base`` and ``ln_ppl_quant`` (mean negative log-likelihood, nats per token) and
  ``ln_ppl_corr``, the Pearson correlation of the per-token ln p of the two models.

Percentiles interpolate linearly between order statistics (llama.cpp's and :func:`numpy.quantile`'s rule). Unlike
llama.cpp, every token of a sentence is scored (it scores the second half of 512-token chunks) and the KL uses the
exact base distribution (it stores it in 16 bits and drops ln p < -16).

Uncertainty. Tokens of one sentence are correlated, so a per-token standard error is too small. Every mean gets
``se_naive`` (llama.cpp's per-token SE: sd / sqrt(n_tokens); for ``ln_ppl_ratio`` sqrt(se_q² + se_b² - 2 cov)) and
``se``, the cluster-robust (CR1) SE with sentences as clusters: Var = G / (G - 1) · Σ_g (S_g - m n_g)² / N² for G
sentences of token sums S_g and counts n_g, N tokens, mean m (delta method for ``dp_rms``). ``ci_low`` / ``ci_high``
come from a cluster bootstrap that resamples whole sentences, for every metric. Use 30 sentences or more: with a
handful of clusters the clustered SE is itself very noisy. The LM heads run on ``chunk_size`` positions at a time
in float32; only six numbers per token are kept. (The statistics are computed in the private
``mlquant._distance_stats``; the names are used from here.)

Example:
    >>> tokens = pd.DataFrame({"item_id": ["1", "1", "2", "2"], "kl": [0.1, 0.3, 0.2, 0.2],
    ...                        "kl_reverse": 0.2, "same_top": [True, False, True, True],
    ...                        "lp_base": -1.0, "lp_quant": [-1.2, -0.9, -1.0, -1.1]})
    >>> rows = summarize_tokens(tokens, Bootstrap(n_resamples=200)).set_index("metric")
    >>> float(rows.loc["kl", "value"]), float(rows.loc["same_top_p", "value"]), int(rows.loc["kl", "n_sentences"])
    (0.2, 0.75, 2)
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlquant._distance_stats import (
    DP_QUANTILES,
    KL_QUANTILES,
    METRICS,
    TOKEN_COLUMNS,
    check_ci,
    cluster_se,
    naive_se,
    summarize_tokens,
)
from mlquant.errors import ConfigError, DataError
from mlquant.stats import Bootstrap
from mlquant.stats._types import FrameResult, format_frame

if TYPE_CHECKING:
    import torch

    from mlquant.models import HFModel

__all__ = [
    "COLUMNS",
    "DP_QUANTILES",
    "KL_QUANTILES",
    "METRICS",
    "TOKEN_COLUMNS",
    "DistanceTable",
    "check_pair",
    "cluster_se",
    "distance",
    "naive_se",
    "parallel_sentences",
    "run_distance",
    "summarize_tokens",
    "token_distances",
]

log = logging.getLogger(__name__)

#: Columns of :meth:`DistanceTable.to_frame` (long format: one row per quant x language x metric).
COLUMNS = ["quant", "lang", "metric", "value", "ci_low", "ci_high", "se", "se_naive", "n_tokens", "n_sentences"]


@dataclass(frozen=True, eq=False)
class DistanceTable(FrameResult):
    """Distance of quantized models to their baseline per language, in long format (:data:`COLUMNS`).

    ``to_frame()`` has one row per (quant, lang, metric); ``str()`` is a compact per-language table (KL with its
    clustered 95 % CI, the 99.9 % KL, reverse KL, same top token, Δp, ln PPL ratio with both standard errors).

    Example:
        >>> rows = pd.DataFrame({"metric": list(METRICS), "value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "se": 0.0,
        ...                      "se_naive": 0.0, "n_tokens": 10, "n_sentences": 2})
        >>> table = DistanceTable(rows.assign(quant="rtn-w4", lang="ja")[COLUMNS])
        >>> float(table.wide().loc[("rtn-w4", "ja"), "kl"])
        0.0
    """

    def wide(self, column: str = "value") -> pd.DataFrame:
        """One row per (quant, lang), one column per metric, holding ``column`` (``value``, ``se``, ``ci_low``...)."""
        if column not in COLUMNS[3:]:
            raise ConfigError(f"DistanceTable.wide: column {column!r}; expected one of {COLUMNS[3:]}.")
        frame = self._frame.pivot_table(index=["quant", "lang"], columns="metric", values=column, sort=False)
        table: pd.DataFrame = frame[[m for m in METRICS if m in frame.columns]]
        return table

    def __str__(self) -> str:
        if self._frame.empty:
            return "(no distance computed)"
        v, s, n = self.wide(), self.wide("se"), self.wide("se_naive")
        lo, hi = self.wide("ci_low"), self.wide("ci_high")
        counts = self._frame.groupby(["quant", "lang"], sort=False)[["n_sentences", "n_tokens"]].first()
        out = pd.DataFrame({
            "sent": counts["n_sentences"], "tokens": counts["n_tokens"],
            "KL": v["kl"], "KL 95% CI": [f"[{a:.4f}, {b:.4f}]" for a, b in zip(lo["kl"], hi["kl"])],
            "KL 99.9%": v["kl_p99_9"], "KL(q||b)": v["kl_reverse"],
            "same top %": 100 * v["same_top_p"], "dp mean %": 100 * v["dp_mean"], "dp rms %": 100 * v["dp_rms"],
            "ln PPL ratio": v["ln_ppl_ratio"], "se (sent.)": s["ln_ppl_ratio"], "se (token)": n["ln_ppl_ratio"],
        }).reset_index()
        return format_frame(out, digits=4)


# ----- per-token computation ------------------------------------------------------------------------------------------
def _vocab_size(model: HFModel) -> int | None:
    size = getattr(model.torch_model.config, "vocab_size", None)
    return int(size) if isinstance(size, int) else None


def check_pair(base: HFModel, quant: HFModel) -> None:
    """Raise ConfigError unless the two models share tokenizer and vocabulary (the tokens must be the same)."""
    tok_b, tok_q = base.tokenizer, quant.tokenizer
    if tok_b is not tok_q:
        vb, vq = tok_b.get_vocab(), tok_q.get_vocab()
        if vb != vq:
            extra = sorted(set(vq) ^ set(vb))[:3]
            raise ConfigError(
                f"distance: the two models have different tokenizers (base vocabulary {len(vb)} tokens, quantized "
                f"{len(vq)}; e.g. {extra} in only one); the distance needs the same tokens."
            )
    sb, sq = _vocab_size(base), _vocab_size(quant)
    if sb is not None and sq is not None and sb != sq:
        raise ConfigError(f"distance: the models' output vocabularies differ (base vocab_size={sb}, quantized {sq}).")


def _position_stats(lp_b: torch.Tensor, lp_q: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    """KL both ways, same argmax and the true token's ln p of each row of two [n, vocab] log-probability tensors."""
    diff = lp_b - lp_q
    kl = (lp_b.exp() * diff).sum(dim=-1)
    kl_rev = -(lp_q.exp() * diff).sum(dim=-1)
    same = lp_b.argmax(dim=-1) == lp_q.argmax(dim=-1)
    index = target[:, None]
    return [kl, kl_rev, same, lp_b.gather(1, index)[:, 0], lp_q.gather(1, index)[:, 0]]


def token_distances(
    base: HFModel, quant: HFModel, texts: Sequence[str], *, batch_size: int = 8, chunk_size: int = 128
) -> pd.DataFrame:
    """Per-token distance of ``quant`` to ``base`` on each text (BOS + text, disjoint windows of ``max_length``).

    Every position that predicts a text token is scored, including the first after BOS. The LM heads run on
    ``chunk_size`` positions at a time in float32; nothing of size [tokens, vocab] outlives a chunk.

    Args:
        base, quant: two HFModels with the same tokenizer (a quantizer's output shares its source's).
        texts: the texts.
        batch_size: windows per forward pass; chunk_size: positions per LM-head call.

    Returns:
        One row per scored token, ordered by text then position: ``text`` (index into ``texts``), ``position``
        (0-based index of the predicted token in the text), ``kl``, ``kl_reverse``, ``same_top``, ``lp_base``,
        ``lp_quant``.

    Example:
        >>> token_distances(model, model, ["Hello"])["kl"].tolist()  # doctest: +SKIP
        [0.0, 0.0]
    """
    import torch

    if batch_size < 1 or chunk_size < 1:
        raise ConfigError(f"token_distances: batch_size={batch_size} and chunk_size={chunk_size} must be >= 1.")
    check_pair(base, quant)
    prefix = base.prefix_ids()
    step = min(base.max_length, quant.max_length) - len(prefix)
    windows: list[tuple[int, int, list[int]]] = []
    for i, text in enumerate(texts):
        ids = list(base.tokenizer(text, add_special_tokens=False)["input_ids"])
        windows += [(i, start, prefix + ids[start : start + step]) for start in range(0, len(ids), step)]
    windows.sort(key=lambda w: -len(w[2]))
    pad = base.tokenizer.pad_token_id or 0
    cols: list[list[torch.Tensor]] = [[] for _ in range(5)]
    owner: list[int] = []
    position: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            width = max(len(t) for _, _, t in chunk)
            ids_t = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (_, _, toks) in enumerate(chunk):
                ids_t[k, : len(toks)] = torch.tensor(toks)
                mask[k, : len(toks)] = 1
            # Positions 0..len-2 of a window predict its tokens 1..len-1.
            hidden = [
                torch.cat([h[k, : len(t) - 1] for k, (_, _, t) in enumerate(chunk)])
                for h in (m.hidden_states(ids_t, mask).last_hidden_state for m in (base, quant))
            ]
            target = torch.tensor([x for _, _, t in chunk for x in t[1:]], dtype=torch.long)
            owner += [i for i, _, t in chunk for _ in t[1:]]
            position += [s + j for _, s, t in chunk for j in range(len(t) - 1)]
            for s in range(0, target.numel(), chunk_size):
                lp_b = base.logprobs_at(hidden[0][s : s + chunk_size])
                lp_q = quant.logprobs_at(hidden[1][s : s + chunk_size]).to(lp_b.device)
                stats = _position_stats(lp_b, lp_q, target[s : s + chunk_size].to(lp_b.device))
                for col, value in zip(cols, stats):
                    col.append(value.cpu())
                del lp_b, lp_q, stats
    names = ["kl", "kl_reverse", "same_top", "lp_base", "lp_quant"]
    data: dict[str, Any] = {"text": np.asarray(owner, dtype=np.int64), "position": np.asarray(position, dtype=np.int64)}
    for name, col in zip(names, cols):
        joined = torch.cat(col) if col else torch.zeros(0)
        data[name] = joined.numpy().astype(bool if name == "same_top" else np.float64)
    frame = pd.DataFrame(data)
    result: pd.DataFrame = frame.sort_values(["text", "position"], kind="stable").reset_index(drop=True)
    return result


# ----- sentences, cache and the two entry points ----------------------------------------------------------------------
def parallel_sentences(languages: Sequence[str] | str, n_sentences: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """The same ``n_sentences`` FLORES devtest sentences (ids drawn with ``seed``) in each language.

    The ids are drawn from the evaluation ids every language has (1-812; the calibration ids are never used), in
    benchmark order, independently of which languages are asked for: adding a language later adds the same
    sentences in it.

    Returns:
        ``{lang: [(sentence id, text), ...]}``.

    Raises:
        ConfigError: ``n_sentences`` is not a positive integer or exceeds the sentences available; an unknown
            language code (UnknownNameError).
        DataError: a language has no FLORES data here.

    Example:
        >>> sents = parallel_sentences(["en", "ja"], 2)  # doctest: +SKIP
        >>> [i for i, _ in sents["en"]] == [i for i, _ in sents["ja"]]  # doctest: +SKIP
        True
    """
    from mlquant.languages import get_language
    from mlquant.tasks import get_task

    if isinstance(n_sentences, bool) or not isinstance(n_sentences, (int, np.integer)) or n_sentences < 1:
        raise ConfigError(f"distance: n_sentences={n_sentences!r}; expected a positive integer.")
    langs = [languages] if isinstance(languages, str) else list(languages)
    if not langs:
        raise ConfigError("distance: no language given; name at least one (languages=['en', 'ja']).")
    task = get_task("flores_ppl")
    texts: dict[str, dict[str, str]] = {}
    for lang in langs:
        code = get_language(lang).code  # UnknownNameError names an unknown code
        try:
            items = task.items(code)
        except DataError as exc:
            raise DataError(f"distance: no FLORES data for language {lang!r}: {exc}") from exc
        texts[code] = {it.id: str(it.data["text"]) for it in items}
    common = sorted(set.intersection(*(set(t) for t in texts.values())), key=int)
    if n_sentences > len(common):
        raise ConfigError(
            f"distance: n_sentences={n_sentences} but the languages {langs} share only {len(common)} sentences."
        )
    keep = sorted(random.Random(f"distance|{seed}").sample(range(len(common)), n_sentences))
    ids = [common[i] for i in keep]
    return {code: [(i, t[i]) for i in ids] for code, t in texts.items()}


@dataclass(frozen=True)
class _Pair:
    """The two models of one comparison, loaded only when a sentence is missing from the cache."""

    label: str
    folder: Path | None  # where the per-token arrays are kept (None: not kept)
    load: Callable[[], tuple[HFModel, HFModel]]


def _cache_folder(root: str | os.PathLike[str] | None, label: str, base_fp: str, quant_fp: str) -> Path | None:
    from mlquant.results import safe_name

    if root is None:
        return None
    return Path(root) / f"{safe_name(label)}-{quant_fp[:12]}-vs-{base_fp[:12]}"


def _lang_tokens(pair: _Pair, lang: str, sentences: list[tuple[str, str]], batch_size: int) -> pd.DataFrame:
    """Per-token rows of ``sentences`` from the cache, computing (and adding) only the missing sentences."""
    from mlquant.results import write_table

    path = None if pair.folder is None else pair.folder / f"{lang}.parquet"
    have = pd.read_parquet(path) if path is not None and path.is_file() else pd.DataFrame(columns=TOKEN_COLUMNS)
    done = set(have["item_id"].astype(str))
    todo = [(i, t) for i, t in sentences if i not in done]
    if todo:
        base, quant = pair.load()
        new = token_distances(base, quant, [t for _, t in todo], batch_size=batch_size)
        new.insert(0, "item_id", np.asarray([todo[k][0] for k in new["text"]], dtype=object))
        new = new.drop(columns="text")
        # Keep every sentence the file already held: nothing computed is lost.
        have = pd.concat([have, new], ignore_index=True) if len(have) else new
        if path is not None:
            write_table(path, have)
        log.info("distance %s %s: %d sentences computed, %d from the cache", pair.label, lang, len(todo),
                 len(sentences) - len(todo))
    wanted = {i for i, _ in sentences}
    rows: pd.DataFrame = have[have["item_id"].astype(str).isin(wanted)].reset_index(drop=True)
    return rows


def _table(pair: _Pair, sentences: dict[str, list[tuple[str, str]]], ci: Bootstrap, batch_size: int) -> pd.DataFrame:
    parts = [summarize_tokens(_lang_tokens(pair, lang, sents, batch_size), ci).assign(quant=pair.label, lang=lang)
             for lang, sents in sentences.items()]
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def distance(
    base_model: HFModel,
    quant_model: HFModel,
    *,
    languages: Sequence[str] | str,
    n_sentences: int = 64,
    seed: int = 0,
    ci: Bootstrap | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> DistanceTable:
    """llama.cpp's KL-divergence statistics of ``quant_model`` against ``base_model``, per language, clustered CIs.

    Args:
        base_model, quant_model: HFModels with the same tokenizer (e.g. ``quantize(base, "rtn-w4")``).
        languages: language codes; each reads the same FLORES sentences (:func:`parallel_sentences`).
        n_sentences: sentences per language.
        seed: which sentences.
        ci: the cluster bootstrap over sentences (default: 2,000 percentile resamples, seed 0).
        cache: a folder for the per-token arrays (``<quant>-<fingerprint>-vs-<base fingerprint>/<lang>.parquet``);
            a later call reads what is there and computes only missing sentences. None: nothing kept.

    Returns:
        A :class:`DistanceTable` (label of the quant: ``quant_model.spec.label``).

    Raises:
        ConfigError: bad ``n_sentences``, unknown language, models with different tokenizers.
        DataError: a language without FLORES data.

    Example:
        >>> table = distance(base, quantize(base, "rtn-w4"), languages=["en", "ja"], n_sentences=16)  # doctest: +SKIP
        >>> print(table)  # doctest: +SKIP
    """
    ci = check_ci(ci)
    sentences = parallel_sentences(languages, n_sentences, seed)
    check_pair(base_model, quant_model)
    label = quant_model.spec.label
    pair = _Pair(label, _cache_folder(cache, label, base_model.fingerprint(), quant_model.fingerprint()),
                 lambda: (base_model, quant_model))
    return DistanceTable(_table(pair, sentences, ci, base_model.batch_size))


def _run_folder(run_dir_or_study: Any) -> Path:
    folder = getattr(run_dir_or_study, "run_dir", run_dir_or_study)
    if not isinstance(folder, (str, os.PathLike)):
        raise ConfigError(
            f"run_distance: give a run folder (or the Results of Study.run), got {type(run_dir_or_study).__name__}."
        )
    root = Path(folder)
    if not (root / "study.yaml").is_file():
        raise ConfigError(f"run_distance: {root} has no study.yaml; give the folder of a study run.")
    return root


def run_distance(
    run_dir_or_study: Any,
    *,
    quant: Sequence[str] | str | None = None,
    languages: Sequence[str] | str | None = None,
    n_sentences: int = 64,
    seed: int = 0,
    ci: Bootstrap | None = None,
) -> DistanceTable:
    """:func:`distance` of a run's quantized models against its baseline, models rebuilt from the run's study.yaml.

    Per-token arrays are kept under ``<run>/distance/<quant>-<fingerprint>-vs-<base fingerprint>/<lang>.parquet``
    (atomic writes; a sentence already there is never recomputed, and no model is loaded when nothing is missing).

    Args:
        run_dir_or_study: the run folder (or the :class:`~mlquant.results.Results` that ``Study.run`` returned).
        quant: quant labels (default: every quantized model of the study).
        languages: language codes (default: the study's languages).
        n_sentences, seed, ci: as in :func:`distance`.

    Example:
        >>> print(run_distance("runs/demo", languages=["en", "ja"], n_sentences=32))  # doctest: +SKIP
    """
    from mlquant.study import Study

    root = _run_folder(run_dir_or_study)
    ci = check_ci(ci)
    study = Study.from_yaml(root / "study.yaml")
    labels = [s.label for s in study.specs if not s.is_baseline]
    wanted = [quant] if isinstance(quant, str) else list(quant) if quant is not None else labels
    unknown = [q for q in wanted if q not in labels]
    if unknown or not wanted:
        raise ConfigError(f"run_distance: quant {unknown[0] if unknown else wanted!r} is not a quantized model of "
                          f"the study; it has {labels}.")
    if languages is None:
        languages = list(dict.fromkeys(c.lang.code for c in study.cells))
    sentences = parallel_sentences(languages, n_sentences, seed)
    pool = study.model_pool(root)
    base_fp = pool.fingerprint(study.baseline)
    specs = [s for s in study.specs if s.label in wanted]

    def loader(spec: Any) -> Callable[[], tuple[HFModel, HFModel]]:
        built: list[tuple[HFModel, HFModel]] = []  # quantized once, on the first language that needs it

        def load() -> tuple[HFModel, HFModel]:
            if not built:
                built.append((_hf(pool.get(study.baseline)), _hf(pool.get(spec))))
                check_pair(*built[0])
            return built[0]

        return load

    pairs = [_Pair(s.label, _cache_folder(root / "distance", s.label, base_fp, pool.fingerprint(s)), loader(s))
             for s in specs]
    parts = []
    try:
        for pair in pairs:
            parts.append(_table(pair, sentences, ci, study.batch_size))
            pool.release()  # free this quantized model before the next one is built (the base model stays)
    finally:
        pool.release()
    return DistanceTable(pd.concat(parts, ignore_index=True)[COLUMNS])


def _hf(model: Any) -> HFModel:
    from mlquant.models import HFModel

    if not isinstance(model, HFModel):
        raise ConfigError(f"distance needs transformers models (HFModel) for their logits, got {type(model).__name__}.")
    return model
