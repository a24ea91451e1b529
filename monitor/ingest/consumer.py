"""Distributed ingest: a Kafka consumer-group member writing OTLP messages to ClickHouse.

Exactly-once into ClickHouse, with at-least-once Kafka delivery underneath:

1. Messages are batched per partition. Before a batch ``[start, end)`` is
   inserted, the committed offset of its partition is re-committed at
   ``start`` with the metadata ``{"pending": [start, end]}``.
2. Every table insert of the batch carries the token
   ``<topic>/<partition>/<start>-<end>:<table>`` (see :mod:`monitor.store.writer`).
3. Only after ClickHouse acknowledged every insert is the offset committed at ``end``.

If the process dies between 2 and 3, whoever owns the partition next reads
the pending range from the commit metadata, rebuilds exactly the same batch,
and its inserts are dropped as duplicates by ClickHouse. The batch goes
through the same :class:`~monitor.ingest.stage.IngestStage` as embedded
ingest: undecodable messages, and messages holding an item the store refuses,
are set aside in the ``dead_letters`` table and copied to ``<topic>_dlq``
(reason in the ``monitor.dlq.reason`` header) before the offset moves past
them; ingest goes on, and a poison message cannot stall its partition (nor a
batch the stage refuses as a whole with a :class:`~monitor.errors.PermanentError`:
its messages are set aside the same way). An unavailable broker or store is
retried with backoff (:class:`~monitor.backoff.Retrier`) until it is back or
ingest stops.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from monitor.backoff import Backoff, Retrier
from monitor.config import IngestSettings, KafkaSettings
from monitor.errors import Cancelled, PermanentError, TransportError
from monitor.ingest.normalize import Batch
from monitor.ingest.prepare import PrepareWorkers
from monitor.ingest.stage import DeadLetter, IngestStage, Message
from monitor.selfmetrics import SelfMetrics
from monitor.store.writer import Writer
from monitor.transport.kafka_common import all_topics, client_kwargs, dead_letter_topic, ensure_topics

__all__ = ["KafkaIngest"]


def _listener_base() -> type:
    from kafka import ConsumerRebalanceListener
    return ConsumerRebalanceListener


class _Listener(_listener_base()):  # type: ignore[misc]
    """Forwards kafka-python's rebalance callbacks to the ingest."""

    def __init__(self, ingest: "KafkaIngest"):
        self.ingest = ingest

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.ingest.on_partitions_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.ingest.on_partitions_assigned(assigned)

log = logging.getLogger("monitor.ingest")


class KafkaIngest:
    def __init__(self, kafka: KafkaSettings, ingest: IngestSettings, writer: Writer, metrics: SelfMetrics,
                 workers: PrepareWorkers | None = None):
        client_kwargs(kafka)  # fail at start on missing bootstrap servers
        self.kafka = kafka
        self.settings = ingest
        self.writer = writer
        self.metrics = metrics
        self.stage = IngestStage(writer, metrics, quality=ingest.quality, retry_max_s=ingest.retry_backoff_max_s,
                                 on_dead_letter=self._dead_letter, workers=workers)
        self.topics = all_topics(kafka)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._topics_ready = False
        self._empty_since: float | None = None
        self._rejoin_after_s = 10.0
        self._consumer: Any = None
        self._dlq: Any = None
        self._buffers: dict[Any, list[Any]] = defaultdict(list)
        self._pending: dict[Any, tuple[int, int]] = {}
        self._unchecked: set[Any] = set()
        self._first_buffered: float | None = None
        self._keys: dict[str, bytes | None] = {}
        self.batches_written = 0

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        # Create the topics before saying ready: a Collector or sidecar started right after would otherwise
        # race its own auto-creation against ours. A broker not up yet is fine: the loop retries.
        try:
            self._ensure_topics()
        except TransportError as exc:
            log.warning("%s; retrying in the background", exc)
        self._thread = threading.Thread(target=self._run, name="monitor-kafka-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write and commit what was already polled, leave the group, stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- rebalance listener (called inside poll) ----------------------------------
    def on_partitions_revoked(self, revoked: Any) -> None:
        for tp in revoked:
            # The next owner re-reads from the committed offset; drop our copy.
            self._buffers.pop(tp, None)
            self._pending.pop(tp, None)
            self._unchecked.discard(tp)

    def on_partitions_assigned(self, assigned: Any) -> None:
        # kafka-python runs this on its network thread, where blocking calls are refused:
        # the pending ranges are read from the main loop before anything is flushed.
        for tp in assigned:
            self._buffers.pop(tp, None)
            self._pending.pop(tp, None)
            self._unchecked.add(tp)
        if assigned:
            log.info("assigned %s", ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(assigned)))
        else:
            log.info("assigned no partitions (more members in group %s than partitions, or its topics are "
                     "not visible yet: rejoined after %.0f s if they have partitions)", self.kafka.group_id,
                     self._rejoin_after_s)

    def _load_pending(self) -> None:
        for tp in list(self._unchecked):
            committed = self._consumer.committed(tp, metadata=True)
            self._unchecked.discard(tp)
            if committed is None or not committed.metadata:
                continue
            try:
                start, end = json.loads(committed.metadata)["pending"]
            except (ValueError, KeyError, TypeError):
                continue
            self._pending[tp] = (int(start), int(end))
            log.info("%s-%d: replaying unfinished batch [%d, %d) with its original dedup token",
                     tp.topic, tp.partition, start, end)

    # -- main loop -------------------------------------------------------------
    def _ensure_topics(self) -> None:
        if not self._topics_ready:
            ensure_topics(self.kafka, self.topics + [dead_letter_topic(self.kafka, t) for t in self.topics])
            self._topics_ready = True

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        k = self.kafka
        self._ensure_topics()
        self._consumer = KafkaConsumer(
            **client_kwargs(k),
            group_id=k.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.max_poll_records,
            max_poll_interval_ms=600_000,
            session_timeout_ms=10_000,  # heartbeats run on a background thread: a long insert is fine
            heartbeat_interval_ms=3_000,
            # a topic's partitions seen within 30 s, not the default 5 min: created by someone else while
            # this consumer started, or grown by an operator
            metadata_max_age_ms=30_000,
        )
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        self._dlq = KafkaProducer(**client_kwargs(k), acks="all", enable_idempotence=True)
        log.info("consuming %s from %s as group %s", ", ".join(self.topics), ",".join(k.bootstrap_servers),
                 k.group_id)

    def _run(self) -> None:
        self.stage.warm_up()  # load the language model now, not on the first batch
        # keep consuming whatever happens: a bug is logged with its traceback and retried too
        retry = Retrier(Backoff(0.5, 10.0), what="Kafka ingest", on_retry=self._retrying, retry_unexpected=True)
        while not self._stop.is_set():
            try:
                if self._consumer is None:
                    self._connect()
                    retry.succeeded()
                self._step()
            except Cancelled:
                break
            except Exception as exc:
                from kafka.errors import KafkaError
                if isinstance(exc, KafkaError):  # raised by the client outside the calls translating it
                    exc = TransportError(str(exc))
                self._close_clients()
                try:
                    retry.wait(exc, self._stop)
                except Cancelled:
                    break
                except PermanentError as permanent:  # a batch's own permanent error is set aside in _flush
                    log.error("Kafka ingest stopped: %s; retrying cannot help. Nothing uncommitted is lost: "
                              "it is read again at the next start", permanent)
                    break
        try:
            if self._consumer is not None and any(self._buffers.values()):
                self._flush(force=True)
        except Exception:  # uncommitted data is redelivered on the next start: nothing is lost
            log.exception("final flush failed; the batch will be redelivered")
        self._close_clients()
        self.stage.close()

    def _retrying(self, exc: Exception, attempt: int, delay: float) -> None:
        if isinstance(exc, TransportError):
            log.warning("Kafka unavailable (%s); retrying in %.1fs", exc, delay)
        else:
            log.error("ingest step failed; retrying in %.1fs", delay, exc_info=exc)

    def _close_clients(self) -> None:
        for c in (self._consumer, self._dlq):
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
        self._consumer = self._dlq = None
        self._buffers.clear()
        self._pending.clear()
        self._unchecked.clear()
        self._first_buffered = None

    def _step(self) -> None:
        s = self.settings
        polled = self._consumer.poll(timeout_ms=min(200, s.flush_interval_ms), max_records=s.max_poll_records)
        for tp, msgs in polled.items():
            if msgs:
                self._buffers[tp].extend(msgs)
                if self._first_buffered is None:
                    self._first_buffered = time.monotonic()
        self._load_pending()
        self._update_lag()
        self._check_assignment()
        buffered = sum(len(v) for v in self._buffers.values())
        if buffered and (buffered >= s.max_batch_messages or
                         time.monotonic() - (self._first_buffered or 0) >= s.flush_interval_ms / 1000 or
                         sum(len(m.value or b"") for v in self._buffers.values() for m in v) >= s.max_batch_bytes):
            self._flush()
            self._update_lag()

    def _check_assignment(self) -> None:
        """Rejoin when the group gave this consumer nothing although its topics have partitions.

        kafka-python sometimes completes a join with an empty assignment while the topics it subscribed
        to are being created (seen on a loaded broker right after the topics got their leaders) and then
        does not rejoin when their partitions appear: ingest would idle while messages wait. Re-subscribing
        triggers a new join. With more members than partitions an empty assignment is right: the retries
        back off (10 s doubling to 5 min) and each is logged."""
        now = time.monotonic()
        if self._consumer.assignment():
            self._empty_since, self._rejoin_after_s = None, 10.0
            return
        if self._empty_since is None:
            self._empty_since = now
            return
        if now - self._empty_since < self._rejoin_after_s:
            return
        if not any(self._consumer.partitions_for_topic(t) for t in self.topics):
            return
        log.warning("no partitions assigned for %.0fs although %s have some: rejoining group %s",
                    now - self._empty_since, ", ".join(self.topics), self.kafka.group_id)
        self._consumer.unsubscribe()
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        self._empty_since, self._rejoin_after_s = now, min(300.0, self._rejoin_after_s * 2)

    def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            buf = self._buffers.get(tp)
            if hw is None:
                continue
            try:
                pos = buf[0].offset if buf else self._consumer.position(tp, timeout_ms=100)
            except Exception:
                continue
            if pos is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - pos))

    # -- one batch per partition ----------------------------------------------------
    def _flush(self, force: bool = False) -> None:
        from kafka.structs import OffsetAndMetadata

        batches = []
        for tp, buf in list(self._buffers.items()):
            if not buf:
                continue
            pending = self._pending.get(tp)
            if pending is not None:
                start, end = pending
                if buf[-1].offset + 1 < end and self._consumer.position(tp) < end:
                    continue  # the replayed range is not complete yet: keep polling
                chunk = [m for m in buf if m.offset < end]
                self._buffers[tp] = [m for m in buf if m.offset >= end]
                del self._pending[tp]
                if not chunk:
                    continue
            else:
                chunk = buf
                self._buffers[tp] = []
                start, end = chunk[0].offset, chunk[-1].offset + 1
            batches.append((tp, chunk, start, end))
        self._first_buffered = time.monotonic() if any(self._buffers.values()) else None
        if not batches:
            return

        self._commit({tp: OffsetAndMetadata(start, json.dumps({"pending": [start, end]}), -1)
                      for tp, _, start, end in batches})
        # with worker processes every partition's batch is handed to them now, in the order they are
        # written: they prepare the next while this one is written
        started = []
        for i, (tp, chunk, start, end) in enumerate(batches):
            messages = [Message(self.kafka.signal_of(m.topic), m.value or b"", f"{m.topic}/{m.partition}@{m.offset}")
                        for m in chunk]
            started.append((messages, self.stage.ahead(messages, behind=i > 0)))
        for (tp, chunk, start, end), (messages, ahead) in zip(batches, started):
            self._keys = {msg.source: m.key for msg, m in zip(messages, chunk)}
            token = f"{tp.topic}/{tp.partition}/{start}-{end}"
            try:
                self.stage.run(messages, token, self._stop, ahead)
            except PermanentError as exc:  # retrying cannot help: the batch must not stall its partition
                self._set_aside_batch(messages, token, exc)
            self.batches_written += 1
        self._commit({tp: OffsetAndMetadata(end, "", -1) for tp, _, _, end in batches})

    def _set_aside_batch(self, messages: list[Message], token: str, exc: PermanentError) -> None:
        """Set every message of a batch the stage refused as a whole aside, like a poison message: in
        dead_letters (a token of its own, so a replay stores them once) and ``<topic>_dlq``, counted."""
        log.error("batch %s cannot be stored (%s); setting its %d messages aside", token, exc, len(messages))
        self.stage.write(Batch(), [DeadLetter(m, -1, f"batch refused: {exc}") for m in messages], f"{token}/refused",
                         self._stop)

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Copy set-aside messages to ``<topic>_dlq`` (they are in the dead_letters table already)."""
        futures = []
        for d in dead:
            topic, _, where = d.message.source.partition("/")
            headers = [("monitor.dlq.reason", d.reason[:1000].encode()),
                       ("monitor.dlq.source", d.message.source.encode()),
                       ("monitor.dlq.item", str(d.item).encode())]
            futures.append(self._dlq.send(dead_letter_topic(self.kafka, topic), key=self._keys.get(d.message.source),
                                          value=d.message.value, headers=headers))
            self.metrics.dead_lettered.labels(topic).inc()
        self._dlq.flush(timeout=30)
        for f in futures:
            if not f.succeeded():
                raise TransportError(f"could not write to the dead-letter topic: {f.exception}")

    def _commit(self, offsets: dict) -> None:
        from kafka.errors import CommitFailedError, KafkaError

        try:
            self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # Partitions moved to another member: it will redo the batch with the same tokens.
            log.warning("offset commit refused after a rebalance (%s); the new owner replays it", exc)
        except KafkaError as exc:
            raise TransportError(f"offset commit failed: {exc}") from None
