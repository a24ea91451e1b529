"""The durable outbox of notifications, on ClickHouse (``alert_outbox``, ``alert_deliveries``).

``alert_outbox`` is a ReplacingMergeTree keyed by ``(notification_id, channel)`` with version
``updated_at``; a status change is a new row with a later ``updated_at``, and every read uses
FINAL. An enqueued row is deterministic (``updated_at`` = the transition's time), so enqueueing a
notification again is a no-op and can never override a later status.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

__all__ = ["OutboxRow", "Outbox", "SUMMARY_SQL", "to_ms", "utc"]

_COLUMNS = ("notification_id", "channel", "alert_id", "event", "created_at", "updated_at", "status", "attempts",
            "next_attempt_at", "last_error", "payload")
_DELIVERY_COLUMNS = ("timestamp", "notification_id", "channel", "attempt", "outcome", "http_status", "error",
                     "duration_ms")
_MS = timedelta(milliseconds=1)
# fire before resolve when both were enqueued in the same millisecond
_EVENT_ORDER = "multiIf(event = 'fire', 0, event = 'resolve', 1, 2)"
_OLDEST_FIRST = f"created_at, {_EVENT_ORDER}, notification_id, channel"

SUMMARY_SQL = ("SELECT channel, status, count() AS notifications, min(created_at) AS oldest, "
               "max(attempts) AS max_attempts FROM alert_outbox FINAL GROUP BY channel, status "
               "ORDER BY channel, status")
"""The outbox now, per channel and status: ``notifications``, ``oldest`` (created), ``max_attempts``."""


def utc(t: datetime) -> datetime:
    """ClickHouse hands back naive times in UTC; everything here compares aware UTC times."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def to_ms(t: datetime) -> datetime:
    """Truncated to the column's millisecond precision, so times written and read back compare equal."""
    t = utc(t)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class OutboxRow:
    notification_id: str
    channel: str
    alert_id: str
    event: str
    created_at: datetime
    updated_at: datetime
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: datetime
    last_error: str
    payload: str

    @staticmethod
    def new(notification_id: str, channel: str, alert_id: str, event: str, at: datetime, payload: str) -> "OutboxRow":
        at = to_ms(at)
        return OutboxRow(notification_id, channel, alert_id, event, at, at, "pending", 0, at, "", payload)

    def values(self) -> list:
        return [getattr(self, c) for c in _COLUMNS]


class Outbox:
    def __init__(self, store):
        self.store = store

    def _rows(self, where: str, params: dict | None = None, order: str = _OLDEST_FIRST,
              limit: str = "") -> list[OutboxRow]:
        rows = self.store.query_rows(
            f"SELECT {', '.join(_COLUMNS)} FROM alert_outbox FINAL WHERE {where} ORDER BY {order}"
            + (f" LIMIT {limit}" if limit else ""), params)
        return [OutboxRow(*r[:4], utc(r[4]), utc(r[5]), r[6], int(r[7]), utc(r[8]), r[9], r[10]) for r in rows]

    def existing(self, notification_ids: list[str]) -> set[tuple[str, str]]:
        if not notification_ids:
            return set()
        rows = self.store.query_rows(
            "SELECT DISTINCT notification_id, channel FROM alert_outbox WHERE notification_id IN {ids:Array(String)}",
            {"ids": list(notification_ids)})
        return {(a, b) for a, b in rows}

    def enqueue(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """Insert the rows not in the outbox yet; returns those inserted."""
        have = self.existing(sorted({r.notification_id for r in rows}))
        new = [r for r in rows if (r.notification_id, r.channel) not in have]
        if new:
            token = "outbox:" + ",".join(f"{r.notification_id}/{r.channel}" for r in new)
            self.store.insert("alert_outbox", [r.values() for r in new], _COLUMNS,
                              settings={"insert_deduplication_token": token[:1000]})
        return new

    def pending(self, channels: list[str] | None = None, exclude: bool = False) -> list[OutboxRow]:
        """Every pending row, due or not, oldest first (fire before resolve); only those of
        ``channels`` when given (with ``exclude``: only those of every other channel)."""
        if channels is None:
            return self._rows("status = 'pending'")
        op = "NOT IN" if exclude else "IN"
        return self._rows(f"status = 'pending' AND channel {op} {{chs:Array(String)}}", {"chs": list(channels)})

    def dead(self, limit: int = 10) -> list[OutboxRow]:
        """The rows given up on, the latest ``limit`` of them, most recently updated first."""
        return self._rows("status = 'dead'", {"limit": int(limit)}, order="updated_at DESC",
                          limit="{limit:UInt32}")

    def get(self, notification_id: str, channel: str) -> OutboxRow | None:
        rows = self._rows("notification_id = {n:String} AND channel = {c:String}",
                          {"n": notification_id, "c": channel})
        return rows[0] if rows else None

    def update(self, row: OutboxRow, now: datetime, **changes) -> OutboxRow:
        """A new version of ``row`` (``status``, ``attempts``, ``next_attempt_at``, ``last_error``).
        Its ``updated_at`` is later than the row's, whatever the clock says."""
        updated_at = max(to_ms(now), row.updated_at + _MS)
        new = replace(row, updated_at=updated_at, **changes)
        if "next_attempt_at" in changes:
            new = replace(new, next_attempt_at=to_ms(new.next_attempt_at))
        self.store.insert("alert_outbox", [new.values()], _COLUMNS)
        return new

    def record_attempt(self, row: OutboxRow, at: datetime, attempt: int, outcome: str, http_status: int | None,
                       error: str, duration_ms: float) -> None:
        self.store.insert("alert_deliveries", [[to_ms(at), row.notification_id, row.channel, attempt, outcome,
                                                http_status, error[:2000], float(duration_ms)]], _DELIVERY_COLUMNS)

    def counts(self) -> dict[tuple[str, str], int]:
        """``{(channel, status): rows}`` over the whole outbox (:data:`SUMMARY_SQL`)."""
        return {(c, s): int(n) for c, s, n, *_ in self.store.query_rows(SUMMARY_SQL)}
