"""Requests: a filtered list, one request's full record and its trace's spans."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pandas as pd

from monitor.webui import audit as _audit
from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import EVENTS, TS, events_where, frame, utc

__all__ = ["Listing", "requests", "count", "listing", "detail", "spans"]

PREVIEW_CHARS = 200
COUNT_CAP = 10_000
"""With a text search, matches are counted up to this many (the count stops reading there)."""
_SEARCH_STEPS = (timedelta(hours=1), timedelta(hours=6), timedelta(days=1), timedelta(days=7))


@prefetchable
def requests(store, f: Filters, limit: int = 200) -> pd.DataFrame:
    """The latest ``limit`` requests matching every filter (model, status, time, text in the prompt
    or completion, case-insensitive), newest first, prompt and completion cut for the list."""
    where, p = events_where(f, status=True, search=True)
    return frame(store.query(
        "SELECT timestamp, model, status_code AS status, error_type, latency_ms, ttft_ms, input_tokens, "
        f"output_tokens, finish_reason, leftUTF8(prompt, {PREVIEW_CHARS}) AS prompt_preview, "
        f"leftUTF8(completion, {PREVIEW_CHARS}) AS completion_preview, trace_id, span_id "
        f"FROM {EVENTS} WHERE {where} ORDER BY timestamp DESC LIMIT {{limit:UInt32}}", {**p, "limit": int(limit)}))


@prefetchable
def count(store, f: Filters, cap: int | None = None) -> int:
    """Requests matching every filter; with ``cap``, counting stops there (no full scan for a
    common search term)."""
    where, p = events_where(f, status=True, search=True)
    if cap is None:
        return int(store.query_rows(f"SELECT count() FROM {EVENTS} WHERE {where}", p)[0][0])
    # Small blocks, so that the LIMIT stops reading soon after the cap: with the default 65k-row
    # blocks this count took 0.44-0.8 s instead of 0.25-0.29 s for a phrase in 3 % of 7 days'
    # requests (bench/dashboard.py); full scans are as fast either way.
    return int(store.query_rows(f"SELECT count() FROM (SELECT 1 FROM {EVENTS} WHERE {where} LIMIT {{cap:UInt32}})",
                                {**p, "cap": int(cap)}, hints={"max_block_size": 2048})[0][0])


class Listing(NamedTuple):
    rows: pd.DataFrame
    count: int
    exact: bool
    """False when ``count`` stopped at :data:`COUNT_CAP`."""
    searched_from: datetime | None = None
    """Set when a text search stopped at its time budget: only ``[searched_from, end)`` was read."""


@prefetchable
def listing(store, f: Filters, limit: int = 200, budget_s: float | None = None) -> Listing:
    """The Requests page's list.

    Without a text search this is :func:`requests` and an exact :func:`count` (both read only the
    ordering columns). With one, the text of every request in the range may have to be read, so the
    range is searched newest first in growing windows (the last hour, 6 hours, day, week, the rest)
    until ``limit`` rows are found: a common term stops in the first window; a rare one reads the
    whole range once, and then its count is exact for free. A common term's count is capped at
    :data:`COUNT_CAP` (``exact`` False).

    ``budget_s``: do not start a window that, at the pace of the window before it, would end the
    search past this many seconds; ``searched_from`` then says how far back it got (the page offers
    to search the rest). None searches the whole range."""
    if not f.search.strip():
        rows = requests(store, f, limit)
        return Listing(rows, count(store, f) if len(rows) >= limit else len(rows), True)
    _audit.searched(f)  # records governance: who searched prompts and completions for a term (audit_log)
    parts: list[pd.DataFrame] = []
    hi, t0, stopped, pace = f.end, time.monotonic(), None, None
    for step in (*_SEARCH_STEPS, None):
        lo = f.start if step is None else max(f.start, f.end - step)
        if lo >= hi:
            continue
        span_s = (hi - lo).total_seconds()
        if budget_s is not None and pace is not None \
                and time.monotonic() - t0 + pace * span_s > budget_s:
            stopped = hi
            break
        have = sum(len(x) for x in parts)
        t = time.monotonic()
        got = requests(store, replace(f, start=lo, end=hi), limit - have)
        # seconds per second of range, from the latest (widest) window; a cached window counts what
        # it cost when it ran, so an answer from the cache does not promise a fast next window
        cost = store.last_cost() if hasattr(store, "last_cost") else time.monotonic() - t
        pace = cost / span_s
        if len(got):
            parts.append(got)
        hi = lo
        if have + len(got) >= limit or lo <= f.start:
            break
    rows = pd.concat(parts, ignore_index=True) if parts else requests(store, f, 0)
    if len(rows) < limit:
        return Listing(rows, len(rows), True, stopped)
    n = count(store, f, cap=COUNT_CAP)
    return Listing(rows, n, n < COUNT_CAP)


def detail(store, trace_id: str, span_id: str, near: datetime | None = None) -> dict[str, Any] | None:
    """Every column of one request (``attributes`` as a dict). ``near``: its timestamp as the listing
    showed it, when known: the lookup then reads one day's partition around it instead of the trace
    and span id bloom filters of the whole table (0.3 s on 10M rows on a first run)."""
    cond = "trace_id = {t:String} AND span_id = {s:String}"
    p: dict[str, Any] = {"t": trace_id, "s": span_id}
    if near is not None:
        cond += f" AND timestamp >= {{lo:{TS}}} AND timestamp <= {{hi:{TS}}}"
        near = utc(pd.Timestamp(near).to_pydatetime())
        p.update(lo=near - timedelta(seconds=1), hi=near + timedelta(seconds=1))
    res = store.query(f"SELECT * FROM {EVENTS} WHERE {cond} LIMIT 1", p)
    if not res.result_rows:
        return None
    _audit.opened(trace_id, span_id, near)  # records governance: who opened a request in full (audit_log)
    return dict(zip(res.column_names, res.result_rows[0]))


def spans(store, trace_id: str) -> pd.DataFrame:
    """The spans of one trace (otel_traces), in start order, with offsets from the trace's start."""
    bounds = store.query_rows("SELECT min(Start), max(End) FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}",
                              {"t": trace_id})
    p: dict[str, Any] = {"t": trace_id}
    cond = "TraceId = {t:String}"
    if bounds and bounds[0][0] is not None and bounds[0][0].year > 1970:
        # The companion table narrows the time range, so the main table reads a few parts only.
        cond += (" AND toDateTime(Timestamp) >= {lo:DateTime} - INTERVAL 1 SECOND"
                 " AND toDateTime(Timestamp) <= {hi:DateTime} + INTERVAL 1 SECOND")
        p.update(lo=bounds[0][0], hi=bounds[0][1])
    df = frame(store.query(
        "SELECT Timestamp AS start, SpanName AS name, ServiceName AS service, SpanKind AS kind, "
        "Duration / 1e6 AS duration_ms, StatusCode AS status, StatusMessage AS status_message, SpanId AS span_id, "
        f"ParentSpanId AS parent_span_id, SpanAttributes AS attributes FROM otel_traces WHERE {cond} "
        "ORDER BY Timestamp, SpanId", p))
    if not df.empty:
        t0 = df["start"].min()
        df.insert(1, "offset_ms", [(t - t0).total_seconds() * 1000 for t in df["start"]])
        df["attributes"] = [json.dumps(dict(a), ensure_ascii=False, sort_keys=True) for a in df["attributes"]]
    return df
