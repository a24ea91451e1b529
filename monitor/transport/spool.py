"""The sidecar's durable buffer: a SQLite table in WAL mode, read in insertion order.

Every accepted request is committed here (one transaction) before the
receiver answers 200; the forwarder deletes messages only after Kafka
acknowledged them. So an acknowledged span survives a broker outage, a
sidecar crash and a restart. Bounded by ``spool.max_bytes``: when full,
:meth:`append` raises :class:`~monitor.errors.Overloaded` and the receiver
answers 503 with Retry-After (the sender keeps the data and retries).
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
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
            "key BLOB, value BLOB NOT NULL, enqueued_at REAL NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
        self.id: str = self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0]
        """Stable identity of this spool; forwarded messages carry ``<id>:<seq>`` in a header."""
        count, size, oldest = self._db.execute(
            "SELECT count(*), coalesce(sum(length(value)), 0), min(enqueued_at) FROM spool").fetchone()
        self._count, self._bytes = count, size
        self._oldest = oldest
        self._full = False
        metrics.spool_capacity.set(max_bytes)
        self._gauges()
        if count:
            log.info("spool %s holds %d messages (%d bytes) from an earlier run; they will be sent first",
                     self.path, count, size)

    def append(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        """Commit ``(topic, key, value)`` messages atomically, or raise Overloaded if they do not fit."""
        size = sum(len(v) for _, _, v in messages)
        now = time.time()
        with self._lock:
            if self._bytes + size > self.max_bytes:
                if not self._full:
                    self._full = True
                    self.metrics.spool_full.set(1)
                    log.error("spool %s is full (%d of %d bytes); answering 503 until Kafka drains it. "
                              "Check the broker, or raise spool.max_bytes", self.path, self._bytes, self.max_bytes)
                raise Overloaded(f"spool full ({self._bytes} of {self.max_bytes} bytes)",
                                 retry_after=self.retry_after)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO spool (topic, key, value, enqueued_at) VALUES (?, ?, ?, ?)",
                                     [(t, k, v, now) for t, k, v in messages])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += len(messages)
            self._bytes += size
            if self._oldest is None:
                self._oldest = now
            self._gauges()
            self._added.notify_all()

    def head(self, limit: int, max_bytes: int) -> list[SpooledMessage]:
        """The oldest messages, in order, at most ``limit`` of them and about ``max_bytes``."""
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, topic, key, value, enqueued_at FROM spool ORDER BY seq LIMIT ?", (limit,))
            out: list[SpooledMessage] = []
            total = 0
            for row in cur:
                if out and total + len(row[3]) > max_bytes:
                    break
                out.append(row)
                total += len(row[3])
            return out

    def wait(self, timeout: float) -> bool:
        """Block until something is spooled (or ``timeout``); True if the spool is non-empty."""
        with self._lock:
            if self._count == 0:
                self._added.wait(timeout)
            return self._count > 0

    def mark_in_flight(self, first_seq: int, last_seq: int, since_ms: int) -> None:
        """Record, before producing, which messages may reach Kafka without being deleted here
        (a crash between the broker's ack and :meth:`delete`). See :meth:`in_flight`."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('in_flight', ?)",
                             (json.dumps({"first": first_seq, "last": last_seq, "since_ms": since_ms}),))

    def in_flight(self) -> dict | None:
        """The range marked by the last run if it did not finish deleting it, else None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'in_flight'").fetchone()
        return json.loads(row[0]) if row else None

    def delete(self, done: list[SpooledMessage], clear_in_flight: bool = True) -> None:
        """Forget messages Kafka acknowledged; with ``clear_in_flight``, drop the in-flight mark in the
        same transaction (keep it when some sends failed: their outcome may be unknown)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            if clear_in_flight:
                self._db.execute("DELETE FROM meta WHERE key = 'in_flight'")
            seqs = [m[0] for m in done]
            if not seqs:
                pass
            elif seqs == list(range(seqs[0], seqs[0] + len(seqs))):
                self._db.execute("DELETE FROM spool WHERE seq BETWEEN ? AND ?", (seqs[0], seqs[-1]))
            else:
                self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
            self._db.execute("COMMIT")
            self._count -= len(done)
            self._bytes -= sum(len(m[3]) for m in done)
            row = self._db.execute("SELECT enqueued_at FROM spool ORDER BY seq LIMIT 1").fetchone()
            self._oldest = row[0] if row else None
            if self._full and self._bytes < self.max_bytes * 0.9:
                self._full = False
                self.metrics.spool_full.set(0)
                log.info("spool %s has room again (%d bytes); accepting", self.path, self._bytes)
            self._gauges()

    def stats(self) -> tuple[int, int, float]:
        """``(messages, bytes, oldest_age_seconds)``."""
        with self._lock:
            age = time.time() - self._oldest if self._oldest is not None else 0.0
            return self._count, self._bytes, age

    def refresh_gauges(self) -> None:
        with self._lock:
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.spool_messages.set(self._count)
        self.metrics.spool_bytes.set(self._bytes)
        self.metrics.spool_oldest_age.set(time.time() - self._oldest if self._oldest is not None else 0)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
