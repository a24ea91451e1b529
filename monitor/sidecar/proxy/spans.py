"""The proxy's spans: an OpenTelemetry SDK tracer whose exporter hands batches to the emitter.

The SDK's BatchSpanProcessor gives a bounded queue and a background export
thread: ending a span never waits on monitoring, and when the queue is full
spans are dropped (the SDK logs it) rather than the request slowed down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from monitor.sidecar.emitter import Emitter

__all__ = ["EmitterSpanExporter", "tracer_provider"]

log = logging.getLogger("monitor.proxy")


class EmitterSpanExporter(SpanExporter):
    """Encodes finished spans as an OTLP request and emits them into the local pipeline."""

    def __init__(self, emitter: Emitter):
        self.emitter = emitter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.emitter.emit("traces", encode_spans(spans))
        except Exception:  # the emitter counts its own drops; anything else must not kill the exporter
            log.exception("could not hand %d proxy spans to the pipeline", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def tracer_provider(service_name: str, emitter: Emitter, max_queue: int) -> TracerProvider:
    """A provider of the proxy's own (never the global one), exporting every 200 ms."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(
        EmitterSpanExporter(emitter), max_queue_size=max_queue, schedule_delay_millis=200,
        max_export_batch_size=min(512, max_queue)))
    return provider
