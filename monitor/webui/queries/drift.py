"""Drift: check results over time, reference versus current distributions, semantic clusters."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import TS, bucket, frame, nan_to_none

__all__ = ["latest_results", "scores_over_time", "distribution", "semantic"]


def _where(f: Filters, checks: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    sql = [f"timestamp >= {{start:{TS}}}", f"timestamp < {{end:{TS}}}"]
    p: dict[str, Any] = {"start": f.start, "end": f.end}
    if f.models:
        sql.append("model IN {models:Array(String)}")
        p["models"] = list(f.models)
    if checks:
        sql.append("check IN {checks:Array(String)}")
        p["checks"] = list(checks)
    return " AND ".join(sql), p


@prefetchable
def latest_results(store, f: Filters, checks: tuple[str, ...] = ()) -> pd.DataFrame:
    """The latest result in the range of every (model, group, check, metric)."""
    where, p = _where(f, checks)
    return frame(store.query(
        "SELECT model, group, check, metric, max(timestamp) AS at, argMax(status, timestamp) AS status, "
        "argMax(method, timestamp) AS method, argMax(value, timestamp) AS value, "
        "argMax(reference_value, timestamp) AS reference_value, argMax(threshold, timestamp) AS threshold, "
        "argMax(p_value, timestamp) AS p_value, argMax(current_n, timestamp) AS current_n, "
        "argMax(reference_n, timestamp) AS reference_n, argMax(reference_kind, timestamp) AS reference "
        f"FROM check_results WHERE {where} GROUP BY model, group, check, metric "
        "ORDER BY multiIf(status = 'fail', 0, status = 'warn', 1, status = 'ok', 2, 3), model, group, check, metric",
        p))


@prefetchable
def scores_over_time(store, f: Filters, check: str = "feature_drift", model: str | None = None,
                     group: str | None = None) -> pd.DataFrame:
    """Per bucket, model, group and metric: the last drift score (``value``) and its status;
    ``model`` / ``group``: only that one's (the page shows one model at a time)."""
    where, p = _where(f, (check,))
    if model is not None:
        where += " AND model = {model:String}"
        p["model"] = model
    if group is not None:
        where += " AND group = {group:String}"
        p["group"] = group
    df = frame(store.query(
        f"SELECT {bucket()} AS t, model, group, metric, argMax(value, timestamp) AS value, "
        "argMax(threshold, timestamp) AS threshold, argMax(status, timestamp) AS status, "
        "argMax(p_value, timestamp) AS p_value "
        f"FROM check_results WHERE {where} GROUP BY t, model, group, metric ORDER BY t, model, metric",
        {**p, "step": f.step}))
    if not df.empty:
        df["t"] = pd.to_datetime(df["t"], utc=True)
    return df


@prefetchable
def distribution(store, f: Filters, model: str, check: str, metric: str, group: str = "") -> pd.DataFrame:
    """Reference versus current share per bucket of the latest run of one result in the range."""
    p = {"start": f.start, "end": f.end, "model": model, "check": check, "metric": metric, "group": group}
    cond = (f"model = {{model:String}} AND check = {{check:String}} AND metric = {{metric:String}} "
            f"AND group = {{group:String}} AND timestamp >= {{start:{TS}}} AND timestamp < {{end:{TS}}}")
    return frame(store.query(
        f"SELECT bucket, reference_share, current_share FROM check_distributions WHERE {cond} "
        f"AND timestamp = (SELECT max(timestamp) FROM check_distributions WHERE {cond}) ORDER BY bucket_order", p))


@prefetchable
def semantic(store, f: Filters) -> list[dict[str, Any]]:
    """The latest semantic-drift result per (model, group, field) with its clusters (label, shares,
    change, example texts) from the result's details."""
    where, p = _where(f, ("semantic_drift",))
    rows = store.query_rows(
        "SELECT model, group, metric, max(timestamp), argMax(status, timestamp), argMax(value, timestamp), "
        "argMax(p_value, timestamp), argMax(current_n, timestamp), argMax(reference_n, timestamp), "
        f"argMax(details, timestamp) FROM check_results WHERE {where} GROUP BY model, group, metric "
        "ORDER BY model, group, metric", p)
    out = []
    for model, group, metric, at, status, value, p_value, cur_n, ref_n, details in rows:
        try:
            d = json.loads(details) if details else {}
        except ValueError:
            d = {}
        out.append({"model": model, "group": group, "field": metric, "at": at, "status": status,
                    "value": nan_to_none(value), "p_value": nan_to_none(p_value), "current_n": cur_n,
                    "reference_n": ref_n, "clusters": list(d.get("clusters") or []), "reason": d.get("reason", "")})
    return out
