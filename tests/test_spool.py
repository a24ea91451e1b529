"""The spool on its own: how a reader waits for data, and what storing and freeing large values costs.

The forwarder (same process as the writer) is woken by the append itself, however long it
polls; a reader in another process (the store process of ``monitor up``) sees a commit by
polling. Values are whole requests of hundreds of KiB: a new spool stores them in 64 KiB pages,
an existing one keeps the page size it was created with, and both round-trip every byte.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from monitor.selfmetrics import SelfMetrics
from monitor.transport.spool import Spool


def _spool(path) -> Spool:
    return Spool(path, 1 << 30, SelfMetrics())


def test_an_append_in_this_process_wakes_a_waiting_reader_at_once(tmp_path):
    spool = _spool(tmp_path / "s.sqlite")
    assert spool.wait(0.05, poll=10) is False  # nothing there: the timeout, not the poll, ends the wait
    timer = threading.Timer(0.2, spool.append, [[("t", None, b"x" * 100)]])
    timer.start()
    t0 = time.monotonic()
    assert spool.wait(30, poll=30) is True
    assert time.monotonic() - t0 < 5  # woken by the append, not by a poll 30 s later
    timer.join()
    assert spool.stats()[:2] == (1, 100)
    spool.close()


def test_a_commit_by_another_connection_is_seen_by_polling(tmp_path):
    reader, writer = _spool(tmp_path / "s.sqlite"), _spool(tmp_path / "s.sqlite")  # as two processes do
    assert reader.id == writer.id
    assert reader.wait(0.1, poll=0.02) is False
    timer = threading.Timer(0.2, writer.append, [[("t", b"k", b"y" * 10), ("t", None, b"z")]])
    timer.start()
    t0 = time.monotonic()
    assert reader.wait(10, poll=0.02) is True
    assert time.monotonic() - t0 < 5
    timer.join()
    assert [(m[1], m[2], m[3]) for m in reader.head(10, 1 << 20)] == [("t", b"k", b"y" * 10), ("t", None, b"z")]
    reader.delete(reader.head(10, 1 << 20))
    assert writer.stats()[:2] == (0, 0)
    assert writer.wait(0.1, poll=0.02) is False  # a delete by the other side is no data
    reader.close()
    writer.close()


def _round_trip(spool: Spool, values: list[bytes]) -> None:
    for v in values:
        spool.append([("otlp_spans", None, v)])
    assert spool.stats()[:2] == (len(values), sum(map(len, values)))
    got = spool.head(1000, 1 << 30)
    assert [m[3] for m in got] == values
    spool.mark_in_flight(got[0][0], got[-1][0], 0)
    spool.delete(got)
    assert spool.stats()[:2] == (0, 0) and spool.in_flight() is None


def test_large_values_round_trip_and_freed_pages_are_reused(tmp_path):
    values = [bytes([i]) * (300_000 + 7 * i) for i in range(1, 21)]
    path = tmp_path / "new.sqlite"
    spool = _spool(path)
    assert spool._db.execute("PRAGMA page_size").fetchone()[0] == 65536
    _round_trip(spool, values)
    size = path.stat().st_size + (tmp_path / "new.sqlite-wal").stat().st_size
    for _ in range(3):  # the same load again fits in the pages the first one freed
        _round_trip(spool, values)
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size <= size
    spool.close()

    old = tmp_path / "old.sqlite"  # a spool created before: 4 KiB pages, kept as they are
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size = 4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
               "key BLOB, value BLOB NOT NULL, enqueued_at REAL NOT NULL)")
    db.execute("INSERT INTO spool (topic, key, value, enqueued_at) VALUES ('otlp_spans', NULL, ?, 0)", (b"a" * 5000,))
    db.commit()
    db.close()
    spool = _spool(old)
    assert spool._db.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert spool.stats()[:2] == (1, 5000)  # counted from the rows it found
    first = spool.head(10, 1 << 20)
    assert [m[3] for m in first] == [b"a" * 5000]
    spool.delete(first)
    _round_trip(spool, values)
    spool.close()
