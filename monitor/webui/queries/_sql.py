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
