"""Audit: who searched, opened, exported, erased (``audit_log``, schema 0013), for the Audit page.

Counts are ClickHouse aggregates; the list shows the latest :data:`LIST_ROWS` entries. The page's
time range is the sidebar's; models, status and search do not apply to the audit log.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import TS, bucket, frame

__all__ = ["TABLE", "LIST_ROWS", "available", "choices", "summary", "over_time", "entries"]

TABLE = "audit_log"
LIST_ROWS = 500


def available(store) -> bool:
    return TABLE in store.tables()


def _where(f: Filters, actors: Sequence[str] = (), actions: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    sql = [f"timestamp >= {{start:{TS}}}", f"timestamp < {{end:{TS}}}"]
    p: dict[str, Any] = {"start": f.start, "end": f.end}
    if actors:
        sql.append("actor IN {actors:Array(String)}")
        p["actors"] = list(actors)
    if actions:
        sql.append("action IN {actions:Array(String)}")
        p["actions"] = list(actions)
    return " AND ".join(sql), p


@prefetchable
def choices(store, f: Filters) -> tuple[list[str], list[str]]:
    """The actors and the actions with entries in the range (for the page's filters)."""
    where, p = _where(f)
    rows = store.query_rows(f"SELECT groupUniqArray(200)(actor), groupUniqArray(50)(action) FROM {TABLE} "
                            f"WHERE {where}", p)
    actors, actions = rows[0] if rows else ([], [])
    return sorted(actors), sorted(actions)


@prefetchable
def summary(store, f: Filters, actors: Sequence[str] = (), actions: Sequence[str] = ()) -> pd.DataFrame:
    """Entries per actor and action in the range, with the first and last time."""
    where, p = _where(f, actors, actions)
    return frame(store.query(
        f"SELECT actor, action, count() AS entries, uniqExact(target) AS targets, min(timestamp) AS first, "
        f"max(timestamp) AS last FROM {TABLE} WHERE {where} GROUP BY actor, action ORDER BY entries DESC, actor, "
        "action", p))


@prefetchable
def over_time(store, f: Filters, step: int, actors: Sequence[str] = (), actions: Sequence[str] = ()) -> pd.DataFrame:
    """Entries per action and bucket of ``step`` seconds (``t``, ``action``, ``entries``)."""
    where, p = _where(f, actors, actions)
    return frame(store.query(
        f"SELECT {bucket()} AS t, action, count() AS entries FROM {TABLE} WHERE {where} GROUP BY t, action "
        "ORDER BY t, action", {**p, "step": int(step)}))


@prefetchable
def entries(store, f: Filters, actors: Sequence[str] = (), actions: Sequence[str] = (),
            limit: int = LIST_ROWS) -> pd.DataFrame:
    """The latest ``limit`` entries, newest first."""
    where, p = _where(f, actors, actions)
    return frame(store.query(
        f"SELECT timestamp, actor, action, target, origin, address, details FROM {TABLE} WHERE {where} "
        "ORDER BY timestamp DESC LIMIT {limit:UInt32}", {**p, "limit": int(limit)}))
