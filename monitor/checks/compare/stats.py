"""The statistics of a comparison between two models (or versions, adapters, endpoints). Pure: no I/O.

Every difference comes with its test and a p-value or a confidence interval:

- distributions (latency, TTFT, tokens per second, output length): the Mann-Whitney U test
  (two-sided, normal approximation with the tie correction; fine from ~20 values per side) on
  whether one side tends to be larger, and a percentile bootstrap CI of the difference of the
  medians and of the p95s (B - A), and of their ratio (B / A);
- rates (refusal, truncation, invalid JSON, language mismatch, errors): the two-sided
  two-proportion z-test (pooled) and Newcombe's hybrid score interval of the difference (B - A),
  which stays sensible at 0 or 100 % where the Wald interval collapses;
- means (cost per request): Welch's t-test and its CI;
- non-inferiority (the canary): :func:`non_inferior`, from a CI at level 1 - 2 alpha (a one-sided
  test at alpha on each side): ``ok`` when the upper bound is within the margin, ``fail`` when the
  lower bound is past it, ``warn`` when the interval straddles it (not shown either way).

The bootstrap is seeded: the same inputs give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

__all__ = [
    "Distribution",
    "MeanDiff",
    "RateDiff",
    "Verdict",
    "bootstrap_diff",
    "compare_means",
    "compare_rates",
    "compare_values",
    "mann_whitney",
    "non_inferior",
    "normal_cdf",
    "wilson",
]

_BOOT = 1000
"""Bootstrap resamples."""
_BOOT_MAX = 5000
"""Values per side the bootstrap resamples at most."""
_BOOT_CELLS = 2_000_000
"""Resampled values held at once (memory bound: 16 MB)."""
_SEED = 20240611


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _two_sided(z: float) -> float:
    """Two-sided normal p-value of ``z`` (erfc keeps tiny p-values instead of rounding them to 0)."""
    return math.erfc(abs(z) / math.sqrt(2))


def _normal_ppf(p: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation; |error| < 1.2e-9)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - lo:
        return -_normal_ppf(1 - p)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def mann_whitney(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(U of b, two-sided p)``: do values of ``b`` tend to differ from those of ``a``? Normal
    approximation with the tie correction and a continuity correction; p = 1 when either is empty."""
    x, y = _clean(a), _clean(b)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    allv = np.concatenate([x, y])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u2 = float(ranks[n1:].sum() - n2 * (n2 + 1) / 2.0)
    mu = n1 * n2 / 2.0
    n = n1 + n2
    tie = float((counts ** 3 - counts).sum())
    var = n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u2, 1.0
    z = (abs(u2 - mu) - 0.5) / math.sqrt(var)
    return u2, min(1.0, _two_sided(max(z, 0.0)))


def bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                   qs: Sequence[float] = (0.5, 0.95), level: float = 0.95, n_boot: int = _BOOT,
                   seed: int = _SEED) -> list[tuple[float, float, float, float, float, float]]:
    """Percentile bootstrap of each quantile in ``qs``: per quantile ``(diff, lo, hi, ratio, ratio_lo,
    ratio_hi)`` of B - A and B / A (ratio NaN when A's quantile is 0). Each side is resampled on its
    own; a side longer than :data:`_BOOT_MAX` is first subsampled (seeded) to bound the work."""
    x, y = _clean(a), _clean(b)
    nan = float("nan")
    if len(x) == 0 or len(y) == 0:
        return [(nan,) * 6 for _ in qs]
    rng = np.random.default_rng(seed)
    point_a, point_b = np.quantile(x, qs), np.quantile(y, qs)
    xs = x if len(x) <= _BOOT_MAX else rng.choice(x, _BOOT_MAX, replace=False)
    ys = y if len(y) <= _BOOT_MAX else rng.choice(y, _BOOT_MAX, replace=False)
    qa = np.empty((n_boot, len(qs)))
    qb = np.empty((n_boot, len(qs)))
    step = max(1, _BOOT_CELLS // max(len(xs), len(ys)))
    for i in range(0, n_boot, step):
        k = min(step, n_boot - i)
        qa[i:i + k] = np.quantile(xs[rng.integers(0, len(xs), size=(k, len(xs)))], qs, axis=1).T
        qb[i:i + k] = np.quantile(ys[rng.integers(0, len(ys), size=(k, len(ys)))], qs, axis=1).T
    tail = (1 - level) / 2 * 100
    out = []
    for j in range(len(qs)):
        d = qb[:, j] - qa[:, j]
        lo, hi = np.percentile(d, [tail, 100 - tail])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(qa[:, j] > 0, qb[:, j] / qa[:, j], np.nan)
        r = r[np.isfinite(r)]
        ratio = float(point_b[j] / point_a[j]) if point_a[j] > 0 else nan
        rlo, rhi = np.percentile(r, [tail, 100 - tail]) if len(r) else (nan, nan)
        out.append((float(point_b[j] - point_a[j]), float(lo), float(hi), ratio, float(rlo), float(rhi)))
    return out


@dataclass
class Distribution:
    """A numeric metric on both sides."""

    metric: str
    n_a: int
    n_b: int
    median_a: float | None
    median_b: float | None
    p95_a: float | None
    p95_b: float | None
    median_diff: float | None = None
    median_diff_ci: tuple[float, float] | None = None
    median_ratio: float | None = None
    p95_diff: float | None = None
    p95_diff_ci: tuple[float, float] | None = None
    p95_ratio: float | None = None
    p95_ratio_ci: tuple[float, float] | None = None
    u: float | None = None
    p_value: float | None = None
    test: str = "mann-whitney U (two-sided); bootstrap 95% CI of B - A"

    def as_dict(self) -> dict:
        return _finite(asdict(self))


def compare_values(metric: str, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                   level: float = 0.95) -> Distribution:
    x, y = _clean(a), _clean(b)
    out = Distribution(metric, len(x), len(y), None, None, None, None)
    if len(x):
        out.median_a, out.p95_a = float(np.median(x)), float(np.quantile(x, 0.95))
    if len(y):
        out.median_b, out.p95_b = float(np.median(y)), float(np.quantile(y, 0.95))
    if len(x) < 2 or len(y) < 2:
        return out
    out.u, out.p_value = mann_whitney(x, y)
    (d, lo, hi, ratio, _, _), (d95, lo95, hi95, r95, rlo, rhi) = bootstrap_diff(x, y, (0.5, 0.95), level)
    out.median_diff, out.median_diff_ci, out.median_ratio = d, (lo, hi), ratio
    d, lo, hi, ratio = d95, lo95, hi95, r95
    out.p95_diff, out.p95_diff_ci, out.p95_ratio, out.p95_ratio_ci = d, (lo, hi), ratio, (rlo, rhi)
    out.test = f"mann-whitney U (two-sided); bootstrap {level:.0%} CI of B - A"
    return out


def wilson(x: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = x / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class RateDiff:
    metric: str
    x_a: int
    n_a: int
    x_b: int
    n_b: int
    rate_a: float | None
    rate_b: float | None
    diff: float | None = None
    ci: tuple[float, float] | None = None
    z: float | None = None
    p_value: float | None = None
    test: str = "two-proportion z (two-sided); Newcombe 95% CI of B - A"

    def as_dict(self) -> dict:
        return _finite(asdict(self))


def compare_rates(metric: str, x_a: int, n_a: int, x_b: int, n_b: int, level: float = 0.95) -> RateDiff:
    out = RateDiff(metric, x_a, n_a, x_b, n_b, x_a / n_a if n_a else None, x_b / n_b if n_b else None)
    if not n_a or not n_b:
        return out
    pa, pb = x_a / n_a, x_b / n_b
    z = _normal_ppf(1 - (1 - level) / 2)
    la, ua = wilson(x_a, n_a, z)
    lb, ub = wilson(x_b, n_b, z)
    d = pb - pa
    out.diff = d
    out.ci = (d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2), d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2))
    pooled = (x_a + x_b) / (n_a + n_b)
    var = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if var > 0:
        out.z = d / math.sqrt(var)
        out.p_value = min(1.0, _two_sided(out.z))
    else:
        out.z, out.p_value = 0.0, 1.0
    out.test = f"two-proportion z (two-sided); Newcombe {level:.0%} CI of B - A"
    return out


@dataclass
class MeanDiff:
    metric: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    diff: float | None = None
    ci: tuple[float, float] | None = None
    ratio: float | None = None
    p_value: float | None = None
    test: str = "welch t (two-sided, normal approximation); 95% CI of B - A"

    def as_dict(self) -> dict:
        return _finite(asdict(self))


def compare_means(metric: str, a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                  level: float = 0.95) -> MeanDiff:
    x, y = _clean(a), _clean(b)
    out = MeanDiff(metric, len(x), len(y), float(x.mean()) if len(x) else None, float(y.mean()) if len(y) else None)
    if len(x) < 2 or len(y) < 2:
        return out
    d = float(y.mean() - x.mean())
    se = math.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y))
    z = _normal_ppf(1 - (1 - level) / 2)
    out.diff, out.ci = d, (d - z * se, d + z * se)
    out.ratio = float(y.mean() / x.mean()) if x.mean() > 0 else None
    out.p_value = 1.0 if se == 0 else min(1.0, _two_sided(d / se))
    return out


@dataclass
class Verdict:
    metric: str
    status: Literal["ok", "warn", "fail", "insufficient_data"]
    estimate: float | None
    ci: tuple[float, float] | None
    margin: float
    reason: str
    details: dict = field(default_factory=dict)


def non_inferior(metric: str, estimate: float | None, ci: tuple[float, float] | None, margin: float,
                 unit: str = "") -> Verdict:
    """The verdict on "B is not worse than A by more than ``margin``" from the point estimate and a
    CI of (B - A) or of (B / A - 1), where larger is worse. ``ci`` at level 1 - 2 alpha."""
    if estimate is None or ci is None or not all(math.isfinite(v) for v in (estimate, *ci)):
        return Verdict(metric, "insufficient_data", estimate, ci, margin, "not enough data on both sides")
    lo, hi = ci
    shown = f"{_fmt(estimate, unit)} (CI {_fmt(lo, unit)} .. {_fmt(hi, unit)}), margin {_fmt(margin, unit)}"
    if lo > margin:
        return Verdict(metric, "fail", estimate, ci, margin, f"worse by more than the margin: {shown}")
    if hi <= margin:
        return Verdict(metric, "ok", estimate, ci, margin, f"within the margin: {shown}")
    return Verdict(metric, "warn", estimate, ci, margin, f"not shown to be within the margin: {shown}")


def _fmt(v: float, unit: str) -> str:
    if unit == "%":
        return f"{v * 100:+.1f}%"
    if unit == "pt":
        return f"{v * 100:+.2f} pt"
    return f"{v:+.4g}"


def _finite(d: dict) -> dict:
    """NaN and infinities as None (JSON has neither)."""
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (tuple, list)):
            return [fix(x) for x in v]
        return v
    return {k: fix(v) for k, v in d.items()}
