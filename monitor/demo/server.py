"""The reference model server: the demo model behind an OpenAI-compatible API, observable like vLLM.

Endpoints:

- ``GET /v1/models``; ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream`` with
  Server-Sent Events, ``stream_options.include_usage``), ``POST /v1/embeddings`` (mean of the
  model's final hidden states; ``encoding_format`` ``float`` or ``base64``), in OpenAI's JSON
  shapes; validation errors are 400 with OpenAI's error shape.
- ``GET /metrics``: Prometheus text with vLLM's names (labels ``model_name``, ``engine="0"``).
- ``GET /health``; ``POST /admin/slowdown {"factor": 3.0}`` (``GET`` reads it): multiplies the
  model's compute at run time, the demo's latency regression.

Scheduling: the model runs on ONE worker thread, so requests queue like on a single-GPU server;
the wait is the request's queue time. Tokens are bytes: ``prompt_tokens`` counts the prompt's
UTF-8 bytes (chat: of the templated prompt, see :func:`monitor.demo.model.chat_prompt`),
``completion_tokens`` the bytes of the returned text (a stop string is cut and not counted).
``max_tokens`` defaults to 64 and is capped at 512 (larger values are lowered, not refused).

Policy (the guardrail): a request whose user text mentions one of the blocked topics (a
case-insensitive keyword match at a word start; default :data:`DEFAULT_BLOCKED_TOPICS`,
configurable) is not generated: the reply is ``"I'm sorry, but I can't help with that."`` with
finish reason ``stop`` (its span carries ``monitor.demo.refusal=true``).

Tracing (as ``vllm serve --otlp-traces-endpoint``): with ``otlp_endpoint`` each request ends
with one span ``llm_request``, kind SERVER, child of the request's W3C ``traceparent``, with
vLLM's attributes (latencies in seconds, ``gen_ai.response.finish_reasons`` a JSON string), sent
by a BatchSpanProcessor and the OTLP/gRPC exporter of a TracerProvider of the server's own
(resource ``service.name`` = ``<model_name>-server``); the global provider is never set. The
latencies follow vLLM: queue = arrival to the worker picking the request up, time to first
token and e2e from arrival, prefill / decode / inference from the forward passes timed by
:func:`monitor.instrument.generation` (plus ``monitor.torch.*`` attributes). The instrument's
own span is not exported: it is a model-request span too and the monitor would count each
request twice.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import logging
import random
import re
import signal
import struct
import threading
import time
import uuid
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
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from monitor.demo.model import CHAT_STOP, DemoModel, GenerateResult, chat_prompt, message_text, seeded_rng

__all__ = ["DEFAULT_BLOCKED_TOPICS", "REFUSAL", "DemoServer", "Engine", "create_app", "serve", "main"]

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


_DONE = object()


class Engine:
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
        push = None
        if on_piece is not None:
            def push(piece: str) -> None:
                loop.call_soon_threadsafe(on_piece, piece)
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


# -- request parsing ------------------------------------------------------------------------------

def _num(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RequestError(f"'{key}' must be a number", key)
    if v > hi or v < lo or (lo_open and v == lo):
        raise RequestError(f"'{key}' must be {'>' if lo_open else '>='} {lo} and <= {hi}, got {v}", key)
    return float(v)


def _int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(f"'{key}' must be an integer", key)
    return v


def _common(engine: Engine, body: dict, kind: str, request_id: str) -> Work:
    model = body.get("model")
    if model is not None and model != engine.model_name:
        raise RequestError(f"The model `{model}` does not exist.", "model", status=404, code="model_not_found")
    max_tokens = _int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if max_tokens < 1:
        raise RequestError(f"'max_tokens' must be at least 1, got {max_tokens}", "max_tokens")
    n = _int(body, "n")
    if n is not None and n != 1:
        raise RequestError("Only n=1 is supported", "n")
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = list(stop)
    else:
        raise RequestError("'stop' must be a string or a list of at most 4 strings", "stop")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not stream:
            raise RequestError("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise RequestError("'stream_options.include_usage' must be a boolean", "stream_options")
    return Work(kind=kind, request_id=request_id, max_tokens=min(max_tokens, engine.max_tokens_cap),
                temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
                seed=_int(body, "seed"), stop=stops,
                presence_penalty=_num(body, "presence_penalty", 0.0, -2.0, 2.0),
                frequency_penalty=_num(body, "frequency_penalty", 0.0, -2.0, 2.0))


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def parse_chat(engine: Engine, body: dict) -> Work:
    work = _common(engine, body, "chat", f"chatcmpl-{uuid.uuid4().hex}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            raise RequestError(f"messages[{i}] must be an object with a role in {sorted(_ROLES)}", f"messages[{i}]")
        if not isinstance(msg.get("content"), (str, list, type(None))):
            raise RequestError(f"messages[{i}].content must be a string or a list of parts",
                               f"messages[{i}].content")
    work.prompt = chat_prompt(messages)
    work.stop = [*work.stop, CHAT_STOP]
    work.refusal = any(engine.is_blocked(message_text(m.get("content"))) for m in messages
                       if m.get("role") == "user")
    return work


def parse_completion(engine: Engine, body: dict) -> Work:
    work = _common(engine, body, "completion", f"cmpl-{uuid.uuid4().hex}")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string (or a list of one string)", "prompt")
    work.prompt = prompt
    work.refusal = engine.is_blocked(prompt)
    return work


def parse_embedding(engine: Engine, body: dict) -> tuple[Work, str]:
    model = body.get("model")
    if model is not None and model != engine.model_name:
        raise RequestError(f"The model `{model}` does not exist.", "model", status=404, code="model_not_found")
    raw = body.get("input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise RequestError("'input' must be a non-empty string, list of strings or list of token lists", "input")
    inputs: list[list[int]] = []
    for x in items:
        if isinstance(x, str):
            ids = list(x.encode("utf-8"))
        elif isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 256 for t in x):
            ids = list(x)
        else:
            raise RequestError("each input must be a string or a list of byte tokens (0..255)", "input")
        if not ids:
            raise RequestError("inputs must not be empty", "input")
        inputs.append(ids)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and dims != engine.model.cfg.d_model:
        raise RequestError(f"'dimensions' must be {engine.model.cfg.d_model} for this model", "dimensions")
    return Work(kind="embedding", request_id=f"embd-{uuid.uuid4().hex}", inputs=inputs, n=1), fmt


# -- HTTP ----------------------------------------------------------------------------------------

ENGINE = web.AppKey("engine", Engine)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise RequestError("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object")
    return body


async def _generate(request: web.Request, parse: Callable[[Engine, dict], Work]) -> web.StreamResponse:
    engine = request.app[ENGINE]
    try:
        body = await _json_body(request)
        work = parse(engine, body)
    except RequestError as exc:
        return exc.response()
    chat = work.kind == "chat"
    created = int(time.time())
    base = {"id": work.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": engine.model_name}
    if chat:
        base["system_fingerprint"] = None
    echo = "" if chat or not body.get("echo") else work.prompt

    if not body.get("stream"):
        try:
            await engine.run(work)
        except Exception as exc:
            engine.record(work, request.headers, status_error=type(exc).__qualname__)
            log.exception("generation failed")
            return RequestError(f"internal error: {exc}", status=500, type_="internal_error").response()
        engine.record(work, request.headers)
        text = REFUSAL if work.refusal else work.result.text  # type: ignore[union-attr]
        reason = engine.finish_reason(work)
        usage = _usage(work.prompt_tokens, engine.completion_tokens(work))
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": reason}
            return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        choice = {"text": echo + text, "index": 0, "logprobs": None, "finish_reason": reason}
        return web.json_response({**base, "choices": [choice], "usage": usage})

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    extra = {"usage": None} if include_usage else {}
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def chunk(piece: str | None, reason: str | None = None, role: bool = False) -> dict:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if piece is not None:
                delta["content"] = piece
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        else:
            choice = {"text": piece or "", "index": 0, "logprobs": None, "finish_reason": reason}
        return {**base, "choices": [choice], **extra}

    async def writer() -> None:
        if chat:
            await resp.write(_sse(chunk("", role=True)))
        elif echo:
            await resp.write(_sse(chunk(echo)))
        while True:
            piece = await queue.get()
            if piece is _DONE:
                return
            await resp.write(_sse(chunk(piece)))

    write_task = asyncio.create_task(writer())
    run_task = asyncio.create_task(engine.run(work, queue.put_nowait))
    error: str | None = None
    try:
        done, _ = await asyncio.wait({write_task, run_task}, return_when=asyncio.FIRST_COMPLETED)
        if write_task in done:
            # The writer ends first only when it failed (the client went away): the generation
            # stops at its next token (finish reason "abort").
            work.cancelled.set()
            (outcome,) = await asyncio.gather(run_task, return_exceptions=True)
            engine.record(work, request.headers,
                          status_error=type(outcome).__qualname__ if isinstance(outcome, BaseException) else None)
            return resp
        try:
            await run_task
        except Exception as exc:
            error = type(exc).__qualname__
            log.exception("generation failed")
        engine.record(work, request.headers, status_error=error)
        queue.put_nowait(_DONE)
        await write_task
        if error is not None:
            await resp.write(_sse({"error": {"message": f"internal error: {error}", "type": "internal_error",
                                             "param": None, "code": None}}))
        else:
            await resp.write(_sse(chunk(None if chat else "", reason=engine.finish_reason(work))))
            if include_usage:
                await resp.write(_sse({**base, "choices": [],
                                       "usage": _usage(work.prompt_tokens, engine.completion_tokens(work))}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:  # the client went away after the generation ended
        pass
    except asyncio.CancelledError:
        work.cancelled.set()
        raise
    finally:
        for task in (write_task, run_task):
            if not task.done():
                task.cancel()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_chat)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, parse_completion)


async def embeddings(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        work, fmt = parse_embedding(engine, await _json_body(request))
    except RequestError as exc:
        return exc.response()
    try:
        await engine.run(work)
    except Exception as exc:
        engine.record(work, request.headers, status_error=type(exc).__qualname__)
        return RequestError(f"internal error: {exc}", status=500, type_="internal_error").response()
    engine.record(work, request.headers)
    data = []
    for i, vec in enumerate(work.embeddings or []):
        emb: Any = vec if fmt == "float" else base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return web.json_response({"object": "list", "data": data, "model": engine.model_name,
                              "usage": {"prompt_tokens": work.prompt_tokens, "total_tokens": work.prompt_tokens}})


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({"object": "list", "data": [{
        "id": engine.model_name, "object": "model", "created": engine.created, "owned_by": "monitor",
        "max_model_len": engine.model.context_window}]})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[ENGINE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({"status": "ok", "model": engine.model_name, "slowdown": engine.slowdown})


async def admin_slowdown(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if request.method == "POST":
        try:
            body = await _json_body(request)
            factor = body.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1.0 <= factor <= 1000.0:
                raise RequestError("'factor' must be a number from 1 to 1000", "factor")
        except RequestError as exc:
            return exc.response()
        old, engine.slowdown = engine.slowdown, float(factor)
        log.info("slowdown %.2fx -> %.2fx", old, engine.slowdown)
    return web.json_response({"factor": engine.slowdown})


@web.middleware
async def _openai_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) on the API paths in OpenAI's shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") or exc.status < 400:
            raise
        return RequestError(exc.reason, status=exc.status, code=None if exc.status != 404 else "not_found",
                            type_="invalid_request_error").response()


async def create_app(model_name: str = "monitor-demo-tiny", *, seed: int = 0, slowdown: float = 1.0,
                     otlp_endpoint: str | None = None, tracer_provider: TracerProvider | None = None,
                     blocked_topics: Sequence[str] | None = DEFAULT_BLOCKED_TOPICS,
                     model: DemoModel | None = None, max_tokens_cap: int = MAX_TOKENS_CAP) -> web.Application:
    """The app; the model is loaded (trained on first use) here, off the event loop.

    ``tracer_provider`` (tests) replaces the OTLP exporter made from ``otlp_endpoint`` and is not
    shut down with the app; ``model`` shares an already loaded model.
    """
    if model is None:
        model = await asyncio.to_thread(DemoModel.load, seed)
    engine = Engine(model, model_name, seed=seed, slowdown=slowdown, otlp_endpoint=otlp_endpoint,
                    tracer_provider=tracer_provider, blocked_topics=blocked_topics, max_tokens_cap=max_tokens_cap)
    app = web.Application(middlewares=[_openai_errors], client_max_size=8 * 1024 * 1024)
    app[ENGINE] = engine
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/admin/slowdown", admin_slowdown)

    async def _close(app: web.Application) -> None:
        await asyncio.to_thread(app[ENGINE].close)

    app.on_cleanup.append(_close)
    return app


def _describe(engine: Engine, url: str) -> str:
    model = engine.model
    cfg = model.cfg
    how = (f"trained in {model.train_seconds:.1f}s (first use), cached at {model.path}" if model.trained
           else f"loaded in {model.load_seconds:.2f}s from {model.path}")
    tracing = f"traces to {engine.otlp_endpoint} (OTLP/gRPC)" if engine.otlp_endpoint else "tracing off"
    return (f"demo model server listening on {url} (OpenAI API at {url}/v1, metrics at {url}/metrics); "
            f"model {engine.model_name}: {model.n_params / 1e6:.2f}M params, {cfg.n_layers} layers, "
            f"d_model {cfg.d_model}, byte tokens, context {cfg.block_size}; {how}; "
            f"slowdown {engine.slowdown:g}x; {tracing}")


class DemoServer:
    """The server on its own event loop in a thread (tests, embedding in other programs)::

        with DemoServer(port=0) as srv:
            openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_kw: Any) -> None:
        self.host, self.port = host, port
        self.app_kw = app_kw
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def engine(self) -> Engine:
        assert self.app is not None
        return self.app[ENGINE]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 600.0) -> DemoServer:
        started = concurrent.futures.Future[None]()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._astart())
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"demo-server-{self.port}", daemon=True)
        self._thread.start()
        started.result(timeout)
        return self

    async def _astart(self) -> None:
        self.app = await create_app(**self.app_kw)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("%s", _describe(self.engine, self.url))

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(host: str, port: int, stop_event: asyncio.Event | None = None, **app_kw: Any) -> None:
    app = await create_app(**app_kw)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("%s", _describe(app[ENGINE], f"http://{host}:{port}"))
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
    try:
        await stop.wait()
    finally:
        log.info("demo model server stopping")
        await runner.cleanup()


def serve(host: str = "127.0.0.1", port: int = 8000, otlp_endpoint: str | None = None, seed: int = 0,
          model_name: str = "monitor-demo-tiny", slowdown: float = 1.0, *,
          blocked_topics: Sequence[str] | None = DEFAULT_BLOCKED_TOPICS) -> None:
    """Run the server until SIGINT or SIGTERM (blocking). Trains the model first on first use."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    asyncio.run(_serve(host, port, model_name=model_name, seed=seed, slowdown=slowdown,
                       otlp_endpoint=otlp_endpoint, blocked_topics=blocked_topics))


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="monitor demo-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address [127.0.0.1]")
    p.add_argument("--port", type=int, default=8000, help="port [8000]")
    p.add_argument("--otlp-endpoint", default=None,
                   help="OTLP/gRPC endpoint for llm_request spans, e.g. http://127.0.0.1:4317 [off]")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling seed [0]")
    p.add_argument("--model-name", default="monitor-demo-tiny", help="served model name [monitor-demo-tiny]")
    p.add_argument("--slowdown", type=float, default=1.0, help="compute multiplier (latency regression) [1]")
    p.add_argument("--blocked-topics", default=",".join(DEFAULT_BLOCKED_TOPICS),
                   help="comma-separated keywords the policy refuses ('' for none) [%(default)s]")
    a = p.parse_args(argv)
    serve(a.host, a.port, a.otlp_endpoint, a.seed, a.model_name, a.slowdown,
          blocked_topics=[t for t in a.blocked_topics.split(",") if t.strip()])


if __name__ == "__main__":  # pragma: no cover
    main()
