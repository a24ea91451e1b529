"""A scripted OpenAI/Ollama-compatible upstream for proxy tests: fixed replies, a fixed streaming
pace, and (optionally) a vLLM-shaped ``llm_request`` span sent over real OTLP, parented to the
incoming ``traceparent`` -- what vLLM does with ``--otlp-traces-endpoint``."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from aiohttp import web


class FakeUpstream:
    def __init__(self, tokens: list[str] | None = None, pace_s: float = 0.01, otlp_http_port: int | None = None):
        self.tokens = tokens or ["Hello", ",", " world", "!"]
        self.pace_s = pace_s
        self.otlp_http_port = otlp_http_port
        self.requests: list[dict] = []
        self.fail_status: int | None = None
        self.delay_s = 0.0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner = None
        self._provider = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> "FakeUpstream":
        if self.otlp_http_port:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            self._provider = TracerProvider(resource=Resource.create({"service.name": "vllm"}))
            self._provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
                endpoint=f"http://127.0.0.1:{self.otlp_http_port}/v1/traces")))
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/api/chat", self.ollama_chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("*", "/other/{tail:.*}", self.other)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if self._provider is not None:
            self._provider.shutdown()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- engine span ---------------------------------------------------------------------
    def _engine_span(self, request: web.Request, body: dict, start: float, first: float, end: float,
                     completion_tokens: int) -> None:
        if self._provider is None or "traceparent" not in request.headers:
            return
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        ctx = TraceContextTextMapPropagator().extract(dict(request.headers))
        tracer = self._provider.get_tracer("vllm")
        span = tracer.start_span("llm_request", context=ctx, kind=SpanKind.SERVER, start_time=int(start * 1e9))
        span.set_attributes({
            "gen_ai.response.model": body.get("model", ""), "gen_ai.request.id": "engine-req-1",
            "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": completion_tokens,
            "gen_ai.latency.time_in_queue": 0.002, "gen_ai.latency.time_to_first_token": first - start,
            "gen_ai.latency.e2e": end - start, "gen_ai.latency.time_in_model_prefill": 0.003,
            "gen_ai.latency.time_in_model_decode": max(0.0, end - first),
            "gen_ai.latency.time_in_model_inference": end - start - 0.002,
            "gen_ai.response.finish_reasons": '["stop"]',
        })
        span.end(end_time=int(end * 1e9))

    # -- handlers ----------------------------------------------------------------------
    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def other(self, request):
        data = await request.read()
        return web.Response(body=b"echo:" + data, headers={"X-Echo-Path": request.path_qs,
                                                           "X-Echo-Auth": request.headers.get("Authorization", "")})

    async def chat(self, request):
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        start = time.time()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_status:
            return web.json_response({"error": {"message": "engine overloaded", "type": "server_error"}},
                                     status=self.fail_status)
        model = body.get("model", "fake-model")
        text = "".join(self.tokens)
        usage = {"prompt_tokens": 7, "completion_tokens": len(self.tokens),
                 "total_tokens": 7 + len(self.tokens)}
        if not body.get("stream"):
            await asyncio.sleep(self.pace_s * len(self.tokens))
            end = time.time()
            self._engine_span(request, body, start, end, end, len(self.tokens))
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(start), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj):
            await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(start), "model": model}
        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})
        first = None
        for tok in self.tokens:
            await asyncio.sleep(self.pace_s)
            first = first or time.time()
            await send({**base, "choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}]})
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**base, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self._engine_span(request, body, start, first or time.time(), time.time(), len(self.tokens))
        return resp

    async def completions(self, request):
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        return web.json_response({
            "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model"), "choices": [{"index": 0, "text": " jumps over", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})

    async def ollama_chat(self, request):
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for tok in self.tokens:
            await asyncio.sleep(self.pace_s)
            await resp.write(json.dumps({"model": body["model"], "message": {"role": "assistant", "content": tok},
                                         "done": False}).encode() + b"\n")
        await resp.write(json.dumps({
            "model": body["model"], "message": {"role": "assistant", "content": ""}, "done": True,
            "done_reason": "stop", "total_duration": 52_000_000, "load_duration": 1_000_000,
            "prompt_eval_count": 9, "prompt_eval_duration": 4_000_000, "eval_count": len(self.tokens),
            "eval_duration": 40_000_000}).encode() + b"\n")
        await resp.write_eof()
        return resp
