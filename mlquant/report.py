"""Reports: the per-language degradation table in text (terminal, notebook) and as a static HTML page.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> print(mq.report.relative_change_table(mq.read_results("runs/demo")))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mlquant.results import aggregate

__all__ = [
    "score_table",
    "relative_change_table",
    "similarity_table",
    "corpus_table",
    "format_table",
    "scored_rows",
    "write_html",
    "default_baseline",
]


def _as_frame(results: Any) -> pd.DataFrame:
    """The tidy frame of a DataFrame or a :class:`mlquant.Results` (see :func:`mlquant.stats._frame.as_frame`)."""
    from mlquant.stats._frame import as_frame

    return as_frame(results)


def default_baseline(frame: pd.DataFrame) -> str:
    """The baseline label of a results frame: fp32, else bf16, else fp16."""
    frame = _as_frame(frame)
    present = set(frame["quant"].unique())
    for label in ("fp32", "bf16", "fp16"):
        if label in present:
            return label
    from mlquant.errors import ConfigError

    raise ConfigError(f"no baseline (fp32, bf16 or fp16) among the quant labels {sorted(present)}.")


def scored_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a score (open-ended generations have none until they are judged)."""
    frame = _as_frame(frame)
    return frame[frame["score"].notna()]


def score_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Aggregate score per (task, metric, lang) row and quant column."""
    frame = _as_frame(frame)
    agg = aggregate(frame, by=("task", "metric", "lang", "quant"))
    table = agg.pivot_table(index=["task", "metric", "lang"], columns="quant", values="score")
    order = [q for q in dict.fromkeys(frame["quant"]) if q in table.columns]
    return table[order]


def relative_change_table(frame: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Marchisio et al. 2024's table: 100 * (quantized - baseline) / baseline per (task, lang) row and method column.

    Computed by :func:`mlquant.stats.relative_change` on the items present in both cells. For metrics where lower
    is better (bits per byte), a positive change is a degradation; the ``metric`` level of the index says which.
    """
    from mlquant import stats

    frame = _as_frame(frame)
    baseline = baseline or default_baseline(frame)
    frame = scored_rows(frame)
    if frame.empty or not (frame["quant"] != baseline).any() or not (frame["quant"] == baseline).any():
        return pd.DataFrame()
    rc = stats.relative_change(frame, baseline=baseline).to_frame()
    metric = frame.drop_duplicates("task").set_index("task")["metric"]
    rc = rc.assign(metric=rc["task"].map(metric))
    # pivot, not pivot_table: a cell whose relative change is undefined (baseline 0) stays in the table as NaN.
    table = rc.pivot(index=["task", "metric", "lang"], columns="quant", values="rel_change")
    order = [q for q in dict.fromkeys(frame["quant"]) if q in table.columns and q != baseline]
    return table[order]


def _binary_tasks(frame: pd.DataFrame) -> list[str]:
    """Tasks whose every scored item is 0 or 1 (choice tasks, MGSM exact match): the ones where a flip is defined."""
    scored = frame[frame["score"].notna()]
    is01 = scored["score"].isin([0.0, 1.0]).groupby(scored["task"]).all()
    return sorted(is01[is01].index)


def similarity_table(
    frame: pd.DataFrame,
    baseline: str | None = None,
    *,
    cosine: bool = False,
    embedder: Any = None,
    kl: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """How far each quantized model's answers moved from the baseline's, on the same items (Kurtic et al. 2024).

    Per (task, lang) row and quant: on tasks scored 0/1 (choice tasks, MGSM) the flip rate in % with its two
    directions (Dutta et al. 2024); on generation tasks the mean chrF (0-100) and ROUGE-L F1 (0-1) between the
    quantized and the baseline output of each item, and with ``cosine=True`` the mean embedding cosine
    (:func:`mlquant.similarity.default_embedder` unless ``embedder`` is given). A column is NaN where it does
    not apply. ``kl`` (the per-sentence frame of :func:`mlquant.similarity.run_kl`, ``mlquant kl``) adds the mean
    KL(baseline || quantized) of next-token distributions in nats per token, on the flores_ppl rows.

    Example:
        >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "xcopa", "lang": "tr",
        ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 0.0, 0.0, 0.0], "kind": "choice",
        ...                    "output": ""})
        >>> similarity_table(df)["flip_rate"].tolist()
        [50.0]
    """
    from mlquant import similarity

    frame = _as_frame(frame)
    baseline = baseline or default_baseline(frame)
    parts = []
    binary = _binary_tasks(frame)
    if binary:
        flips = similarity.flip_rate(frame, baseline, kinds=None, tasks=binary)
        flips = flips.assign(flip_rate=100 * flips["flip_rate"],
                             c2w=100 * flips["correct_to_wrong"] / flips["n"],
                             w2c=100 * flips["wrong_to_correct"] / flips["n"])
        parts.append(flips[["quant", "task", "lang", "n", "flip_rate", "c2w", "w2c"]])
    generated = frame[frame["kind"] == "generate"]
    if len(generated) and (generated["quant"] != baseline).any():
        metrics = ("chrf", "rouge_l", "cosine") if cosine else ("chrf", "rouge_l")
        sim = similarity.output_similarity(generated, baseline, metrics=metrics, embedder=embedder)
        sim = sim.groupby(["quant", "task", "lang"], sort=False)[list(metrics)].agg(["mean", "size"])
        means = sim.xs("mean", axis=1, level=1)
        means["n"] = sim[(metrics[0], "size")]
        parts.append(means.reset_index())
    if kl is not None and len(kl):
        mean_kl = kl.groupby(["quant", "task", "lang"], sort=False)["kl"].agg(["mean", "size"]).reset_index()
        parts.append(mean_kl.rename(columns={"mean": "kl", "size": "n"}))
    if not parts:
        return pd.DataFrame()
    long = pd.concat(parts, ignore_index=True)
    value_cols = [c for c in ("n", "flip_rate", "c2w", "w2c", "chrf", "rouge_l", "cosine", "kl") if c in long.columns]
    # MGSM is in both parts (0/1 scores and generated text): one row per cell, the first non-NaN of each column.
    table = long.groupby(["task", "lang", "quant"], sort=True)[value_cols].first()
    table["n"] = table["n"].astype(int)
    return table


def corpus_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Corpus-level chrF++ and spBLEU of every translation cell (sacrebleu), with their signatures.

    Translation rows are those whose ``extra`` holds a ``chrf++_signature`` (the ``flores`` task, any label). The
    references are the rows' ``target``s, the hypotheses their ``extracted`` outputs, the target language the
    cell's language (``en-xx``) or English (``xx-en``). spBLEU needs sacrebleu's flores200 SentencePiece model; where
    it cannot run its column is NaN and ``spbleu_signature`` says why.

    Returns:
        One row per (task, lang, quant): ``n``, ``chrf++``, ``spbleu``, ``chrf++_signature``, ``spbleu_signature``.
    """
    from mlquant.errors import BackendUnavailableError
    from mlquant.tasks.flores import corpus_scores, flores200_status

    frame = _as_frame(frame)
    extra = frame["extra"].fillna("{}").map(json.loads) if "extra" in frame.columns else pd.Series(dtype=object)
    is_mt = extra.map(lambda e: isinstance(e, dict) and "chrf++_signature" in e) if len(extra) else extra
    rows = []
    reason = flores200_status()
    mt = frame[is_mt.astype(bool)] if len(extra) else frame.iloc[:0]
    directions = extra[is_mt.astype(bool)].map(lambda e: e.get("direction", "en-xx")) if len(extra) else extra
    for (task, lang, quant), cell in mt.assign(_dir=directions).groupby(["task", "lang", "quant"], sort=True):
        target_lang = "en" if (cell["_dir"] == "xx-en").all() else lang
        hyps, refs = cell["extracted"].fillna("").tolist(), cell["target"].fillna("").tolist()
        try:
            scores = corpus_scores(hyps, refs, target_lang) if reason is None else None
        except BackendUnavailableError as exc:
            reason, scores = str(exc), None
        if scores is None:
            import sacrebleu

            chrf = sacrebleu.CHRF(word_order=2)
            scores = {"chrf++": float(chrf.corpus_score(hyps, [refs]).score), "chrf++_signature": str(chrf.get_signature()),
                      "spbleu": float("nan"), "spbleu_signature": f"not computed: {reason}"}
        rows.append({"task": task, "lang": lang, "quant": quant, "n": len(cell), "chrf++": scores["chrf++"],
                     "spbleu": scores["spbleu"], "chrf++_signature": scores["chrf++_signature"],
                     "spbleu_signature": scores["spbleu_signature"]})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["task", "lang", "quant"])


def format_table(table: pd.DataFrame, digits: int = 2) -> str:
    """A fixed-width text rendering of a table (for the terminal and the demo)."""
    if table.empty:
        return "(nothing to show: no scored item of a quantized cell pairs with the baseline)"
    return table.round(digits).to_string(na_rep="-")


def write_html(
    frame: pd.DataFrame,
    path: str | os.PathLike[str],
    baseline: str | None = None,
    *,
    cosine: bool = False,
    kl: pd.DataFrame | None = None,
    judged: pd.DataFrame | None = None,
) -> Path:
    """Write a static HTML page: scores, relative change, similarity to the baseline (with ``kl`` from
    ``mlquant kl``), judge win rates (``judged`` from ``mlquant judge``), corpus MT scores and the statistics."""
    from mlquant import stats

    frame = _as_frame(frame)
    baseline = baseline or default_baseline(frame)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mlquant report</title>",
        "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} "
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
        f"<h1>mlquant report</h1><p>Baseline: <b>{html.escape(baseline)}</b>. Models: "
        f"{html.escape(', '.join(sorted(frame['model'].unique())))}.</p>",
        "<h2>Scores</h2>",
        score_table(frame).round(4).to_html(na_rep="-"),
        "<h2>Relative change, 100·(q−b)/b, paired by item</h2>",
        relative_change_table(frame, baseline).round(2).to_html(na_rep="-"),
    ]
    similar = similarity_table(frame, baseline, cosine=cosine, kl=kl)
    if len(similar):
        parts += ["<h2>Similarity to the baseline's outputs, same items</h2>",
                  "<p>flip_rate, c2w (correct→wrong), w2c (wrong→correct): % of items; chrF 0–100 and ROUGE-L 0–1 "
                  "between the quantized and the baseline output.</p>", similar.round(2).to_html(na_rep="-")]
    if judged is not None and len(judged):
        from mlquant.tasks.judge import win_rates

        keys = [c for c in ("judge", "quant", "task", "lang") if c in judged.columns]
        parts += ["<h2>Pairwise judge, quantized vs baseline, both orders</h2>",
                  win_rates(judged, by=keys).set_index(keys).round(3).to_html(na_rep="-")]
    corpus = corpus_table(frame)
    if len(corpus):
        parts += ["<h2>Translation, corpus level (sacrebleu)</h2>", corpus.round(2).to_html(na_rep="-")]
    if len(relative_change_table(frame, baseline)):
        summary = stats.summary(scored_rows(frame), baseline=baseline)
        parts += ["<h2>Statistics</h2>", f"<pre>{html.escape(str(summary))}</pre>"]
    parts.append("</body></html>")
    out = Path(path)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
