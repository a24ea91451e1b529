"""One inference_events row per request with both the client-seen and the engine-side timings.

The proxy injects its span's context upstream as ``traceparent``, so the
engine's own span (vLLM's ``llm_request``) is its child in the same trace.
The proxy keeps its span open after the response (its end time is fixed at
the response's last byte) until that child arrives through the receiver, at
most ``window_s``; then it copies the engine's timings onto its span and
marks the engine span ``monitor.joined_into``, so ingest writes one event
for the request and keeps both spans in ``otel_traces``.

Waiting starts only once the upstream has shown that it traces: in front of
a server that emits no spans, the proxy's spans are never held back. The
first engine span to arrive for a proxy span that did not wait teaches the
join that the upstream traces; that one request keeps a single event (the
proxy's, without engine timings) and every later one gets both. Where the
upstream is known to trace (``proxy.upstream_traces: yes``), spans wait from the
first request; ``no`` never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from monitor.otlp.codec import Signal

__all__ = ["EngineJoin", "ENGINE_KEYS"]

log = logging.getLogger("monitor.proxy")

_RECENT_MAX = 10_000

ENGINE_KEYS = (
    "gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token", "gen_ai.latency.e2e",
    "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode",
    "gen_ai.latency.time_in_model_inference", "gen_ai.latency.time_in_scheduler",
    "gen_ai.latency.time_in_model_forward", "gen_ai.latency.time_in_model_execute",
)
"""Engine timings (seconds) copied from the engine span onto the proxy's span."""


@dataclass
class _Open:
    span: Any
    end_ns: int | None = None
    deadline: float | None = None
    engine_seen: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class EngineJoin:
    def __init__(self, window_s: float = 10.0, upstream_traces: str = "auto"):
        if upstream_traces not in ("auto", "yes", "no"):
            raise ValueError(f"upstream_traces must be auto, yes or no, not {upstream_traces!r}")
        self.window_s = window_s
        self.mode = upstream_traces
        self.upstream_traces = upstream_traces == "yes"
        """Proxy spans wait for their engine span: from the start (``yes``), or once one joined (``auto``)."""
        self._open: dict[bytes, _Open] = {}
        self._recent: OrderedDict[bytes, float] = OrderedDict()
        """Proxy spans that ended without waiting (span id -> expiry), to recognise late engine spans."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.joined = 0

    def start(self) -> None:
        self._reaper = threading.Thread(target=self._reap, name="monitor-proxy-join", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        """End every span still waiting (their engine spans did not come in time)."""
        self._stop.set()
        with self._lock:
            waiting, self._open = list(self._open.values()), {}
        for entry in waiting:
            self._end(entry)

    # -- proxy side ----------------------------------------------------------------
    def register(self, span: Any) -> None:
        """A proxy span that may get an engine child (called when the request starts)."""
        key = span.get_span_context().span_id.to_bytes(8, "big")
        with self._lock:
            self._open[key] = _Open(span)

    def finish(self, span: Any, end_ns: int) -> None:
        """The response is done: end the span now, or after its engine span / the window."""
        key = span.get_span_context().span_id.to_bytes(8, "big")
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                span.end(end_time=end_ns)
                return
            entry.end_ns = end_ns
            if entry.engine_seen or not self.upstream_traces or self.window_s <= 0:
                del self._open[key]
                if not entry.engine_seen and self.window_s > 0:
                    self._recent[key] = time.monotonic() + self.window_s
                    while len(self._recent) > _RECENT_MAX:
                        self._recent.popitem(last=False)
            else:
                entry.deadline = time.monotonic() + self.window_s
                return
        self._end(entry)

    # -- receiver side: an Ingress processor -------------------------------------------
    def process(self, signal: Signal, msg: Message) -> None:
        if signal != "traces" or not (self._open or self._recent):
            return
        for rs in msg.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    parent = span.parent_span_id
                    if not parent:
                        continue
                    if parent in self._open:
                        self._join(span)
                    elif parent in self._recent:
                        self._learn(span)

    def _learn(self, engine_span: Any) -> None:
        """An engine span for a proxy span that already ended: the upstream traces."""
        if not any(kv.key in ENGINE_KEYS for kv in engine_span.attributes):
            return
        with self._lock:
            self._recent.pop(engine_span.parent_span_id, None)
            first = not self.upstream_traces and self.mode == "auto"
            self.upstream_traces = self.upstream_traces or first
        mark = engine_span.attributes.add()  # one event per request: the proxy's is already written
        mark.key = "monitor.joined_into"
        mark.value.string_value = engine_span.parent_span_id.hex()
        if first:
            log.info("the upstream traces its requests: proxy spans now wait up to %gs for the engine's "
                     "span to record both timings in one event", self.window_s)

    def _join(self, engine_span: Any) -> None:
        with self._lock:
            entry = self._open.get(engine_span.parent_span_id)
            if entry is None or entry.engine_seen:
                return
            attrs = {kv.key: kv.value for kv in engine_span.attributes}
            if not any(k in attrs for k in ENGINE_KEYS):
                return  # some other child span, not the engine's request span
            entry.engine_seen = True
            if self.mode == "auto":
                self.upstream_traces = True
            done = entry.end_ns is not None
            if done:
                del self._open[engine_span.parent_span_id]
        proxy = entry.span
        for k in ENGINE_KEYS:
            v = attrs.get(k)
            if v is not None and v.WhichOneof("value") in ("double_value", "int_value"):
                proxy.set_attribute(k, float(getattr(v, v.WhichOneof("value"))))
        proxy.set_attribute("monitor.engine.span_id", engine_span.span_id.hex())
        for k, target in (("gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
                          ("gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens")):
            v = attrs.get(k)
            if v is not None and v.WhichOneof("value") == "int_value" and target not in (proxy.attributes or {}):
                proxy.set_attribute(target, v.int_value)
        mark = engine_span.attributes.add()
        mark.key = "monitor.joined_into"
        mark.value.string_value = proxy.get_span_context().span_id.to_bytes(8, "big").hex()
        self.joined += 1
        if done:
            self._end(entry)

    # -- expiry ----------------------------------------------------------------------
    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                expired = [k for k, e in self._open.items() if e.deadline is not None and e.deadline <= now]
                entries = [self._open.pop(k) for k in expired]
                while self._recent and next(iter(self._recent.values())) <= now:
                    self._recent.popitem(last=False)
            for e in entries:
                self._end(e)

    @staticmethod
    def _end(entry: _Open) -> None:
        entry.span.end(end_time=entry.end_ns)

    def waiting(self) -> int:
        with self._lock:
            return len(self._open)
