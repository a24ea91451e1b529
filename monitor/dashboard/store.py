"""The dashboards' one way to the database: :func:`get_store`, a read-only view of a Store.

- Inside ``monitor up`` the Embedded app registers its own Store (:func:`register`) before
  Streamlit starts: same process, the one chdb handle.
- ``monitor dashboard --clickhouse URL`` opens a Store of its own, read-only, and registers it.
- ``streamlit run dashboards/app.py`` (development) opens one from the settings on first use.

What is enforced (see README "Dashboards"):

- Every query goes through :class:`ReadOnlyStore`, which refuses anything but one ``SELECT`` /
  ``WITH`` statement, and values only reach SQL as ``{name:Type}`` parameters.
- On a ClickHouse server the queries also carry ``readonly = 2`` unless the user is already
  read-only (the ``monitor_dashboard`` user of deploy/clickhouse/users.d is), so the server
  refuses writes itself. A standalone store is opened without ``CREATE DATABASE``.
- chdb is not given ``readonly``: its settings stick to the process's one session, so a
  read-only query would make the ingest writer's next insert fail. In-process the guard above is
  the enforcement.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

__all__ = ["ReadOnlyStore", "ReadOnlyError", "register", "unregister", "get_store", "options"]

log = logging.getLogger("monitor.dashboard")

_lock = threading.Lock()
_registered: "ReadOnlyStore | None" = None
_options: dict[str, Any] = {}
_COMMENT = re.compile(r"\s*(--[^\n]*\n|/\*.*?\*/)", re.S)
_QUERY_TIMEOUT_S = 30


class ReadOnlyError(PermissionError):
    """A dashboard tried to run something other than one SELECT."""


def _check(sql: str) -> None:
    text = sql
    while True:
        m = _COMMENT.match(text)
        if not m:
            break
        text = text[m.end():]
    head = text.lstrip().split(None, 1)[0].upper() if text.strip() else ""
    if head not in ("SELECT", "WITH"):
        raise ReadOnlyError(f"the dashboards only run SELECT queries (got {head or 'nothing'!r})")
    if ";" in text.rstrip().rstrip(";"):
        raise ReadOnlyError("the dashboards run one statement per query")


class ReadOnlyStore:
    """A read-only view of a :class:`monitor.store.client.Store`: ``query`` / ``query_rows`` only."""

    def __init__(self, store: Any):
        self._store = store
        self.database = store.database
        self.embedded = store.embedded
        self._settings: dict[str, Any] = {}
        self._may_set = True
        if not store.embedded:
            self._settings = {"max_execution_time": _QUERY_TIMEOUT_S}
            try:
                level = int(store.query_rows("SELECT getSetting('readonly')")[0][0])
            except Exception:  # an old server without getSetting: rely on the user's profile
                level = 1
            if level == 0:
                self._settings["readonly"] = 2
            else:
                self._settings = {}  # a readonly=1 user may not change any setting
                self._may_set = False

    def describe(self) -> str:
        return self._store.describe()

    def query(self, sql: str, parameters: dict | None = None, hints: dict | None = None) -> Any:
        """``hints``: settings that only tune speed (e.g. ``max_block_size``), left out where the user
        may not change settings."""
        _check(sql)
        settings = dict(self._settings)
        if hints and self._may_set:
            settings.update(hints)
        return self._store.query(sql, parameters, settings=settings or None)

    def query_rows(self, sql: str, parameters: dict | None = None, hints: dict | None = None) -> list[tuple]:
        return self.query(sql, parameters, hints).result_rows

    def tables(self) -> set[str]:
        """Tables of the store's database (to tell a missing table from an empty one)."""
        return {r[0] for r in self.query_rows(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": self.database})}


def register(store: Any, **opts: Any) -> ReadOnlyStore:
    """Make ``store`` (a Store, shared with the rest of the process) what pages read from;
    ``opts``: page options from the ``dashboard`` settings (``refresh_s``)."""
    global _registered
    ro = store if isinstance(store, ReadOnlyStore) else ReadOnlyStore(store)
    with _lock:
        _registered = ro
        _options.clear()
        _options.update(opts)
    return ro


def options() -> dict[str, Any]:
    return dict(_options)


def unregister() -> None:
    global _registered
    with _lock:
        _registered = None


def get_store() -> ReadOnlyStore:
    """The registered store; without one (``streamlit run`` by hand), one opened from the settings
    (``MONITOR_*`` environment, ``MONITOR_CONFIG``), once per process."""
    global _registered
    with _lock:
        if _registered is not None:
            return _registered
        from monitor.config import load
        from monitor.store.client import Store

        settings = load()
        store = Store(settings.store, readonly=True)
        log.info("dashboard store: %s (read-only)", store.describe())
        _registered = ReadOnlyStore(store)
        dash = getattr(settings, "dashboard", None)
        if dash is not None:
            _options.update(refresh_s=dash.refresh_s)
        return _registered
