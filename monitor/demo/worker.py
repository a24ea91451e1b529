"""The reference server's model worker: one thread running the demo model, vLLM-shaped spans
and vLLM-named Prometheus metrics. See :mod:`monitor.demo.server` for the whole picture."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from monitor.demo.model import DemoModel, GenerateResult, seeded_rng

__all__ = ["DEFAULT_BLOCKED_TOPICS", "REFUSAL", "DONE", "ModelWorker", "Metrics", "Work", "RequestError"]


log = logging.getLogger("monitor.demo")

DEFAULT_BLOCKED_TOPICS: tuple[str, ...] = ("weapon", "bomb", "explosive", "malware", "ransomware",
                                           "keylogger", "poison")
REFUSAL = "I'm sorry, but I can't help with that."
DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_CAP = 512

# vLLM's buckets, with finer ones at the low end (this model is fast).
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
                    20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class RequestError(Exception):
    """An OpenAI-shaped client error."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.type = message, param, status, code, type_

    def response(self) -> web.Response:
        return web.json_response({"error": {"message": self.message, "type": self.type, "param": self.param,
                                            "code": self.code}}, status=self.status)


# -- metrics -----------------------------------------------------------------------------------

class Metrics:
    """vLLM's Prometheus names in a registry of the server's own."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ("model_name", "engine")
        self.labels = {"model_name": model_name, "engine": "0"}
        self.running = Gauge("vllm:num_requests_running", "Requests in the model now.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for the model.", labels, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc",
                              "Fraction of the context window (KV cache) used by running requests (0..1).",
                              labels, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generation tokens processed.", labels,
                                         registry=r)
        self.success = Counter("vllm:request_success", "Finished requests.", (*labels, "finished_reason"),
                               registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions (always 0 here).", labels, registry=r)
        h = {"labelnames": labels, "registry": r}
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.",
                              buckets=_TTFT_BUCKETS, **h)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", buckets=_ITL_BUCKETS, **h)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.",
                             buckets=_LATENCY_BUCKETS, **h)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Time in the waiting queue.",
                               buckets=_LATENCY_BUCKETS, **h)
        self.prefill = Histogram("vllm:request_prefill_time_seconds", "Time in prefill.",
                                 buckets=_LATENCY_BUCKETS, **h)
        self.decode = Histogram("vllm:request_decode_time_seconds", "Time in decode.", buckets=_LATENCY_BUCKETS, **h)
        self.inference = Histogram("vllm:request_inference_time_seconds", "Time in the model.",
                                   buckets=_LATENCY_BUCKETS, **h)
        for g in (self.running, self.waiting, self.kv_usage, self.prompt_tokens, self.generation_tokens,
                  self.preemptions):
            g.labels(**self.labels)  # present (at 0) from the start
        for reason in ("stop", "length", "abort"):
            self.success.labels(**self.labels, finished_reason=reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- one request's bookkeeping ------------------------------------------------------------

@dataclass
class Work:
    """What a request asks of the model, and its timestamps (perf_counter) once served."""

    kind: str  # "chat" | "completion" | "embedding"
    request_id: str
    prompt: str = ""
    inputs: list[list[int]] = field(default_factory=list)  # embeddings
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1
    refusal: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    arrival_ns: int = field(default_factory=time.time_ns)
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    result: GenerateResult | None = None
    embeddings: list[list[float]] | None = None
    prompt_tokens: int = 0


DONE = object()
"""Sentinel a streaming consumer receives after the last piece."""


class ModelWorker:
    """The model, its one worker thread, metrics and tracing; independent of HTTP."""

    def __init__(self, model: DemoModel, model_name: str = "monitor-demo-tiny", *, seed: int = 0,
                 slowdown: float = 1.0, otlp_endpoint: str | None = None,
                 tracer_provider: TracerProvider | None = None,
                 blocked_topics: Sequence[str] | None = DEFAULT_BLOCKED_TOPICS,
                 max_tokens_cap: int = MAX_TOKENS_CAP) -> None:
        self.model = model
        self.model_name = model_name
        self.slowdown = float(slowdown)
        self.max_tokens_cap = max_tokens_cap
        self.created = int(time.time())
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.metrics = Metrics(model_name)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-model")
        self._own_provider = False
        if tracer_provider is None and otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider = TracerProvider(resource=Resource.create({"service.name": f"{model_name}-server"}))
            tracer_provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True), schedule_delay_millis=1000))
            self._own_provider = True
        self.tracer_provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("monitor.demo") if tracer_provider is not None else None
        self.otlp_endpoint = otlp_endpoint
        topics = [t.strip().lower() for t in (blocked_topics or ()) if t and t.strip()]
        self.blocked_topics = topics
        self._blocked = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in topics) + ")", re.I) if topics else None
        self._noop = trace.NoOpTracer()

    # -- policy ------------------------------------------------------------------------------

    def is_blocked(self, text: str) -> bool:
        return self._blocked is not None and self._blocked.search(text) is not None

    # -- running work --------------------------------------------------------------------------

    async def run(self, work: Work, on_piece: Callable[[str], None] | None = None) -> Work:
        """Queue ``work`` for the worker thread; ``on_piece`` gets text as it is generated (on the loop)."""
        loop = asyncio.get_running_loop()
        m, lab = self.metrics, self.metrics.labels
        if work.refusal:  # the policy answers without the model
            work.scheduled = work.arrival
            work.first_token = work.last_token = time.perf_counter()
            if on_piece is not None:
                for ch in REFUSAL:
                    on_piece(ch)
            work.finished = time.perf_counter()
            work.prompt_tokens = len(work.prompt.encode("utf-8"))
            return work
        push: Callable[[str], None] | None = None
        if on_piece is not None:
            callback = on_piece
            push = lambda piece: loop.call_soon_threadsafe(callback, piece)  # noqa: E731
        m.waiting.labels(**lab).inc()
        try:
            await loop.run_in_executor(self.executor, self._serve, work, push)
        finally:
            if work.scheduled is None:  # never started (executor shut down)
                m.waiting.labels(**lab).dec()
        return work

    def _serve(self, work: Work, push: Callable[[str], None] | None) -> None:
        """On the worker thread."""
        m, lab = self.metrics, self.metrics.labels
        work.scheduled = time.perf_counter()
        m.waiting.labels(**lab).dec()
        m.running.labels(**lab).inc()
        try:
            if work.kind == "embedding":
                work.embeddings = [self.model.embed(ids) for ids in work.inputs]
                work.prompt_tokens = sum(len(ids) for ids in work.inputs)
                return
            if work.temperature > 0:
                if work.seed is not None:
                    rng = seeded_rng(work.seed)
                else:
                    with self._rng_lock:
                        rng = seeded_rng(self._rng.getrandbits(63))
            else:
                rng = None
            window = float(self.model.context_window)

            def on_token(piece: str, context_len: int) -> bool:
                if context_len < 0:  # text held back for a stop string, released at the end
                    if piece and push is not None:
                        push(piece)
                    return True
                now = time.perf_counter()
                if work.first_token is None:
                    work.first_token = now
                elif work.last_token is not None:
                    m.itl.labels(**lab).observe(now - work.last_token)
                work.last_token = now
                m.kv_usage.labels(**lab).set(min(1.0, context_len / window))
                if piece and push is not None:
                    push(piece)
                return not work.cancelled.is_set()

            work.result = self.model.generate(
                work.prompt, max_tokens=work.max_tokens, temperature=work.temperature, top_p=work.top_p,
                rng=rng, stop=work.stop, presence_penalty=work.presence_penalty,
                frequency_penalty=work.frequency_penalty, slowdown=lambda: self.slowdown, on_token=on_token,
                tracer=self._noop, operation="chat" if work.kind == "chat" else "text_completion",
                model_name=self.model_name)
            work.prompt_tokens = work.result.prompt_tokens
        finally:
            work.finished = time.perf_counter()
            m.running.labels(**lab).dec()
            m.kv_usage.labels(**lab).set(0.0)

    # -- accounting ------------------------------------------------------------------------------

    def finish_reason(self, work: Work) -> str:
        if work.refusal or work.kind == "embedding":
            return "stop"
        assert work.result is not None
        return work.result.finish_reason

    def completion_tokens(self, work: Work) -> int:
        if work.refusal:
            return len(REFUSAL.encode("utf-8"))
        return work.result.completion_tokens if work.result is not None else 0

    def timings(self, work: Work) -> dict[str, float]:
        """vLLM's latencies of a finished request, in seconds."""
        t: dict[str, float] = {}
        end = work.finished if work.finished is not None else time.perf_counter()
        t["e2e"] = end - work.arrival
        if work.scheduled is not None:
            t["time_in_queue"] = work.scheduled - work.arrival
        if work.first_token is not None:
            t["time_to_first_token"] = work.first_token - work.arrival
        gen = work.result.generation if work.result is not None else None
        if gen is not None and gen.prefill_time is not None:
            t["time_in_model_prefill"] = gen.prefill_time
            t["time_in_model_decode"] = gen.decode_time or 0.0
            t["time_in_model_inference"] = gen.inference_time or 0.0
        elif work.refusal:
            t.update(time_in_model_prefill=0.0, time_in_model_decode=0.0, time_in_model_inference=0.0)
        elif work.kind == "embedding" and work.scheduled is not None:
            t.update(time_in_model_prefill=end - work.scheduled, time_in_model_decode=0.0,
                     time_in_model_inference=end - work.scheduled)
        return t

    def record(self, work: Work, headers: Any, status_error: str | None = None) -> None:
        """Metrics and the ``llm_request`` span of a finished request."""
        m, lab = self.metrics, self.metrics.labels
        reason = "abort" if status_error else self.finish_reason(work)
        completion = self.completion_tokens(work)
        t = self.timings(work)
        m.prompt_tokens.labels(**lab).inc(work.prompt_tokens)
        m.generation_tokens.labels(**lab).inc(completion)
        m.success.labels(**lab, finished_reason=reason).inc()
        m.e2e.labels(**lab).observe(t["e2e"])
        for key, hist in (("time_in_queue", m.queue), ("time_to_first_token", m.ttft),
                          ("time_in_model_prefill", m.prefill), ("time_in_model_decode", m.decode),
                          ("time_in_model_inference", m.inference)):
            if key in t:
                hist.labels(**lab).observe(t[key])
        if self.tracer is None:
            return
        attrs: dict[str, Any] = {
            "gen_ai.response.model": self.model_name,
            "gen_ai.request.id": work.request_id,
            "gen_ai.usage.prompt_tokens": work.prompt_tokens,
            "gen_ai.usage.completion_tokens": completion,
            "gen_ai.response.finish_reasons": json.dumps([reason]),
        }
        if work.kind != "embedding":
            attrs.update({"gen_ai.request.temperature": work.temperature, "gen_ai.request.top_p": work.top_p,
                          "gen_ai.request.max_tokens": work.max_tokens, "gen_ai.request.n": work.n})
        for key, value in t.items():
            attrs[f"gen_ai.latency.{key}"] = value
        gen = work.result.generation if work.result is not None else None
        if gen is not None:
            attrs.update({"monitor.torch.forward_passes": gen.forward_passes, "monitor.torch.device": gen.device,
                          "monitor.torch.peak_memory_bytes": gen.peak_memory_bytes})
        if work.refusal:
            attrs["monitor.demo.refusal"] = True
        ctx = TraceContextTextMapPropagator().extract(carrier=headers)
        span = self.tracer.start_span("llm_request", context=ctx, kind=SpanKind.SERVER,
                                      start_time=work.arrival_ns, attributes=attrs)
        if status_error:
            span.set_attribute("error.type", status_error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, status_error))
        span.end(end_time=work.arrival_ns + int(t["e2e"] * 1e9))

    def flush(self, timeout_ms: int = 10_000) -> bool:
        return self.tracer_provider.force_flush(timeout_ms) if self.tracer_provider is not None else True

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.tracer_provider is not None:
            if self._own_provider:
                self.tracer_provider.shutdown()  # flushes
            else:
                self.tracer_provider.force_flush()


