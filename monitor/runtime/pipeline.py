"""The data plane: everything that takes telemetry in and makes it durable, and nothing else.

    OTLP gRPC/HTTP ──▶ receiver ─┐
    capture proxy(s) ──▶ intake ─┼─▶ ingress (worker threads: decode, validate, join, cost, redact) ─▶ spool
    /metrics scrape, NVML ───────┘                                                                     │
                                                            Kafka forwarder (sidecar) or the store process (up)

It runs in a process of its own (``monitor up``'s pipeline child, or ``monitor
sidecar``), so nothing the analysis side does -- a check embedding thousands of
texts, a 7-day dashboard page, a burst of inserts -- shares its interpreter.
The capture proxy runs in yet another process and hands its records over a
Unix socket (:mod:`monitor.sidecar.proxy.channel`), listened to here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import threading
from pathlib import Path

from monitor.config import Settings
from monitor.receiver.ingress import Ingress
from monitor.runtime.receiver_service import ReceiverService
from monitor.runtime.sources import PipelineSources
from monitor.selfmetrics import SelfMetrics
from monitor.transport.spool import Spool

__all__ = ["Pipeline", "capture_socket_path"]

log = logging.getLogger("monitor")

_MAX_UNIX_PATH = 100


def capture_socket_path(settings: Settings, spool_path: Path) -> Path:
    """Where the proxy sends its records: beside the spool (a Unix socket path must stay short;
    a long one is replaced by a per-spool name in the temporary directory)."""
    if settings.proxy.capture_socket:
        return Path(settings.proxy.capture_socket)
    path = spool_path.resolve().parent / "capture.sock"
    if len(str(path)) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"llm-monitor-{digest}.sock"


class Pipeline:
    """Receiver, processors, in-process sources and the capture intake over one transport.

    ``embedded``: the transport is the local spool the store process drains (``monitor up``);
    else the spool feeds the Kafka forwarder (``monitor sidecar``)."""

    def __init__(self, settings: Settings, metrics: SelfMetrics, embedded: bool):
        s = settings
        self.settings = settings
        self.metrics = metrics
        self.embedded = embedded
        spool_path = s.embedded_spool_path() if embedded else s.spool.path
        self.spool = Spool(spool_path, s.spool.max_bytes, metrics, s.spool.synchronous, s.receiver.retry_after_s)
        if embedded:
            from monitor.transport.local import LocalTransport
            self.transport = LocalTransport(self.spool, s.kafka)
        else:
            from monitor.transport.kafka import KafkaTransport
            self.transport = KafkaTransport(s.kafka, self.spool, metrics)
        self.sources = PipelineSources(s, metrics)
        self.capture = self.sources.make_capture()
        self.ingress = Ingress(self.transport, metrics, self.sources.processors(self.capture),
                               workers=s.receiver.workers, max_in_flight=s.receiver.max_in_flight,
                               retry_after=s.receiver.retry_after_s)
        self.receiver = ReceiverService(s.receiver, self.ingress, grace=s.shutdown_grace_s)
        self.socket_path = capture_socket_path(s, spool_path) if self.capture is not None else None
        self._records = None
        self._stopping = threading.Event()
        log.info("spool: %s (limit %d MiB)", self.spool.path.resolve(), s.spool.max_bytes // (1024 * 1024))

    def start(self) -> None:
        self.transport.start()
        self.receiver.start()
        # the store process deletes what it stored: keep this process's spool figures current
        self._gauges = threading.Thread(target=self._refresh_gauges, name="monitor-spool-gauges", daemon=True)
        self._gauges.start()
        self.sources.bind(self.ingress, self.receiver.loop)
        self.sources.start()
        if self.capture is not None:
            from monitor.sidecar.proxy.channel import RecordReceiver

            self._records = RecordReceiver(str(self.socket_path), self.capture.on_frame)
            asyncio.run_coroutine_threadsafe(self._records.start(), self.receiver.loop).result(30)
            log.info("capture records from the proxy on %s", self.socket_path)
        if not self.embedded:
            k = self.settings.kafka
            log.info("forwarding to Kafka at %s (topics %s, %s, %s)", ",".join(k.bootstrap_servers), k.spans_topic,
                     k.metrics_topic, k.logs_topic)

    def _refresh_gauges(self) -> None:
        while not self._stopping.wait(1.0):
            try:
                self.spool.refresh_gauges()
            except Exception:  # the spool closed under us at shutdown
                return

    def stop(self) -> None:
        """Stop taking data in (the proxy is stopped before this), make what was taken durable."""
        self._stopping.set()
        if self._records is not None and self.receiver.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._records.close(), self.receiver.loop).result(10)
            except Exception:
                log.exception("could not close the capture socket")
        self.sources.stop()
        self.receiver.stop()
        self.ingress.close()
        # What the spool holds is durable: forward for a moment more, the rest goes at the next start.
        self.transport.close(timeout=self.settings.shutdown_grace_s)
