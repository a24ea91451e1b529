"""Overview: traffic, tokens, errors, latency and TTFT quantiles per model."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from monitor.dashboard.filters import Filters
from monitor.dashboard.queries._sql import EVENTS, bucket, bucket_seconds_in_range, events_where, frame

__all__ = ["has_events", "first_event", "models", "summary", "timeseries", "QUANTILES"]

QUANTILES = (0.5, 0.95, 0.99)
_Q = "quantiles(0.5, 0.95, 0.99)"


def has_events(store) -> bool:
    """Whether anything was ever stored (a metadata count: no scan)."""
    return int(store.query_rows(f"SELECT count() FROM {EVENTS}")[0][0]) > 0


def first_event(store, within_days: int = 30) -> datetime | None:
    """The time of the oldest event of the last ``within_days`` days (None when there is none)."""
    rows = store.query_rows(f"SELECT count(), min(timestamp) FROM {EVENTS} "
                            "WHERE timestamp >= now64(9) - toIntervalDay({d:UInt16})", {"d": int(within_days)})
    if not rows or not rows[0][0]:
        return None
    t = rows[0][1]
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def models(store, f: Filters) -> list[str]:
    """Models with events in the range (for the sidebar's model filter)."""
    rows = store.query_rows(f"SELECT DISTINCT model FROM {EVENTS} WHERE timestamp >= {{start:DateTime64(9, 'UTC')}} "
                            "AND timestamp < {end:DateTime64(9, 'UTC')} ORDER BY model",
                            {"start": f.start, "end": f.end})
    return [r[0] for r in rows]


def summary(store, f: Filters) -> pd.DataFrame:
    """One row per model plus a total row (``model`` None): requests, rates over the range, error
    rate, latency and TTFT p50/p95/p99 in ms (quantiles like the SLO check: ClickHouse's
    ``quantiles``, exact below 8,192 values, a reservoir sample above)."""
    where, p = events_where(f)
    df = frame(store.query(
        f"SELECT grouping(model) AS is_total, model, count() AS requests, "
        f"countIf(status_code = 'Error') AS errors, "
        f"sum(ifNull(input_tokens, 0)) AS input_tokens, sum(ifNull(output_tokens, 0)) AS output_tokens, "
        f"{_Q}(latency_ms) AS latency, {_Q}(ttft_ms) AS ttft "
        f"FROM {EVENTS} WHERE {where} GROUP BY GROUPING SETS ((model), ()) "
        f"ORDER BY is_total, requests DESC, model", p))
    if df.empty:
        return df
    df["model"] = [None if t else m for t, m in zip(df["is_total"], df["model"])]
    df = df.drop(columns=["is_total"])
    secs = f.seconds
    df["requests_per_s"] = df["requests"] / secs
    df["tokens_per_s"] = (df["input_tokens"] + df["output_tokens"]) / secs
    df["output_tokens_per_s"] = df["output_tokens"] / secs
    df["error_rate"] = df["errors"] / df["requests"].where(df["requests"] > 0)
    for col in ("latency", "ttft"):
        for i, q in enumerate(QUANTILES):
            df[f"{col}_p{int(q * 100)}"] = [_q(v, i) for v in df[col]]
    df = df.drop(columns=["latency", "ttft"])
    # GROUPING SETS gives no total row when nothing matched; keep "no rows" meaning "no data".
    return df if int(df["requests"].sum()) else df.iloc[0:0]


def timeseries(store, f: Filters) -> pd.DataFrame:
    """Per bucket and model: requests/s, tokens/s, error rate, latency and TTFT p50/p95/p99."""
    where, p = events_where(f)
    step = f.step
    df = frame(store.query(
        f"SELECT {bucket()} AS t, model, count() AS requests, countIf(status_code = 'Error') AS errors, "
        f"sum(ifNull(input_tokens, 0)) + sum(ifNull(output_tokens, 0)) AS tokens, "
        f"{_Q}(latency_ms) AS latency, {_Q}(ttft_ms) AS ttft "
        f"FROM {EVENTS} WHERE {where} GROUP BY t, model ORDER BY t, model", {**p, "step": step}))
    if df.empty:
        return df
    secs = bucket_seconds_in_range(df, f, step)
    df["requests_per_s"] = df["requests"] / secs
    df["tokens_per_s"] = df["tokens"] / secs
    df["error_rate"] = df["errors"] / df["requests"]
    for col in ("latency", "ttft"):
        for i, q in enumerate(QUANTILES):
            df[f"{col}_p{int(q * 100)}"] = [_q(v, i) for v in df[col]]
    df["t"] = pd.to_datetime(df["t"], utc=True)
    return df.drop(columns=["latency", "ttft"])


def _q(v, i):
    if v is None or len(v) <= i:
        return None
    x = v[i]
    return None if x != x else float(x)
