"""The feature-drift check: per feature, evidently's test and verdict from the windows' aggregates."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from monitor.checks.base import CheckContext, Result
from monitor.checks.feature_drift.features import FEATURES, Feature, FeatureType
from monitor.checks.feature_drift.queries import (
    DISPLAY_LEVELS, SAMPLE, SUMMARY_Q, UNIQ_PROBE, Bins, WindowQueries, table_columns)
from monitor.checks.feature_drift.stattests import (
    METHODS, UNSUPPORTED, counts_test, distance, ks_pvalue, mad_bound, select_method, sturges_edges)
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.config import ChecksSettings

__all__ = ["FeatureDriftCheck"]

log = logging.getLogger("monitor.checks.feature_drift")


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
    400 rows were flagged in ~22-28% of trials at alpha 0.05 (tests/test_feature_drift.py). And
    evidently picks it exactly when the reference is small (<= 1000 rows). ``"two_sample"``
    (default) computes Pearson's chi-square test of homogeneity on the 2 x k table instead
    (``scipy.stats.chi2_contingency``, no continuity correction): same family, calibrated.
    ``"evidently"`` reproduces evidently's p-value exactly. Either way evidently's p-value is in
    ``details["evidently_p_value"]``.
    """

    name = "feature_drift"

    def __init__(self, settings: ChecksSettings, *, features: list[str] | None = None, raw_limit: int = 5000,
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
        self.min_change: dict[str, float] = {}
        for fname, ov in (getattr(settings, "features", None) or {}).items():
            if fname not in FEATURES:
                raise ConfigError(f"checks.features.{fname}: unknown feature; known: {sorted(FEATURES)}")
            method, threshold = getattr(ov, "method", None), getattr(ov, "threshold", None)
            if method is not None:
                if method not in METHODS:
                    extra = (" (an evidently test that needs raw values; not computed on aggregates)"
                             if method in UNSUPPORTED else "")
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
            min_change = getattr(ov, "min_change", None)
            if min_change is not None:
                if FEATURES[fname].type != "numeric":
                    raise ConfigError(f"checks.features.{fname}.min_change applies to numeric features only "
                                      "(it is a relative move of the median)")
                self.min_change[fname] = float(min_change)
        self._columns: dict[tuple[int, str, str], set[str]] = {}

    def warm_up(self) -> None:
        """Import scipy's tests (and evidently's, used on small windows) now, not during a run."""
        modules = ["scipy.stats", "scipy.spatial.distance"]
        if self.raw_limit and importlib.util.find_spec("evidently") is not None:
            modules.append("evidently.legacy.calculations.stattests.registry")
        for module in modules:
            importlib.import_module(module)

    # -- run

    def _table_columns(self, ctx: CheckContext) -> set[str]:
        key = (id(ctx.store), ctx.store.database, ctx.table)
        if key not in self._columns:
            self._columns[key] = table_columns(ctx)
        return self._columns[key]

    def run(self, ctx: CheckContext) -> list[Result]:
        cols = self._table_columns(ctx)
        q = WindowQueries(ctx)
        feats = [f for f in self.features if all(c in cols for c in f.requires)]
        min_n = int(getattr(ctx.settings, "min_samples", getattr(self.settings, "min_samples", 100)))
        num = [f for f in feats if f.type == "numeric"]
        cat = [f for f in feats if f.type == "categorical"]
        rows_r, rows_c = q.window_rows()
        nstats = q.numeric_stats(num, rows_r, rows_c)
        ccounts = q.category_counts(cat)
        raw = None
        if self.raw_limit and rows_r <= self.raw_limit and rows_c <= self.raw_limit:
            raw = q.raw_values(feats)
        # every numeric feature's fine histogram in one query (not one query per feature)
        plans: dict[str, Result | _Plan] = {}
        for f in num:
            ctx.check_cancelled()
            plans[f.name] = self._plan(q, f, nstats[f.name], min_n)
        binned = [(f, plan) for f in num if isinstance(plan := plans[f.name], _Plan)]
        for (f, plan), bins in zip(binned, q.bins_many([(f, plan.edges) for f, plan in binned])):
            plan.bins = bins
        out = []
        for f in feats:
            ctx.check_cancelled()
            if f.type == "numeric":
                plan = plans[f.name]
                out.append(plan if isinstance(plan, Result) else self._numeric(q, f, nstats[f.name], plan, raw))
            else:
                out.append(self._categorical(f, ccounts[f.name], min_n, raw))
        return out

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

    def _plan(self, q: WindowQueries, f: Feature, st: dict, min_n: int) -> Result | _Plan:
        """The test for a numeric feature and the edges of its fine histogram (or: too few rows)."""
        r, c = st["r"], st["c"]
        n_r, n_c = r["n"], c["n"]
        if n_r < min_n or n_c < min_n or n_r == 0 or n_c == 0:
            return self._insufficient(f, n_r, n_c, min_n, {})
        ur, uc = set(r["uniq"]), set(c["uniq"])
        ref_small = len(ur) < UNIQ_PROBE
        distinct = len(ur | uc) if (ref_small and len(uc) < UNIQ_PROBE) else UNIQ_PROBE
        method, threshold, overridden = self._choose(f.name, "numeric", n_r, distinct)
        lo, hi = min(r["min"], c["min"]), max(r["max"], c["max"])

        # the fine histogram's edges: both windows' quantiles and extremes, the display edges, and
        # whatever the test needs on top
        display = np.unique(np.array([r["min"]] + [r["q"][i] for i in DISPLAY_LEVELS] + [r["max"]]))
        parts = [np.array(r["q"]), np.array(c["q"]), np.array([lo, hi, r["min"], r["max"], c["min"], c["max"]]),
                 display, np.array([np.nextafter(r["max"], np.inf)])]
        counts_path = method in ("chisquare", "z") or (method in ("jensenshannon", "psi", "kl_div") and ref_small)
        sturges = None
        if method in ("jensenshannon", "psi", "kl_div") and not ref_small:
            sturges = sturges_edges(lo, hi, n_r + n_c)
            parts.append(sturges)
        hell = None
        if method == "hellinger":
            hell = sturges_edges(lo, hi, q.distinct_union(f))
            parts.append(hell)
        ks_edges = None
        if method == "ks" and n_r <= self.ks_edge_limit:
            ks_edges = q.reference_values(f)
            if len(ks_edges) <= self.ks_edge_limit:
                parts.append(ks_edges)
            else:
                ks_edges = None
        edges = np.unique(np.concatenate(parts))
        edges = edges[np.isfinite(edges) & (edges >= lo)]
        return _Plan(method, threshold, overridden, edges, display, counts_path, sturges, hell, ks_edges)

    def _numeric(self, q: WindowQueries, f: Feature, st: dict, plan: _Plan, raw: dict | None) -> Result:
        r, c = st["r"], st["c"]
        n_r, n_c = r["n"], c["n"]
        method, threshold, overridden, bins = plan.method, plan.threshold, plan.overridden, plan.bins
        display, sturges, hell, ks_edges = plan.display, plan.sturges, plan.hell, plan.ks_edges
        assert bins is not None
        extra: dict[str, Any] = {}
        statistic: float | None
        p_value: float | None = None
        if plan.counts_path:
            ref_counts, cur_counts = q.value_counts(f)
            score, statistic, p_value = counts_test(method, ref_counts, cur_counts, n_r, n_c, self.chisquare)
            extra["binning"] = "values"
            if method == "chisquare":
                extra["evidently_p_value"] = counts_test(method, ref_counts, cur_counts, n_r, n_c)[0]
                extra["chisquare_form"] = self.chisquare
        elif method == "wasserstein":
            score, bound = self._wasserstein(bins, n_r, n_c, r["std"])
            extra.update(error_bound=bound, exact=False, approximation="histogram", bins=int(len(bins.lower)))
            if abs(score - threshold) <= bound and n_r + n_c <= self.exact_limit:
                _, w1 = q.cdf(f, n_r, n_c)
                score = w1 / max(r["std"], 0.001)
                extra.update(exact=True, error_bound=0.0, approximation="none (threshold within the bound)")
            statistic = score
        elif method == "ks":
            if ks_edges is not None:
                d = self._ks_from_bins(bins, n_r, n_c)
                extra["ks_d"] = "exact, reference values as bin edges"
            else:
                d, _ = q.cdf(f, n_r, n_c)
                extra["ks_d"] = "exact, cumulative counts over the sorted union in ClickHouse"
            p_value = ks_pvalue(d, n_r, n_c)
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
            score = statistic = distance(method, sr / n_r, sc / n_c)
            extra["binning"] = f"sturges ({len(sturges) - 1} bins)"
        score, statistic, p_value, drifted, engine = self._verdict(
            f, method, overridden, threshold, score, statistic, p_value, raw, extra)
        med_r, med_c = r["q"][SUMMARY_Q["p50"]], c["q"][SUMMARY_Q["p50"]]
        # None: from a zero median to another value (no relative measure: any move counts)
        change = abs(med_c - med_r) / abs(med_r) if med_r else (0.0 if med_c == med_r else None)
        extra["median_change"] = change
        floor = self.min_change.get(f.name)
        if floor is not None:
            extra["min_change"] = floor
            if drifted and change is not None and change < floor:
                drifted = False
                extra["below_min_change"] = True  # significant, but smaller than what counts
        details = {
            "type": "numeric", "reference_n": n_r, "current_n": n_c, "drift_score": score, "engine": engine,
            "histogram": self._display(bins, display, r["max"]),
            "reference": _summary(r), "current": _summary(c), **extra,
        }
        return Result(check=self.name, metric=f.name, status="fail" if drifted else "ok", value=statistic,
                      threshold=threshold, p_value=p_value, method=method, reference_value=r["mean"],
                      current_n=n_c, reference_n=n_r, details=details)

    @staticmethod
    def _wasserstein(b: Bins, n_r: int, n_c: int, std_r: float) -> tuple[float, float]:
        from scipy.stats import wasserstein_distance

        mr, mc = b.n_r > 0, b.n_c > 0
        u = b.s_r[mr] / b.n_r[mr]
        v = b.s_c[mc] / b.n_c[mc]
        u = np.clip(u, b.lo_r[mr], b.hi_r[mr])
        v = np.clip(v, b.lo_c[mc], b.hi_c[mc])
        w = wasserstein_distance(u, v, b.n_r[mr], b.n_c[mc])
        bound = float(np.sum(b.n_r[mr] / n_r * mad_bound(b.lo_r[mr], b.hi_r[mr], u))
                      + np.sum(b.n_c[mc] / n_c * mad_bound(b.lo_c[mc], b.hi_c[mc], v)))
        norm = max(float(std_r), 0.001)
        return float(w) / norm, bound / norm

    @staticmethod
    def _ks_from_bins(b: Bins, n_r: int, n_c: int) -> float:
        """sup |F_r - F_c| when every reference value is a bin edge (ref values sit at lower edges)."""
        cum_r = np.cumsum(b.n_r) - b.n_r
        cum_c = np.cumsum(b.n_c) - b.n_c
        fr = (cum_r + b.n_r) / n_r
        at_edge = np.abs(fr - (cum_c + b.eq_c) / n_c)
        before_next = np.abs(fr - (cum_c + b.n_c) / n_c)
        return float(max(at_edge.max(initial=0.0), before_next.max(initial=0.0)))

    @staticmethod
    def _display(b: Bins, edges: np.ndarray, ref_max: float) -> dict:
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
        score, statistic, p_value = counts_test(method, ref, cur, n_r, n_c, self.chisquare)
        extra: dict[str, Any] = {}
        if method == "chisquare":
            extra["evidently_p_value"] = counts_test(method, ref, cur, n_r, n_c)[0]
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


@dataclass
class _Plan:
    """A numeric feature's test, chosen from its stats, and what its histogram query needs."""

    method: str
    threshold: float
    overridden: bool
    edges: np.ndarray  # the fine histogram's (every edge below also is one)
    display: np.ndarray
    counts_path: bool  # the test reads exact value counts instead of bins
    sturges: np.ndarray | None
    hell: np.ndarray | None
    ks_edges: np.ndarray | None
    bins: Bins | None = None


def _summary(w: dict) -> dict:
    return {"n": w["n"], "mean": w["mean"], "std": w["std"], "min": w["min"], "max": w["max"],
            "quantiles": {k: w["q"][i] for k, i in SUMMARY_Q.items()},
            "quantiles_note": f"from a deterministic sample of <= ~{SAMPLE} rows (exact below that)"}
