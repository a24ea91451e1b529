"""Ingest as one stage: messages in, rows stored, whatever the source (Kafka or the local spool).

    messages --decode--> OTLP --normalize--> rows + events --enrich--> quality --write--> ClickHouse
                 |                                                                  |
                 +-- undecodable: dead_letters                refused rows: dead_letters

A batch is the messages of one source position range; its token (``<source>:<range>``) makes the
inserts idempotent (see :mod:`monitor.store.writer`), so a batch written again after a crash or a
redelivery lands once. Nothing a sender can put in a message stops ingest: a message that does not
decode, and an item the store refuses (isolated by splitting the insert), are set aside in the
``dead_letters`` table with the reason and the message's bytes, counted, and the rest of the batch
is stored. Only an unavailable store holds a batch back: then :meth:`IngestStage.write` retries it
(the one retry helper, :func:`monitor.backoff.retry_call`) until the store is back or the process
stops; the source keeps its position meanwhile, so nothing is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from monitor.backoff import Backoff, retry_call
from monitor.errors import DecodeError, RetryableError
from monitor.ingest.enrich import enrich
from monitor.ingest.normalize import Batch, normalize
from monitor.otlp.codec import Signal, decode_message
from monitor.selfmetrics import SelfMetrics
from monitor.store.tables import DEAD_LETTERS
from monitor.store.writer import Writer

__all__ = ["Message", "IngestStage", "BatchResult", "DeadLetter"]

log = logging.getLogger("monitor.ingest")

_MAX_PAYLOAD = 64 << 20
"""Bytes of a set-aside message kept in dead_letters (a bigger one keeps its head and says so)."""


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


@dataclass
class BatchResult:
    messages: int = 0
    rows: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class IngestStage:
    """Decode, normalise, enrich and write batches; thread-compatible (one batch at a time per stage)."""

    def __init__(self, writer: Writer, metrics: SelfMetrics, *, quality: bool = True,
                 retry_max_s: float = 30.0, on_dead_letter: Callable[[list[DeadLetter]], None] | None = None):
        self.writer = writer
        self.metrics = metrics
        self.quality = quality
        self.retry_max_s = retry_max_s
        self.on_dead_letter = on_dead_letter
        """Told about set-aside messages after they are stored (Kafka ingest also copies them to its DLQ topic)."""

    def warm_up(self) -> None:
        if self.quality:
            from monitor.ingest.enrich import warm_up
            warm_up()

    # -- the steps ---------------------------------------------------------------------------

    def prepare(self, messages: list[Message]) -> tuple[Batch, list[DeadLetter], dict[str, float]]:
        """Decode, normalise and enrich: the rows to write and the messages that did not decode. Pure
        CPU; nothing is written."""
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
        if self.quality and batch.events:
            enrich(batch.events)
        batch.finish_events()
        t3 = time.perf_counter()
        batch.messages = kept
        return batch, dead, {"decode": t1 - t0, "normalize": t2 - t1, "enrich": t3 - t2}

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

    def run(self, messages: list[Message], token: str, stop: threading.Event) -> BatchResult:
        """:meth:`prepare` then :meth:`write`."""
        batch, dead, seconds = self.prepare(messages)
        result = self.write(batch, dead, token, stop)
        result.seconds.update(seconds)
        for stage, s in result.seconds.items():
            self.metrics.ingest_stage_seconds.labels(stage).inc(s)
        return result

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
