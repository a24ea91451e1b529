"""Preparing a batch: decode, normalise and enrich its messages (CPU only, nothing is written), in the
process that writes it or in worker processes beside it.

    messages --decode--> OTLP --normalize--> rows + events --enrich--> quality --> rows per table
                                               (in a worker, also) --encode--> a Native block per table

The process that owns the store runs ClickHouse's inserts, and chdb holds the GIL while it does
(measured: a Python thread beside a chdb insert runs at ~0.3 of a core), so one process prepares and
writes on one core however many there are. With :class:`PrepareWorkers` (spawned processes) a batch's
chunks (:func:`chunk_ids`: consecutive runs of messages of about the same bytes, a function of the
batch alone) are shared out, whole, between the writing process and the workers, prepared at the same
time, and each chunk's rows encoded as one block in ClickHouse's Native format
(:mod:`monitor.store.native`: clickhouse-connect's own serialisation); the blocks, laid end to end,
are one insert per table with the batch's token, holding the rows the local steps make, value for
value and in order (tests/test_ingest_workers.py). Without workers the writing process encodes the
same blocks itself.

A worker only computes: what it would return is dropped if it dies (the batch is prepared again in
the writing process and a new worker is started), and a worker exits when the process that started
it is gone.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.spawn
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from monitor.errors import DecodeError, RejectedData
from monitor.ingest.enrich import enrich
from monitor.ingest.normalize import Batch, normalize
from monitor.otlp.codec import Signal, decode_message
from monitor.store.native import encode
from monitor.store.tables import TABLE_COLUMNS

__all__ = ["Message", "DeadLetter", "Prepared", "prepare", "prepare_here", "prepare_native", "encode_batch", "join", "split",
           "shares", "chunk_ids", "BLOCKS", "MIN_CHUNK_BYTES", "PrepareWorkers"]

log = logging.getLogger("monitor.ingest")


@dataclass(frozen=True, slots=True)
class Message:
    """One message from a source: an OTLP request or ``*Data`` (otlp_proto or otlp_json)."""

    signal: Signal
    value: bytes
    source: str
    """Where it came from, for people: ``otlp_spans/0@1234``, ``spool:<id>:57``."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    item: int
    """The item (span, point, record) of the message the store refused; -1: the whole message."""
    reason: str


def prepare(messages: list[Message], quality: bool) -> tuple[Batch, list[DeadLetter], dict[str, float]]:
    """Decode, normalise and enrich: the rows to write (``batch.messages``: the messages that decoded)
    and the messages that did not, with the seconds each step took."""
    t0 = time.perf_counter()
    decoded, kept, dead = [], [], []
    for m in messages:
        try:
            decoded.append((m.signal, decode_message(m.signal, m.value)))
            kept.append(m)
        except DecodeError as exc:
            dead.append(DeadLetter(m, -1, f"undecodable: {exc}"))
    t1 = time.perf_counter()
    batch = normalize(decoded)
    t2 = time.perf_counter()
    if quality and batch.events:
        enrich(batch.events)
    batch.finish_events()
    t3 = time.perf_counter()
    batch.messages = kept
    return batch, dead, {"decode": t1 - t0, "normalize": t2 - t1, "enrich": t3 - t2}


BLOCKS = 8
"""Native blocks per table in a batch's insert, at most: one per chunk of the batch's messages.

ClickHouse derives the deduplication id of an insert from its token and how many blocks it holds
(measured: the same token over one block and over two does not deduplicate; over 20+20 and 10+30 rows
it does). A batch written again after a crash must hold as many blocks as the first time, whoever
prepares it: so the chunks are a function of the batch alone (:func:`chunk_ids`), never of how many
workers there are, and every path encodes one block per chunk."""


MIN_CHUNK_BYTES = 256 * 1024
"""A chunk's bytes, at least (a batch smaller than this is one chunk). A block costs clickhouse-connect
~0.3 ms to set up per table whatever it holds (measured: 100 spans as 8 blocks took 63 us per span to
encode, as one 15): a batch of small messages (the capture proxy's, one span each) is not cut finer
than this."""


def chunk_ids(messages: list[Message]) -> list[int]:
    """The chunk of each message: consecutive runs of about equal bytes, at most :data:`BLOCKS` of them
    and none under :data:`MIN_CHUNK_BYTES` (at least one)."""
    size = sum(len(m.value) for m in messages)
    chunks = split(messages, [1.0] * max(1, min(BLOCKS, len(messages), size // MIN_CHUNK_BYTES)))
    return [i for i, chunk in enumerate(chunks) for _ in chunk]


@dataclass(slots=True)
class Prepared:
    """A prepared batch (or consecutive chunks of one), encoded: per table, its blocks laid end to end."""

    blocks: dict[str, bytes]
    counts: dict[str, int]
    """Rows per table."""
    refused: dict[str, str] = field(default_factory=dict)
    """Tables with a value that did not fit its column, and why: written row by row (see the writer)."""
    dead: list[tuple[int, str]] = field(default_factory=list)
    """The messages that did not decode: (index among the prepared messages, reason)."""
    fixed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def encode_batch(batch: Batch, chunks: list[int], types: dict[str, tuple[str, ...]]) -> Prepared:
    """Each table's rows of ``batch`` as one Native block per chunk (``chunks``: the chunk of each
    message of ``batch.messages``), in order; a table without known column types, or with a value
    that does not fit, is in ``refused``."""
    t0 = time.perf_counter()
    out = Prepared({}, {t: len(r) for t, r in batch.rows.items()}, fixed=batch.fixed)
    for table, rows in batch.rows.items():
        if table not in types:
            out.refused[table] = "column types unknown"
            continue
        of_row = [chunks[o] for o in batch.origin[table]]
        body = bytearray()
        try:
            start = 0
            for end in range(1, len(rows) + 1):
                if end == len(rows) or of_row[end] != of_row[start]:
                    body += encode(table, TABLE_COLUMNS[table], types[table], rows[start:end])
                    start = end
        except RejectedData as exc:
            out.refused[table] = str(exc)
            continue
        out.blocks[table] = bytes(body)
    out.seconds["encode"] = time.perf_counter() - t0
    return out


def prepare_here(messages: list[Message], chunks: list[int], types: dict[str, tuple[str, ...]],
                 quality: bool) -> tuple[Prepared, Batch]:
    """:func:`prepare` and :func:`encode_batch` (``chunks``: the chunk of each of ``messages``); the
    rows too, for a table the store may refuse."""
    batch, dead, seconds = prepare(messages, quality)
    where = {id(m): i for i, m in enumerate(messages)}
    out = encode_batch(batch, [chunks[where[id(m)]] for m in batch.messages], types)
    out.dead = [(where[id(d.message)], d.reason) for d in dead]
    out.seconds.update(seconds)
    return out, batch


def prepare_native(messages: list[Message], chunks: list[int], types: dict[str, tuple[str, ...]],
                   quality: bool) -> Prepared:
    """:func:`prepare_here` without the rows (what a worker sends back)."""
    return prepare_here(messages, chunks, types, quality)[0]


def join(parts: list[Prepared], sizes: list[int]) -> Prepared:
    """The batch whose consecutive runs of ``sizes`` messages were prepared as ``parts``: a Native
    insert body may hold several blocks, so each table's blocks are laid end to end, in order."""
    out = Prepared({}, {})
    offset = 0
    for part, size in zip(parts, sizes):
        for table, count in part.counts.items():
            out.counts[table] = out.counts.get(table, 0) + count
        for table, block in part.blocks.items():
            out.blocks[table] = out.blocks.get(table, b"") + block
        out.refused.update(part.refused)
        out.dead.extend((offset + i, reason) for i, reason in part.dead)
        out.fixed += part.fixed
        for step, s in part.seconds.items():
            out.seconds[step] = out.seconds.get(step, 0.0) + s
        offset += size
    for table in out.refused:  # a table refused in one part is written row by row as a whole
        out.blocks.pop(table, None)
    return out


def split(messages: list[Message], weights: list[float]) -> list[list[Message]]:
    """``messages`` in consecutive chunks, one per weight, of bytes in proportion to the weights (a
    chunk may be empty: fewer messages than weights, or a weight of 0)."""
    total = sum(len(m.value) for m in messages) or 1
    scale = sum(weights) or 1.0
    ends, acc = [], 0.0
    for w in weights[:-1]:
        acc += w
        ends.append(total * acc / scale)  # the chunk ends once this many bytes are in it or before it
    chunks: list[list[Message]] = [[] for _ in weights]
    k, done = 0, 0
    for m in messages:
        while k < len(ends) and done >= ends[k]:
            k += 1
        chunks[k].append(m)
        done += len(m.value)
    return chunks


def shares(chunks: list[int], weights: list[float]) -> list[int]:
    """How many messages each participant takes, in order, given ``chunks`` (the chunk of each
    message): whole chunks, about in proportion to ``weights``."""
    n = (chunks[-1] + 1) if chunks else 0
    scale = sum(weights) or 1.0
    cuts, acc = [], 0.0
    for w in weights[:-1]:
        acc += w
        cuts.append(round(n * acc / scale))
    bounds = [0] + cuts + [n]
    return [sum(1 for c in chunks if bounds[i] <= c < bounds[i + 1]) for i in range(len(weights))]


def _prepare_items(items: list[tuple[Signal, bytes]], chunks: list[int], types: dict[str, tuple[str, ...]],
                   quality: bool) -> Prepared:
    """A worker's task: :func:`prepare_native` of the messages ``items`` stand for."""
    return prepare_native([Message(signal, value, "") for signal, value in items], chunks, types, quality)


def _worker_start(quality: bool, on_start: Callable[[], None] | None, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    threading.Thread(target=_exit_with, args=(parent,), name="monitor-ingest-worker-parent", daemon=True).start()
    if quality:
        from monitor.ingest.enrich import warm_up

        warm_up()
    if on_start is not None:
        on_start()


_spawning = threading.local()
_stdlib_preparation_data = multiprocessing.spawn.get_preparation_data


def _preparation_data(name: str) -> dict:
    """What a spawned process is told to set up first, less the parent's main module when it is one of
    our workers: spawn runs that module again in the child, and a worker needs nothing from it (under
    a test runner or a dashboard thread it is whatever script last ran as ``__main__``, and running it
    again killed the worker; a script without a ``__main__`` guard would run twice)."""
    data = _stdlib_preparation_data(name)
    if getattr(_spawning, "workers", False):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


multiprocessing.spawn.get_preparation_data = _preparation_data


def _exit_with(parent: int) -> None:
    """A worker outlives nothing: when the process that started it is gone (killed, crashed), so is it
    (a pool's workers otherwise wait on their queue forever, holding what they inherited)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


class PrepareWorkers:
    """``count`` spawned processes preparing chunks of batches (:func:`prepare_native`), started on first use."""

    def __init__(self, count: int, quality: bool, on_start: Callable[[], None] | None = None):
        if count < 1:
            raise ValueError("PrepareWorkers needs at least one process")
        self.count = count
        self.quality = quality
        self.on_start = on_start
        """Run in each worker once it has loaded what it needs (the runtime settles the heap there)."""
        self.restarts = 0
        self.submitted = 0
        """Parts of batches handed to the workers."""
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self, timeout: float = 300.0) -> float:
        """Start the workers now and wait until each has loaded what it needs (seconds taken): their
        start-up (an interpreter, the quality models) then never delays a batch."""
        t0 = time.monotonic()
        for f in [self._submit(time.sleep, 0.2) for _ in range(self.count)]:
            f.result(timeout)
        return time.monotonic() - t0

    def submit(self, messages: list[Message], chunks: list[int], types: dict[str, tuple[str, ...]]) -> Future:
        """Start preparing ``messages`` (``chunks``: the chunk of each); the future's result is a
        :class:`Prepared`. A pool a dead worker broke is replaced first (said in the log)."""
        items = [(m.signal, m.value) for m in messages]
        self.submitted += 1
        try:
            return self._submit(_prepare_items, items, chunks, types, self.quality)
        except BrokenProcessPool as exc:
            log.warning("an ingest worker process died (%s); starting a new one", exc)
            self.restart()
            return self._submit(_prepare_items, items, chunks, types, self.quality)

    def _submit(self, fn: Callable, *args: object) -> Future:
        _spawning.workers = True  # a pool starts its processes in submit, on this thread
        try:
            return self._pool_now().submit(fn, *args)
        finally:
            _spawning.workers = False

    def _pool_now(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the writing process runs chdb's threads, which a fork would copy mid-flight
                self._pool = ProcessPoolExecutor(self.count, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_worker_start,
                                                 initargs=(self.quality, self.on_start, os.getpid()))
            return self._pool

    def restart(self) -> None:
        """Drop the pool (a worker died: the pool is broken); the next :meth:`submit` starts a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
            self.restarts += 1
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
