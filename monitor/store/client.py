"""The one place that opens ClickHouse: chdb (in-process) or an HTTP(S) server.

Only :mod:`monitor.store` imports ``clickhouse_connect``; its exceptions are
translated here: :class:`~monitor.errors.RejectedData` when ClickHouse (or the
client serialising the insert) refused a value -- retrying the same rows can
never succeed -- else :class:`~monitor.errors.StoreError` (retryable).

chdb allows one process per data directory and one data directory per
process; :func:`connect` turns the engine's lock error into a message that
says which process to stop or which command to use instead.

Clients come from a small bounded pool per :class:`Store` (:data:`POOL_SIZE`),
each lent to one call (a query, an insert) and returned when it ends; no
thread keeps one. Memory stays flat however many threads call (Streamlit runs
every page view in a new thread), and at most that many calls run at once.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from monitor.config import StoreSettings
from monitor.errors import ConfigError, RejectedData, StoreError

__all__ = ["Store", "connect", "database_name", "POOL_SIZE"]

log = logging.getLogger("monitor.store")

_chdb_lock = threading.Lock()

POOL_SIZE = {"chdb": 4, "http": 8}
"""Clients per Store, at most: calls beyond this many at once wait for one to come back. chdb runs
one query per client at a time (clients run in parallel); an HTTP client is one connection pool."""
_BORROW_TIMEOUT_S = 600.0
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_DATA_ERROR_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,   # ATTEMPT_TO_READ_AFTER_EOF
    33,   # CANNOT_READ_ALL_DATA
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    407,  # DECIMAL_OVERFLOW
})
"""ClickHouse error codes that mean "this data", not "this moment": inserts failing with them are
:class:`RejectedData`."""
_CODE = re.compile(r"Code: (\d+)")
_OTHER_PATH = re.compile(r"already initialized with path '([^']*)', cannot connect with different path")
"""chdb's answer to a second data directory in one process (its EmbeddedServer is per process)."""


def _error_code(text: str) -> int | None:
    m = _CODE.search(text)
    return int(m.group(1)) if m else None


class Store:
    """A ClickHouse client bound to one database, safe to share between threads.

    Every call borrows a client from the store's pool (:data:`POOL_SIZE`: chdb 4, HTTP 8) for
    its duration only; ingest's inserts, the checks and the dashboard pages share the same few
    clients. chdb clients share the process's one engine.
    """

    def __init__(self, settings: StoreSettings, readonly: bool = False):
        self.settings = settings
        self.database = database_name(settings)
        self.embedded = settings.is_embedded
        self.readonly = readonly
        """Open without ``CREATE DATABASE`` (a read-only user could not run it); for the dashboards."""
        self._pool = _Pool(self._open, POOL_SIZE["chdb" if self.embedded else "http"])
        with self._pool.borrow():  # fail at start, not on the first insert
            pass

    def describe(self) -> str:
        if self.embedded:
            return f"chdb {self.settings.chdb_path()} (database {self.database})"
        p = urlsplit(self.settings.url)
        return f"{p.scheme}://{p.hostname}:{p.port or (8443 if p.scheme == 'https' else 8123)} (database {self.database})"

    def client(self) -> Any:
        """The raw clickhouse-connect client, for one call at a time: each method called on what this
        returns borrows a pooled client for that call only (``store.client().query_df(sql)``)."""
        return _Lent(self._pool)

    def _open(self) -> Any:
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import ClickHouseError

        s = self.settings
        try:
            if self.embedded:
                from monitor.extras import require
                require("embedded", "a chdb:// store (the ClickHouse engine in-process)")
                path = s.chdb_path()
                path.mkdir(parents=True, exist_ok=True)
                with _chdb_lock:
                    c = clickhouse_connect.get_client(dsn=f"chdb://{path}", chdb_options=s.chdb_options())
                if not self.readonly:
                    c.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
                c.database = self.database
                return c
            p = urlsplit(s.url)
            c = clickhouse_connect.get_client(
                interface=p.scheme, host=p.hostname or "localhost",
                port=p.port or (8443 if p.scheme == "https" else 8123),
                username=unquote(p.username or "default"), password=unquote(p.password or ""),
                connect_timeout=s.connect_timeout_s, send_receive_timeout=s.insert_timeout_s,
                autogenerate_session_id=False,
            )
            if not self.readonly:
                c.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            c.database = self.database
            return c
        except ClickHouseError as exc:
            text = str(exc)
            held = _OTHER_PATH.search(text) if self.embedded else None
            if held:
                raise ConfigError(
                    f"this process already runs the chdb engine on {held.group(1)}, so it cannot open "
                    f"{s.chdb_path()} (chdb allows one data directory per process, until every store on the "
                    "first is closed). Close the other store first, or open this one in another process.") from None
            if "Cannot lock file" in text or "Another server instance" in text or \
                    (self.embedded and _held_elsewhere(s.chdb_path())):
                raise ConfigError(
                    f"the chdb data directory {s.chdb_path()} is held by another process "
                    "(chdb allows one process per directory). Stop the other `monitor up`, "
                    "use another --data-dir, or point this command at the running instance.") from None
            raise StoreError(f"cannot reach ClickHouse at {self.describe()}: {_first_line(text)}") from None
        except OSError as exc:
            raise StoreError(f"cannot reach ClickHouse at {self.describe()}: {exc}") from None

    def command(self, sql: str, parameters: dict | None = None, settings: dict | None = None) -> Any:
        return self._call("command", sql, parameters=parameters, settings=settings)

    def query(self, sql: str, parameters: dict | None = None, settings: dict | None = None) -> Any:
        return self._call("query", sql, parameters=parameters, settings=settings)

    def query_rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self.query(sql, parameters).result_rows

    def insert(self, table: str, rows: list[list], columns: tuple[str, ...] | list[str],
               settings: dict | None = None) -> None:
        """Insert ``rows``; raises :class:`RejectedData` when a value was refused (by ClickHouse, or by
        the client while encoding it), :class:`StoreError` when the store is unavailable."""
        try:
            self._call("insert", table, rows, column_names=list(columns), settings=settings)
        except (struct.error, OverflowError, TypeError, ValueError, UnicodeError) as exc:
            # clickhouse-connect encodes the block before sending: a value that does not fit its column
            # fails here, and would fail the same way on every retry
            raise RejectedData(f"{table}: a value does not fit its column ({type(exc).__name__}: {exc})") \
                from exc

    def insert_native(self, table: str, block: bytes, columns: tuple[str, ...] | list[str],
                      settings: dict | None = None) -> None:
        """Insert ``block``, rows already in ClickHouse's Native format (:mod:`monitor.store.native`);
        raises as :meth:`insert` does."""
        self._call("raw_insert", table, column_names=list(columns), insert_block=block, settings=settings,
                   fmt="Native")

    def healthy(self) -> bool:
        """Whether the store answers a query now (tells a refused batch from an unavailable store)."""
        try:
            return self.query_rows("SELECT 1")[0][0] == 1
        except StoreError:
            return False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            with self._pool.borrow() as client:
                return getattr(client, method)(*args, **kwargs)
        except ClickHouseError as exc:
            text = _first_line(str(exc))
            if method in ("insert", "raw_insert") and _error_code(str(exc)) in _DATA_ERROR_CODES:
                raise RejectedData(f"ClickHouse refused the insert: {text}") from exc
            raise StoreError(f"ClickHouse {method} failed: {text}") from exc
        except OSError as exc:
            raise StoreError(f"ClickHouse {method} failed: {exc}") from exc

    def close(self) -> None:
        """Close every client this store opened (one in use is closed when its call ends); safe to
        call more than once. Calls after it raise :class:`StoreError`."""
        self._pool.close()

    def clients_open(self) -> int:
        """Clients open now (at most :data:`POOL_SIZE`)."""
        return self._pool.opened


class _Pool:
    """At most ``size`` clients, opened on demand and kept; each lent to one caller at a time."""

    def __init__(self, open_client: Callable[[], Any], size: int):
        self._open = open_client
        self._size = size
        self._idle: list[Any] = []
        self._all: list[Any] = []
        self._opening = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def opened(self) -> int:
        with self._cond:
            return len(self._all)

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        client = self._acquire()
        try:
            yield client
        finally:
            self._release(client)

    def _acquire(self) -> Any:
        deadline = time.monotonic() + _BORROW_TIMEOUT_S
        with self._cond:
            while True:
                if self._closed:
                    raise StoreError("the store is closed")
                if self._idle:
                    return self._idle.pop()
                if len(self._all) + self._opening < self._size:
                    self._opening += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(f"no store client came free within {_BORROW_TIMEOUT_S:.0f} s "
                                     f"({self._size} calls still running)")
                self._cond.wait(left)
        try:
            client = self._open()  # outside the lock: an HTTP handshake must not hold up the others
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._opening -= 1
            self._all.append(client)
        return client

    def _release(self, client: Any) -> None:
        with self._cond:
            if not self._closed:
                self._idle.append(client)
                self._cond.notify()
                return
            self._all = [c for c in self._all if c is not client]
        _close_quietly(client)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._all = [c for c in self._all if all(c is not i for i in idle)]
            self._cond.notify_all()
        for c in idle:
            _close_quietly(c)


class _Lent:
    """What :meth:`Store.client` returns: attribute access and method calls go to a pooled client,
    borrowed for that one access or call."""

    def __init__(self, pool: _Pool):
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        with self._pool.borrow() as client:
            value = getattr(client, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._pool.borrow() as c:
                return getattr(c, name)(*args, **kwargs)

        return call


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing is best effort
        pass


def database_name(settings: StoreSettings) -> str:
    """The database a Store uses: ``store.database``; for chdb also ``chdb:///path?database=NAME``
    (the path is the data directory, so the name can only come as a parameter); else the
    settings' default (the URL's path for http(s), ``monitor`` for chdb).

    Raises :class:`ConfigError` for any other parameter of a chdb URL, a name that is not an
    identifier, or a name that differs from ``store.database``: a URL that says more than is used
    stops the command instead of being silently ignored."""
    parts = urlsplit(settings.url)
    if not settings.is_embedded or not parts.query:
        return settings.database_name()
    params = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(params) - {"database"})
    if unknown:
        raise ConfigError(f"store url {settings.url!r}: chdb:// takes one parameter, ?database=NAME "
                          f"(not {', '.join(unknown)})")
    names = params.get("database") or []
    if len(names) != 1 or not _DATABASE_NAME.match(names[0]):
        raise ConfigError(f"store url {settings.url!r}: ?database= takes one name of letters, digits and _")
    if settings.database and settings.database != names[0]:
        raise ConfigError(f"store url {settings.url!r} names database {names[0]!r} but store.database is "
                          f"{settings.database!r}: give one of them")
    return names[0]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:500] if text.strip() else text


def _held_elsewhere(path: Path) -> bool:
    """Does another process hold the chdb directory? (ClickHouse flocks its ``status`` file; chdb's
    error does not always say so.)"""
    import fcntl

    try:
        with open(path / "status", "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def connect(settings: StoreSettings) -> Store:
    return Store(settings)
