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

Every query's result is kept in the process's :class:`~monitor.webui.cache.ResultCache` for as
long as its time range's bucket (:func:`monitor.webui.filters.fresh_seconds`), and reported to
the page run's timing (:mod:`monitor.webui.timing`). The queries of pages in use are run again as
their bucket turns, before the next view asks (:mod:`monitor.webui.prefetch`, ``dashboard.prefetch_s``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime
from typing import Any

from monitor.webui import cache as _cache
from monitor.webui import timing
from monitor.webui.prefetch import Prefetcher

__all__ = ["ReadOnlyStore", "ReadOnlyError", "register", "unregister", "get_store", "options", "ttl_of"]

log = logging.getLogger("monitor.webui")

_lock = threading.Lock()
_registered: "ReadOnlyStore | None" = None
_options: dict[str, Any] = {}
_COMMENT = re.compile(r"\s*(--[^\n]*\n|/\*.*?\*/)", re.S)
_QUERY_TIMEOUT_S = 30
_DEFAULT_TTL_S = 10.0
"""How long a result without a time range (a table list, what is firing now) is reused."""


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

    def __init__(self, store: Any, prefetch_s: float = 900.0):
        self._store = store
        self.database = store.database
        self.embedded = store.embedded
        self._settings: dict[str, Any] = {}
        self._may_set = True
        self.cache = _cache.ResultCache()
        self.prefetcher = Prefetcher(idle_s=prefetch_s)
        """Runs the queries of pages in use again as their time bucket turns (see :mod:`monitor.webui.prefetch`)."""
        self._local = threading.local()
        self._seen: set[str] = set()
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

    def query(self, sql: str, parameters: dict | None = None, hints: dict | None = None,
              ttl_s: float | None = None) -> Any:
        """``hints``: settings that only tune speed (e.g. ``max_block_size``), left out where the user
        may not change settings. ``ttl_s``: how long the result may be reused (default: the bucket
        of the query's ``start``/``end`` parameters, see :func:`ttl_of`; 0: run it every time).

        The result has ``column_names`` and ``result_rows`` (shared between callers: read only)."""
        _check(sql)
        settings = dict(self._settings)
        if hints and self._may_set:
            settings.update(hints)
        ttl = ttl_of(parameters) if ttl_s is None else ttl_s
        t = time.perf_counter()
        if ttl > 0 and _cache.enabled():
            key = (sql, _cache.freeze(parameters or {}), _cache.freeze(settings))
            result, hit = self.cache.get_or_run(
                key, ttl, lambda: self._store.query(sql, parameters, settings=settings or None))
            self._local.cost = result.seconds
        else:
            result, hit = self._store.query(sql, parameters, settings=settings or None), False
            self._local.cost = time.perf_counter() - t
        timing.note_query(time.perf_counter() - t, hit)
        return result

    def query_rows(self, sql: str, parameters: dict | None = None, hints: dict | None = None,
                   ttl_s: float | None = None) -> list[tuple]:
        return self.query(sql, parameters, hints, ttl_s).result_rows

    def last_cost(self) -> float:
        """What this thread's latest query took in ClickHouse (for a cached answer: when it ran), in
        seconds: a time budget's pace is measured with this, not with how fast the cache answered."""
        return getattr(self._local, "cost", 0.0)

    def tables(self) -> set[str]:
        """Tables of the store's database (to tell a missing table from an empty one)."""
        return {r[0] for r in self.query_rows(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": self.database})}


    def has_column(self, table: str, column: str) -> bool:
        """Whether ``table`` of the store's database has ``column``. Once seen, remembered (the
        monitor never drops a column)."""
        key = f"{table}.{column}"
        if key not in self._seen and self.query_rows(
                "SELECT count() FROM system.columns WHERE database = {db:String} AND table = {t:String} "
                "AND name = {c:String}", {"db": self.database, "t": table, "c": column})[0][0]:
            self._seen.add(key)
        return key in self._seen

    def has_table(self, name: str) -> bool:
        """Whether the store's database has table ``name``. Once seen, remembered: the monitor never
        drops a table, and a page run does not ask again."""
        if name not in self._seen and name in self.tables():
            self._seen.add(name)
        return name in self._seen


def ttl_of(parameters: dict | None) -> float:
    """How long a result may be reused: the freshness bucket of its ``start``..``end`` range
    (:func:`~monitor.webui.filters.fresh_seconds`), else :data:`_DEFAULT_TTL_S`."""
    from monitor.webui.filters import fresh_seconds

    p = parameters or {}
    start, end = p.get("start"), p.get("end")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return float(fresh_seconds(end - start))
    return _DEFAULT_TTL_S


def register(store: Any, **opts: Any) -> ReadOnlyStore:
    """Make ``store`` (a Store, shared with the rest of the process) what pages read from;
    ``opts``: page options from the ``dashboard`` settings (``refresh_s``)."""
    global _registered
    ro = store if isinstance(store, ReadOnlyStore) else ReadOnlyStore(store, opts.get("prefetch_s", 900.0))
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
        if _registered is not None:
            _registered.prefetcher.stop()
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
        dash = getattr(settings, "dashboard", None)
        _registered = ReadOnlyStore(store, dash.prefetch_s if dash is not None else 900.0)
        if dash is not None:
            _options.update(refresh_s=dash.refresh_s)
        return _registered
