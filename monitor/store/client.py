"""The one place that opens ClickHouse: chdb (in-process) or an HTTP(S) server.

Only :mod:`monitor.store` imports ``clickhouse_connect``; its exceptions are
translated here: :class:`~monitor.errors.RejectedData` when ClickHouse (or the
client serialising the insert) refused a value -- retrying the same rows can
never succeed -- else :class:`~monitor.errors.StoreError` (retryable).

chdb allows one process per data directory and one data directory per
process; :func:`connect` turns the engine's lock error into a message that
says which process to stop or which command to use instead.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from monitor.config import StoreSettings
from monitor.errors import ConfigError, RejectedData, StoreError

__all__ = ["Store", "connect"]

log = logging.getLogger("monitor.store")

_chdb_lock = threading.Lock()

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


def _error_code(text: str) -> int | None:
    m = _CODE.search(text)
    return int(m.group(1)) if m else None


class Store:
    """A ClickHouse client bound to one database, safe to share between threads.

    HTTP clients are created per thread (clickhouse-connect sessions are not
    concurrent); chdb clients share the process's one engine.
    """

    def __init__(self, settings: StoreSettings, readonly: bool = False):
        self.settings = settings
        self.database = settings.database_name()
        self.embedded = settings.is_embedded
        self.readonly = readonly
        """Open without ``CREATE DATABASE`` (a read-only user could not run it); for the dashboards."""
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.client()  # fail at start, not on the first insert

    def describe(self) -> str:
        if self.embedded:
            return f"chdb {self.settings.chdb_path()} (database {self.database})"
        p = urlsplit(self.settings.url)
        return f"{p.scheme}://{p.hostname}:{p.port or (8443 if p.scheme == 'https' else 8123)} (database {self.database})"

    def client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._open()
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

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
                    c = clickhouse_connect.get_client(dsn=f"chdb://{path}")
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

    def healthy(self) -> bool:
        """Whether the store answers a query now (tells a refused batch from an unavailable store)."""
        try:
            return self.query_rows("SELECT 1")[0][0] == 1
        except StoreError:
            return False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            return getattr(self.client(), method)(*args, **kwargs)
        except ClickHouseError as exc:
            text = _first_line(str(exc))
            if method == "insert" and _error_code(str(exc)) in _DATA_ERROR_CODES:
                raise RejectedData(f"ClickHouse refused the insert: {text}") from exc
            raise StoreError(f"ClickHouse {method} failed: {text}") from exc
        except OSError as exc:
            raise StoreError(f"ClickHouse {method} failed: {exc}") from exc

    def close(self) -> None:
        """Close every client this store opened (safe to call more than once)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # closing is best effort
                pass
        self._local = threading.local()


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
