"""The durable hand-off between the data plane and whoever drains it: a SQLite table in WAL mode.

Every accepted request is committed here (one transaction) before the
receiver answers 200; it is deleted only once its consumer made it durable
elsewhere: the Kafka forwarder after the broker's ack (``monitor sidecar``),
the store process's ingest after ClickHouse's insert (``monitor up``). So an
acknowledged span survives a broker outage, a crash of either process and a
restart. The writer and the reader may be different processes (SQLite's WAL
lets one write while others read; ``busy_timeout`` serialises the two
writers, append and delete): counts and sizes are kept in the database itself
(table ``stats``), updated in the same transaction as the rows, so both sides
see the same figures. Bounded by ``spool.max_bytes``: when full,
:meth:`Spool.append` raises :class:`~monitor.errors.Overloaded` and the
receiver answers 503 with Retry-After (the sender keeps the data and retries).

A reader marks the range it is working on before it acts (:meth:`mark` /
:meth:`marked`): after a crash between acting and deleting, the next reader
finds the mark and redoes exactly that range, so the work is repeated with the
same identity and deduplicated downstream instead of done twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from monitor.errors import Overloaded
from monitor.selfmetrics import SelfMetrics

__all__ = ["Spool", "SpooledMessage"]

log = logging.getLogger("monitor.spool")

SpooledMessage = tuple[int, str, bytes | None, bytes, float]
"""``(seq, topic, key, value, enqueued_at)``."""

_POLL_S = 0.02
"""How often a reader looks for rows another process committed while it waits (``PRAGMA data_version``)."""


class Spool:
    def __init__(self, path: Path, max_bytes: int, metrics: SelfMetrics, synchronous: str = "normal",
                 retry_after: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._appends = 0  # appends committed through this object: wakes wait() without a query
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA busy_timeout = 30000")
        # Requests are stored whole (hundreds of KiB): in 64 KiB pages a value spans a few pages
        # instead of ~100, so writing, reading and freeing it costs less than half the CPU. Takes
        # effect only on a new file (before WAL mode); an existing spool keeps its page size.
        self._db.execute("PRAGMA page_size = 65536")
        self._db.execute("PRAGMA journal_mode=WAL")
        # Debian's SQLite zeroes every freed page (SECURE_DELETE): for a spool that frees each value
        # once forwarded, that is another write of all it carried. FAST (upstream's default is OFF)
        # still clears what it can without extra I/O; freed pages are reused by the next appends.
        self._db.execute("PRAGMA secure_delete = FAST")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
                "key BLOB, value BLOB NOT NULL, enqueued_at REAL NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS stats (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
            if self._db.execute("SELECT count(*) FROM stats").fetchone()[0] == 0:
                count, size = self._db.execute(
                    "SELECT count(*), coalesce(sum(length(value)), 0) FROM spool").fetchone()
                self._db.executemany("INSERT INTO stats VALUES (?, ?)", [("count", count), ("bytes", size)])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.id: str = self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]
        """Stable identity of this spool; forwarded messages carry ``<id>:<seq>`` in a header."""
        self._full = False
        metrics.spool_capacity.set(max_bytes)
        count, size, _ = self.stats()
        self._gauges()
        if count:
            log.info("spool %s holds %d messages (%d bytes) from an earlier run; they go first",
                     self.path, count, size)

    # -- writer side --------------------------------------------------------------------------

    def append(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        """Commit ``(topic, key, value)`` messages atomically, or raise Overloaded if they do not fit."""
        size = sum(len(v) for _, _, v in messages)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = self._db.execute("SELECT value FROM stats WHERE key = 'bytes'").fetchone()[0]
                if held + size > self.max_bytes:
                    self._db.execute("ROLLBACK")
                    self._note_full(held)
                    raise Overloaded(f"spool full ({held} of {self.max_bytes} bytes)", retry_after=self.retry_after)
                self._db.executemany("INSERT INTO spool (topic, key, value, enqueued_at) VALUES (?, ?, ?, ?)",
                                     [(t, k, v, now) for t, k, v in messages])
                self._db.execute("UPDATE stats SET value = value + ? WHERE key = 'count'", (len(messages),))
                self._db.execute("UPDATE stats SET value = value + ? WHERE key = 'bytes'", (size,))
                self._db.execute("COMMIT")
            except Overloaded:
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._appends += 1
            self._added.notify_all()
        if self._full and held + size < self.max_bytes * 0.9:
            self._full = False
            self.metrics.spool_full.set(0)
            log.info("spool %s has room again (%d bytes); accepting", self.path, held + size)
        self.refresh_gauges()

    def _note_full(self, held: int) -> None:
        if not self._full:
            self._full = True
            self.metrics.spool_full.set(1)
            log.error("spool %s is full (%d of %d bytes); answering 503 until it drains. Check what reads it "
                      "(the broker, or the store process), or raise spool.max_bytes", self.path, held,
                      self.max_bytes)

    # -- reader side ----------------------------------------------------------------------------

    def head(self, limit: int, max_bytes: int, after: int = 0) -> list[SpooledMessage]:
        """The oldest messages (with ``seq > after``), in order, at most ``limit`` and about ``max_bytes``."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, topic, key, value, enqueued_at FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit))
            out: list[SpooledMessage] = []
            total = 0
            for row in cur:
                if out and total + len(row[3]) > max_bytes:
                    break
                out.append(row)
                total += len(row[3])
            return out

    def between(self, first: int, last: int) -> list[SpooledMessage]:
        """The messages with ``first <= seq <= last`` still in the spool, in order."""
        with self._lock:
            return list(self._db.execute(
                "SELECT seq, topic, key, value, enqueued_at FROM spool WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (first, last)))

    def wait(self, timeout: float, poll: float = _POLL_S) -> bool:
        """Block until something is spooled (by this or another process) or ``timeout``; True if the
        spool is non-empty.

        An append through this object wakes the wait at once; another process's commit is seen by
        looking at ``PRAGMA data_version`` (one cheap statement) every ``poll`` seconds, and the
        spool is only counted again when it changed. A reader whose writer is this process (the
        Kafka forwarder) can poll rarely: each timed wake costs CPU even when nothing happens."""
        deadline = time.monotonic() + timeout
        with self._lock:
            seen = self._appends
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if self._count() > 0:
                return True
        while True:
            left = deadline - time.monotonic()
            with self._lock:
                if self._appends == seen and left > 0:
                    self._added.wait(min(left, poll))
                now = self._db.execute("PRAGMA data_version").fetchone()[0]
                if self._appends != seen or now != version:
                    seen, version = self._appends, now
                    if self._count() > 0:
                        return True
            if left <= 0:
                return False

    def _count(self) -> int:
        """Messages held, as committed (by any process); the caller holds ``_lock``."""
        return self._db.execute("SELECT value FROM stats WHERE key = 'count'").fetchone()[0]

    def mark(self, name: str, first_seq: int, last_seq: int, **extra: int) -> None:
        """Record, before acting on it, the range ``[first_seq, last_seq]`` a reader is working on."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             (name, json.dumps({"first": first_seq, "last": last_seq, **extra})))

    def marked(self, name: str) -> dict | None:
        """The range an earlier reader marked and did not finish (deleted), else None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    # the Kafka forwarder's names for its mark
    def mark_in_flight(self, first_seq: int, last_seq: int, since_ms: int) -> None:
        """Record, before producing, which messages may reach Kafka without being deleted here
        (a crash between the broker's ack and :meth:`delete`). See :meth:`in_flight`."""
        self.mark("in_flight", first_seq, last_seq, since_ms=since_ms)

    def in_flight(self) -> dict | None:
        """The range marked by the last run if it did not finish deleting it, else None."""
        return self.marked("in_flight")

    def delete(self, done: list[SpooledMessage], clear_in_flight: bool = True, mark: str = "in_flight") -> None:
        """Forget messages their consumer made durable; with ``clear_in_flight``, drop the reader's
        ``mark`` in the same transaction (keep it when some sends failed: their outcome may be unknown)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if clear_in_flight:
                    self._db.execute("DELETE FROM meta WHERE key = ?", (mark,))
                seqs = [m[0] for m in done]
                removed = 0
                if seqs and seqs == list(range(seqs[0], seqs[0] + len(seqs))):
                    removed = self._db.execute("DELETE FROM spool WHERE seq BETWEEN ? AND ?",
                                               (seqs[0], seqs[-1])).rowcount
                elif seqs:
                    removed = sum(self._db.execute("DELETE FROM spool WHERE seq = ?", (s,)).rowcount for s in seqs)
                if removed:
                    size = sum(len(m[3]) for m in done)
                    self._db.execute("UPDATE stats SET value = max(0, value - ?) WHERE key = 'count'", (removed,))
                    self._db.execute("UPDATE stats SET value = max(0, value - ?) WHERE key = 'bytes'", (size,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        count, size, _ = self.stats()
        if self._full and size < self.max_bytes * 0.9:
            self._full = False
            self.metrics.spool_full.set(0)
        self.refresh_gauges()

    # -- figures -------------------------------------------------------------------------------

    def stats(self) -> tuple[int, int, float]:
        """``(messages, bytes, oldest_age_seconds)``, as committed (by any process)."""
        with self._lock:
            rows = dict(self._db.execute("SELECT key, value FROM stats"))
            oldest = self._db.execute("SELECT enqueued_at FROM spool ORDER BY seq LIMIT 1").fetchone()
        return rows.get("count", 0), rows.get("bytes", 0), (time.time() - oldest[0]) if oldest else 0.0

    def refresh_gauges(self) -> None:
        self._gauges()

    def _gauges(self) -> None:
        count, size, age = self.stats()
        self.metrics.spool_messages.set(count)
        self.metrics.spool_bytes.set(size)
        self.metrics.spool_oldest_age.set(age)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
