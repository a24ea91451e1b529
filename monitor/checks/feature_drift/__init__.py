"""Statistical drift of request features: evidently's tests, computed on ClickHouse aggregates.

For every feature of :data:`FEATURES` the check compares the current window with
the reference window the way evidently 0.7.23's ``DataDriftPreset`` /
``ValueDrift`` does (``evidently/legacy/calculations/data_drift.py:102``
``get_one_column_drift``), but without loading the windows: ClickHouse returns
counts, sums, extremes and per-bin aggregates, and the statistics are computed
from those.

Which test (evidently's default rule)
-------------------------------------
``_get_default_stattest`` in ``evidently/legacy/calculations/stattests/registry.py:137-160``,
applied to the non-null, finite values (``data_drift.py:139-149`` drops NaN and
+-inf first), with ``n = len(reference)`` and ``u`` = distinct values of
reference and current together:

==================  ===============================  =====================================
                    ``n <= 1000``                    ``n > 1000``
==================  ===============================  =====================================
numerical           ``u <= 2``: ``z``;               ``u <= 5``: ``jensenshannon``;
                    ``u`` 3-5: ``chisquare``;        else ``wasserstein``
                    else ``ks``
categorical         ``u <= 2``: ``z``; else          ``jensenshannon``
                    ``chisquare``
==================  ===============================  =====================================

Default thresholds (``StatTest.default_threshold`` of each test's module):
``ks``/``chisquare``/``z``/``t_test`` 0.05 (p-values; drift when ``p <= 0.05`` for
``ks``, ``p < 0.05`` for the others), ``wasserstein``/``jensenshannon``/``psi``/
``kl_div``/``hellinger`` 0.1 (distances; drift when ``value >= 0.1``).

How each statistic is computed here
-----------------------------------
- ``wasserstein`` (``wasserstein_distance_norm.py``): W1(reference, current) /
  max(std(reference), 0.001), population std. W1 comes from a fine histogram:
  edges are ~1000 quantiles of each window (exact quantiles of a deterministic
  ~8192-row sample by ``cityHash64(span_id)``, so ~2000 bins) plus both
  windows' extremes;
  ClickHouse returns per bin and window the count, sum, min and max
  (``roundDown(v, edges)`` is a binary search). Each bin's mass sits at its
  exact mean, ``scipy.stats.wasserstein_distance`` is run on those weighted
  representatives, and the error is bounded *rigorously*: moving a bin's mass
  to its mean costs at most ``2 (m - a)(b - m) / (b - a)`` per unit of mass
  (the largest mean absolute deviation of a distribution on ``[a, b]`` with mean
  ``m``, where ``a``/``b`` are the bin's actual min/max), so
  ``|W_hist - W| <= sum_bins p_r * mad_r + p_c * mad_c`` for the two windows.
  The bound (normalised like the statistic) is in ``details["error_bound"]``;
  when the threshold lies within it, the exact W1 is computed instead in
  ClickHouse (``GROUP BY value`` + cumulative window sums: scipy's own formula
  ``sum |F_r - F_c| * dx`` over the sorted union of values) and
  ``details["exact"]`` says so. So verdicts always equal evidently's.
- ``ks`` (``ks_stattest.py``, ``scipy.stats.ks_2samp``): D = sup |F_r - F_c| is
  computed *exactly* on the full current window: when the reference has at most
  ``ks_edge_limit`` distinct values (always the case when evidently chooses K-S,
  n <= 1000), those values are bin edges and D follows from per-bin counts and
  counts at each edge; otherwise from a ``GROUP BY value`` with cumulative sums
  in ClickHouse. The p-value is scipy's for those sizes: its exact
  distribution when ``max(n_r, n_c) <= 10000`` (``_attempt_exact_2kssamp``),
  else ``kstwo.sf(D, round(n_r n_c / (n_r + n_c)))``. No sample is needed, so
  none is taken (a sample would not reproduce evidently's verdict on the full
  window).
- ``chisquare``, ``z``, categorical ``jensenshannon``/``psi``/``kl_div``/
  ``hellinger``: per-value counts (``GROUP BY``), then evidently's formulas
  (``get_binned_data`` in ``stattests/utils.py`` with its zero filling for PSI
  and KL, ``scipy.stats.chisquare``, the pooled two-proportion Z test of
  ``z_stattest.py``).
- numerical ``jensenshannon``/``psi``/``kl_div`` when the reference has more
  than 20 distinct values: numpy's ``sturges`` equal-width bins over the
  combined range (``np.histogram_bin_edges`` reproduced from min, max and n;
  the edges join the fine histogram's, so counts are exact); with at most 20
  distinct reference values, per-value proportions like categories.
- numerical ``hellinger``: ``sturges`` bins over the *distinct* values
  (``uniqExact``), numpy densities, ``sqrt(1 - sum sqrt(p q) * width)``.
- ``t_test``: ``scipy.stats.ttest_ind_from_stats`` from count/mean/std (the same
  pooled-variance t test as ``ttest_ind``).

Small windows: when both windows have at most ``raw_limit`` rows and evidently
is importable, its registered test is also run on the raw values
(``get_stattest`` + ``StatTest.__call__``) and its drift score and verdict are
reported (``details["engine"] == "evidently"``), next to the aggregate ones.
evidently is not a dependency of the monitor: without it the aggregate path
alone is used (it computes the same numbers).

NULLs (and NaN/inf) are excluded per feature; for text-derived features and
categories, an empty string means "not captured / not reported" and counts as
NULL. The NULL share itself is not tested here.

The package: :mod:`~monitor.checks.feature_drift.features` (what is tested),
:mod:`~monitor.checks.feature_drift.stattests` (evidently's tests on counts),
:mod:`~monitor.checks.feature_drift.queries` (the windows' aggregates in ClickHouse) and
:mod:`~monitor.checks.feature_drift.check` (the check).
"""

from monitor.checks.feature_drift.check import FeatureDriftCheck
from monitor.checks.feature_drift.features import FEATURES, Feature
from monitor.checks.feature_drift.stattests import METHODS, select_method, sturges_edges

__all__ = ["Feature", "FEATURES", "METHODS", "FeatureDriftCheck", "select_method", "sturges_edges"]
