"""The audit log: one row per access to or change of the records, in ``audit_log`` (schema 0013).

What is recorded, and by whom:

===============  =====================================================  ===================================
action           when                                                   written by
===============  =====================================================  ===================================
``search``       a text search of prompts and completions               the Requests page's query
``open_request`` one request shown in full (prompt, completion, trace)  the Requests page's query
``pin_baseline`` a reference window pinned                              admin endpoint, ``monitor baseline``
``export``       rows exported (before the first byte is written)       admin endpoint, ``monitor export``
``erase``        one person's rows erased, or counted (``--dry-run``)   admin endpoint, ``monitor erase``
``test_alert``   a test notification sent                               admin endpoint, ``monitor alerts``
``run_checks``   the checks run by hand                                 admin endpoint, ``monitor check``
===============  =====================================================  ===================================

Scheduled check runs, ingest and the dashboards' aggregate pages are the monitor's own work and
are not entries. An erased identity is recorded as its SHA-256 (:func:`identity_digest`), never as
itself: the log proves an erasure without keeping who it was for.

:meth:`AuditLog.record` raises :class:`~monitor.errors.StoreError` when the row cannot be written;
an export is refused then (no record, no export), an erasure goes ahead and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Protocol

from monitor.errors import RejectedData, StoreError

__all__ = ["ACTIONS", "AUDIT_TABLE", "COLUMNS", "AuditSink", "AuditLog", "LogAudit", "identity_digest", "entries",
           "ORIGINS"]

log = logging.getLogger("monitor.audit")

AUDIT_TABLE = "audit_log"
COLUMNS = ("timestamp", "actor", "action", "target", "details", "origin", "address")
ACTIONS = ("search", "open_request", "pin_baseline", "export", "erase", "test_alert", "run_checks")
ORIGINS = ("dashboard", "admin", "cli")
MAX_TARGET_CHARS = 1000
"""A longer target (a pasted paragraph as a search term) is cut, with its length in the details."""


class AuditSink(Protocol):
    def record(self, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None,
               origin: str = "cli", address: str = "") -> None: ...


def _row(actor: str, action: str, target: str, details: dict[str, Any] | None, origin: str,
         address: str) -> list[Any]:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; known: {', '.join(ACTIONS)}")
    details = dict(details or {})
    target = str(target)
    if len(target) > MAX_TARGET_CHARS:
        details["target_chars"] = len(target)
        target = target[:MAX_TARGET_CHARS]
    return [datetime.now(timezone.utc), actor, action, target,
            json.dumps(details, default=str, ensure_ascii=False, sort_keys=True), origin, address]


class AuditLog:
    """Writes entries to ``audit_log`` through a writable :class:`~monitor.store.client.Store`."""

    def __init__(self, store: Any):
        self.store = store

    def record(self, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None,
               origin: str = "cli", address: str = "") -> None:
        """One entry, written now (raises StoreError when the store refuses or is away)."""
        row = _row(actor, action, target, details, origin, address)
        try:
            self.store.insert(AUDIT_TABLE, [row], COLUMNS)
        except RejectedData as exc:  # one string too odd for the column: still "not recorded"
            raise StoreError(f"could not write the audit entry: {exc}") from exc


class LogAudit:
    """Entries as JSON lines on the logger ``monitor.audit`` (INFO), where no writable store exists
    (``monitor dashboard`` over a read-only user without ``dashboard.audit_url``)."""

    def record(self, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None,
               origin: str = "cli", address: str = "") -> None:
        row = _row(actor, action, target, details, origin, address)
        log.info("audit %s", json.dumps(dict(zip(COLUMNS, row)), default=str, ensure_ascii=False))


def identity_digest(kind: str, value: str) -> str:
    """How an erased identity appears in the log: ``user:sha256:<hex>`` (``printf %s ID | sha256sum``
    finds it)."""
    return f"{kind}:sha256:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"


def entries(store: Any, start: datetime, end: datetime, actor: str | None = None, action: str | None = None,
            limit: int = 200) -> list[dict[str, Any]]:
    """The latest ``limit`` entries in ``[start, end)``, newest first, optionally of one actor / action."""
    where = ["timestamp >= {start:DateTime64(3, 'UTC')}", "timestamp < {end:DateTime64(3, 'UTC')}"]
    params: dict[str, Any] = {"start": start, "end": end, "limit": int(limit)}
    if actor:
        where.append("actor = {actor:String}")
        params["actor"] = actor
    if action:
        where.append("action = {action:String}")
        params["action"] = action
    rows = store.query_rows(f"SELECT {', '.join(COLUMNS)} FROM {AUDIT_TABLE} WHERE {' AND '.join(where)} "
                            "ORDER BY timestamp DESC LIMIT {limit:UInt32}", params)
    out = []
    for r in rows:
        d = dict(zip(COLUMNS, r))
        d["timestamp"] = d["timestamp"].replace(tzinfo=timezone.utc).isoformat() \
            if isinstance(d["timestamp"], datetime) and d["timestamp"].tzinfo is None else str(d["timestamp"])
        try:
            d["details"] = json.loads(d["details"] or "{}")
        except ValueError:
            pass
        out.append(d)
    return out
