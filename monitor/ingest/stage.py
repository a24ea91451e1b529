"""Ingest as one stage: messages in, rows stored, whatever the source (Kafka or the local spool).

    messages --decode--> OTLP --normalize--> rows + events --enrich--> quality --encode--> Native blocks
                 |                                                                 --write--> ClickHouse
                 +-- undecodable: dead_letters                          refused rows: dead_letters

A batch is the messages of one source position range; its token (``<source>:<range>``) makes the
inserts idempotent (see :mod:`monitor.store.writer`), so a batch written again after a crash or a
redelivery lands once. Each table's rows go in as one Native block per chunk of the batch
(:data:`~monitor.ingest.prepare.BLOCKS`), whoever prepared them, so that a replay holds the same
blocks (ClickHouse's deduplication id depends on their number). Nothing a sender can put in a
message stops ingest: a message that does not decode, and an item the store refuses (its table is
written again in halves, recursively, until the refused rows stand alone), are set aside in the
``dead_letters`` table with the reason and the message's bytes, counted, and the rest of the batch
is stored. Only an unavailable store holds a batch back: then :meth:`IngestStage.run` retries it
(the one retry helper, :func:`monitor.backoff.retry_call`) until the store is back or the process
stops; the source keeps its position meanwhile, so nothing is lost.

With worker processes (:class:`~monitor.ingest.prepare.PrepareWorkers`, ``ingest.workers``) a batch
is prepared in chunks, here and in them at once (a worker that died: here alone). A source that
already holds the next full batch hands it to :meth:`IngestStage.ahead` before it writes the current
one, so the workers prepare it while this process writes. Sources, batches, tokens, blocks and the
order of writes are the same either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone

from monitor.backoff import Backoff, retry_call
from monitor.errors import RetryableError, StoreError
from monitor.ingest.normalize import Batch
from monitor.ingest.prepare import (DeadLetter, Message, Prepared, PrepareWorkers, chunk_ids, join, prepare,
                                    prepare_here, prepare_native, shares)
from monitor.selfmetrics import SelfMetrics
from monitor.store.native import column_types
from monitor.store.tables import DEAD_LETTERS, INSERT_ORDER, TABLE_COLUMNS
from monitor.store.writer import Writer

__all__ = ["Message", "IngestStage", "BatchResult", "DeadLetter", "Ahead"]

log = logging.getLogger("monitor.ingest")

_MAX_PAYLOAD = 64 << 20
"""Bytes of a set-aside message kept in dead_letters (a bigger one keeps its head and says so)."""


@dataclass(frozen=True, slots=True)
class Ahead:
    """A batch being prepared: its first ``local`` messages here, the rest in the worker processes."""

    local: int
    futures: list[Future]
    """One per worker with a share, in order."""
    sizes: list[int]
    """Messages per part, in order (this process's first)."""
    chunks: list[int]
    """The chunk of each message (:func:`~monitor.ingest.prepare.chunk_ids`)."""


@dataclass
class BatchResult:
    messages: int = 0
    rows: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class IngestStage:
    """Decode, normalise, enrich and write batches; thread-compatible (one batch at a time per stage)."""

    def __init__(self, writer: Writer, metrics: SelfMetrics, *, quality: bool = True,
                 retry_max_s: float = 30.0, on_dead_letter: Callable[[list[DeadLetter]], None] | None = None,
                 workers: PrepareWorkers | None = None):
        self.writer = writer
        self.workers = workers
        """Processes that prepare chunks of batches (:mod:`monitor.ingest.prepare`); None: all is done here."""
        self._types: dict[str, tuple[str, ...]] | None = None
        self._workers_ready = threading.Event()
        self._warming = False
        self._write_ratio = 0.45
        """Seconds writing a batch per second of its preparing steps, all parts together (a moving average;
        0.45 measured on 2 cores)."""
        self.metrics = metrics
        self.quality = quality
        self.retry_max_s = retry_max_s
        self.on_dead_letter = on_dead_letter
        """Told about set-aside messages after they are stored (Kafka ingest also copies them to its DLQ topic)."""

    def warm_up(self) -> None:
        self._warming = True
        if self.quality:
            from monitor.ingest.enrich import warm_up
            warm_up()
        if self.workers is not None:  # in the background: until they are ready, batches are prepared here
            threading.Thread(target=self._start_workers, name="monitor-ingest-workers", daemon=True).start()

    def _start_workers(self) -> None:
        try:
            took = self.workers.start()
        except Exception as exc:
            log.warning("ingest worker processes did not start (%s); batches are prepared here", exc)
            return
        self._workers_ready.set()
        log.info("%d ingest worker process%s ready in %.1fs", self.workers.count,
                 "es" if self.workers.count > 1 else "", took)

    def _with_workers(self) -> bool:
        """Whether batches go to the workers now: they are ready (:meth:`warm_up` starts them without
        holding up the first batches), or were never asked to warm up (a caller using the stage directly)."""
        return self.workers is not None and (self._workers_ready.is_set() or not self._warming)

    # -- the steps ---------------------------------------------------------------------------

    def prepare(self, messages: list[Message]) -> tuple[Batch, list[DeadLetter], dict[str, float]]:
        """Decode, normalise and enrich here: the rows to write and the messages that did not decode.
        Pure CPU; nothing is written."""
        return prepare(messages, self.quality)

    def close(self) -> None:
        """Stop the worker processes (batches still being prepared are dropped: their messages are
        still at their source)."""
        if self.workers is not None:
            self.workers.close()

    def write(self, batch: Batch, dead: list[DeadLetter], token: str, stop: threading.Event) -> BatchResult:
        """Store ``batch`` with ``token``; retries while the store is unavailable (until ``stop``:
        :class:`~monitor.errors.Cancelled`). Refused rows and ``dead`` go to dead_letters."""
        t0 = time.perf_counter()
        kept: list[Message] = batch.messages
        refused = retry_call(lambda: self.writer.write(batch.rows, token), stop=stop,
                             backoff=Backoff(0.2, self.retry_max_s), what=f"insert of batch {token}",
                             on_retry=self._retrying)
        dead = list(dead)
        for r in refused:
            origin = batch.origin[r.table][r.index]
            item = sum(1 for o in batch.origin[r.table][:r.index] if o == origin)
            dead.append(DeadLetter(kept[origin], item, f"{r.table}: {r.reason}"))
        if dead:
            self._set_aside(dead, token, stop)
        if batch.fixed:
            self.metrics.values_fixed.inc(batch.fixed)
        self.metrics.ingest_batches.inc()
        return BatchResult(len(kept) + sum(1 for d in dead if d.item < 0), batch.count(), dead,
                           {"write": time.perf_counter() - t0})

    @property
    def lookahead(self) -> int:
        """Batches a source may hand :meth:`ahead` before it writes the current one (1 with workers)."""
        return 1 if self.workers is not None else 0

    def ahead(self, messages: list[Message], behind: bool = True) -> Ahead | None:
        """Start preparing ``messages`` in the worker processes now; pass the result to :meth:`run` with
        them. None: :meth:`run` prepares them. A source hands over its batches in the order it writes them
        (a worker takes its parts first come, first served).

        This process keeps the first chunks, prepared in :meth:`run`: with ``behind`` (the batch waits
        behind one this process writes first) fewer, from the measured cost of writing against
        preparing, so that it and the workers finish together; else as many as a worker."""
        if not self._with_workers():
            return None
        try:
            self._load_types()
        except StoreError:
            return None
        n, r = self.workers.count, self._write_ratio
        return self._start(messages, [max(0.0, (1 - n * r) / (1 + r)) if behind else 1.0] + [1.0] * n)

    def _start(self, messages: list[Message], weights: list[float]) -> Ahead:
        chunks = chunk_ids(messages)
        sizes = shares(chunks, weights)
        futures, at = [], sizes[0]
        for size in sizes[1:]:
            if size:
                futures.append(self.workers.submit(messages[at:at + size], chunks[at:at + size], self._types))
            at += size
        return Ahead(sizes[0], futures, [sizes[0]] + [s for s in sizes[1:] if s], chunks)

    def run(self, messages: list[Message], token: str, stop: threading.Event,
            ahead: Ahead | None = None) -> BatchResult:
        """Prepare (here, or here and in the worker processes; ``ahead``: already started there by
        :meth:`ahead`) then write ``messages``: each table's rows as one Native block per chunk of the
        batch (:data:`~monitor.ingest.prepare.BLOCKS`), a table the store refuses row by row."""
        retry_call(self._load_types, stop=stop, backoff=Backoff(0.2, self.retry_max_s),
                   what="the store's column types", on_retry=self._retrying)
        batch = None
        if ahead is None and self._with_workers() and len(messages) > 1:
            ahead = self._start(messages, [1.0] * (self.workers.count + 1))
        prepared = self._finish(messages, ahead) if ahead is not None else None
        if prepared is None:  # here alone (no workers, or one died)
            prepared, batch = prepare_here(messages, chunk_ids(messages), self._types, self.quality)
        result = self._write_prepared(messages, prepared, batch, token, stop)
        for stage, s in result.seconds.items():
            self.metrics.ingest_stage_seconds.labels(stage).inc(s)
        return result

    def _load_types(self) -> None:
        if self._types is None:
            found = {t: column_types(self.writer.store, t, cols) for t, cols in TABLE_COLUMNS.items()
                     if t != DEAD_LETTERS}
            self._types = {t: types for t, types in found.items() if types is not None}

    def _finish(self, messages: list[Message], ahead: Ahead) -> Prepared | None:
        """This process's chunks of ``ahead`` prepared here, joined with the workers' (None: a worker died)."""
        local = prepare_native(messages[:ahead.local], ahead.chunks[:ahead.local], self._types, self.quality)
        parts = [local] + [self._collect(f) for f in ahead.futures]
        return None if any(p is None for p in parts) else join(parts, ahead.sizes)

    def _collect(self, future: Future) -> Prepared | None:
        try:
            return future.result()
        except BrokenProcessPool as exc:
            log.warning("an ingest worker process died (%s); preparing this batch here; a new worker takes the "
                        "next", exc)
            self.workers.restart()
        except Exception:  # a bug in a worker: the batch is prepared here, where it shows again if it is one
            log.exception("an ingest worker failed to prepare a batch; preparing it here")
        return None

    def _write_prepared(self, messages: list[Message], p: Prepared, batch: Batch | None, token: str,
                        stop: threading.Event) -> BatchResult:
        t0 = time.perf_counter()
        refused_tables = retry_call(lambda: self.writer.write_native(p.blocks, p.counts, token), stop=stop,
                                    backoff=Backoff(0.2, self.retry_max_s), what=f"insert of batch {token}",
                                    on_retry=self._retrying)
        refused_tables.update(p.refused)
        dead = [DeadLetter(messages[i], -1, reason) for i, reason in sorted(p.dead)]
        if refused_tables:
            if batch is None:  # the workers' rows are gone: the same rows again, here
                batch, _, _ = self.prepare(messages)
            log.info("the store refused a value in %s of batch %s; writing those rows in halves to set it aside",
                     ", ".join(sorted(refused_tables)), token)
            for table in INSERT_ORDER:
                if table not in refused_tables:
                    continue
                rows = batch.rows[table]
                refused = retry_call(lambda: self.writer.write_halves(table, rows, token, refused_tables[table]),
                                     stop=stop, backoff=Backoff(0.2, self.retry_max_s),
                                     what=f"insert of batch {token} ({table}, in halves)", on_retry=self._retrying)
                for r in refused:
                    origin = batch.origin[r.table][r.index]
                    item = sum(1 for o in batch.origin[r.table][:r.index] if o == origin)
                    dead.append(DeadLetter(batch.messages[origin], item, f"{r.table}: {r.reason}"))
        if dead:
            self._set_aside(dead, token, stop)
        if p.fixed:
            self.metrics.values_fixed.inc(p.fixed)
        self.metrics.ingest_batches.inc()
        written = time.perf_counter() - t0
        preparing = sum(p.seconds.values())  # every part's steps, wherever they ran
        if self.workers is not None and preparing > 0:
            self._write_ratio = 0.7 * self._write_ratio + 0.3 * min(5.0, max(0.05, written / preparing))
        return BatchResult(len(messages), sum(p.counts.values()), dead, {**p.seconds, "write": written})

    # -- set aside -----------------------------------------------------------------------------

    def _set_aside(self, dead: list[DeadLetter], token: str, stop: threading.Event) -> None:
        now = datetime.now(timezone.utc)
        rows = []
        for d in dead:
            payload = d.message.value
            reason = d.reason
            if len(payload) > _MAX_PAYLOAD:
                reason += f" (payload cut to its first {_MAX_PAYLOAD} of {len(payload)} bytes)"
                payload = payload[:_MAX_PAYLOAD]
            rows.append([now, d.message.source, d.message.signal, d.item, reason[:4000], payload])
            self.metrics.dead_letters.labels(d.message.signal, "undecodable" if d.item < 0 else "refused").inc()
            log.warning("set aside %s%s: %s", d.message.source, f" item {d.item}" if d.item >= 0 else "",
                        reason[:300])
        # dead letters share the batch's token (their own table suffix): a replayed batch stores them once
        retry_call(lambda: self.writer.write({DEAD_LETTERS: rows}, token), stop=stop,
                   backoff=Backoff(0.2, self.retry_max_s), what=f"dead letters of batch {token}",
                   on_retry=self._retrying)
        if self.on_dead_letter is not None:
            self.on_dead_letter(dead)

    def _retrying(self, exc: RetryableError, attempt: int, delay: float) -> None:
        if attempt == 1 or attempt % 10 == 0:
            log.warning("store unavailable (%s); keeping the batch and retrying in %.1fs (attempt %d)", exc, delay,
                        attempt)
