"""What both OTLP front ends (and the in-process sources) do with a request: decode, validate,
process, publish, count -- off the event loop.

Work that grows with the request (inflating gzip, parsing protobuf or JSON,
validation, the processors: engine join, GPU cost, redaction; writing the
spool) runs on a small pool of worker threads, never on the receiver's event
loop: one huge request delays only itself. The number of requests in that
pipeline at once is bounded (``receiver.max_in_flight``); past it a request
is refused at once with :class:`~monitor.errors.Overloaded` (503 /
UNAVAILABLE + Retry-After), so saturation is answered within a second instead
of queueing without bound.

Returns ``(rejected, reason)`` for partial success.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from google.protobuf.message import Message

from monitor.errors import Overloaded
from monitor.otlp.codec import Signal, item_count
from monitor.otlp.validate import reject_invalid
from monitor.selfmetrics import SelfMetrics
from monitor.transport.base import Transport

__all__ = ["Ingress", "Processor"]

log = logging.getLogger("monitor.receiver")

Processor = Callable[[Signal, Message], "bytes | None"]
"""In-place transformation of a request before it leaves the receiver (engine join, cost, redaction).
It may return the request's wire form as it now is (``msg.SerializeToString()``) when it has it at
hand anyway -- redaction's prefilter serializes the request to scan it -- so the transport stores
those bytes instead of encoding the request again; else None."""


class Ingress:
    def __init__(self, transport: Transport, metrics: SelfMetrics, processors: list[Processor] | None = None,
                 workers: int = 2, max_in_flight: int = 64, retry_after: float = 1.0):
        self.transport = transport
        self.metrics = metrics
        self.processors = processors or []
        self.max_in_flight = max_in_flight
        self.retry_after = retry_after
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="monitor-ingress")
        self._in_flight = 0
        self._lock = threading.Lock()
        self._overload_logged = False

    async def export(self, signal: Signal, msg: Message, protocol: str) -> tuple[int, str]:
        """A decoded request (in-process sources)."""
        return await self.export_with(signal, lambda: msg, protocol)

    async def export_with(self, signal: Signal, decode: Callable[[], Message], protocol: str) -> tuple[int, str]:
        """``decode()`` (raising DecodeError for bad bytes), then validate, process and publish, all on a
        worker thread. Raises Overloaded when ``max_in_flight`` requests are already in the pipeline."""
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                full = True
            else:
                full = False
                self._in_flight += 1
        if full:
            self.metrics.requests.labels(signal, protocol, "overloaded").inc()
            self._note_overload(f"{self.max_in_flight} requests already in the pipeline")
            raise Overloaded(f"receiver busy ({self.max_in_flight} requests in the pipeline)",
                             retry_after=self.retry_after)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self._export, signal, decode, protocol)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _export(self, signal: Signal, decode: Callable[[], Message], protocol: str) -> tuple[int, str]:
        msg = decode()
        total = item_count(signal, msg)
        rejected, reason = reject_invalid(signal, msg)
        if rejected:
            self.metrics.rejected.labels(signal, protocol, "invalid").inc(rejected)
        wire = None
        for process in self.processors:
            wire = process(signal, msg)  # only the last one's bytes can be the request as it is now
        accepted = total - rejected
        if accepted > 0:
            try:
                result = self.transport.publish(signal, msg, wire)
            except Overloaded as exc:
                self.metrics.rejected.labels(signal, protocol, "overloaded").inc(accepted)
                self.metrics.requests.labels(signal, protocol, "overloaded").inc()
                self._note_overload(str(exc))
                raise
            self._overload_logged = False
            if result.rejected:
                self.metrics.rejected.labels(signal, protocol, "too_large").inc(result.rejected)
                rejected += result.rejected
                reason = "; ".join(r for r in (reason, result.reason) if r)
                accepted -= result.rejected
        self.metrics.received.labels(signal, protocol).inc(accepted)
        self.metrics.requests.labels(signal, protocol, "partial" if rejected else "ok").inc()
        return rejected, reason

    def _note_overload(self, why: str) -> None:
        if not self._overload_logged:
            log.warning("pipeline saturated, answering 503/UNAVAILABLE with Retry-After: %s", why)
            self._overload_logged = True

    def close(self) -> None:
        self._pool.shutdown(wait=True)
