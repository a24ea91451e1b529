"""Writing check results and their distributions to ClickHouse (check_results, check_distributions)."""

from __future__ import annotations

import json
from datetime import datetime

from monitor.checks.base import CheckContext, Result

__all__ = ["write_results", "distribution", "RESULT_COLUMNS"]

RESULT_COLUMNS = ("run_id", "timestamp", "check", "model", "group", "metric", "method", "window_start", "window_end",
                  "reference_start", "reference_end", "reference_kind", "value", "reference_value", "threshold",
                  "p_value", "status", "current_n", "reference_n", "details")
_DIST_COLUMNS = ("run_id", "timestamp", "check", "model", "group", "metric", "bucket", "bucket_order",
                 "reference_share", "current_share")


def _finite(v):
    return v if v is None or v == v and v not in (float("inf"), float("-inf")) else None


def distribution(details: dict) -> list[dict]:
    """``[{"bucket", "reference", "current"}]`` shares from a result's details: an explicit
    ``distribution`` (semantic clusters), a numeric ``histogram`` (edges and counts on the
    reference's bins) or categorical ``categories``."""
    if details.get("distribution"):
        return list(details["distribution"])
    h = details.get("histogram")
    if h and h.get("edges") and h.get("reference") is not None:
        edges, ref, cur = h["edges"], h["reference"], h["current"]
        rt, ct = sum(ref) or 1, sum(cur) or 1
        return [{"bucket": f"[{edges[i]:.4g}, {edges[i + 1]:.4g})", "reference": ref[i] / rt, "current": cur[i] / ct}
                for i in range(min(len(ref), len(cur), len(edges) - 1))]
    if details.get("categories"):
        return [{"bucket": c["value"], "reference": c["reference"], "current": c["current"]}
                for c in details["categories"]]
    return []


def write_results(store, run_id: str, at: datetime, ctx: CheckContext, results: list[Result]) -> None:
    """One row per result; the distributions behind a result (see :func:`distribution`) also go to
    check_distributions, one row per bucket, for the dashboards' reference-versus-current charts."""
    rows, dists = [], []
    group = ctx.scope.label()
    for r in results:
        details = dict(r.details)
        dist = distribution(details)
        rows.append([run_id, at, r.check, ctx.scope.model, group, r.metric, r.method, ctx.current.start,
                     ctx.current.end, ctx.reference.start, ctx.reference.end, ctx.reference.label,
                     _finite(r.value), _finite(r.reference_value), _finite(r.threshold), _finite(r.p_value),
                     r.status, int(r.current_n), int(r.reference_n),
                     json.dumps(details, default=str, ensure_ascii=False)])
        for i, b in enumerate(dist):
            dists.append([run_id, at, r.check, ctx.scope.model, group, r.metric, str(b.get("bucket")), i,
                          float(b.get("reference") or 0.0), float(b.get("current") or 0.0)])
    token = f"{run_id}:{ctx.scope.model}:{group}:{results[0].check if results else ''}"
    if rows:
        store.insert("check_results", rows, RESULT_COLUMNS, settings={"insert_deduplication_token": token})
    if dists:
        store.insert("check_distributions", dists, _DIST_COLUMNS,
                     settings={"insert_deduplication_token": token + ":dist"})
