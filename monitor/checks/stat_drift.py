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
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monitor.checks.base import CheckContext, Result
from monitor.errors import ConfigError

__all__ = ["Feature", "FEATURES", "METHODS", "FeatureDriftCheck", "select_method", "sturges_edges"]

log = logging.getLogger("monitor.checks.stat_drift")

FeatureType = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType
    sql: str
    """A ClickHouse expression over ``inference_events`` (Nullable(Float64) or Nullable(String))."""
    requires: tuple[str, ...] = ()
    """Columns that may be missing from the table (the feature is skipped then)."""


def _finite(expr: str) -> str:
    return f"if(isFinite({expr}), {expr}, NULL)"


def _num(col: str) -> Feature:
    return Feature(col, "numeric", _finite(f"toFloat64({col})"))


_TPS = ("multiIf(decode_ms > 0, output_tokens / (decode_ms / 1000), "
        "(latency_ms - coalesce(ttft_ms, 0)) > 0, output_tokens / ((latency_ms - coalesce(ttft_ms, 0)) / 1000), "
        "NULL)")

FEATURES: dict[str, Feature] = {f.name: f for f in [
    _num("input_tokens"),
    _num("output_tokens"),
    Feature("prompt_length", "numeric", "if(prompt = '', NULL, toFloat64(lengthUTF8(prompt)))"),
    Feature("completion_length", "numeric", "if(completion = '', NULL, toFloat64(lengthUTF8(completion)))"),
    _num("ttft_ms"),
    _num("latency_ms"),
    _num("itl_ms"),
    _num("queue_ms"),
    _num("prefill_ms"),
    _num("decode_ms"),
    Feature("tokens_per_second", "numeric", _finite(f"toFloat64({_TPS})")),
    Feature("finish_reason", "categorical", "nullIf(toString(finish_reason), '')"),
    Feature("status_code", "categorical", "nullIf(toString(status_code), '')"),
    Feature("prompt_language", "categorical", "nullIf(toString(prompt_language), '')", ("prompt_language",)),
    Feature("completion_language", "categorical", "nullIf(toString(completion_language), '')",
            ("completion_language",)),
    Feature("model_version", "categorical", "nullIf(attributes['gen_ai.response.model'], '')"),
]}
"""Every feature the check tests. ``model_version`` is ``gen_ai.response.model``: the served snapshot."""


@dataclass(frozen=True)
class Method:
    name: str
    kind: Literal["p_value", "distance"]
    types: frozenset[str]
    """Feature types evidently registers the test for (checked for overrides)."""
    default_threshold: float
    inclusive: bool
    """Drift when ``p <= threshold`` (K-S) rather than ``p < threshold``; distances: ``>=``."""

    def drifted(self, score: float, threshold: float) -> bool:
        if self.kind == "distance":
            return bool(score >= threshold)
        return bool(score <= threshold) if self.inclusive else bool(score < threshold)


_NUM, _CAT = frozenset({"numeric"}), frozenset({"categorical"})
_BOTH = _NUM | _CAT
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("ks", "p_value", _NUM, 0.05, True),
    Method("chisquare", "p_value", _CAT, 0.05, False),
    Method("z", "p_value", _CAT, 0.05, False),
    Method("t_test", "p_value", _NUM, 0.05, False),
    Method("wasserstein", "distance", _NUM, 0.1, True),
    Method("jensenshannon", "distance", _BOTH, 0.1, True),
    Method("psi", "distance", _BOTH, 0.1, True),
    Method("kl_div", "distance", _BOTH, 0.1, True),
    Method("hellinger", "distance", _BOTH, 0.1, True),
]}
"""evidently test names supported on aggregates (name, default threshold and feature types as registered)."""

_UNSUPPORTED = {
    "anderson", "cramer_von_mises", "ed", "es", "fisher_exact", "g_test", "mannw", "empirical_mmd", "TVD",
    "perc_text_content_drift", "abs_text_content_drift",
}

_SMALL_REFERENCE = 1000
"""evidently's size limit between the small-sample tests and the distances (registry.py:143,151)."""
_UNIQ_PROBE = 21
"""``groupUniqArray(21)``: enough to tell "<= 20 distinct values" (the binning rule) and "<= 5" (selection)."""
_KS_EXACT_N = 10_000
"""scipy's ``MAX_AUTO_N``: ks_2samp uses the exact distribution up to this sample size."""

_LEVELS_N = 4000
_LEVELS = [i / _LEVELS_N for i in range(1, _LEVELS_N)] + [1e-4, 3e-4, 1 - 3e-4, 1 - 1e-4]
_DISPLAY_BINS = 20
_DISPLAY_LEVELS = [j * (_LEVELS_N // _DISPLAY_BINS) - 1 for j in range(1, _DISPLAY_BINS)]
"""Indices in ``_LEVELS`` of the 5%, 10%, ..., 95% quantiles."""
_STATS_CHUNK = 8
_SAMPLE = 32768
_SUMMARY_Q = {f"p{q:02d}": q * _LEVELS_N // 100 - 1 for q in (5, 25, 50, 75, 95)}


def select_method(feature_type: FeatureType, reference_n: int, distinct_values: int) -> str:
    """evidently 0.7.23's default test (``_get_default_stattest``, registry.py:137-160).

    ``distinct_values`` counts reference and current together (capped values above 5 are fine).
    """
    if reference_n <= _SMALL_REFERENCE:
        if feature_type == "numeric" and distinct_values > 5:
            return "ks"
        return "chisquare" if distinct_values > 2 else "z"
    if feature_type == "numeric":
        return "jensenshannon" if distinct_values <= 5 else "wasserstein"
    return "jensenshannon"


def sturges_edges(lo: float, hi: float, size: int) -> np.ndarray:
    """``np.histogram_bin_edges(a, bins="sturges")`` for a float array of ``size`` values in ``[lo, hi]``."""
    first, last = float(lo), float(hi)
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (float(hi) - float(lo)) / (np.log2(size) + 1.0)
    n = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, n + 1, endpoint=True, dtype=np.float64)


# --- the tests on aggregates ---------------------------------------------------------------

def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    """The ``feel_zeroes`` step of evidently's ``get_binned_data`` (stattests/utils.py)."""
    p = p.copy()
    nz = p[p != 0]
    if nz.size:
        m = min(nz)
        np.place(p, p == 0, m / 10**6 if m <= 0.0001 else 0.0001)
    return p


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def _value_percents(ref: dict, cur: dict, n_r: int, n_c: int) -> tuple[list, np.ndarray, np.ndarray]:
    keys = sorted(set(ref) | set(cur), key=_sort_key)
    rp = np.array([ref.get(k, 0) / n_r for k in keys], dtype=np.float64)
    cp = np.array([cur.get(k, 0) / n_c for k in keys], dtype=np.float64)
    return keys, rp, cp


def _distance(method: str, rp: np.ndarray, cp: np.ndarray) -> float:
    from scipy import stats
    from scipy.spatial import distance

    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "jensenshannon":
            return float(distance.jensenshannon(rp, cp, None))
        if method == "psi":
            rp, cp = _fill_zeroes(rp), _fill_zeroes(cp)
            return float(np.sum((rp - cp) * np.log(rp / cp)))
        if method == "kl_div":
            rp, cp = _fill_zeroes(rp), _fill_zeroes(cp)
            return float(stats.entropy(rp, cp))
    raise AssertionError(method)


def _chisquare_two_sample(ref: dict, cur: dict) -> tuple[float, float]:
    """Pearson's chi-square test of homogeneity of the 2 x k table (reference, current) x values."""
    from scipy.stats import chi2_contingency

    keys = sorted(set(ref) | set(cur), key=_sort_key)
    if len(keys) < 2:
        return 0.0, 1.0
    stat, p, _, _ = chi2_contingency([[ref.get(k, 0) for k in keys], [cur.get(k, 0) for k in keys]],
                                     correction=False)
    return float(p), float(stat)


def _counts_test(method: str, ref: dict, cur: dict, n_r: int, n_c: int, chisquare_form: str = "evidently"
                 ) -> tuple[float, float | None, float | None]:
    """(score, statistic, p_value) of a test on per-value counts (categories or few numeric values)."""
    from scipy.stats import chisquare, norm

    if method == "chisquare" and chisquare_form == "two_sample":
        p, stat = _chisquare_two_sample(ref, cur)
        return p, stat, p
    if method == "chisquare":
        keys = list(set(ref) | set(cur))
        k_norm = n_c / n_r
        f_exp = [ref.get(k, 0) * k_norm for k in keys]
        f_obs = [cur.get(k, 0) for k in keys]
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stat, p = chisquare(f_obs, f_exp)
        return float(p), float(stat), float(p)
    if method == "z":
        if len(ref) == 1 and len(cur) == 1 and next(iter(ref)) == next(iter(cur)):
            return 1.0, 0.0, 1.0
        k0 = sorted(set(ref) | set(cur), key=_sort_key)[0]
        p1 = float(n_r - ref.get(k0, 0)) / n_r
        p2 = float(n_c - cur.get(k0, 0)) / n_c
        pooled = float(p1 * n_r + p2 * n_c) / (n_r + n_c)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / n_r + 1.0 / n_c))
        p = 2 * (1 - norm.cdf(np.abs(z)))
        return float(p), float(z), float(p)
    if method == "hellinger":
        acc = 0.0
        for k in set(ref) | set(cur):
            acc += math.sqrt(float(ref.get(k, 0) / n_r) * float(cur.get(k, 0) / n_c))
        h = math.sqrt(1 - float(np.clip(acc, 0, 1)))
        return h, h, None
    _, rp, cp = _value_percents(ref, cur, n_r, n_c)
    d = _distance(method, rp, cp)
    return d, d, None


def _ks_pvalue(d: float, n1: int, n2: int) -> float:
    """``scipy.stats.ks_2samp(method="auto", alternative="two-sided")``'s p-value for statistic ``d``."""
    from scipy.stats import distributions

    if max(n1, n2) <= _KS_EXACT_N:
        try:
            from scipy.stats._stats_py import _attempt_exact_2kssamp  # the function ks_2samp calls
            ok, _, prob = _attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
            if ok:
                return float(np.clip(prob, 0, 1))
        except ImportError:  # a scipy without it: its asymptotic distribution below
            pass
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    return float(np.clip(distributions.kstwo.sf(d, np.round(en)), 0, 1))


def _mad_bound(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Largest mean absolute deviation of a distribution on ``[lo, hi]`` with mean ``mean``."""
    width = hi - lo
    m = np.clip(mean, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(width > 0, 2 * (m - lo) * (hi - m) / width, 0.0)
    return np.nan_to_num(out)


# --- the check ------------------------------------------------------------------------------

@dataclass
class _Bins:
    """Per-bin aggregates of one numeric feature (bins keyed by their lower edge, ascending)."""

    lower: np.ndarray
    n_r: np.ndarray
    s_r: np.ndarray
    lo_r: np.ndarray
    hi_r: np.ndarray
    eq_r: np.ndarray
    n_c: np.ndarray
    s_c: np.ndarray
    lo_c: np.ndarray
    hi_c: np.ndarray
    eq_c: np.ndarray

    def regroup(self, edges: np.ndarray, closed_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Counts per ``[edges[i], edges[i+1])`` (the last bin closed), like ``np.histogram(x, edges)``.

        Every value of ``edges`` must be a fine-bin edge. Values outside ``[edges[0], edges[-1]]`` are dropped.
        """
        k = len(edges) - 1
        idx = np.searchsorted(edges, self.lower, side="right") - 1
        if closed_last:
            idx[self.lower == edges[-1]] = k - 1
        keep = (idx >= 0) & (idx < k) & (self.lower <= edges[-1])
        r = np.bincount(idx[keep], weights=self.n_r[keep], minlength=k)[:k]
        c = np.bincount(idx[keep], weights=self.n_c[keep], minlength=k)[:k]
        return r.astype(np.int64), c.astype(np.int64)


class FeatureDriftCheck:
    """One :class:`Result` per feature: evidently's test and verdict, from ClickHouse aggregates.

    ``raw_limit``: when both windows have at most this many rows (and evidently is installed),
    evidently's own test also runs on the raw values and its score and verdict are used; 0 turns
    that off. ``ks_edge_limit``: largest number of distinct reference values used as bin edges for
    the exact K-S statistic (above it: a ``GROUP BY value`` in ClickHouse). ``exact_limit``: most
    rows (both windows) for which the exact Wasserstein distance is computed when the histogram's
    error bound straddles the threshold. ``features``: restrict to these feature names.

    ``chisquare``: evidently's ``chisquare`` (``chisquare_stattest.py``) is a one-sample goodness of
    fit of the current counts against the reference *proportions taken as exact*
    (``f_exp = ref * n_c / n_r``). It ignores the reference's own sampling error, so with windows of
    similar size its statistic is ~``1 + n_c / n_r`` times too large: same-distribution windows of
    400 rows were flagged in ~22-28% of trials at alpha 0.05 (tests/test_stat_drift.py). And
    evidently picks it exactly when the reference is small (<= 1000 rows). ``"two_sample"``
    (default) computes Pearson's chi-square test of homogeneity on the 2 x k table instead
    (``scipy.stats.chi2_contingency``, no continuity correction): same family, calibrated.
    ``"evidently"`` reproduces evidently's p-value exactly. Either way evidently's p-value is in
    ``details["evidently_p_value"]``.
    """

    name = "feature_drift"

    def __init__(self, settings: Any, *, features: list[str] | None = None, raw_limit: int = 5000,
                 ks_edge_limit: int = 10_000, exact_limit: int = 50_000_000,
                 chisquare: Literal["two_sample", "evidently"] = "two_sample"):
        if chisquare not in ("two_sample", "evidently"):
            raise ConfigError(f"chisquare must be 'two_sample' or 'evidently', not {chisquare!r}")
        self.chisquare = chisquare
        self.settings = settings
        self.raw_limit = raw_limit
        self.ks_edge_limit = ks_edge_limit
        self.exact_limit = exact_limit
        if features is not None:
            unknown = [f for f in features if f not in FEATURES]
            if unknown:
                raise ConfigError(f"unknown drift feature(s) {unknown}; known: {sorted(FEATURES)}")
        self.features = [FEATURES[f] for f in (features or FEATURES)]
        self.overrides: dict[str, tuple[str | None, float | None]] = {}
        for fname, ov in (getattr(settings, "features", None) or {}).items():
            if fname not in FEATURES:
                raise ConfigError(f"checks.features.{fname}: unknown feature; known: {sorted(FEATURES)}")
            method, threshold = getattr(ov, "method", None), getattr(ov, "threshold", None)
            if method is not None:
                if method not in METHODS:
                    extra = (" (an evidently test that needs raw values; not computed on aggregates)"
                             if method in _UNSUPPORTED else "")
                    raise ConfigError(f"checks.features.{fname}.method: unsupported test {method!r}{extra}; "
                                      f"supported: {sorted(METHODS)}")
                ftype = FEATURES[fname].type
                if ftype not in METHODS[method].types:
                    raise ConfigError(f"checks.features.{fname}.method: evidently's {method!r} does not apply "
                                      f"to {ftype} features")
            if threshold is not None and not (threshold > 0 and math.isfinite(threshold)):
                raise ConfigError(f"checks.features.{fname}.threshold must be a positive number")
            if threshold is not None and method is not None and METHODS[method].kind == "p_value" \
                    and threshold >= 1:
                raise ConfigError(f"checks.features.{fname}.threshold: a p-value threshold must be below 1")
            self.overrides[fname] = (method, threshold)
        self._columns: dict[tuple[int, str, str], set[str]] = {}

    def warm_up(self) -> None:
        """Import scipy's tests (and evidently's, used on small windows) now, not during a run."""
        modules = ["scipy.stats", "scipy.spatial.distance"]
        if self.raw_limit and importlib.util.find_spec("evidently") is not None:
            modules.append("evidently.legacy.calculations.stattests.registry")
        for module in modules:
            importlib.import_module(module)

    # -- plumbing

    def _table_columns(self, ctx: CheckContext) -> set[str]:
        key = (id(ctx.store), ctx.store.database, ctx.table)
        if key not in self._columns:
            rows = ctx.store.query_rows(
                "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                {"db": ctx.store.database, "t": ctx.table})
            self._columns[key] = {r[0] for r in rows}
        return self._columns[key]

    def _source(self, ctx: CheckContext, exprs: list[str], hashed: bool = False) -> tuple[str, dict[str, Any]]:
        """A subquery of both windows' rows: ``_r``/``_c`` (in which window), ``f0..``: the expressions."""
        wc, pc = ctx.where("current")
        wr, pr = ctx.where("reference")
        cols = "".join(f", {e} AS f{i}" for i, e in enumerate(exprs))
        if hashed:
            cols += ", span_id"
        sql = (f"(SELECT toUInt8({wr}) AS _r, toUInt8({wc}) AS _c{cols} FROM {ctx.table} "
               f"WHERE ({wc}) OR ({wr}))")
        return sql, {**pc, **pr}

    # -- run

    def run(self, ctx: CheckContext) -> list[Result]:
        cols = self._table_columns(ctx)
        feats = [f for f in self.features if all(c in cols for c in f.requires)]
        min_n = int(getattr(ctx.settings, "min_samples", getattr(self.settings, "min_samples", 100)))
        num = [f for f in feats if f.type == "numeric"]
        cat = [f for f in feats if f.type == "categorical"]
        rows_r, rows_c = self._window_rows(ctx)
        nstats = self._numeric_stats(ctx, num, rows_r, rows_c)
        ccounts = self._category_counts(ctx, cat)
        raw = None
        if self.raw_limit and rows_r <= self.raw_limit and rows_c <= self.raw_limit:
            raw = self._raw_values(ctx, feats)
        out = []
        for f in feats:
            ctx.check_cancelled()
            out.append(self._numeric(ctx, f, nstats[f.name], min_n, raw) if f.type == "numeric"
                       else self._categorical(f, ccounts[f.name], min_n, raw))
        return out

    # -- queries

    def _window_rows(self, ctx: CheckContext) -> tuple[int, int]:
        src, params = self._source(ctx, [])
        row = ctx.store.query_rows(f"SELECT countIf(_r), countIf(_c) FROM {src}", params)[0]
        return int(row[0]), int(row[1])

    def _numeric_stats(self, ctx: CheckContext, feats: list[Feature], rows_r: int, rows_c: int
                       ) -> dict[str, dict]:
        """Per numeric feature and window: n, min, max, mean, std, <= 21 distinct values, quantiles.

        The quantiles are exact quantiles of a deterministic sample of ~``_SAMPLE`` rows per window
        (:meth:`CheckContext.sample_filter`, by hash of the span id; every row when the window is
        smaller), sorted in ClickHouse; they only place the histogram's edges, whose counts are exact.
        One scan per ``_STATS_CHUNK`` features; the ``-If`` form is ~2x faster than ``GROUP BY`` window.
        """
        out: dict[str, dict] = {}
        levels = (f"arrayConcat(arrayMap(i -> i / {_LEVELS_N}, range(1, {_LEVELS_N})), "
                  f"[{', '.join(repr(x) for x in _LEVELS[_LEVELS_N - 1:])}])")
        cond = {w: w if n <= _SAMPLE else f"{w} AND {ctx.sample_filter(_SAMPLE / n)}"
                for w, n in (("_r", rows_r), ("_c", rows_c))}
        for start in range(0, len(feats), _STATS_CHUNK):
            chunk = feats[start:start + _STATS_CHUNK]
            src, params = self._source(ctx, [f.sql for f in chunk], hashed=True)
            aggs, samples = [], []
            for i in range(len(chunk)):
                for w in ("_r", "_c"):
                    aggs += [f"countIf(f{i}, {w})", f"minIf(f{i}, {w})", f"maxIf(f{i}, {w})", f"avgIf(f{i}, {w})",
                             f"stddevPopStableIf(f{i}, {w})", f"groupUniqArrayIf({_UNIQ_PROBE})(f{i}, {w})",
                             f"arraySort(groupArrayIf(f{i}, {cond[w]})) AS s{i}{w}"]
                    samples.append(f"s{i}{w}")
            quant = ", ".join(f"arrayMap(q -> {s}[toUInt32(greatest(1, ceil(q * length({s}))))], _lv)"
                              for s in samples)
            k = 6
            outer = ", ".join(f"a{j}" for j in range(len(aggs)) if j % 7 != 6)
            inner = ", ".join(a if j % 7 == 6 else f"{a} AS a{j}" for j, a in enumerate(aggs))
            row = ctx.store.query_rows(
                f"WITH {levels} AS _lv SELECT {outer}, {quant} FROM (SELECT {inner} FROM {src})", params)[0]
            nq = len(samples)
            stats, qs = row[:-nq], row[-nq:]
            for i, f in enumerate(chunk):
                st = {}
                for j, w in enumerate(("r", "c")):
                    n, lo, hi, mean, std, uniq = stats[(2 * i + j) * k: (2 * i + j + 1) * k]
                    q = qs[2 * i + j]
                    st[w] = {"n": int(n), "min": _f(lo), "max": _f(hi), "mean": _f(mean), "std": _f(std),
                             "uniq": list(uniq or []),
                             "q": [_f(v) for v in q] if n else [float("nan")] * len(_LEVELS)}
                out[f.name] = st
        return out

    def _category_counts(self, ctx: CheckContext, feats: list[Feature]) -> dict[str, tuple[dict, dict]]:
        out: dict[str, tuple[dict, dict]] = {f.name: ({}, {}) for f in feats}
        if not feats:
            return out
        src, params = self._source(ctx, [f.sql for f in feats])
        pairs = ", ".join(f"({i}, f{i})" for i in range(len(feats)))
        rows = ctx.store.query_rows(
            f"SELECT kv.1 AS k, kv.2 AS v, countIf(_r), countIf(_c) FROM "
            f"(SELECT _r, _c, arrayJoin([{pairs}]) AS kv FROM {src}) WHERE v IS NOT NULL GROUP BY k, v", params)
        for k, v, nr, nc in rows:
            ref, cur = out[feats[k].name]
            if nr:
                ref[v] = int(nr)
            if nc:
                cur[v] = int(nc)
        return out

    def _raw_values(self, ctx: CheckContext, feats: list[Feature]) -> dict[str, tuple[list, list]] | None:
        if importlib.util.find_spec("evidently") is None:
            return None
        src, params = self._source(ctx, [f.sql for f in feats])
        cols = ", ".join(f"f{i}" for i in range(len(feats)))
        rows = ctx.store.query_rows(f"SELECT _r, _c, {cols} FROM {src}", params)
        out: dict[str, tuple[list, list]] = {}
        for i, f in enumerate(feats):
            out[f.name] = ([r[2 + i] for r in rows if r[0] and r[2 + i] is not None],
                           [r[2 + i] for r in rows if r[1] and r[2 + i] is not None])
        return out

    def _value_counts(self, ctx: CheckContext, f: Feature) -> tuple[dict, dict]:
        src, params = self._source(ctx, [f.sql])
        rows = ctx.store.query_rows(
            f"SELECT f0, countIf(_r), countIf(_c) FROM {src} WHERE f0 IS NOT NULL GROUP BY f0", params)
        return ({float(v): int(a) for v, a, _ in rows if a}, {float(v): int(b) for v, _, b in rows if b})

    def _bins(self, ctx: CheckContext, f: Feature, edges: np.ndarray) -> _Bins:
        src, params = self._source(ctx, [f.sql])
        params = {**params, "edges": [float(e) for e in edges]}
        rows = ctx.store.query_rows(
            "SELECT roundDown(v, {edges:Array(Float64)}) AS b, "
            "countIf(_r), sumIf(v, _r), minIf(v, _r), maxIf(v, _r), countIf(_r AND v = b), "
            "countIf(_c), sumIf(v, _c), minIf(v, _c), maxIf(v, _c), countIf(_c AND v = b) "
            f"FROM (SELECT _r, _c, assumeNotNull(f0) AS v FROM {src} WHERE f0 IS NOT NULL) "
            "GROUP BY b ORDER BY b", params)
        a = np.array(rows, dtype=np.float64).reshape(-1, 11)
        return _Bins(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5], a[:, 6], a[:, 7], a[:, 8],
                     a[:, 9], a[:, 10])

    def _reference_values(self, ctx: CheckContext, f: Feature) -> np.ndarray:
        src, params = self._source(ctx, [f.sql])
        rows = ctx.store.query_rows(f"SELECT DISTINCT f0 FROM {src} WHERE _r AND f0 IS NOT NULL", params)
        return np.array(sorted(r[0] for r in rows), dtype=np.float64)

    def _cdf_query(self, ctx: CheckContext, f: Feature, n_r: int, n_c: int) -> tuple[float, float]:
        """Exact (K-S D, Wasserstein W1) from the sorted union of values, in ClickHouse."""
        src, params = self._source(ctx, [f.sql])
        params = {**params, "nr": n_r, "nc": n_c}
        row = ctx.store.query_rows(
            "SELECT max(abs(d)), sum(abs(d) * (nxt - v)) FROM ("
            " SELECT v, cr / {nr:Float64} - cc / {nc:Float64} AS d,"
            "  leadInFrame(v, 1, v) OVER (ORDER BY v ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS nxt FROM ("
            "  SELECT v, sum(r) OVER w AS cr, sum(c) OVER w AS cc FROM ("
            f"   SELECT assumeNotNull(f0) AS v, countIf(_r) AS r, countIf(_c) AS c FROM {src}"
            "    WHERE f0 IS NOT NULL GROUP BY v)"
            "  WINDOW w AS (ORDER BY v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)))", params)[0]
        return float(row[0]), float(row[1])

    def _distinct_union(self, ctx: CheckContext, f: Feature) -> int:
        src, params = self._source(ctx, [f.sql])
        return int(ctx.store.query_rows(f"SELECT uniqExact(f0) FROM {src}", params)[0][0])

    # -- per feature

    def _choose(self, fname: str, ftype: FeatureType, n_r: int, distinct: int) -> tuple[str, float, bool]:
        method, threshold = self.overrides.get(fname, (None, None))
        overridden = method is not None
        if method is None:
            method = select_method(ftype, n_r, distinct)
        if threshold is None:
            alpha = getattr(self.settings, "feature_alpha", None)
            threshold = alpha if alpha is not None and METHODS[method].kind == "p_value" \
                else METHODS[method].default_threshold
        return method, float(threshold), overridden

    def _insufficient(self, f: Feature, n_r: int, n_c: int, min_n: int, details: dict) -> Result:
        method, threshold = self.overrides.get(f.name, (None, None))
        return Result(check=self.name, metric=f.name, status="insufficient_data", method=method or "",
                      threshold=threshold, current_n=n_c, reference_n=n_r,
                      details={"type": f.type, "reference_n": n_r, "current_n": n_c, "min_samples": min_n,
                               **details})

    def _numeric(self, ctx: CheckContext, f: Feature, st: dict, min_n: int,
                 raw: dict | None) -> Result:
        r, c = st["r"], st["c"]
        n_r, n_c = r["n"], c["n"]
        if n_r < min_n or n_c < min_n or n_r == 0 or n_c == 0:
            return self._insufficient(f, n_r, n_c, min_n, {})
        ur, uc = set(r["uniq"]), set(c["uniq"])
        ref_small = len(ur) < _UNIQ_PROBE
        distinct = len(ur | uc) if (ref_small and len(uc) < _UNIQ_PROBE) else _UNIQ_PROBE
        method, threshold, overridden = self._choose(f.name, "numeric", n_r, distinct)
        lo, hi = min(r["min"], c["min"]), max(r["max"], c["max"])

        # the fine histogram's edges: both windows' quantiles and extremes, the display edges, and
        # whatever the test needs on top
        display = np.unique(np.array([r["min"]] + [r["q"][i] for i in _DISPLAY_LEVELS] + [r["max"]]))
        parts = [np.array(r["q"]), np.array(c["q"]), np.array([lo, hi, r["min"], r["max"], c["min"], c["max"]]),
                 display, np.array([np.nextafter(r["max"], np.inf)])]
        extra: dict[str, Any] = {}
        counts_path = method in ("chisquare", "z") or (method in ("jensenshannon", "psi", "kl_div") and ref_small)
        sturges = None
        if method in ("jensenshannon", "psi", "kl_div") and not ref_small:
            sturges = sturges_edges(lo, hi, n_r + n_c)
            parts.append(sturges)
        hell = None
        if method == "hellinger":
            hell = sturges_edges(lo, hi, self._distinct_union(ctx, f))
            parts.append(hell)
        ks_edges = None
        if method == "ks" and n_r <= self.ks_edge_limit:
            ks_edges = self._reference_values(ctx, f)
            if len(ks_edges) <= self.ks_edge_limit:
                parts.append(ks_edges)
            else:
                ks_edges = None
        edges = np.unique(np.concatenate(parts))
        edges = edges[np.isfinite(edges) & (edges >= lo)]
        bins = self._bins(ctx, f, edges)

        statistic: float | None
        p_value: float | None = None
        if counts_path:
            ref_counts, cur_counts = self._value_counts(ctx, f)
            score, statistic, p_value = _counts_test(method, ref_counts, cur_counts, n_r, n_c, self.chisquare)
            extra["binning"] = "values"
            if method == "chisquare":
                extra["evidently_p_value"] = _counts_test(method, ref_counts, cur_counts, n_r, n_c)[0]
                extra["chisquare_form"] = self.chisquare
        elif method == "wasserstein":
            score, bound = self._wasserstein(bins, n_r, n_c, r["std"])
            extra.update(error_bound=bound, exact=False, approximation="histogram", bins=int(len(bins.lower)))
            if abs(score - threshold) <= bound and n_r + n_c <= self.exact_limit:
                _, w1 = self._cdf_query(ctx, f, n_r, n_c)
                score = w1 / max(r["std"], 0.001)
                extra.update(exact=True, error_bound=0.0, approximation="none (threshold within the bound)")
            statistic = score
        elif method == "ks":
            if ks_edges is not None:
                d = self._ks_from_bins(bins, n_r, n_c)
                extra["ks_d"] = "exact, reference values as bin edges"
            else:
                d, _ = self._cdf_query(ctx, f, n_r, n_c)
                extra["ks_d"] = "exact, cumulative counts over the sorted union in ClickHouse"
            p_value = _ks_pvalue(d, n_r, n_c)
            statistic, score = d, p_value
        elif method == "t_test":
            from scipy.stats import ttest_ind_from_stats

            s1 = r["std"] * math.sqrt(n_r / (n_r - 1)) if n_r > 1 else 0.0
            s2 = c["std"] * math.sqrt(n_c / (n_c - 1)) if n_c > 1 else 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                t, p = ttest_ind_from_stats(r["mean"], s1, n_r, c["mean"], s2, n_c, equal_var=True)
            statistic, p_value, score = float(t), float(p), float(p)
        elif method == "hellinger":
            assert hell is not None
            hr, hc = bins.regroup(hell)
            db = np.diff(hell)
            with np.errstate(divide="ignore", invalid="ignore"):
                d1, d2 = hr / db / hr.sum(), hc / db / hc.sum()
            width = (max(hell) - min(hell)) / (len(hell) - 1)
            acc = float(np.sum(np.sqrt(d1 * d2) * width))
            score = statistic = math.sqrt(1 - float(np.clip(acc, 0, 1)))
            extra["binning"] = f"sturges over distinct values ({len(hell) - 1} bins)"
        else:
            assert sturges is not None
            sr, sc = bins.regroup(sturges)
            score = statistic = _distance(method, sr / n_r, sc / n_c)
            extra["binning"] = f"sturges ({len(sturges) - 1} bins)"
        score, statistic, p_value, drifted, engine = self._verdict(
            f, method, overridden, threshold, score, statistic, p_value, raw, extra)
        details = {
            "type": "numeric", "reference_n": n_r, "current_n": n_c, "drift_score": score, "engine": engine,
            "histogram": self._display(bins, display, r["max"]),
            "reference": _summary(r), "current": _summary(c), **extra,
        }
        return Result(check=self.name, metric=f.name, status="fail" if drifted else "ok", value=statistic,
                      threshold=threshold, p_value=p_value, method=method, reference_value=r["mean"],
                      current_n=n_c, reference_n=n_r, details=details)

    @staticmethod
    def _wasserstein(b: _Bins, n_r: int, n_c: int, std_r: float) -> tuple[float, float]:
        from scipy.stats import wasserstein_distance

        mr, mc = b.n_r > 0, b.n_c > 0
        u = b.s_r[mr] / b.n_r[mr]
        v = b.s_c[mc] / b.n_c[mc]
        u = np.clip(u, b.lo_r[mr], b.hi_r[mr])
        v = np.clip(v, b.lo_c[mc], b.hi_c[mc])
        w = wasserstein_distance(u, v, b.n_r[mr], b.n_c[mc])
        bound = float(np.sum(b.n_r[mr] / n_r * _mad_bound(b.lo_r[mr], b.hi_r[mr], u))
                      + np.sum(b.n_c[mc] / n_c * _mad_bound(b.lo_c[mc], b.hi_c[mc], v)))
        norm = max(float(std_r), 0.001)
        return float(w) / norm, bound / norm

    @staticmethod
    def _ks_from_bins(b: _Bins, n_r: int, n_c: int) -> float:
        """sup |F_r - F_c| when every reference value is a bin edge (ref values sit at lower edges)."""
        cum_r = np.cumsum(b.n_r) - b.n_r
        cum_c = np.cumsum(b.n_c) - b.n_c
        fr = (cum_r + b.n_r) / n_r
        at_edge = np.abs(fr - (cum_c + b.eq_c) / n_c)
        before_next = np.abs(fr - (cum_c + b.n_c) / n_c)
        return float(max(at_edge.max(initial=0.0), before_next.max(initial=0.0)))

    @staticmethod
    def _display(b: _Bins, edges: np.ndarray, ref_max: float) -> dict:
        if len(edges) < 2:
            edges = np.array([edges[0], edges[0]])
        r, c = b.regroup(edges)
        below = int(b.n_c[b.lower < edges[0]].sum())
        above = int(b.n_c[b.lower > ref_max].sum())
        return {"edges": [float(e) for e in edges], "reference": r.tolist(), "current": c.tolist(),
                "current_below": below, "current_above": above,
                "note": "bins on the reference's 5% quantiles (approximate edges, exact counts)"}

    def _categorical(self, f: Feature, counts: tuple[dict, dict], min_n: int, raw: dict | None) -> Result:
        ref, cur = counts
        n_r, n_c = sum(ref.values()), sum(cur.values())
        if n_r < min_n or n_c < min_n or n_r == 0 or n_c == 0:
            return self._insufficient(f, n_r, n_c, min_n, {})
        method, threshold, overridden = self._choose(f.name, "categorical", n_r, len(set(ref) | set(cur)))
        score, statistic, p_value = _counts_test(method, ref, cur, n_r, n_c, self.chisquare)
        extra: dict[str, Any] = {}
        if method == "chisquare":
            extra["evidently_p_value"] = _counts_test(method, ref, cur, n_r, n_c)[0]
            extra["chisquare_form"] = self.chisquare
        score, statistic, p_value, drifted, engine = self._verdict(
            f, method, overridden, threshold, score, statistic, p_value, raw, extra)
        top = sorted(set(ref) | set(cur), key=lambda k: -(ref.get(k, 0) / n_r + cur.get(k, 0) / n_c))
        cats = [{"value": k, "reference": ref.get(k, 0) / n_r, "current": cur.get(k, 0) / n_c} for k in top[:20]]
        rest = top[20:]
        details = {
            "type": "categorical", "reference_n": n_r, "current_n": n_c, "drift_score": score, "engine": engine,
            "categories": cats, "distinct": len(top),
            "other": {"reference": sum(ref.get(k, 0) for k in rest) / n_r,
                      "current": sum(cur.get(k, 0) for k in rest) / n_c} if rest else None,
            **extra,
        }
        return Result(check=self.name, metric=f.name, status="fail" if drifted else "ok", value=statistic,
                      threshold=threshold, p_value=p_value, method=method, current_n=n_c, reference_n=n_r,
                      details=details)

    def _verdict(self, f: Feature, method: str, overridden: bool, threshold: float, score: float,
                 statistic: float | None, p_value: float | None, raw: dict | None, extra: dict
                 ) -> tuple[float, float | None, float | None, bool, str]:
        """The verdict; on small windows evidently's own test on the raw values decides (same numbers)."""
        m = METHODS[method]
        drifted = m.drifted(score, threshold)
        if raw is None or f.name not in raw:
            return score, statistic, p_value, drifted, "clickhouse-aggregates"
        ev = self._evidently(raw[f.name], f.type, method if overridden else None, threshold)
        if ev is None:
            return score, statistic, p_value, drifted, "clickhouse-aggregates"
        ev_method, ev_score, ev_drifted = ev
        if ev_method != method:  # cannot happen unless evidently changes its rule
            log.warning("%s: evidently chose %s, the aggregate rule %s", f.name, ev_method, method)
            extra["evidently_method"] = ev_method
        if method == "chisquare" and self.chisquare == "two_sample":
            extra["evidently_score"] = ev_score  # its p-value, kept for reference; the calibrated test decides
            return score, statistic, p_value, drifted, "clickhouse-aggregates"
        extra["aggregate_score"] = score
        if m.kind == "p_value":
            p_value = ev_score
        else:
            statistic = ev_score
        return ev_score, statistic, p_value, ev_drifted, "evidently"

    @staticmethod
    def _evidently(values: tuple[list, list], ftype: FeatureType, method: str | None,
                   threshold: float | None) -> tuple[str, float, bool] | None:
        """evidently's own selection and test on raw values: (method, drift score, drifted)."""
        try:
            import pandas as pd
            from evidently.legacy.calculations.stattests.registry import get_stattest
            from evidently.legacy.core import ColumnType
        except Exception:
            return None
        ref = pd.Series(values[0], dtype="float64" if ftype == "numeric" else "object")
        cur = pd.Series(values[1], dtype="float64" if ftype == "numeric" else "object")
        ct = ColumnType.Numerical if ftype == "numeric" else ColumnType.Categorical
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = get_stattest(ref, cur, ct, method)
            res = st(ref, cur, ct, threshold)
        return st.name, float(res.drift_score), bool(res.drifted)


def _f(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _summary(w: dict) -> dict:
    return {"n": w["n"], "mean": w["mean"], "std": w["std"], "min": w["min"], "max": w["max"],
            "quantiles": {k: w["q"][i] for k, i in _SUMMARY_Q.items()},
            "quantiles_note": f"from a deterministic sample of <= ~{_SAMPLE} rows (exact below that)"}
