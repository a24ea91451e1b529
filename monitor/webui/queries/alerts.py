"""Alerts: what is firing, the history of fire / resolve events, the delivery log per channel.

The tables come from schema 0009 (monitor/alerts/); a store without them (an older schema, a
server whose cluster DDL predates it) reads as "no alerts", and :func:`available` says so.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from monitor.alerts.history import latest_sql, recent_sql
from monitor.alerts.outbox import SUMMARY_SQL
from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import TS, frame

__all__ = ["TABLES", "HISTORY_ROWS", "available", "firing", "counts", "history", "deliveries", "delivery_summary",
           "outbox"]

TABLES = ("alert_events", "alert_outbox", "alert_deliveries")
HISTORY_ROWS = 500
"""The history and delivery lists show this many rows at most; their totals come from :func:`counts`
and :func:`delivery_summary`."""


def available(store) -> set[str]:
    return store.tables() & set(TABLES)


def _models(f: Filters, p: dict[str, Any]) -> str:
    if not f.models:
        return ""
    p["models"] = list(f.models)
    return " AND model IN {models:Array(String)}"


def firing(store, f: Filters) -> pd.DataFrame:
    """Alerts whose latest event is ``fire`` (whatever the time range: firing means now)."""
    p: dict[str, Any] = {"models": list(f.models)} if f.models else {}
    df = frame(store.query(latest_sql(firing_only=True, models_param="models" if f.models else None), p))
    df = df.rename(columns={"at": "since"})
    return df[[c for c in ("alert_id", "rule", "severity", "model", "group", "since", "summary", "last_event")
               if c in df.columns]]


@prefetchable
def counts(store, f: Filters) -> dict[str, int]:
    """Alert events in the range, counted by ClickHouse: ``events``, ``fired``, ``resolved``."""
    p: dict[str, Any] = {"start": f.start, "end": f.end}
    cond = _models(f, p)
    rows = store.query_rows(
        "SELECT count(), countIf(event = 'fire'), countIf(event = 'resolve') FROM alert_events "
        f"WHERE timestamp >= {{start:{TS}}} AND timestamp < {{end:{TS}}}{cond}", p)
    events, fired, resolved = rows[0] if rows else (0, 0, 0)
    return {"events": int(events), "fired": int(fired), "resolved": int(resolved)}


@prefetchable
def history(store, f: Filters, limit: int = HISTORY_ROWS) -> pd.DataFrame:
    p: dict[str, Any] = {"start": f.start, "end": f.end, "limit": int(limit)}
    cond = _models(f, p)
    return frame(store.query(recent_sql(f"timestamp >= {{start:{TS}}} AND timestamp < {{end:{TS}}}{cond}"), p))


@prefetchable
def deliveries(store, f: Filters, channel: str | None = None, limit: int = HISTORY_ROWS) -> pd.DataFrame:
    p: dict[str, Any] = {"start": f.start, "end": f.end, "limit": int(limit)}
    cond = ""
    if channel:
        cond = " AND channel = {channel:String}"
        p["channel"] = channel
    return frame(store.query(
        "SELECT timestamp, channel, outcome, attempt, http_status, duration_ms, error, notification_id "
        f"FROM alert_deliveries WHERE timestamp >= {{start:{TS}}} AND timestamp < {{end:{TS}}}{cond} "
        "ORDER BY timestamp DESC LIMIT {limit:UInt32}", p))


@prefetchable
def delivery_summary(store, f: Filters) -> pd.DataFrame:
    """Per channel in the range: attempts, delivered, retries, dead, median duration, last error."""
    return frame(store.query(
        "SELECT channel, count() AS attempts, countIf(outcome = 'delivered') AS delivered, "
        "countIf(outcome = 'retry') AS retries, countIf(outcome = 'dead') AS dead, "
        "quantile(0.5)(duration_ms) AS median_ms, max(timestamp) AS last_attempt, "
        "argMaxIf(error, timestamp, error != '') AS last_error FROM alert_deliveries "
        f"WHERE timestamp >= {{start:{TS}}} AND timestamp < {{end:{TS}}} GROUP BY channel ORDER BY channel",
        {"start": f.start, "end": f.end}))


def outbox(store) -> pd.DataFrame:
    """Notifications per channel and status now (the outbox read with FINAL)."""
    return frame(store.query(SUMMARY_SQL))
