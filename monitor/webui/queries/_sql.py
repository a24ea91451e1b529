"""Shared pieces of the dashboard queries: the parameterised WHERE of a filter, result frames.

Nothing from a user is ever formatted into SQL: values travel as ``{name:Type}`` parameters;
the only text put into SQL is chosen from constants in this package.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

from monitor.webui.filters import Filters

EVENTS = "inference_events"
TS = "DateTime64(9, 'UTC')"
ROLLUP = "inference_events_1m"
ROLLUP_10M = "inference_events_10m"
"""Per (minute, model) and per (ten minutes, model): counts, sums and DDSketches of inference_events
(schema 0016, the same columns in both; the quality counts from schema 0018), written by materialized
views as rows are inserted."""
ROLLUP_Q = "quantilesDDMerge(0.01, 0.5, 0.95, 0.99)"
"""Merges the rollups' sketches (the function must name the accuracy and levels they were built with)
into p50, p95 and p99."""


def events_where(f: Filters, *, status: bool = False, search: bool = False,
                 ts: str = "timestamp") -> tuple[str, dict[str, Any]]:
    """WHERE body over inference_events for ``f`` and its parameters (``start``, ``end``, ``models``,
    ``q``). ``status`` / ``search``: also apply those filters (the Requests page)."""
    sql = [f"{ts} >= {{start:{TS}}}", f"{ts} < {{end:{TS}}}"]
    params: dict[str, Any] = {"start": f.start, "end": f.end}
    if f.models:
        sql.append("model IN {models:Array(String)}")
        params["models"] = list(f.models)
    if status and f.status == "error":
        sql.append("status_code = 'Error'")
    elif status and f.status == "ok":
        sql.append("status_code != 'Error'")
    if search and f.search.strip():
        sql.append(SEARCH_SQL)
        params["q"] = like_pattern(f.search.strip())
    return " AND ".join(sql), params


def rollup_source(store: Any, f: Filters, needs: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """A subquery over the rollups holding exactly ``f``'s range and models, and its parameters, or
    None where the range must read the requests themselves.

    The rollups answer when the range starts and ends on whole minutes and its chart buckets are
    whole minutes (the presets from 6 hours on; custom ranges are whole days), so that every row
    they add up lies inside the range and inside one bucket, and the store has them (a cluster
    without schema 0016 keeps working from the rows; ``needs``: a column the caller reads, such as
    the quality counts of schema 0018, without which it reads the rows as well). Where the buckets
    are whole multiples of ten minutes (24 hours and longer), the ten-minute rows cover the middle
    of the range and the minute rows its ends: a 7-day range reads ~1,000 rows per model.

    Counts and sums are those of the rows; quantiles come from merged DDSketches (:data:`ROLLUP_Q`:
    within 1 % of the value of that rank), where the rows give ClickHouse's ``quantiles`` (exact up
    to 8,192 values, a reservoir sample above)."""
    if f.start.timestamp() % 60 or f.end.timestamp() % 60 or f.step % 60:
        return None
    if not store.has_table(ROLLUP_10M) or (needs is not None and not store.has_column(ROLLUP_10M, needs)):
        return None
    params: dict[str, Any] = {"start": f.start, "end": f.end}
    models = ""
    if f.models:
        models = " AND model IN {models:Array(String)}"
        params["models"] = list(f.models)
    minutes = f"minute >= {{start:{TS}}} AND minute < {{end:{TS}}}"
    lo = datetime.fromtimestamp(-(-f.start.timestamp() // 600) * 600, timezone.utc)
    hi = datetime.fromtimestamp(f.end.timestamp() // 600 * 600, timezone.utc)
    if f.step % 600 or lo >= hi:
        return f"(SELECT * FROM {ROLLUP} WHERE {minutes}{models})", params
    params.update(lo=lo, hi=hi)
    middle = f"SELECT * FROM {ROLLUP_10M} WHERE minute >= {{lo:{TS}}} AND minute < {{hi:{TS}}}{models}"
    if lo == f.start and hi == f.end:
        return f"({middle})", params
    return (f"({middle} UNION ALL SELECT * FROM {ROLLUP} WHERE ((minute >= {{start:{TS}}} AND minute < {{lo:{TS}}}) "
            f"OR (minute >= {{hi:{TS}}} AND minute < {{end:{TS}}})){models})"), params


SEARCH_SQL = ("(lowerUTF8(prompt) LIKE lowerUTF8({q:String}) "
              "OR lowerUTF8(completion) LIKE lowerUTF8({q:String}))")
"""The text search: a case-insensitive substring of the prompt or the completion (both sides lowered
by ClickHouse's ``lowerUTF8``). Written as ``lowerUTF8(col) LIKE`` so that the n-gram bloom filter
indexes on ``lowerUTF8(prompt)`` / ``lowerUTF8(completion)`` (schema 0010) can skip granules; an
index never changes the result, only what is read."""


def like_pattern(term: str) -> str:
    """``%term%`` for LIKE, with LIKE's wildcards (``%``, ``_``) and its escape (``\\``) in ``term``
    taken literally: the search box finds exactly what was typed."""
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def bucket(ts: str = "timestamp") -> str:
    """The chart bucket of a row (``{step:UInt32}`` seconds, UTC)."""
    return f"toDateTime(toStartOfInterval({ts}, toIntervalSecond({{step:UInt32}})), 'UTC')"


def frame(result: Any, columns: list[str] | None = None) -> pd.DataFrame:
    """The result as a DataFrame. ``columns``: the names to use when the result has none (chdb
    hands back no column names for an empty result), so an empty page still has its columns."""
    names = list(result.column_names) or list(columns or [])
    return pd.DataFrame(result.result_rows, columns=names)


def utc(t: Any) -> Any:
    """ClickHouse hands back naive UTC datetimes; make them aware."""
    if isinstance(t, datetime) and t.tzinfo is None:
        return t.replace(tzinfo=timezone.utc)
    return t


def bucket_seconds_in_range(df: pd.DataFrame, f: Filters, step: int, col: str = "t") -> pd.Series:
    """Seconds of each bucket inside the range (the first and last buckets are partial), for rates."""
    starts = pd.to_datetime(df[col], utc=True)
    lo = pd.Timestamp(f.start).tz_convert("UTC")
    hi = pd.Timestamp(f.end).tz_convert("UTC")
    ends = starts + pd.Timedelta(seconds=step)
    secs = (ends.where(ends < hi, hi) - starts.where(starts > lo, lo)).dt.total_seconds()
    return secs.clip(lower=1.0)


def nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v
