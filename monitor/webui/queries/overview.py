"""Overview: traffic, tokens, errors, latency and TTFT quantiles per model."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import (
    EVENTS,
    ROLLUP_Q,
    bucket,
    bucket_seconds_in_range,
    events_where,
    frame,
    rollup_source,
)

__all__ = ["has_events", "first_event", "models", "traffic", "summary", "timeseries", "QUANTILES"]

QUANTILES = (0.5, 0.95, 0.99)
_Q = "quantiles(0.5, 0.95, 0.99)"


def has_events(store) -> bool:
    """Whether anything was ever stored (a metadata count: no scan)."""
    return int(store.query_rows(f"SELECT count() FROM {EVENTS}")[0][0]) > 0


def first_event(store, within_days: int = 30) -> datetime | None:
    """The time of the oldest event stored (None when there is none); one older than ``within_days``
    days reads as ``within_days`` days ago (the longest preset range).

    No time condition: ClickHouse answers ``min(timestamp)`` and ``count()`` of a whole table from
    its parts' metadata (the partition key's min/max), without reading a column (0.4-0.7 s over
    30 days of 10M rows with ``WHERE timestamp >= now() - 30 days``)."""
    rows = store.query_rows(f"SELECT count(), min(timestamp) FROM {EVENTS}")
    if not rows or not rows[0][0]:
        return None
    t = rows[0][1]
    t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    return max(t, datetime.now(timezone.utc) - timedelta(days=within_days))


@prefetchable
def models(store, f: Filters) -> list[str]:
    """Models with events in the range (for the sidebar's model filter)."""
    rows = store.query_rows(f"SELECT DISTINCT model FROM {EVENTS} WHERE timestamp >= {{start:DateTime64(9, 'UTC')}} "
                            "AND timestamp < {end:DateTime64(9, 'UTC')} ORDER BY model",
                            {"start": f.start, "end": f.end})
    return [r[0] for r in rows]


@prefetchable
def traffic(store, f: Filters) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Overview's numbers in one pass over the range: ``(summary, timeseries)`` as
    :func:`summary` and :func:`timeseries` describe them (one query, ``GROUPING SETS``: the rows are
    read once for the per-bucket, per-model and total aggregates)."""
    step = f.step
    rolled = rollup_source(store, f)
    if rolled is None:
        where, p = events_where(f)
        source, ts = f"{EVENTS} WHERE {where}", "timestamp"
        numbers = (f"count() AS requests, countIf(status_code = 'Error') AS errors, "
                   f"sum(ifNull(input_tokens, 0)) AS input_tokens, sum(ifNull(output_tokens, 0)) AS output_tokens, "
                   f"{_Q}(latency_ms) AS latency, {_Q}(ttft_ms) AS ttft")
    else:  # the rollups (ranges from 6 hours on): the same numbers, quantiles from sketches
        (source, p), ts = rolled, "minute"
        numbers = (f"sum(requests) AS requests, sum(errors) AS errors, sum(input_tokens_sum) AS input_tokens, "
                   f"sum(output_tokens_sum) AS output_tokens, {ROLLUP_Q}(latency_ms_q) AS latency, "
                   f"{ROLLUP_Q}(ttft_ms_q) AS ttft")
    df = frame(store.query(
        f"SELECT grouping(t) AS no_t, grouping(model) AS no_model, {bucket(ts)} AS t, model, {numbers} "
        f"FROM {source} GROUP BY GROUPING SETS ((t, model), (model), ()) "
        f"ORDER BY no_t DESC, no_model DESC, requests DESC, t, model", {**p, "step": step}))
    if df.empty or not int(df.loc[(df["no_t"] == 1) & (df["no_model"] == 1), "requests"].sum()):
        # GROUPING SETS gives an empty total row when nothing matched; keep "no rows" meaning "no data"
        empty = df.iloc[0:0].drop(columns=["no_t", "no_model"])
        return empty, empty
    for col in ("latency", "ttft"):
        for i, q in enumerate(QUANTILES):
            df[f"{col}_p{int(q * 100)}"] = [_q(v, i) for v in df[col]]
    df = df.drop(columns=["latency", "ttft"])

    summary = df[df["no_t"] == 1].drop(columns=["no_t", "t"]).reset_index(drop=True)
    summary["model"] = [None if total else m for total, m in zip(summary["no_model"], summary["model"])]
    summary = summary.drop(columns=["no_model"])
    secs = f.seconds
    summary["requests_per_s"] = summary["requests"] / secs
    summary["tokens_per_s"] = (summary["input_tokens"] + summary["output_tokens"]) / secs
    summary["output_tokens_per_s"] = summary["output_tokens"] / secs
    summary["error_rate"] = summary["errors"] / summary["requests"].where(summary["requests"] > 0)

    ts = df[df["no_t"] == 0].drop(columns=["no_t", "no_model"]).sort_values(["t", "model"]).reset_index(drop=True)
    ts["tokens"] = ts["input_tokens"] + ts["output_tokens"]
    ts = ts.drop(columns=["input_tokens", "output_tokens"])
    bsecs = bucket_seconds_in_range(ts, f, step)
    ts["requests_per_s"] = ts["requests"] / bsecs
    ts["tokens_per_s"] = ts["tokens"] / bsecs
    ts["error_rate"] = ts["errors"] / ts["requests"]
    ts["t"] = pd.to_datetime(ts["t"], utc=True)
    return summary, ts


@prefetchable
def summary(store, f: Filters) -> pd.DataFrame:
    """One row per model plus a total row (``model`` None): requests, rates over the range, error
    rate, latency and TTFT p50/p95/p99 in ms (quantiles like the SLO check: ClickHouse's
    ``quantiles``, exact below 8,192 values, a reservoir sample above; from 6 hours on, merged
    DDSketches of the rollups, within 1 % of the value of that rank)."""
    return traffic(store, f)[0]


@prefetchable
def timeseries(store, f: Filters) -> pd.DataFrame:
    """Per bucket and model: requests/s, tokens/s, error rate, latency and TTFT p50/p95/p99."""
    return traffic(store, f)[1]


def _q(v, i):
    if v is None or len(v) <= i:
        return None
    x = v[i]
    return None if x != x else float(x)
