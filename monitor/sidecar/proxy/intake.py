"""The pipeline's end of the capture proxy: records in, GenAI spans out, joined with the engine's.

Frames arrive from the proxy process(es) (:mod:`monitor.sidecar.proxy.channel`):
a :class:`CaptureStart` is handed to the join at once; a :class:`CaptureRecord`
is queued (bounded: when the pipeline falls behind, records are dropped and
counted, never the proxy slowed) and turned into a span on a worker thread
(:func:`record_to_span`), then joined with the engine's span
(:class:`EngineJoin`) and exported in batches (every ``_FLUSH_S`` or
``_BATCH`` spans) through the emitter, the path every in-process source takes
into the receiver's processors (redaction, cost) and the transport.

With ``proxy.shadow`` rules, each record (once it is a span: the client's response has ended) is
offered to the :class:`~monitor.sidecar.proxy.shadow.ShadowSender`; the shadow copies' records come
back into the same queue and become spans the same way.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from monitor.config import ClientsSettings, ProxySettings
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.emitter import Emitter
from monitor.sidecar.proxy.join import EngineJoin
from monitor.sidecar.proxy.record import CaptureRecord, CaptureStart
from monitor.sidecar.proxy.shadow import RULE_ATTR, ShadowSender
from monitor.sidecar.proxy.spans import kv, record_to_span

__all__ = ["CaptureIntake"]

log = logging.getLogger("monitor.proxy")

_BATCH = 256
_FLUSH_S = 0.1
_MAX_QUEUE = 20_000


class CaptureIntake:
    def __init__(self, settings: ProxySettings, emitter: Emitter, metrics: SelfMetrics,
                 clients: ClientsSettings | None = None, secret: bytes | None = None):
        """``clients`` and ``secret`` (:func:`monitor.otlp.identity.resolve_secret`): each span gets
        the client's identity from its record (:func:`record_to_span`)."""
        self.settings = settings
        self.clients = clients
        self.secret = secret
        self.emitter = emitter
        self.metrics = metrics
        self.join = EngineJoin(self._ready, settings.engine_join_window_s, settings.upstream_traces)
        self._records: deque[CaptureRecord] = deque()
        self._spans: list[Any] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0
        self.records = 0
        self.resource = [kv("service.name", settings.service_name), kv("host.name", socket.gethostname())]
        self.shadow: ShadowSender | None = None
        if settings.shadow:
            self.shadow = ShadowSender(settings, metrics, self._shadow_record,
                                       announce=lambda trace_id, span_id: self.join.announce(span_id))

    def processor(self):
        """The receiver-side half of the join: an Ingress processor seeing the engine's spans."""
        return self.join.process

    def start(self) -> None:
        self.join.start()
        self._thread = threading.Thread(target=self._work, name="monitor-capture", daemon=True)
        self._thread.start()
        if self.shadow is not None:
            self.shadow.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Turn the queued records into spans, end the waiting ones, export everything."""
        if self.shadow is not None:
            self.shadow.stop(timeout)  # copies in flight first: their records join the queue
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.join.stop()
        self._flush()

    # -- frames from the proxy (the receiver's event loop) ----------------------------------------

    def on_frame(self, frame: CaptureRecord | CaptureStart) -> None:
        if isinstance(frame, CaptureStart):
            self.join.announce(frame.span_id)
            return
        with self._lock:
            if len(self._records) >= _MAX_QUEUE:
                self.metrics.capture_dropped.labels("pipeline_behind").inc()
                self._say("capture records dropped: the pipeline is %d records behind" % len(self._records))
                return
            self._records.append(frame)
        self._wake.set()

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        next_flush = time.monotonic() + _FLUSH_S
        while True:
            self._wake.wait(max(0.0, next_flush - time.monotonic()))
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._records:
                        break
                    rec = self._records.popleft()
                try:
                    span = record_to_span(rec, self.settings, self.clients, self.secret)
                except Exception:
                    self.metrics.proxy_capture_errors.inc()
                    self._say("a capture record could not become a span; it is dropped", exc_info=True)
                    continue
                self.records += 1
                if self.shadow is not None:
                    self._shadow_step(rec, span)
                self.join.add(span)
            if time.monotonic() >= next_flush or len(self._spans) >= _BATCH:
                self._flush()
                next_flush = time.monotonic() + _FLUSH_S
            if self._stop.is_set():
                with self._lock:
                    if not self._records:
                        return

    def _shadow_record(self, rec: CaptureRecord) -> None:
        """A shadow copy's record (from the shadow loop): queued like the proxy's."""
        self.on_frame(rec)

    def _shadow_step(self, rec: CaptureRecord, span: Any) -> None:
        """Offer a primary record for shadowing; count a shadow answer's tokens against its budget."""
        assert self.shadow is not None
        rule = rec.attributes.get(RULE_ATTR)
        if rule is None:
            try:
                self.shadow.offer(rec)
            except Exception:
                self._say("shadow traffic: a record could not be offered", exc_info=True)
            return
        tokens = sum(a.value.int_value for a in span.attributes
                     if a.key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"))
        self.shadow.spent(int(rule), tokens)

    def _ready(self, span: Any) -> None:
        """A proxy span is complete (joined, or done waiting): export it with the next batch."""
        with self._lock:
            self._spans.append(span)
            full = len(self._spans) >= _BATCH
        if full:
            self._wake.set()

    def _flush(self) -> None:
        with self._lock:
            spans, self._spans = self._spans, []
        if not spans:
            return
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(self.resource)
        ss = rs.scope_spans.add()
        ss.scope.name = "monitor.proxy"
        ss.spans.extend(spans)
        if not self.emitter.emit("traces", req):
            self.metrics.capture_dropped.labels("pipeline_full").inc(len(spans))

    def _say(self, msg: str, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            log.warning(msg, exc_info=exc_info)

    def waiting(self) -> int:
        """Spans held for their engine span, and records not yet turned into spans."""
        with self._lock:
            queued = len(self._records) + len(self._spans)
        return queued + self.join.waiting()
