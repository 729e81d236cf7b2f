"""Statistics of quantization's cost, on per-item results paired by item.

Plain functions on a tidy per-item DataFrame (one row per item x quant; columns quant, task, lang, item_id,
score, and optionally group, weight, metric, higher_is_better, difficulty, script, resource_class, family,
extra, target, ...) or on any object with a ``.frame`` holding one (:class:`mlquant.results.Results`). Every
function returns a frozen result object with ``.to_frame()``.

=========================  ==========================================================================
:func:`relative_change`    100 (q - b) / b per cell or group (Marchisio et al. 2024)
:func:`recovery`           100 q / b (Kurtic et al. 2024)
:func:`paired_bootstrap`   percentile / BCa CIs of diff and relative change; cluster bootstrap; vectorized
:func:`mcnemar`            exact McNemar test on binary scores
:func:`permutation_test`   paired sign-flip permutation test (exact where possible, cluster-aware)
:func:`wilcoxon`           Wilcoxon signed-rank test for continuous scores (chrF, bits per byte)
:func:`adjust`             Holm / Benjamini-Hochberg within a family the user names
:func:`mixed_effects`      mixed model of the per-item drop (method, script, resource class, difficulty)
:func:`flips`              flip rates both ways, flipped items, drop vs the baseline's margin
:func:`power`              minimum detectable difference per cell; n needed for a given drop
:func:`summary`            per-cell table with CIs, adjusted p-values and MDDs, plus grouping answers
:func:`pair`               pair the items once (a :class:`Paired` every function accepts, for big studies)
=========================  ==========================================================================

Conventions are in ``docs/statistics.md``: ``rel_change`` follows the formula for every metric; ``rel_drop``
(positive = worse) respects the metric's direction; groupings state their ``weighting``.

Example:
    >>> import pandas as pd
    >>> import mlquant as mq
    >>> df = pd.DataFrame({"quant": ["fp32", "fp32", "w4", "w4"], "task": "xcopa", "lang": "ja",
    ...                    "item_id": ["1", "2", "1", "2"], "score": [1.0, 1.0, 1.0, 0.0]})
    >>> mq.stats.relative_change(df, baseline="fp32").to_frame().rel_change.tolist()
    [-50.0]
"""

from __future__ import annotations

from mlquant.stats._engine import Bootstrap
from mlquant.stats._frame import Paired, as_frame, default_baseline, pair
from mlquant.stats._types import TestResult
from mlquant.stats.change import ChangeTable, paired_bootstrap, recovery, relative_change
from mlquant.stats.items import FlipTable, choice_margin, flips
from mlquant.stats.mdd import PowerTable, minimum_detectable_difference, power, required_n
from mlquant.stats.mixed import Coefficient, MixedEffectsResult, drop_frame, mixed_effects
from mlquant.stats.overview import Summary, summary
from mlquant.stats.significance import TestTable, adjust, mcnemar, permutation_test, wilcoxon

__all__ = [
    "Bootstrap",
    "ChangeTable",
    "Coefficient",
    "FlipTable",
    "MixedEffectsResult",
    "Paired",
    "PowerTable",
    "Summary",
    "TestResult",
    "TestTable",
    "adjust",
    "as_frame",
    "choice_margin",
    "default_baseline",
    "drop_frame",
    "flips",
    "mcnemar",
    "minimum_detectable_difference",
    "mixed_effects",
    "pair",
    "paired_bootstrap",
    "permutation_test",
    "power",
    "recovery",
    "relative_change",
    "required_n",
    "summary",
    "wilcoxon",
]
