"""Clients: usage per client (requests, tokens, cost, error and refusal rates, latency), the busiest
clients' requests over time, and the abuse verdicts naming a client.

A client is ``client_id`` (schema 0014): the keyed hash of its API key, else ``user:<id>``; requests
without one are listed as :data:`~monitor.checks.clients.ANONYMOUS`.
"""

from __future__ import annotations

import pandas as pd

from monitor.checks.clients import ANONYMOUS, FLAG_CLIENT, FLAG_SUMMARY, FLAGS_WHERE, USAGE_SELECT
from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import EVENTS, bucket, events_where, frame

__all__ = ["usage", "over_time", "verdicts", "ROWS"]

ROWS = 200
"""The usage table lists the busiest clients, at most this many (the total count comes apart)."""


@prefetchable
def usage(store, f: Filters, limit: int = ROWS) -> tuple[pd.DataFrame, int]:
    """``(per client, busiest first; how many clients in all)`` over the range and models."""
    where, p = events_where(f)
    df = frame(store.query(f"SELECT {USAGE_SELECT} FROM {EVENTS} WHERE {where} GROUP BY client "
                           "ORDER BY requests DESC, client LIMIT {limit:UInt32}",
                           {**p, "anon": ANONYMOUS, "limit": int(limit)}))
    total = store.query_rows(f"SELECT uniqExact(client_id) FROM {EVENTS} WHERE {where}", p)[0][0]
    return df, int(total)


@prefetchable
def over_time(store, f: Filters, clients: list[str]) -> pd.DataFrame:
    """Requests and tokens per bucket of each of ``clients`` (``t``, ``client``, ``requests``, ``tokens``)."""
    if not clients:
        return pd.DataFrame(columns=["t", "client", "requests", "tokens"])
    where, p = events_where(f)
    df = frame(store.query(
        f"SELECT {bucket()} AS t, if(client_id = '', {{anon:String}}, client_id) AS client, count() AS requests, "
        f"sum(ifNull(input_tokens, 0) + ifNull(output_tokens, 0)) AS tokens FROM {EVENTS} WHERE {where} "
        "AND client IN {clients:Array(String)} GROUP BY t, client ORDER BY t, client",
        {**p, "anon": ANONYMOUS, "clients": list(clients), "step": f.step}))
    if not df.empty:
        df["t"] = pd.to_datetime(df["t"], utc=True)
    return df


@prefetchable
def verdicts(store, f: Filters, limit: int = 200) -> pd.DataFrame:
    """The latest failing abuse results in the range: when, model, signal, client, the verdict's line,
    and its details (evidence and example prompts, as JSON text)."""
    p: dict = {"start": f.start, "end": f.end, "limit": int(limit)}
    models = ""
    if f.models:
        models = " AND model IN {models:Array(String)}"
        p["models"] = list(f.models)
    return frame(store.query(
        f"SELECT timestamp, model, metric AS signal, {FLAG_CLIENT} AS client, {FLAG_SUMMARY} AS summary, value, "
        f"details FROM check_results WHERE {FLAGS_WHERE}{models} ORDER BY timestamp DESC LIMIT {{limit:UInt32}}", p))
