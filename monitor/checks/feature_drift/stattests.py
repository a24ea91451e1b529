"""evidently's drift tests on counts and distances, and its default choice of test. Pure numpy/scipy.

Each function reproduces the test evidently 0.7.23 registers under the same name
(``evidently/legacy/calculations/stattests/``), from per-value counts or proportions
rather than raw values; see :mod:`monitor.checks.feature_drift` for how the counts are taken.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monitor.checks.feature_drift.features import FeatureType

__all__ = ["Method", "METHODS", "UNSUPPORTED", "select_method", "sturges_edges", "counts_test", "distance",
           "ks_pvalue", "mad_bound"]

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

UNSUPPORTED = {
    "anderson", "cramer_von_mises", "ed", "es", "fisher_exact", "g_test", "mannw", "empirical_mmd", "TVD",
    "perc_text_content_drift", "abs_text_content_drift",
}

_SMALL_REFERENCE = 1000
"""evidently's size limit between the small-sample tests and the distances (registry.py:143,151)."""
_KS_EXACT_N = 10_000
"""scipy's ``MAX_AUTO_N``: ks_2samp uses the exact distribution up to this sample size."""


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


def distance(method: str, rp: np.ndarray, cp: np.ndarray) -> float:
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


def counts_test(method: str, ref: dict, cur: dict, n_r: int, n_c: int, chisquare_form: str = "evidently"
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
    d = distance(method, rp, cp)
    return d, d, None


def ks_pvalue(d: float, n1: int, n2: int) -> float:
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


def mad_bound(lo: np.ndarray, hi: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Largest mean absolute deviation of a distribution on ``[lo, hi]`` with mean ``mean``."""
    width = hi - lo
    m = np.clip(mean, lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(width > 0, 2 * (m - lo) * (hi - m) / width, 0.0)
    return np.nan_to_num(out)
