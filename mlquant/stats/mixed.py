"""Mixed-effects model of the per-item drop (statsmodels ``MixedLM``): who loses more, with a CI.

The response is the direction-aware per-item drop, positive = worse::

    drop = scale * (baseline - quantized)   where higher is better (accuracy, chrF)
    drop = scale * (quantized - baseline)   where lower is better (bits per byte)

with ``scale = 100`` when every score lies in [0, 1] (so accuracy drops are in *points*) and 1 otherwise. One row
per (method, task, language, item). The default model is::

    drop ~ C(method) + non_latin + resource_class + C(difficulty)        (fixed effects)
    groups = lang, re_formula = "1"                                      (random intercept per language)
    vc_formula = {"item": "0 + C(item)"}, item = task/item_id            (random intercept per item, nested
                                                                          in language: one per language x item)

``method`` is the quant label (treatment-coded against the first label in the data), ``non_latin`` is 1 for
languages whose script is not Latin (Marchisio et al. 2024's split), ``resource_class`` the Joshi et al. (2020)
class as a number (a linear trend per class), ``difficulty`` the task's difficulty (treatment-coded against
``easy`` when present). Terms that do not vary in the data, or that are collinear with earlier ones, are
dropped (``notes`` says which). The item intercepts are nested in languages because statsmodels' variance
components live inside the top-level groups; crossing items with languages (one intercept per item shared by
all languages) needs a single group with dense design matrices and does not scale. They are included only when
an item is observed more than once per language (several methods); otherwise they are confounded with the
residual. Fit by REML; Wald CIs. The ``non_latin`` coefficient answers "non-Latin languages lose X points more,
CI [a, b]" with languages as the random sampling unit.

Example:
    >>> import mlquant as mq  # doctest: +SKIP
    >>> print(mq.stats.mixed_effects(df).effect("non_latin"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, DataError
from mlquant.stats._frame import pair
from mlquant.stats._groups import language_meta
from mlquant.stats._types import FrameResult, format_frame

logger = logging.getLogger(__name__)

__all__ = ["Coefficient", "MixedEffectsResult", "drop_frame", "mixed_effects"]


@dataclass(frozen=True)
class Coefficient:
    """One fixed effect: estimate, standard error, Wald CI and p-value.

    Example:
        >>> c = Coefficient("non_latin", 5.0, 1.0, 3.04, 6.96, 1e-6)
        >>> c.ci
        (3.04, 6.96)
    """

    term: str
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def ci(self) -> tuple[float, float]:
        """``(ci_low, ci_high)``."""
        return (self.ci_low, self.ci_high)

    def __str__(self) -> str:
        return f"{self.term}: {self.estimate:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}], p = {self.p_value:.3g}"


@dataclass(frozen=True, eq=False)
class MixedEffectsResult(FrameResult):
    """A fitted mixed model of the drop; ``to_frame()`` gives the fixed effects.

    Attributes:
        formula: the fixed-effects formula as fitted.
        random: the random parts (``"1 | lang"``, ``"item within lang"``).
        variance: variance estimates: ``lang`` (intercept), ``item`` (when fitted), ``residual``.
        unit: the unit of the drop (``"points"`` = 100 x score, or ``"score units"``).
        n_obs: rows (method x task x language x item).
        n_langs: languages (groups).
        n_items: language x item intercepts (0 when not fitted).
        converged: whether the optimizer reported convergence.
        confidence: level of the CIs.
        reference: the reference level of each treatment-coded factor.
        notes: what was dropped or changed, and optimizer messages.
        llf: the REML log-likelihood.
    """

    formula: str = ""
    random: tuple[str, ...] = ()
    variance: Mapping[str, float] = field(default_factory=dict)
    unit: str = "points"
    n_obs: int = 0
    n_langs: int = 0
    n_items: int = 0
    converged: bool = True
    confidence: float = 0.95
    reference: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    llf: float = float("nan")

    def effect(self, term: str) -> Coefficient:
        """The coefficient of ``term`` (``"non_latin"``, ``"resource_class"``, ``"method[rtn-w4]"``, ...).

        Raises:
            ConfigError: no such term (the message lists the terms).
        """
        rows = self._frame[self._frame["term"] == term]
        if rows.empty:
            raise ConfigError(f"no term {term!r} in the model; terms: {self._frame['term'].tolist()}.")
        r = rows.iloc[0]
        return Coefficient(term, float(r.estimate), float(r.se), float(r.ci_low), float(r.ci_high), float(r.p_value))

    def __iter__(self) -> Iterator[Coefficient]:
        return (self.effect(t) for t in self._frame["term"])

    def __str__(self) -> str:
        lines = [
            f"mixed model of the per-item drop ({self.unit}; positive = worse), REML, "
            f"{self.n_obs} rows, {self.n_langs} languages, {self.n_items} item intercepts"
            + ("" if self.converged else " -- NOT CONVERGED"),
            f"fixed: {self.formula}; random: {', '.join(self.random)}",
            "variance: " + ", ".join(f"{k} {v:.3g}" for k, v in self.variance.items()),
            format_frame(self._frame, digits=3),
        ]
        if (self._frame["term"] == "non_latin").any():
            c = self.effect("non_latin")
            lines.append(
                f"non-Latin languages lose {c.estimate:+.2f} {self.unit} more than Latin ones "
                f"({self.confidence:.0%} CI [{c.ci_low:+.2f}, {c.ci_high:+.2f}], p = {c.p_value:.3g})"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def drop_frame(results: Any, baseline: str | None = None) -> tuple[pd.DataFrame, str]:
    """The model's data: one row per (method, task, language, item) with the drop and the covariates.

    Returns:
        ``(frame, unit)``; columns drop, method, task, lang, item, non_latin, script, resource_class, family,
        difficulty, metric.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"quant": ["fp32", "w4"], "task": "t", "lang": "xx", "item_id": "1",
        ...                    "score": [1.0, 0.0], "script": "Latn", "resource_class": 5, "family": "f"})
        >>> drop_frame(df)[0][["method", "drop", "non_latin"]].values.tolist()
        [['w4', 100.0, 0]]
    """
    paired = pair(results, baseline)
    baseline = paired.baseline
    cells = language_meta(paired, ("latin", "script", "resource_class", "family"))
    scaled = bool(np.all((paired.b >= 0) & (paired.b <= 1) & (paired.q >= 0) & (paired.q <= 1)))
    scale = 100.0 if scaled else 1.0
    c = paired.cell
    hib = cells["higher_is_better"].to_numpy(bool)[c]
    drop = scale * np.where(hib, paired.b - paired.q, paired.q - paired.b)
    task = cells["task"].astype(str).to_numpy()[c]
    frame = pd.DataFrame(
        {
            "drop": drop,
            "method": cells["quant"].astype(str).to_numpy()[c],
            "task": task,
            "lang": cells["lang"].astype(str).to_numpy()[c],
            "item": pd.Series(task, dtype=object).to_numpy() + "/" + paired.item_id,
            "non_latin": (cells["latin"].to_numpy()[c] == "non-Latin").astype(int),
            "script": cells["script"].astype(str).to_numpy()[c],
            "resource_class": cells["resource_class"].to_numpy(dtype=float)[c],
            "family": cells["family"].astype(str).to_numpy()[c],
            "difficulty": cells["difficulty"].astype(str).to_numpy()[c],
            "metric": cells["metric"].astype(str).to_numpy()[c],
        }
    )
    if "model" in paired.keys:
        frame["model"] = cells["model"].astype(str).to_numpy()[c]
    return frame, ("points" if scaled else "score units")


def _default_terms(data: pd.DataFrame, notes: list[str]) -> list[str]:
    terms = []
    for term, col in (
        ("C(method)", "method"),
        ("non_latin", "non_latin"),
        ("resource_class", "resource_class"),
        ("C(difficulty)", "difficulty"),
    ):
        if data[col].nunique() > 1:
            terms.append(term)
        else:
            notes.append(f"{col} does not vary in the data; its term is left out.")
    return terms


def _full_rank(data: pd.DataFrame, terms: list[str], notes: list[str]) -> list[str]:
    import patsy

    kept: list[str] = []
    for term in terms:
        trial = [*kept, term]
        x = patsy.dmatrix(" + ".join(trial), data, return_type="dataframe").to_numpy()
        if np.linalg.matrix_rank(x) == x.shape[1]:
            kept.append(term)
        else:
            notes.append(f"{term} is collinear with {' + '.join(kept) or 'the intercept'}; left out.")
    return kept


def _start(data: pd.DataFrame, resid: np.ndarray, with_items: bool) -> tuple[float, float]:
    """Moment estimates of the language and item variances relative to the residual variance."""
    r = pd.Series(resid)
    if with_items:
        im = r.groupby(data["key"].to_numpy()).transform("mean").to_numpy()
        n_items = data["key"].nunique()
        se2 = float(((resid - im) ** 2).sum() / max(len(resid) - n_items, 1))
        item_means = r.groupby(data["key"].to_numpy()).mean()
        per_item = len(resid) / n_items
        sv2 = max(float(item_means.var()) - se2 / per_item, 0.05 * se2)
    else:
        se2, sv2 = float(r.var()), 0.0
    lang_means = r.groupby(data["lang"].to_numpy()).mean()
    su2 = max(float(lang_means.var()) - (sv2 + se2) / max(len(resid) / len(lang_means), 1.0), 0.05 * se2)
    se2 = max(se2, 1e-12)
    return su2 / se2, sv2 / se2


def _blas_one_thread() -> contextlib.AbstractContextManager[object]:
    # Small dense solves are far faster single-threaded on a busy machine (OpenBLAS spins otherwise).
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's usual installs
        return contextlib.nullcontext()
    limiter: contextlib.AbstractContextManager[object] = threadpool_limits(limits=1, user_api="blas")  # untyped package
    return limiter


def _rename(term: str) -> str:
    for factor in ("method", "difficulty", "task", "script", "family"):
        prefix = f"C({factor})[T."
        if term.startswith(prefix) and term.endswith("]"):
            return f"{factor}[{term[len(prefix) : -1]}]"
    return term


def mixed_effects(
    results: Any,
    baseline: str | None = None,
    *,
    fixed: str | None = None,
    items: bool = True,
    confidence: float = 0.95,
) -> MixedEffectsResult:
    """Fit the mixed-effects model of the per-item drop described in the module docstring.

    Args:
        results: the tidy per-item frame, or an object with a ``.frame``.
        baseline: the quant label of the reference.
        fixed: the right-hand side of the fixed effects, replacing the default
            ``C(method) + non_latin + resource_class + C(difficulty)``; columns available: method, task, lang,
            non_latin, script, resource_class, family, difficulty, metric.
        items: include the item (within language) random intercepts.
        confidence: level of the Wald CIs.

    Returns:
        A :class:`MixedEffectsResult`; ``result.effect("non_latin")`` is how many more points non-Latin
        languages lose, with its CI.

    Raises:
        DataError: fewer than 3 languages (a language variance needs several).
        ConfigError: ``confidence`` outside (0.5, 1).

    Example:
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> rows = []
        >>> for k, lang in enumerate(["en", "fr", "de", "ja", "zh", "ar"]):
        ...     for i in range(40):
        ...         b = float(rng.random() < 0.7)
        ...         q = b if rng.random() > (0.05 + 0.1 * (k >= 3)) else 1 - b
        ...         rows += [("fp32", lang, str(i), b, k >= 3), ("w4", lang, str(i), q, k >= 3)]
        >>> df = pd.DataFrame(rows, columns=["quant", "lang", "item_id", "score", "nl"])
        >>> df = df.assign(task="t", script=np.where(df.nl, "Arab", "Latn"), resource_class=4, family="x")
        >>> fit = mixed_effects(df)
        >>> fit.effect("non_latin").term
        'non_latin'

    References:
        Marchisio, K., et al. (2024). How Does Quantization Affect Multilingual LLMs? arXiv:2407.03211.
        Baayen, R. H., Davidson, D. J., & Bates, D. M. (2008). Mixed-effects modeling with crossed random effects
        for subjects and items. J Memory and Language 59(4).
        Joshi, P., et al. (2020). The State and Fate of Linguistic Diversity and Inclusion in the NLP World. ACL.
    """
    import statsmodels.formula.api as smf
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    if not 0.5 < confidence < 1:
        raise ConfigError(f"confidence must be in (0.5, 1), got {confidence!r}.")
    data, unit = drop_frame(results, baseline)
    n_langs = data["lang"].nunique()
    if n_langs < 3:
        raise DataError(f"mixed_effects needs at least 3 languages for a language variance; got {n_langs}.")
    notes: list[str] = []
    reference = {"method": str(data["method"].iloc[0])}
    data["method"] = pd.Categorical(data["method"], categories=list(dict.fromkeys(data["method"])))
    levels = sorted(data["difficulty"].unique(), key=lambda d: (d != "easy", d))
    data["difficulty"] = pd.Categorical(data["difficulty"], categories=levels)
    reference["difficulty"] = levels[0]
    if fixed is None:
        terms = _full_rank(data, _default_terms(data, notes), notes)
        fixed = " + ".join(terms) if terms else "1"
    data["key"] = data["lang"] + "|" + data["item"]
    with_items = bool(items) and int(data.groupby("key").size().max()) > 1
    if items and not with_items:
        notes.append(
            "each item is observed once per language (one method): item intercepts are not identified "
            "apart from the residual and are left out."
        )
    formula = f"drop ~ {fixed}"
    vc = {"item": "0 + C(item)"} if with_items else None
    model = smf.mixedlm(formula, data, groups=data["lang"], re_formula="1", vc_formula=vc)
    ols = smf.ols(formula, data).fit()
    a, b = _start(data, ols.resid.to_numpy(), with_items)
    start = MixedLMParams.from_components(
        fe_params=ols.params.to_numpy(), cov_re=np.array([[a]]), vcomp=np.array([b] if with_items else [])
    )
    fit = _fit(model, start, notes)
    ci = fit.conf_int(alpha=1 - confidence)
    k_fe = model.k_fe
    names = list(fit.params.index[:k_fe])
    coef = pd.DataFrame(
        {
            "term": [_rename(n) for n in names],
            "estimate": fit.params.to_numpy()[:k_fe],
            "se": fit.bse.to_numpy()[:k_fe],
            "ci_low": ci.iloc[:k_fe, 0].to_numpy(),
            "ci_high": ci.iloc[:k_fe, 1].to_numpy(),
            "p_value": fit.pvalues.to_numpy()[:k_fe],
        }
    )
    variance = {"lang": float(fit.cov_re.iloc[0, 0])}
    if with_items:
        variance["item"] = float(fit.vcomp[0])
    variance["residual"] = float(fit.scale)
    return MixedEffectsResult(
        _frame=coef,
        formula=formula,
        random=("1 | lang",) + (("item (task/item_id) within lang",) if with_items else ()),
        variance=variance,
        unit=unit,
        n_obs=len(data),
        n_langs=n_langs,
        n_items=int(data["key"].nunique()) if with_items else 0,
        converged=bool(fit.converged),
        confidence=confidence,
        reference=reference,
        notes=tuple(notes),
        llf=float(fit.llf),
    )


def _fit(model: Any, start: Any, notes: list[str]) -> Any:
    """REML fit from the moment start with L-BFGS, BFGS and Powell; the converged fit of highest likelihood wins."""
    best = None
    messages: list[str] = []
    with _blas_one_thread():
        for method in ("lbfgs", "bfgs", "powell"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    fit = model.fit(reml=True, start_params=start, method=method)
                except (np.linalg.LinAlgError, ValueError) as exc:
                    messages.append(f"{method}: {exc}")
                    continue
            messages += [f"{method}: {w.message}" for w in caught if "onverge" in str(w.message)]
            if best is None or (fit.converged and (not best.converged or fit.llf > best.llf + 1e-6)):
                best = fit
            # No early stop at the first converged fit: a gradient method can converge to a worse REML optimum than
            # Powell finds (seen with statsmodels 0.15: L-BFGS at llf -2849.606, Powell -2849.588 on the golden data).
    if best is None:
        raise DataError("the mixed model could not be fitted: " + "; ".join(messages))
    if not best.converged:
        notes.append("the optimizer did not converge; read the estimates with care (" + "; ".join(messages) + ")")
        logger.warning("mixed_effects: optimizer did not converge")
    return best
