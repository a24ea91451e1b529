"""Audit entries from the pages (README "Records governance"): who searched prompts and completions
for a term, and who opened a request in full. The query functions call :func:`searched` and
:func:`opened`; what they record goes to the sink :func:`register` set:

- inside ``monitor up``: ``audit_log`` of the process's own store;
- ``monitor dashboard``: ``audit_log`` through ``dashboard.audit_url`` when set, else the log
  (logger ``monitor.audit``: the dashboards' own ClickHouse user is read-only);
- nothing registered (``streamlit run`` by hand, tests calling the queries): the log.

A page reruns on every interaction, so one session records the same search or the same opened
request once per :data:`REPEAT_S`. A failed write is logged and the page goes on (it already
showed what it showed; refusing afterwards would protect nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from monitor.errors import MonitorError
from monitor.governance.actor import dashboard_actor, dashboard_address
from monitor.governance.audit import AuditLog, AuditSink, LogAudit

__all__ = ["register", "unregister", "searched", "opened", "REPEAT_S"]

log = logging.getLogger("monitor.audit")

REPEAT_S = 600.0
"""The same action on the same target by one session is recorded once per this many seconds."""
_SEEN = "_monitor_audit_seen"

_lock = threading.Lock()
_sink: AuditSink | None = None
_token = False


def register(target: Any, token: bool = False) -> None:
    """Where the pages' entries go: an :class:`AuditSink`, a writable Store (its ``audit_log``), or a
    read-only Store / None (the log). ``token``: the dashboards require ``dashboard.auth_token``, so
    a request that reached a page carried it (the actor is then ``dashboard-token``, or the user an
    authenticating proxy names)."""
    global _sink, _token
    if target is None or getattr(target, "readonly", False):
        sink: AuditSink = LogAudit()
        if target is not None:
            log.warning("the dashboards' store is read-only: audit entries of searches and opened requests go to "
                        "the log (logger monitor.audit); set dashboard.audit_url to keep them in audit_log")
    elif hasattr(target, "record"):
        sink = target
    else:
        sink = AuditLog(target)
    with _lock:
        _sink, _token = sink, bool(token)


def unregister() -> None:
    global _sink, _token
    with _lock:
        _sink, _token = None, False


def searched(f: Any) -> None:
    """A text search of prompts and completions (``f``: the page's Filters)."""
    term = (getattr(f, "search", "") or "").strip()
    if not term:
        return
    details = {"from": f.start, "to": f.end, "models": list(f.models), "status": getattr(f, "status", "all")}
    _record("search", term, details, key=(term, str(f.models)))


def opened(trace_id: str, span_id: str, near: Any = None) -> None:
    """One request shown in full."""
    _record("open_request", f"{trace_id}/{span_id}", {"timestamp": near} if near is not None else {})


def _record(action: str, target: str, details: dict[str, Any], key: Any = None) -> None:
    with _lock:
        sink, token = _sink, _token
    if sink is None:
        sink = LogAudit()
    if not _first_time(action, key if key is not None else target):
        return
    try:
        sink.record(dashboard_actor(token), action, target, details, origin="dashboard", address=dashboard_address())
    except MonitorError as exc:
        log.error("audit entry not written (%s %s): %s", action, target[:80], exc)


def _first_time(action: str, key: Any) -> bool:
    """False when this page session recorded ``(action, key)`` less than :data:`REPEAT_S` ago.
    Outside a page run (a test calling the query) every call counts."""
    try:
        import streamlit as st
        from streamlit.runtime.scriptrunner import get_script_run_ctx
        if get_script_run_ctx(suppress_warning=True) is None:
            return True
        seen = st.session_state.setdefault(_SEEN, {})
    except Exception:
        return True
    now = time.monotonic()
    k = (action, key)
    if now - seen.get(k, float("-inf")) < REPEAT_S:
        return False
    seen[k] = now
    if len(seen) > 1000:  # a long session: forget the oldest
        for old in sorted(seen, key=seen.get)[:500]:
            del seen[old]
    return True
