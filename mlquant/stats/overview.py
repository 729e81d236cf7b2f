"""``summary``: the per-cell table with CIs, adjusted p-values and MDDs, and the grouping answers.

This is what ``mlquant report`` prints. One call pairs the results once and runs, for every (quant, task,
language) cell: the relative change with a paired bootstrap CI, the sign-flip permutation test (the exact McNemar
test for unclustered 0/1 scores; cluster-aware and weighted otherwise), Holm and Benjamini-Hochberg adjustment
across all cells of the study, and the minimum detectable difference. Then the groupings -- Latin vs non-Latin
script (with the non-Latin minus Latin contrast and its CI), ISO 15924 script, resource class, language family
and task difficulty -- as means of the cells' relative changes (per-language weighting, stated in the output).

Example:
    >>> import numpy as np, pandas as pd
    >>> import mlquant as mq
    >>> rng = np.random.default_rng(0)
    >>> rows = []
    >>> for lang, script in [("en", "Latn"), ("fr", "Latn"), ("ja", "Jpan"), ("ar", "Arab")]:
    ...     b = (rng.random(100) < 0.7).astype(float)
    ...     q = np.where(rng.random(100) < 0.1, 1 - b, b)
    ...     for quant, s in [("fp32", b), ("w4", q)]:
    ...         rows += [dict(quant=quant, task="xcopa", lang=lang, item_id=str(i), score=s[i], script=script,
    ...                       resource_class=3, family="f") for i in range(100)]
    >>> s = mq.stats.summary(pd.DataFrame(rows), n_resamples=1000)
    >>> sorted(s.groups().query("grouping == 'latin'")["value"])
    ['Latin', 'non-Latin']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError
from mlquant.stats._engine import Bootstrap, point_estimates
from mlquant.stats._frame import Paired, pair, subset
from mlquant.stats._groups import group_cells
from mlquant.stats._resample import bootstrap_groups
from mlquant.stats._types import FrameResult, format_frame
from mlquant.stats.change import change_table
from mlquant.stats.mdd import power
from mlquant.stats.significance import adjust, permutation_test

__all__ = ["Summary", "summary"]

GROUPINGS: tuple[str, ...] = ("latin", "script", "resource_class", "family", "difficulty")


@dataclass(frozen=True, eq=False)
class Summary(FrameResult):
    """The study's statistics: ``to_frame()`` is the per-cell table; ``groups()`` and ``contrasts()`` the rest.

    Attributes:
        baseline: the baseline quant label.
        settings: how it was computed (resamples, seed, CI method, test, adjustment, alpha).
        notes: caveats (groupings skipped, mixed metric directions).
    """

    baseline: str = "fp32"
    settings: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    _groups: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    _contrasts: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def groups(self) -> pd.DataFrame:
        """Grouping answers: one row per (grouping, quant, value) with the mean relative change and its CI."""
        groups: pd.DataFrame = self._groups.copy()  # annotated: pandas-stubs' Self is Any under python 3.10
        return groups

    def contrasts(self) -> pd.DataFrame:
        """Non-Latin minus Latin mean relative change per quant, with its bootstrap CI."""
        contrasts: pd.DataFrame = self._contrasts.copy()  # annotated: pandas-stubs' Self is Any under python 3.10
        return contrasts

    def __str__(self) -> str:
        st = self.settings
        alpha = st.get("alpha", 0.05)
        cells = self._frame
        lines = [
            f"mlquant statistics: {len(cells)} cells (quant x task x language) vs baseline {self.baseline!r}, "
            "paired by item.",
            f"rel_change = 100 (q - b) / b with a {st.get('confidence', 0.95):.0%} paired bootstrap CI "
            f"({st.get('ci_method')}, {st.get('n_resamples')} resamples, seed {st.get('seed')}); p: two-sided "
            "sign-flip permutation test (= exact McNemar for unclustered 0/1 scores), p_holm: Holm across all "
            f"cells (p_bh: Benjamini-Hochberg); * = p_holm < {alpha}; mdd_rel: smallest relative change "
            "detectable at 80 % power -- a non-significant cell with a large mdd_rel is not evidence of no loss.",
            "",
        ]
        show = cells[[c for c in (*st.get("keys", ()), "metric", "n", "baseline", "quantized") if c in cells]].copy()
        show["diff [CI]"] = [
            f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]"
            for d, lo, hi in zip(cells["diff"], cells["diff_lo"], cells["diff_hi"], strict=True)
        ]
        show["rel_change [CI]"] = [
            f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            for r, lo, hi in zip(cells["rel_change"], cells["rel_change_lo"], cells["rel_change_hi"], strict=True)
        ]
        show["p_holm"] = [f"{p:.3g}{'*' if p < alpha else ''}" for p in cells["p_holm"]]
        show["mdd_rel"] = cells["mdd_rel"]
        lines.append(format_frame(show, digits=3))
        if len(self._groups):
            lines += ["", "Groupings: mean of the cells' relative changes (each task x language cell weighs the same):"]
            g = self._groups.copy()
            g["rel_change [CI]"] = [
                f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                for r, lo, hi in zip(g["rel_change"], g["rel_change_lo"], g["rel_change_hi"], strict=True)
            ]
            cols = [c for c in g.columns if c not in ("rel_change", "rel_change_lo", "rel_change_hi", "weighting")]
            lines.append(format_frame(g[cols], digits=3))
        if len(self._groups):
            lines.append(
                "(bootstrap CIs resample items with the languages held fixed; for a claim about non-Latin languages "
                "in general, with languages as the sampling unit, use mixed_effects)"
            )
        for r in self._contrasts.itertuples(index=False):
            hib = getattr(r, "higher_is_better", None)
            which = "" if hib is None else (" (metrics where higher is better)" if str(hib) == "True" else
                                            " (metrics where lower is better)")
            lines.append(
                f"{r.quant}{which}: non-Latin {r.non_latin:+.2f} % vs Latin {r.latin:+.2f} %; non-Latin - Latin = "
                f"{r.difference:+.2f} points of relative change, CI [{r.lo:+.2f}, {r.hi:+.2f}]"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _estimable(paired: Paired, cells: pd.DataFrame, keys: list[str], notes: list[str]) -> Paired | None:
    """The cells whose relative change and its CI are defined; the others are named in a note.

    A relative change over a baseline score of 0 is undefined, and so is a bootstrap replicate whose resampled
    baseline is 0 (a cell with very few correct items): such a cell would make every grouping it belongs to NaN.
    """
    ok = np.isfinite(cells[["rel_change", "rel_change_lo", "rel_change_hi"]].to_numpy(dtype=float)).all(axis=1)
    if ok.all():
        return paired
    left_out = cells.loc[~ok, keys].astype(str).agg("/".join, axis=1).tolist()
    shown = ", ".join(left_out[:12]) + (f" and {len(left_out) - 12} more" if len(left_out) > 12 else "")
    notes.append(
        f"{len(left_out)} of {len(cells)} cells have no estimable relative change (a baseline score of 0, in the cell "
        f"or in some bootstrap resample: too few correct items) and are left out of the groupings: {shown}. Their "
        "differences (diff [CI]) are above."
    )
    if not ok.any():
        return None
    cell_key = paired.cells[keys].astype(str).agg("/".join, axis=1)
    return subset(paired, cell_key.isin(set(cells.loc[ok, keys].astype(str).agg("/".join, axis=1))).to_numpy())


def _direction_key(paired: Paired) -> tuple[str, ...]:
    return ("higher_is_better",) if paired.cells["higher_is_better"].nunique() > 1 else ()


def _groupings(paired: Paired | None, spec: Bootstrap, notes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    if paired is None:
        return pd.DataFrame(), pd.DataFrame()
    extra = _direction_key(paired)
    if extra:
        notes.append(
            "the study mixes metrics where higher is better and lower is better; groupings are split by "
            "higher_is_better."
        )
    maps: list[tuple[str, np.ndarray, pd.DataFrame]] = []
    for grouping in GROUPINGS:
        if grouping == "difficulty" and set(paired.cells["difficulty"].astype(str)) <= {"unknown"}:
            continue
        try:
            g, groups = group_cells(paired, (grouping, *extra))
        except ConfigError as exc:
            notes.append(f"grouping by {grouping} skipped: {exc}")
            continue
        maps.append((grouping, g, groups))
    cis = bootstrap_groups(paired, [(g, len(groups)) for _, g, groups in maps], "language", spec, keep=True)
    rows, contrasts = [], pd.DataFrame()
    for (grouping, g, groups), res in zip(maps, cis, strict=True):
        est = point_estimates(paired, g, len(groups), "language")
        frame = pd.concat([groups, est[["rel_change", "weighting"]]], axis=1)
        frame["rel_change_lo"], frame["rel_change_hi"] = res.rel[:, 0], res.rel[:, 1]
        frame = frame.rename(columns={grouping: "value"})
        frame.insert(0, "grouping", grouping)
        frame["value"] = frame["value"].astype(str)
        rows.append(frame)
        if grouping == "latin" and res.replicates is not None:
            contrasts = _latin_contrast(frame, res.replicates["rel_change"], spec)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return out, contrasts


def _latin_contrast(frame: pd.DataFrame, reps: np.ndarray, spec: Bootstrap) -> pd.DataFrame:
    lead = [
        c
        for c in frame.columns
        if c
        not in ("grouping", "value", "n_cells", "n_langs", "rel_change", "weighting", "rel_change_lo", "rel_change_hi")
    ]
    alpha = (1 - spec.confidence) / 2
    rel, n_langs = frame["rel_change"], frame["n_langs"]
    out = []
    for key, sub in frame.groupby(lead, sort=False):
        levels = dict(zip(sub["value"], sub.index, strict=True))
        if "Latin" not in levels or "non-Latin" not in levels:
            continue
        i, j = levels["non-Latin"], levels["Latin"]
        diff = reps[i] - reps[j]
        diff = diff[np.isfinite(diff)]
        lo, hi = np.quantile(diff, [alpha, 1 - alpha]) if len(diff) else (np.nan, np.nan)
        row: dict[str, object] = dict(zip(lead, key if isinstance(key, tuple) else (key,), strict=True))
        row.update(latin=rel.loc[j], non_latin=rel.loc[i])
        row.update(difference=rel.loc[i] - rel.loc[j], lo=lo, hi=hi)
        row.update(n_latin=int(n_langs.loc[j]), n_non_latin=int(n_langs.loc[i]))
        out.append(row)
    contrasts: pd.DataFrame = pd.DataFrame(out)  # annotated: pandas-stubs' Self is Any under python 3.10
    return contrasts


def summary(
    results: Any, baseline: str | None = None, *, seed: int = 0, n_resamples: int = 10_000, alpha: float = 0.05
) -> Summary:
    """Everything a reviewer asks for, per cell and per grouping, in one object.

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        seed: seed of the bootstrap and of Monte Carlo permutation tests.
        n_resamples: bootstrap replicates and Monte Carlo sign vectors.
        alpha: level of the significance marks and of the MDD.

    Returns:
        A :class:`Summary`. ``to_frame()``: per cell the keys, metric, n, baseline, quantized, diff (with CI),
        rel_change (with CI), rel_drop, p_value, p_holm, p_bh, mdd, mdd_rel. ``groups()``: the groupings.
        ``contrasts()``: non-Latin minus Latin. ``str()``: all of it as text.

    Raises:
        ConfigError: the baseline label is absent (the message lists the labels present).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32"] * 8 + ["w4"] * 8, "task": "t", "lang": "en", "script": "Latn",
        ...                    "resource_class": 5, "family": "Indo-European", "item_id": list("abcdefgh") * 2,
        ...                    "score": [1.0, 1, 1, 1, 1, 1, 1, 0] + [1.0, 0, 1, 1, 1, 1, 1, 1]})
        >>> s = summary(df, n_resamples=500)
        >>> float(s.to_frame().p_value.iloc[0])
        1.0

    References:
        Marchisio, K., et al. (2024). arXiv:2407.03211. Kurtic, E., et al. (2024). arXiv:2411.02355.
        Dror, R., et al. (2018). The Hitchhiker's Guide to Testing Statistical Significance in NLP. ACL.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}.")
    paired = pair(results, baseline)
    baseline = paired.baseline
    spec = Bootstrap(n_resamples=n_resamples, method="percentile", confidence=0.95, seed=seed)
    by = ("task", "lang")
    change = change_table(paired, baseline, by, "language", spec).to_frame()
    tests = permutation_test(paired, baseline, by, n_resamples=n_resamples, seed=seed).to_frame()
    pw = power(paired, baseline, by, alpha=alpha).to_frame()
    keys = [c for c in change.columns if c in (*paired.keys, *by)]
    keys = list(dict.fromkeys(keys))
    for other in (tests, pw):
        if not other[keys].astype(str).equals(change[keys].astype(str)):  # pragma: no cover - same grouping
            raise RuntimeError("internal error: cell order differs between statistics")
    cells = change[
        [
            *keys,
            "metric",
            "higher_is_better",
            "n",
            "baseline",
            "quantized",
            "diff",
            "diff_lo",
            "diff_hi",
            "rel_change",
            "rel_change_lo",
            "rel_change_hi",
            "rel_drop",
        ]
    ].copy()
    cells["p_value"] = tests["p_value"].to_numpy()
    cells["exact"] = tests["exact"].to_numpy()
    cells["p_holm"] = adjust(cells["p_value"].to_numpy(), "holm")
    cells["p_bh"] = adjust(cells["p_value"].to_numpy(), "bh")
    cells["mdd"] = pw["mdd"].to_numpy()
    cells["mdd_rel"] = pw["mdd_rel"].to_numpy()
    notes: list[str] = []
    groups, contrasts = _groupings(_estimable(paired, cells, keys, notes), spec, notes)
    settings = {
        "n_resamples": n_resamples,
        "seed": seed,
        "ci_method": "percentile",
        "confidence": 0.95,
        "test": "sign-flip permutation (exact McNemar for unclustered 0/1 scores)",
        "adjustment": "holm (p_holm) and fdr_bh (p_bh) across all cells",
        "alpha": alpha,
        "weighting": "language",
        "keys": tuple(keys),
    }
    return Summary(
        _frame=cells.reset_index(drop=True),
        baseline=baseline,
        settings=settings,
        notes=tuple(notes),
        _groups=groups,
        _contrasts=contrasts,
    )
