"""Groupings for :mod:`mlquant.stats`: which cells form a group, and the language metadata groupings need.

``by`` names columns of the cells table (task, lang, metric, kind, difficulty, higher_is_better) or language
metadata (script, resource_class, family) or ``latin`` (Latin vs non-Latin script, the split of Marchisio et al.
2024). Language metadata missing from the results comes from :func:`mlquant.languages.get_language`.

Example:
    >>> import pandas as pd
    >>> from mlquant.stats._frame import pair
    >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "t", "lang": ["en", "ja"] * 2,
    ...                    "item_id": "1", "score": [1.0, 1.0, 0.0, 1.0], "script": ["Latn", "Jpan"] * 2})
    >>> group_cells(pair(df), ("latin",))[1][["quant", "latin", "n_cells"]].values.tolist()
    [['w4', 'Latin', 1], ['w4', 'non-Latin', 1]]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlquant.errors import ConfigError, MlquantError
from mlquant.stats._frame import LANG_META, Paired, Weighting, combine_codes

__all__ = ["GROUPABLE", "check_group_metrics", "check_weighting", "group_cells", "language_meta"]

#: Names accepted in ``by``: the cell keys, the cell metadata, and ``latin`` (Latin / non-Latin script).
GROUPABLE: tuple[str, ...] = (
    "task",
    "lang",
    "metric",
    "kind",
    "difficulty",
    "higher_is_better",
    "script",
    "latin",
    "resource_class",
    "family",
)


def language_meta(paired: Paired, columns: Sequence[str]) -> pd.DataFrame:
    """The cells table with ``columns`` (script, resource_class, family, latin) filled in.

    Values the frame lacks come from :func:`mlquant.languages.get_language`.

    Raises:
        ConfigError: a language is unknown and the frame does not give the value.
    """
    cells: pd.DataFrame = paired.cells.copy()  # annotated: pandas-stubs' Self is Any under python 3.10
    need = {"script" if c == "latin" else c for c in columns if c in (*LANG_META, "latin")}
    for col in sorted(need):
        if col not in cells.columns:
            cells[col] = None
        missing = cells[col].isna()
        if missing.any():
            cells.loc[missing, col] = [_lang_attr(lang, col) for lang in cells.loc[missing, "lang"]]
    if "resource_class" in cells.columns:
        cells["resource_class"] = pd.to_numeric(cells["resource_class"], errors="coerce")
    if "latin" in columns:
        from mlquant.languages import LATIN_SCRIPTS

        cells["latin"] = np.where(cells["script"].isin(list(LATIN_SCRIPTS)), "Latin", "non-Latin")
    return cells


def _lang_attr(lang: str, col: str) -> str | int:
    from mlquant.languages import get_language

    try:
        value: str | int = getattr(get_language(lang), col)  # script / family (str), resource_class (int)
        return value
    except MlquantError as exc:
        raise ConfigError(
            f"cannot group by {col!r}: the results give no {col!r} for language {lang!r} and its language file "
            f"could not be loaded ({exc}). Add a {col!r} column to the results."
        ) from None


def group_cells(paired: Paired, by: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Map each cell to a group of ``by`` (the quant, and the model when several, are always keys).

    Returns:
        ``(group_of_cell, groups)``: an int array with one entry per cell and a frame with one row per group
        (its key columns, ``n_cells`` and ``n_langs``), in order of first appearance.

    Raises:
        ConfigError: ``by`` names an unknown column.
    """
    if isinstance(by, str):
        by = (by,)
    by = tuple(by)
    unknown = [c for c in by if c not in GROUPABLE and c not in paired.cells.columns]
    if unknown:
        raise ConfigError(f"cannot group by {unknown[0]!r}; expected names from {list(GROUPABLE)}.")
    lead = tuple(k for k in paired.keys if k in ("model", "quant"))
    cols = lead + tuple(c for c in by if c not in lead)
    cells = language_meta(paired, cols) if any(c in (*LANG_META, "latin") for c in cols) else paired.cells
    key_frame = cells[list(cols)]
    codes = [pd.factorize(key_frame[c].astype(str), sort=False)[0] for c in cols]
    combined = combine_codes(codes, [int(c.max()) + 1 for c in codes])
    group_of_cell, first = pd.factorize(combined, sort=False)
    first_idx = np.array([np.flatnonzero(group_of_cell == g)[0] for g in range(len(first))], dtype=int)
    groups = key_frame.iloc[first_idx].reset_index(drop=True)
    groups["n_cells"] = np.bincount(group_of_cell, minlength=len(first)).astype(int)
    langs = pd.Series(cells["lang"].to_numpy()).groupby(group_of_cell).nunique()
    groups["n_langs"] = langs.reindex(range(len(first))).fillna(0).astype(int).to_numpy()
    return group_of_cell.astype(np.int64), groups


def check_weighting(weighting: str) -> Weighting:
    """Validate a ``weighting`` argument."""
    if weighting not in ("language", "item"):
        raise ConfigError(f"weighting must be 'language' or 'item', got {weighting!r}.")
    return "language" if weighting == "language" else "item"


def check_group_metrics(paired: Paired, group_of_cell: np.ndarray, weighting: Weighting) -> None:
    """Warn (language weighting) or fail (item weighting) when a group mixes metric directions or metrics."""
    cells = paired.cells
    n_groups = int(group_of_cell.max()) + 1 if len(group_of_cell) else 0
    hib = pd.Series(cells["higher_is_better"].to_numpy()).groupby(group_of_cell).nunique()
    metric = pd.Series(cells["metric"].astype(str).to_numpy()).groupby(group_of_cell).nunique()
    if weighting == "item" and (metric > 1).any():
        g = int(metric.index[(metric > 1).to_numpy()][0])
        names = sorted(set(cells["metric"].astype(str)[group_of_cell == g]))
        raise ConfigError(
            f"weighting='item' pools items, but a group mixes metrics {names}; pooling scores of different "
            "metrics is meaningless. Add 'metric' to by=, or use weighting='language'."
        )
    if n_groups and (hib > 1).any():
        warnings.warn(
            "a group mixes metrics where higher is better with metrics where lower is better (bits per byte); "
            "its mean rel_change mixes directions. Read rel_drop (positive = worse) instead, or add "
            "'higher_is_better' to by=.",
            stacklevel=4,
        )
