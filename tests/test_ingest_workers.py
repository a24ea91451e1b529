"""Ingest's worker processes (monitor/ingest/prepare.py): a batch prepared in chunks, here and in spawned
workers, encoded as Native blocks and laid end to end, stores exactly what the rows path stores; a refused
value, an undecodable message and a worker that dies are handled as without workers, with counts.

The comparison runs the golden corpus (every GenAI dialect, odd values, a 1 MB attribute: see
test_ingest_golden.py) through both paths into two databases of the same chdb directory and compares
every column of every row as text. Items whose times were past DateTime64's end get the time of ingest
(normalisation's rule), which differs between two ingests by design: those columns are compared for the
other rows only, and the fixed rows are counted on both sides.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from test_ingest_golden import golden_requests
from test_ingest_ranges import _request

from monitor.config import StoreSettings
from monitor.errors import RejectedData
from monitor.ingest import prepare
from monitor.ingest.prepare import Message, PrepareWorkers, chunk_ids, shares, split
from monitor.ingest.stage import IngestStage
from monitor.selfmetrics import SelfMetrics
from monitor.store.client import Store
from monitor.store.migrate import migrate
from monitor.store.writer import Writer

_TIMES = {"otel_traces": ("Timestamp", "Duration", "Events.Timestamp"),
          "inference_events": ("timestamp",)}
_FIXED = {"otel_traces": "mapContains(SpanAttributes, 'monitor.fixed')",
          "inference_events": "mapContains(attributes, 'monitor.fixed')"}
_ORDER = {"otel_traces": "SpanId", "inference_events": "span_id"}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """The test batches are small: cut them into chunks of any size, so that workers get some."""
    monkeypatch.setattr(prepare, "MIN_CHUNK_BYTES", 1)


@pytest.fixture(scope="module")
def workers():
    w = PrepareWorkers(1, quality=True)
    yield w
    w.close()


def _store(settings, name: str) -> Store:
    s = Store(StoreSettings(url=settings.store.url, database=f"{settings.store.database}_{name}"))
    migrate(s, 3650)  # the corpus is dated a year back: the default retention would drop it
    return s


def _messages(bodies: list[bytes], tag: str) -> list[Message]:
    return [Message("traces", b, f"{tag}:{i}") for i, b in enumerate(bodies)]


def _table(store: Store, table: str) -> tuple[list[tuple], list[tuple], int]:
    """(rows with sound times, every column as text; those rows without their time columns; fixed count)"""
    sound = store.query_rows(f"SELECT * APPLY toString FROM {table} WHERE NOT {_FIXED[table]} "
                             f"ORDER BY {_ORDER[table]}")
    times = ", ".join(f"`{c}`" for c in _TIMES[table])
    fixed = store.query_rows(f"SELECT * EXCEPT ({times}) APPLY toString FROM {table} WHERE {_FIXED[table]} "
                             f"ORDER BY {_ORDER[table]}")
    return sound, fixed, len(fixed)


def test_workers_store_what_the_rows_path_stores(settings, workers):
    bodies = golden_requests()
    rows_db, split_db, ahead_db = (_store(settings, n) for n in ("rows", "split", "ahead"))
    stop = threading.Event()
    plain = IngestStage(Writer(rows_db, SelfMetrics()), SelfMetrics())
    r0 = plain.run(_messages(bodies, "a"), "t:1", stop)
    # the batch split between this process and the worker, and (as a source does with the next full
    # batch) handed to the worker ahead of the write, with this process's share prepared at the write
    with_workers = IngestStage(Writer(split_db, SelfMetrics()), SelfMetrics(), workers=workers)
    before = workers.submitted
    r1 = with_workers.run(_messages(bodies, "a"), "t:1", stop)
    ahead_stage = IngestStage(Writer(ahead_db, SelfMetrics()), SelfMetrics(), workers=workers)
    pending = ahead_stage.ahead(_messages(bodies, "a"))
    assert pending is not None and len(pending.futures) == 1 and sum(pending.sizes) == len(bodies)
    r2 = ahead_stage.run(_messages(bodies, "a"), "t:1", stop, pending)
    assert workers.submitted == before + 2 and workers.restarts == 0
    assert r0.rows == r1.rows == r2.rows > 400 and r0.dead == r1.dead == r2.dead == []
    for table in ("otel_traces", "inference_events"):
        want = _table(rows_db, table)
        assert want[2] > 50 and len(want[0]) > 50  # the corpus has both kinds
        assert _table(split_db, table) == want, table
        assert _table(ahead_db, table) == want, table
    # the rollups the views build from the blocks agree too
    q = "SELECT model, minute, requests, errors, input_tokens_sum FROM inference_events_1m FINAL ORDER BY ALL"
    assert split_db.query_rows(q) == rows_db.query_rows(q) != []


def test_a_batch_lands_once_whoever_prepared_it_before(store, workers):
    """A batch written again after a crash may meet another number of workers (a changed setting, a
    worker that died) or another share for this process: its blocks, hence its deduplication, are the
    same (ClickHouse's id for a token depends on how many blocks the insert holds)."""
    bodies = [_request([f"s{k}-{i}" for i in range(30)], 100_000 * k) for k in range(12)]
    stop = threading.Event()
    alone = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False)
    helped = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False, workers=workers)
    alone.run(_messages(bodies, "a"), "t:once", stop)
    helped.run(_messages(bodies, "a"), "t:once", stop)
    helped._write_ratio = 0.05  # another share for this process when the batch is handed over ahead
    helped.run(_messages(bodies, "a"), "t:once", stop, helped.ahead(_messages(bodies, "a")))
    helped.run(_messages(bodies, "a"), "t:twice", stop)
    alone.run(_messages(bodies, "a"), "t:twice", stop)
    assert store.query_rows("SELECT count(), uniqExact(SpanId) FROM otel_traces")[0] == (720, 360)
    assert store.query_rows("SELECT count() FROM inference_events")[0][0] == 0  # not model requests


def test_split_keeps_order_and_follows_the_weights():
    ms = [Message("traces", b"x" * (10 + i % 3), str(i)) for i in range(30)]
    for weights in ([1.0], [1.0, 1.0], [0.3, 1.0, 1.0], [0.0, 1.0], [1.0, 1.0, 1.0, 1.0]):
        chunks = split(ms, weights)
        assert len(chunks) == len(weights)
        assert [m for c in chunks for m in c] == ms
        total = sum(len(m.value) for m in ms)
        for c, w in zip(chunks, weights):
            share = sum(len(m.value) for m in c) / total
            assert abs(share - w / sum(weights)) < 0.1
    assert [len(c) for c in split(ms[:1], [1.0, 1.0, 1.0])] == [1, 0, 0]
    chunks = chunk_ids(ms)  # the batch's blocks: a function of the batch alone
    assert chunks == sorted(chunks) and set(chunks) == set(range(8)) and max(chunk_ids(ms[:3])) <= 2
    for weights in ([1.0], [1.0, 1.0], [0.2, 1.0, 1.0], [0.0, 1.0]):
        taken = shares(chunks, weights)
        assert sum(taken) == len(ms) and len(taken) == len(weights)
        ends = [sum(taken[:i + 1]) for i in range(len(taken))]
        assert all(e == len(ms) or chunks[e - 1] != chunks[e] for e in ends if e)  # whole chunks only
    assert shares(chunks, [0.0, 1.0])[0] == 0


def test_a_small_batch_is_not_cut_into_tiny_blocks(monkeypatch):
    monkeypatch.setattr(prepare, "MIN_CHUNK_BYTES", 256 * 1024)
    proxy_like = [Message("traces", b"x" * 3000, str(i)) for i in range(80)]  # 240 KB: one span each
    assert set(chunk_ids(proxy_like)) == {0}
    three = [Message("traces", b"x" * 3000, str(i)) for i in range(280)]  # 840 KB
    assert chunk_ids(three) == sorted(chunk_ids(three)) and set(chunk_ids(three)) == {0, 1, 2}
    large = [Message("traces", b"x" * 400_000, str(i)) for i in range(45)]  # bench/ingest.py's requests
    assert set(chunk_ids(large)) == set(range(prepare.BLOCKS))
    assert chunk_ids([]) == []


class _Picky:
    """The store, refusing any insert (rows or a Native block) of otel_traces that holds "poison"."""

    def __init__(self, store):
        self.store = store

    def __getattr__(self, name):
        return getattr(self.store, name)

    def insert(self, table, rows, columns, settings=None):
        if table == "otel_traces" and any("poison" in r[5] for r in rows):
            raise RejectedData("ClickHouse refused the insert: Code: 407. DECIMAL_OVERFLOW (simulated)")
        return self.store.insert(table, rows, columns, settings=settings)

    def insert_native(self, table, block, columns, settings=None):
        if table == "otel_traces" and b"poison" in block:
            raise RejectedData("ClickHouse refused the insert: Code: 407. DECIMAL_OVERFLOW (simulated)")
        return self.store.insert_native(table, block, columns, settings=settings)


def test_a_refused_value_and_an_undecodable_message_with_workers(store, workers):
    stage = IngestStage(Writer(_Picky(store), SelfMetrics()), SelfMetrics(), quality=False, workers=workers)
    bad = _request(["a", "poison b", "c"], 1)
    messages = [Message("traces", _request([f"s{i}" for i in range(20)], 100 + 20 * i), f"src:{i}")
                for i in range(5)] + [Message("traces", b"\xff\xfe not protobuf", "src:garbage"),
                                      Message("traces", bad, "src:bad")]
    result = stage.run(messages, "test:refused", threading.Event())
    assert store.query_rows("SELECT count() FROM otel_traces")[0][0] == 100 + 2
    assert sorted((d.message.source, d.item) for d in result.dead) == [("src:bad", 1), ("src:garbage", -1)]
    assert sorted(store.query_rows("SELECT source, item FROM dead_letters")) == [("src:bad", 1), ("src:garbage", -1)]
    # without a refusal the same messages go the workers' way, and the undecodable one keeps its place
    good = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False, workers=workers)
    before = workers.submitted
    r = good.run(messages[:3] + messages[5:6] + messages[3:5], "test:undecodable", threading.Event())
    assert workers.submitted == before + 1 and [(d.message.source, d.item) for d in r.dead] == [("src:garbage", -1)]
    assert store.query_rows("SELECT count() FROM dead_letters WHERE source = 'src:garbage'")[0][0] == 2


def test_a_worker_that_dies_costs_nothing(store):
    w = PrepareWorkers(1, quality=False)
    try:
        stage = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False, workers=w)
        stop = threading.Event()
        first = [Message("traces", _request([f"a{i}" for i in range(50)], 1000 + 50 * k), f"a:{k}") for k in range(4)]
        stage.run(first, "test:w1", stop)
        assert w.submitted == 1 and w._pool is not None  # the worker is up
        pids = list(w._pool._processes)
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.2)
        second = [Message("traces", _request([f"b{i}" for i in range(50)], 5000 + 50 * k), f"b:{k}")
                  for k in range(4)]
        stage.run(second, "test:w2", stop)  # the pool broke: prepared here, or by a new worker
        assert w.restarts == 1
        third = [Message("traces", _request([f"c{i}" for i in range(50)], 9000 + 50 * k), f"c:{k}") for k in range(4)]
        stage.run(third, "test:w3", stop)
        assert w.submitted == 3 and w._pool is not None  # a new worker took over
        assert store.query_rows("SELECT count(), uniqExact(SpanId) FROM otel_traces")[0] == (600, 600)
    finally:
        w.close()


def test_workers_go_when_their_process_is_killed(tmp_path):
    """A pool's workers would wait on their queue forever once the process that started them is killed
    (holding the pipes it gave them: a supervisor waiting on those would hang too)."""
    import subprocess
    import sys

    code = ("import os, sys\n"
            "from monitor.ingest.prepare import PrepareWorkers\n"
            "w = PrepareWorkers(1, quality=False)\n"
            "w.submit([], [], {}).result(60)\n"
            "print(' '.join(map(str, w._pool._processes)), flush=True)\n"
            "os._exit(9)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 9, done.stderr[-2000:]
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 1

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return open(f"/proc/{pid}/stat").read().split()[2] == "Z"  # exited, not yet reaped

    deadline = time.monotonic() + 10
    while not gone(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(pids[0])


def test_workers_never_run_the_parents_main_module(tmp_path, monkeypatch):
    """Spawn runs the parent's ``__main__`` again in each child; under a test runner or beside a dashboard
    that is whatever script last ran as ``__main__`` (a Streamlit page did, and killed every worker)."""
    import sys
    import types

    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('the parent\'s main module ran in a worker')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake)
    w = PrepareWorkers(1, quality=False)
    try:
        assert w.start(timeout=60) > 0
        assert w.submit([], [], {}).result(60).counts == {}
        assert w.restarts == 0
    finally:
        w.close()
