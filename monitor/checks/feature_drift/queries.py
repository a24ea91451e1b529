"""The feature-drift check's reads: aggregates of the reference and current windows, in ClickHouse.

One subquery (:meth:`WindowQueries.source`) holds both windows' rows, flagged ``_r`` / ``_c``, with the
feature expressions as ``f0..``; every read aggregates over it, so no raw window is ever loaded
(except :meth:`WindowQueries.raw_values` on small windows, for evidently's own test).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.checks.base import CheckContext
from monitor.checks.feature_drift.features import Feature

__all__ = ["WindowQueries", "Bins", "table_columns", "LEVELS", "LEVELS_N", "DISPLAY_LEVELS", "SAMPLE", "UNIQ_PROBE",
           "SUMMARY_Q"]

UNIQ_PROBE = 21
"""``groupUniqArray(21)``: enough to tell "<= 20 distinct values" (the binning rule) and "<= 5" (selection)."""

LEVELS_N = 4000
LEVELS = [i / LEVELS_N for i in range(1, LEVELS_N)] + [1e-4, 3e-4, 1 - 3e-4, 1 - 1e-4]
DISPLAY_BINS = 20
DISPLAY_LEVELS = [j * (LEVELS_N // DISPLAY_BINS) - 1 for j in range(1, DISPLAY_BINS)]
"""Indices in ``LEVELS`` of the 5%, 10%, ..., 95% quantiles."""
STATS_CHUNK = 8
SAMPLE = 32768
SUMMARY_Q = {f"p{q:02d}": q * LEVELS_N // 100 - 1 for q in (5, 25, 50, 75, 95)}


@dataclass
class Bins:
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


def table_columns(ctx: CheckContext) -> set[str]:
    """The columns of the checked table (features needing a missing column are skipped)."""
    rows = ctx.store.query_rows(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        {"db": ctx.store.database, "t": ctx.table})
    return {r[0] for r in rows}


class WindowQueries:
    """The reads of one check run over ``ctx``'s two windows."""

    def __init__(self, ctx: CheckContext):
        self.ctx = ctx

    def source(self, exprs: list[str], hashed: bool = False) -> tuple[str, dict[str, Any]]:
        """A subquery of both windows' rows: ``_r``/``_c`` (in which window), ``f0..``: the expressions."""
        wc, pc = self.ctx.where("current")
        wr, pr = self.ctx.where("reference")
        cols = "".join(f", {e} AS f{i}" for i, e in enumerate(exprs))
        if hashed:
            cols += ", span_id"
        sql = (f"(SELECT toUInt8({wr}) AS _r, toUInt8({wc}) AS _c{cols} FROM {self.ctx.table} "
               f"WHERE ({wc}) OR ({wr}))")
        return sql, {**pc, **pr}

    def window_rows(self) -> tuple[int, int]:
        src, params = self.source([])
        row = self.ctx.store.query_rows(f"SELECT countIf(_r), countIf(_c) FROM {src}", params)[0]
        return int(row[0]), int(row[1])

    def numeric_stats(self, feats: list[Feature], rows_r: int, rows_c: int
                       ) -> dict[str, dict]:
        """Per numeric feature and window: n, min, max, mean, std, <= 21 distinct values, quantiles.

        The quantiles are exact quantiles of a deterministic sample of ~``SAMPLE`` rows per window
        (:meth:`CheckContext.sample_filter`, by hash of the span id; every row when the window is
        smaller), sorted in ClickHouse; they only place the histogram's edges, whose counts are exact.
        One scan per ``STATS_CHUNK`` features; the ``-If`` form is ~2x faster than ``GROUP BY`` window.
        """
        out: dict[str, dict] = {}
        levels = (f"arrayConcat(arrayMap(i -> i / {LEVELS_N}, range(1, {LEVELS_N})), "
                  f"[{', '.join(repr(x) for x in LEVELS[LEVELS_N - 1:])}])")
        cond = {w: w if n <= SAMPLE else f"{w} AND {self.ctx.sample_filter(SAMPLE / n)}"
                for w, n in (("_r", rows_r), ("_c", rows_c))}
        for start in range(0, len(feats), STATS_CHUNK):
            chunk = feats[start:start + STATS_CHUNK]
            src, params = self.source([f.sql for f in chunk], hashed=True)
            aggs, samples = [], []
            for i in range(len(chunk)):
                for w in ("_r", "_c"):
                    aggs += [f"countIf(f{i}, {w})", f"minIf(f{i}, {w})", f"maxIf(f{i}, {w})", f"avgIf(f{i}, {w})",
                             f"stddevPopStableIf(f{i}, {w})", f"groupUniqArrayIf({UNIQ_PROBE})(f{i}, {w})",
                             f"arraySort(groupArrayIf(f{i}, {cond[w]})) AS s{i}{w}"]
                    samples.append(f"s{i}{w}")
            quant = ", ".join(f"arrayMap(q -> {s}[toUInt32(greatest(1, ceil(q * length({s}))))], _lv)"
                              for s in samples)
            k = 6
            outer = ", ".join(f"a{j}" for j in range(len(aggs)) if j % 7 != 6)
            inner = ", ".join(a if j % 7 == 6 else f"{a} AS a{j}" for j, a in enumerate(aggs))
            row = self.ctx.store.query_rows(
                f"WITH {levels} AS _lv SELECT {outer}, {quant} FROM (SELECT {inner} FROM {src})", params)[0]
            nq = len(samples)
            stats, qs = row[:-nq], row[-nq:]
            for i, f in enumerate(chunk):
                st = {}
                for j, w in enumerate(("r", "c")):
                    n, lo, hi, mean, std, uniq = stats[(2 * i + j) * k: (2 * i + j + 1) * k]
                    q = qs[2 * i + j]
                    st[w] = {"n": int(n), "min": num(lo), "max": num(hi), "mean": num(mean), "std": num(std),
                             "uniq": list(uniq or []),
                             "q": [num(v) for v in q] if n else [float("nan")] * len(LEVELS)}
                out[f.name] = st
        return out

    def category_counts(self, feats: list[Feature]) -> dict[str, tuple[dict, dict]]:
        out: dict[str, tuple[dict, dict]] = {f.name: ({}, {}) for f in feats}
        if not feats:
            return out
        src, params = self.source([f.sql for f in feats])
        pairs = ", ".join(f"({i}, f{i})" for i in range(len(feats)))
        rows = self.ctx.store.query_rows(
            f"SELECT kv.1 AS k, kv.2 AS v, countIf(_r), countIf(_c) FROM "
            f"(SELECT _r, _c, arrayJoin([{pairs}]) AS kv FROM {src}) WHERE v IS NOT NULL GROUP BY k, v", params)
        for k, v, nr, nc in rows:
            ref, cur = out[feats[k].name]
            if nr:
                ref[v] = int(nr)
            if nc:
                cur[v] = int(nc)
        return out

    def raw_values(self, feats: list[Feature]) -> dict[str, tuple[list, list]] | None:
        if importlib.util.find_spec("evidently") is None:
            return None
        src, params = self.source([f.sql for f in feats])
        cols = ", ".join(f"f{i}" for i in range(len(feats)))
        rows = self.ctx.store.query_rows(f"SELECT _r, _c, {cols} FROM {src}", params)
        out: dict[str, tuple[list, list]] = {}
        for i, f in enumerate(feats):
            out[f.name] = ([r[2 + i] for r in rows if r[0] and r[2 + i] is not None],
                           [r[2 + i] for r in rows if r[1] and r[2 + i] is not None])
        return out

    def value_counts(self, f: Feature) -> tuple[dict, dict]:
        src, params = self.source([f.sql])
        rows = self.ctx.store.query_rows(
            f"SELECT f0, countIf(_r), countIf(_c) FROM {src} WHERE f0 IS NOT NULL GROUP BY f0", params)
        return ({float(v): int(a) for v, a, _ in rows if a}, {float(v): int(b) for v, _, b in rows if b})

    def bins_many(self, items: list[tuple[Feature, np.ndarray]]) -> list[Bins]:
        """Each feature's fine histogram over its own edges, all in one query.

        Per bin (values rounded down to the feature's edges) and window: count, sum, min, max, and how
        many values sit on the lower edge. One ``UNION ALL`` branch per feature (``roundDown`` wants a
        constant array), which ClickHouse runs side by side: a small window pays one query's overhead
        instead of one per feature, a large one the same scans as before."""
        if not items:
            return []
        branches, params = [], {}
        for i, (f, edges) in enumerate(items):
            src, p = self.source([f.sql])
            params.update(p)
            params[f"e{i}"] = [float(e) for e in edges]
            branches.append(
                f"SELECT toUInt16({i}) AS k, roundDown(v, {{e{i}:Array(Float64)}}) AS b, "
                "toFloat64(countIf(_r)), toFloat64(sumIf(v, _r)), toFloat64(minIf(v, _r)), toFloat64(maxIf(v, _r)), "
                "toFloat64(countIf(_r AND v = b)), toFloat64(countIf(_c)), toFloat64(sumIf(v, _c)), "
                "toFloat64(minIf(v, _c)), toFloat64(maxIf(v, _c)), toFloat64(countIf(_c AND v = b)) "
                f"FROM (SELECT _r, _c, assumeNotNull(f0) AS v FROM {src} WHERE f0 IS NOT NULL) GROUP BY b")
        rows = self.ctx.store.query_rows(
            "SELECT * FROM (" + " UNION ALL ".join(branches) + ") ORDER BY k, b", params)
        a = np.array(rows, dtype=np.float64).reshape(-1, 12)  # k, then the bin's 11 columns
        return [Bins(*(a[a[:, 0] == i, 1:].T)) for i in range(len(items))]

    def reference_values(self, f: Feature) -> np.ndarray:
        src, params = self.source([f.sql])
        rows = self.ctx.store.query_rows(f"SELECT DISTINCT f0 FROM {src} WHERE _r AND f0 IS NOT NULL", params)
        return np.array(sorted(r[0] for r in rows), dtype=np.float64)

    def cdf(self, f: Feature, n_r: int, n_c: int) -> tuple[float, float]:
        """Exact (K-S D, Wasserstein W1) from the sorted union of values, in ClickHouse."""
        src, params = self.source([f.sql])
        params = {**params, "nr": n_r, "nc": n_c}
        row = self.ctx.store.query_rows(
            "SELECT max(abs(d)), sum(abs(d) * (nxt - v)) FROM ("
            " SELECT v, cr / {nr:Float64} - cc / {nc:Float64} AS d,"
            "  leadInFrame(v, 1, v) OVER (ORDER BY v ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS nxt FROM ("
            "  SELECT v, sum(r) OVER w AS cr, sum(c) OVER w AS cc FROM ("
            f"   SELECT assumeNotNull(f0) AS v, countIf(_r) AS r, countIf(_c) AS c FROM {src}"
            "    WHERE f0 IS NOT NULL GROUP BY v)"
            "  WINDOW w AS (ORDER BY v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)))", params)[0]
        return float(row[0]), float(row[1])

    def distinct_union(self, f: Feature) -> int:
        src, params = self.source([f.sql])
        return int(self.ctx.store.query_rows(f"SELECT uniqExact(f0) FROM {src}", params)[0][0])


def num(v: Any) -> float:
    return float("nan") if v is None else float(v)
