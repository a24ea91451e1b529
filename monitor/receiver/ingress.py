"""What both OTLP front ends do with a decoded request: validate, publish, count.

Returns ``(rejected, reason)`` for partial success; raises
:class:`~monitor.errors.Overloaded` when the pipeline is saturated (the front
end maps it to 503/UNAVAILABLE with Retry-After).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import Message

from monitor.errors import Overloaded
from monitor.otlp.codec import Signal, item_count
from monitor.otlp.validate import reject_invalid
from monitor.selfmetrics import SelfMetrics
from monitor.transport.base import Transport

__all__ = ["Ingress", "Processor"]

log = logging.getLogger("monitor.receiver")

Processor = Callable[[Signal, Message], None]
"""Pure, in-place transformation of a request before it leaves the receiver (redaction, sampling)."""


class Ingress:
    def __init__(self, transport: Transport, metrics: SelfMetrics, processors: list[Processor] | None = None):
        self.transport = transport
        self.metrics = metrics
        self.processors = processors or []
        self._overload_logged = False

    async def export(self, signal: Signal, msg: Message, protocol: str) -> tuple[int, str]:
        total = item_count(signal, msg)
        rejected, reason = reject_invalid(signal, msg)
        if rejected:
            self.metrics.rejected.labels(signal, protocol, "invalid").inc(rejected)
        for process in self.processors:
            process(signal, msg)
        accepted = total - rejected
        if accepted > 0:
            try:
                result = await self.transport.publish(signal, msg)
            except Overloaded as exc:
                self.metrics.rejected.labels(signal, protocol, "overloaded").inc(accepted)
                self.metrics.requests.labels(signal, protocol, "overloaded").inc()
                if not self._overload_logged:
                    log.warning("pipeline saturated, answering 503/UNAVAILABLE with Retry-After: %s", exc)
                    self._overload_logged = True
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
