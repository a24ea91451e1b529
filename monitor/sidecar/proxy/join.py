"""One inference_events row per request with both the client-seen and the engine-side timings.

The proxy injects its span's context upstream as ``traceparent``, so the
engine's own span (vLLM's ``llm_request``) is its child in the same trace.
Both reach the pipeline process: the proxy's as a capture record (after the
response ended, through the proxy's channel), the engine's as OTLP through the
receiver, in either order. The join holds the proxy's span until its engine
span arrived (at most ``window_s`` after the response), copies the engine's
timings onto it and marks the engine span ``monitor.joined_into``, so ingest
writes one event for the request and keeps both spans in ``otel_traces``.

It knows a proxy span is coming before the record arrives: the proxy announces
each captured request's span id when it forwards it
(:class:`~monitor.sidecar.proxy.record.CaptureStart`). An engine span whose
parent was announced is marked and its timings kept until the record comes.

Waiting starts only once the upstream has shown that it traces: in front of a
server that emits no spans, the proxy's spans are never held back. The first
engine span that arrives for a proxy span already sent on teaches the join
that the upstream traces (``proxy.upstream_traces: auto``); that one request
keeps a single event (the proxy's, without engine timings) and every later one
gets both. ``yes``: wait from the first request; ``no``: never wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from monitor.otlp.codec import Signal
from monitor.otlp.genai import JOINED_KEY
from monitor.sidecar.proxy.spans import kv

__all__ = ["EngineJoin", "ENGINE_KEYS"]

log = logging.getLogger("monitor.proxy")

_MAX_OPEN = 100_000
"""Announced requests held at once; past it the oldest are given up (their spans go without waiting)."""
_RECENT_MAX = 10_000

ENGINE_KEYS = (
    "gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token", "gen_ai.latency.e2e",
    "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode",
    "gen_ai.latency.time_in_model_inference", "gen_ai.latency.time_in_scheduler",
    "gen_ai.latency.time_in_model_forward", "gen_ai.latency.time_in_model_execute",
)
"""Engine timings (seconds) copied from the engine span onto the proxy's span."""
_TOKENS = (("gen_ai.usage.prompt_tokens", "gen_ai.usage.input_tokens"),
           ("gen_ai.usage.completion_tokens", "gen_ai.usage.output_tokens"))


@dataclass
class _Open:
    announced: float
    span: Any = None
    """The proxy's span (protobuf), once its record arrived."""
    engine: dict[str, Any] | None = None
    """Timings, tokens and the span id of the engine's span, once it arrived."""
    deadline: float | None = None


class EngineJoin:
    """Thread-safe. ``emit(span)`` receives every proxy span when it is complete (joined or not)."""

    def __init__(self, emit: Callable[[Any], None], window_s: float = 10.0, upstream_traces: str = "auto"):
        if upstream_traces not in ("auto", "yes", "no"):
            raise ValueError(f"upstream_traces must be auto, yes or no, not {upstream_traces!r}")
        self.emit = emit
        self.window_s = window_s
        self.mode = upstream_traces
        self.upstream_traces = upstream_traces == "yes"
        """Proxy spans wait for their engine span: from the start (``yes``), or once one joined (``auto``)."""
        self._open: OrderedDict[bytes, _Open] = OrderedDict()
        self._recent: OrderedDict[bytes, float] = OrderedDict()
        """Proxy spans sent on without waiting (span id -> expiry), to recognise late engine spans."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.joined = 0

    def start(self) -> None:
        self._reaper = threading.Thread(target=self._reap, name="monitor-join", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        """Send every span still waiting (their engine spans did not come in time)."""
        self._stop.set()
        with self._lock:
            waiting = [e.span for e in self._open.values() if e.span is not None]
            self._open.clear()
        for span in waiting:
            self.emit(span)

    # -- proxy side ------------------------------------------------------------------------

    def announce(self, span_id: bytes) -> None:
        """A captured request went upstream with this span id (its record follows)."""
        if self.mode == "no" or self.window_s <= 0:
            return
        with self._lock:
            self._open[span_id] = _Open(time.monotonic())
            while len(self._open) > _MAX_OPEN:
                _, old = self._open.popitem(last=False)
                if old.span is not None:
                    self.emit(old.span)

    def add(self, span: Any) -> None:
        """The proxy's span, built from its record: sent on now, or after its engine span / the window."""
        key = span.span_id
        with self._lock:
            entry = self._open.get(key)
            if entry is not None and entry.engine is not None:
                del self._open[key]
                self._apply(span, entry.engine)
            elif entry is not None and self.upstream_traces and self.window_s > 0:
                entry.span = span
                entry.deadline = time.monotonic() + self.window_s
                return
            else:
                self._open.pop(key, None)
                if self.window_s > 0 and self.mode != "no":
                    self._recent[key] = time.monotonic() + self.window_s
                    while len(self._recent) > _RECENT_MAX:
                        self._recent.popitem(last=False)
        self.emit(span)

    # -- receiver side: an Ingress processor ---------------------------------------------------

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
                        self._engine(span)
                    elif parent in self._recent:
                        self._learn(span)

    def _engine(self, engine_span: Any) -> None:
        attrs = {a.key: a.value for a in engine_span.attributes}
        if not any(k in attrs for k in ENGINE_KEYS):
            return  # some other child span, not the engine's request span
        timings = {"span_id": engine_span.span_id.hex()}
        for k in ENGINE_KEYS:
            v = attrs.get(k)
            if v is not None and v.WhichOneof("value") in ("double_value", "int_value"):
                timings[k] = float(getattr(v, v.WhichOneof("value")))
        for src, target in _TOKENS:
            v = attrs.get(src)
            if v is not None and v.WhichOneof("value") == "int_value":
                timings[target] = v.int_value
        done = None
        with self._lock:
            entry = self._open.get(engine_span.parent_span_id)
            if entry is None or entry.engine is not None:
                return
            entry.engine = timings
            if self.mode == "auto" and not self.upstream_traces:
                self.upstream_traces = True
                log.info("the upstream traces its requests: proxy spans now wait up to %gs for the engine's "
                         "span to record both timings in one event", self.window_s)
            if entry.span is not None:
                del self._open[engine_span.parent_span_id]
                done = entry.span
                self._apply(done, timings)
        engine_span.attributes.append(kv(JOINED_KEY, engine_span.parent_span_id.hex()))
        if done is not None:
            self.emit(done)

    def _learn(self, engine_span: Any) -> None:
        """An engine span for a proxy span that was sent on: the upstream traces."""
        if not any(a.key in ENGINE_KEYS for a in engine_span.attributes):
            return
        with self._lock:
            self._recent.pop(engine_span.parent_span_id, None)
            first = not self.upstream_traces and self.mode == "auto"
            self.upstream_traces = self.upstream_traces or first
        # one event per request: the proxy's is already on its way
        engine_span.attributes.append(kv(JOINED_KEY, engine_span.parent_span_id.hex()))
        if first:
            log.info("the upstream traces its requests: proxy spans now wait up to %gs for the engine's "
                     "span to record both timings in one event", self.window_s)

    def _apply(self, span: Any, timings: dict[str, Any]) -> None:
        have = {a.key for a in span.attributes}
        extra = [kv(k, v) for k, v in timings.items() if k in ENGINE_KEYS]
        extra.append(kv("monitor.engine.span_id", timings["span_id"]))
        for _, target in _TOKENS:
            if target in timings and target not in have:
                extra.append(kv(target, int(timings[target])))
        span.attributes.extend(extra)
        self.joined += 1

    # -- expiry -------------------------------------------------------------------------------

    def _reap(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            due = []
            with self._lock:
                for key in list(self._open):
                    e = self._open[key]
                    if e.deadline is not None and e.deadline <= now:
                        due.append(self._open.pop(key).span)
                    elif e.span is None and now - e.announced > 2 * self.window_s + 600:
                        del self._open[key]  # announced, never recorded (the proxy dropped it)
                while self._recent and next(iter(self._recent.values())) <= now:
                    self._recent.popitem(last=False)
            for span in due:
                self.emit(span)

    def waiting(self) -> int:
        with self._lock:
            return sum(1 for e in self._open.values() if e.span is not None)
