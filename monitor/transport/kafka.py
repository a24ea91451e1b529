"""Sidecar transport: spool every accepted request to disk, forward it to Kafka in order.

``publish`` cuts a request into Collector-compatible messages (spans keyed by
trace id, see :mod:`monitor.otlp.split`), commits them to the
:class:`~monitor.transport.spool.Spool` and returns: the receiver's 200
follows a durable write, whatever the broker's state. A forwarder thread
reads the spool from its head, produces with ``acks=all`` and idempotence,
and deletes what the broker acknowledged. While the broker is unreachable the
spool grows (bounded) and the forwarder retries with backoff
(:class:`~monitor.backoff.Retrier`); when it comes back the backlog is replayed
oldest first. A permanent error (:class:`~monitor.errors.PermanentError`) stops
the forwarder, loudly: the spool keeps every message for the next start.
"""

from __future__ import annotations

import logging
import threading
import time

from google.protobuf.message import Message

from monitor.backoff import Backoff, Retrier
from monitor.config import KafkaSettings
from monitor.errors import Cancelled, ConfigError, PermanentError, TransportError
from monitor.otlp.codec import Signal
from monitor.otlp.split import split_for_kafka
from monitor.selfmetrics import SelfMetrics
from monitor.transport.base import Accepted
from monitor.transport.kafka_common import all_topics, client_kwargs, ensure_topics
from monitor.transport.spool import Spool, SpooledMessage

__all__ = ["KafkaTransport"]

log = logging.getLogger("monitor.kafka")

_CHUNK_MESSAGES = 2000
_CHUNK_BYTES = 16 * 1024 * 1024


class KafkaTransport:
    def __init__(self, settings: KafkaSettings, spool: Spool, metrics: SelfMetrics):
        client_kwargs(settings)  # fail at start on missing bootstrap servers
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = None
        self._down_since: float | None = None
        self._last_down_log = 0.0

    # -- receiver side (a worker thread) ---------------------------------------------------
    def publish(self, signal: Signal, msg: Message, wire: bytes | None = None) -> Accepted:
        s = self.settings
        if (wire is not None and s.encoding == "otlp_proto" and len(wire) <= s.max_message_bytes
                and not (signal == "traces" and s.partition_traces_by_id)):
            # What split_for_kafka makes of a request that fits: itself, one message (an
            # Export*ServiceRequest is wire-identical to its *Data), without encoding it again.
            self.spool.append([(s.topic(signal), None, wire)])
            return Accepted()
        split = split_for_kafka(signal, msg, s.max_message_bytes, s.encoding, s.partition_traces_by_id)
        if split.messages:
            topic = s.topic(signal)
            self.spool.append([(topic, k, v) for k, v in split.messages])
        return Accepted(split.rejected, split.reason)

    # -- forwarder -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._forward_loop, name="monitor-kafka-forwarder", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Forward what is spooled for up to ``timeout`` s; the rest stays on disk for the next start."""
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            if self.spool.stats()[0] == 0:
                break
            time.sleep(0.05)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(1.0, deadline - time.monotonic()))
        left = self.spool.stats()[0]
        if left:
            log.warning("stopping with %d messages still in the spool %s; they are sent at the next start",
                        left, self.spool.path)
        self._drop_producer(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        self.spool.close()

    def _drop_producer(self, timeout: float = 0) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=timeout)
            except Exception:  # closing is best effort; the spool keeps the data
                pass
            self._producer = None

    def _connect(self):
        from kafka import KafkaProducer
        from kafka.errors import KafkaConfigurationError, KafkaError

        s = self.settings
        try:
            ensure_topics(s, all_topics(s))
            producer = KafkaProducer(
                **client_kwargs(s),
                acks="all",
                enable_idempotence=True,
                compression_type=None if s.compression == "none" else s.compression,
                linger_ms=s.linger_ms,
                batch_size=1024 * 1024,
                max_request_size=max(s.max_message_bytes + 4096, 1024 * 1024),
                delivery_timeout_ms=s.delivery_timeout_ms,
                # kafka-python requires delivery_timeout > linger + request_timeout
                request_timeout_ms=max(1000, min(10_000, s.delivery_timeout_ms - s.linger_ms - 1000)),
                max_block_ms=10_000,
            )
        except KafkaConfigurationError as exc:
            raise ConfigError(f"invalid Kafka producer settings: {exc}") from None
        except KafkaError as exc:
            raise TransportError(f"cannot reach Kafka at {','.join(s.bootstrap_servers)}: {exc}") from None
        log.info("connected to Kafka at %s", ",".join(s.bootstrap_servers))
        if self.spool.in_flight() is not None:
            self._reconcile()
        return producer

    def _reconcile(self) -> None:
        """Drop from the spool what an earlier attempt got into Kafka without deleting it here.

        The forwarder marks each chunk in flight before producing it and clears the mark with the
        delete. A mark found now means a crash (or an unknown outcome) in between: the messages
        produced since the mark carry ``<spool id>:<seq>`` in the ``monitor.spool`` header, so the
        ones already in Kafka are found and not sent twice.
        """
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        mark = self.spool.in_flight()
        if mark is None:
            return
        first, last = mark["first"], mark["last"]
        prefix = f"{self.spool.id}:".encode()
        found: set[int] = set()
        try:
            consumer = KafkaConsumer(**client_kwargs(self.settings), group_id=None, enable_auto_commit=False)
            try:
                consumer.topics()
                tps = [TopicPartition(t, p) for t in all_topics(self.settings)
                       for p in sorted(consumer.partitions_for_topic(t) or ())]
                consumer.assign(tps)
                start = consumer.offsets_for_times({tp: mark["since_ms"] for tp in tps})
                end = consumer.end_offsets(tps)
                todo = {}
                for tp in tps:
                    if start.get(tp) is not None and start[tp].offset < end[tp]:
                        consumer.seek(tp, start[tp].offset)
                        todo[tp] = end[tp]
                deadline = time.monotonic() + 60
                while todo and time.monotonic() < deadline:
                    for tp, msgs in consumer.poll(timeout_ms=500).items():
                        for m in msgs:
                            for key, value in m.headers or ():
                                if key == "monitor.spool" and value.startswith(prefix):
                                    seq = int(value[len(prefix):])
                                    if first <= seq <= last:
                                        found.add(seq)
                    for tp in list(todo):
                        if consumer.position(tp) >= todo[tp]:
                            del todo[tp]
                if todo:
                    raise TransportError("could not read back the in-flight messages in time")
            finally:
                consumer.close()
        except KafkaError as exc:
            raise TransportError(f"cannot check which in-flight messages reached Kafka: {exc}") from None
        already = [m for m in self.spool.between(first, last) if m[0] in found]
        self.spool.delete(already, clear_in_flight=True)
        log.info("%d of the %d messages in flight when the last attempt ended were already in Kafka; "
                 "they are not sent again", len(already), last - first + 1)

    def _forward_loop(self) -> None:
        retry = Retrier(Backoff(0.2, 10.0), what="the Kafka forwarder", on_retry=self._retrying,
                        retry_unexpected=True)  # never let the forwarder die of a bug: the spool keeps everything
        while not self._stop.is_set():
            # Only this process appends to its spool, and an append wakes the wait: no need to poll.
            if not self.spool.wait(0.5, poll=0.5):
                self.spool.refresh_gauges()
                continue
            try:
                self._forward_chunk()
                retry.succeeded()
            except Exception as exc:
                try:
                    retry.wait(exc, self._stop)
                except Cancelled:
                    return
                except PermanentError as permanent:
                    self.metrics.broker_up.set(0)
                    log.error("the Kafka forwarder stopped: %s; retrying cannot help. The spool %s keeps every "
                              "message (%d now) for the next start", permanent, self.spool.path, self.spool.stats()[0])
                    return

    def _forward_chunk(self) -> None:
        """Produce the spool's head chunk and delete what the broker acknowledged; raises the first error."""
        if self._producer is None:
            self._producer = self._connect()
        chunk = self.spool.head(_CHUNK_MESSAGES, _CHUNK_BYTES)
        done, error = self._send(chunk)
        self.spool.delete(done, clear_in_flight=error is None)
        if error is not None:
            # An idempotent producer with expired batches must not be reused: start afresh.
            self._drop_producer()
            raise error
        if self._down_since is not None:
            log.info("Kafka is back after %.0fs; replaying the spool (%d messages left)",
                     time.time() - self._down_since, self.spool.stats()[0])
            self._down_since = None
        self.metrics.broker_up.set(1)

    def _retrying(self, exc: Exception, attempt: int, delay: float) -> None:
        if isinstance(exc, TransportError):
            self.metrics.broker_up.set(0)
            self._note_down(exc)
        else:
            log.error("unexpected error in the Kafka forwarder; retrying in %.1fs", delay, exc_info=exc)

    def _send(self, chunk: list[SpooledMessage]) -> tuple[list[SpooledMessage], TransportError | None]:
        """Produce ``chunk`` and wait for the acks; returns what was acknowledged and the first error."""
        from kafka.errors import KafkaError

        producer = self._producer
        futures = []
        spool_id = self.spool.id
        # 5 s of slack for clock differences between this host and the broker's log timestamps
        self.spool.mark_in_flight(chunk[0][0], chunk[-1][0], int(time.time() * 1000) - 5000)
        try:
            for m in chunk:
                futures.append((m, producer.send(m[1], key=m[2], value=m[3],
                                                 headers=[("monitor.spool", f"{spool_id}:{m[0]}".encode())])))
            producer.flush(timeout=self.settings.delivery_timeout_ms / 1000 + 5)
        except KafkaError as exc:
            err = TransportError(f"produce failed: {exc}")
        else:
            err = None
        done = []
        for m, fut in futures:
            if fut.succeeded():
                done.append(m)
                self.metrics.produced.labels(m[1]).inc()
            elif err is None:
                exc = fut.exception if fut.is_done else None
                err = TransportError(f"produce failed: {exc or 'no acknowledgement'}")
        if err is not None:
            self.metrics.produce_errors.inc(len(chunk) - len(done))
        return done, err

    def _note_down(self, exc: Exception) -> None:
        now = time.time()
        if self._down_since is None:
            self._down_since = now
        if now - self._last_down_log > 10:
            n, size, age = self.spool.stats()
            log.warning("Kafka unavailable (%s); spooling to %s: %d messages, %d bytes, oldest %.0fs",
                        exc, self.spool.path, n, size, age)
            self._last_down_log = now
