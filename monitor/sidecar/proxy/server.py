"""The capture proxy's HTTP server (aiohttp), in front of an OpenAI-compatible or Ollama server.

Every byte is forwarded as it arrives, in both directions; nothing waits on
monitoring. Captured routes (:data:`~monitor.sidecar.proxy.capture.ROUTES`)
get one GenAI span each, started before the upstream call so its context
travels upstream as ``traceparent``; all other paths pass through untouched.

Fail open: the capture code runs inside guards -- if it raises, the error is
counted and logged and the request goes on as a plain pass-through.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from monitor.config import ProxySettings
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.proxy.capture import Capture, operation_of, truncate
from monitor.sidecar.proxy.join import EngineJoin

__all__ = ["CaptureProxy"]

log = logging.getLogger("monitor.proxy")

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"})
_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_CAPTURED_BODY = 16 * 1024 * 1024


def _forward_headers(headers: Any, drop_auth: bool) -> dict[str, str]:
    out = {}
    for k, v in headers.items():
        lk = k.lower()
        if lk in _HOP_BY_HOP or (drop_auth and lk == "authorization"):
            continue
        out[k] = v
    return out


class CaptureProxy:
    def __init__(self, settings: ProxySettings, tracer_provider: Any, join: EngineJoin, metrics: SelfMetrics,
                 span_attributes: dict[str, Any] | None = None):
        if not settings.upstream:
            raise ValueError("CaptureProxy needs proxy.upstream")
        self.settings = settings
        self.upstream = settings.upstream.rstrip("/")
        self.tracer = tracer_provider.get_tracer("monitor.proxy")
        self.join = join
        self.metrics = metrics
        self.span_attributes = dict(span_attributes or {})
        from urllib.parse import urlsplit
        u = urlsplit(self.upstream)
        self.span_attributes.setdefault("server.address", u.hostname or "")
        if u.port:
            self.span_attributes.setdefault("server.port", u.port)
        self.port = settings.port
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> int:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=self.settings.upstream_timeout_s, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                                     shutdown_timeout=self.settings.drain_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests --------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = self.settings.auth_token
        if token is not None and request.headers.get("Authorization") != f"Bearer {token}":
            self.metrics.proxy_requests.labels("-", "401").inc()
            return web.json_response({"error": {"message": "missing or invalid bearer token for the monitor proxy",
                                                "type": "authentication_error"}}, status=401)
        route = operation_of(request.path) if request.method == "POST" else None
        if route is None:
            return await self._pass_through(request)
        return await self._capture(request, *route)

    async def _pass_through(self, request: web.Request) -> web.StreamResponse:
        """Any other path: method, headers and body both ways, streamed, untouched."""
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method, self.upstream + request.rel_url.raw_path_qs,
                headers=_forward_headers(request.headers, self.settings.auth_token is not None),
                data=request.content if request.body_exists else None, allow_redirects=False)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.metrics.proxy_requests.labels("other", "502").inc()
            return web.json_response({"error": {"message": f"upstream unreachable: {exc}",
                                                "type": "upstream_error"}}, status=502)
        async with upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=_forward_headers(upstream.headers, False))
            if upstream.headers.get("Content-Length"):
                resp.content_length = int(upstream.headers["Content-Length"])
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
        self.metrics.proxy_requests.labels("other", str(upstream.status)).inc()
        return resp

    def _guard(self, what: str, fn, *args, default=None):
        """Run a capture step; on any error count it, log it, and carry on (fail open)."""
        try:
            return fn(*args)
        except Exception:
            self.metrics.proxy_capture_errors.inc()
            log.exception("capture failed while %s; the request continues unmonitored", what)
            return default

    async def _capture(self, request: web.Request, api: str, operation: str) -> web.StreamResponse:
        assert self._session is not None
        t0 = time.perf_counter()
        start_ns = time.time_ns()
        body = await request.read()
        cap = Capture(api, operation)
        span = self._guard("starting the span", self._start_span, request, cap, body, start_ns)
        headers = _forward_headers(request.headers, self.settings.auth_token is not None)
        headers["Accept-Encoding"] = "identity"  # the proxy reads what it forwards
        upstream_body = body
        if span is not None:
            upstream_body = self._guard("preparing the upstream body", cap.upstream_body, body, True, default=body)
            self._guard("injecting traceparent", self._inject, span, headers)
        route = request.path
        first_ns: float | None = None
        gaps: list[float] = []
        last: float | None = None
        resp: web.StreamResponse | None = None
        error_type = ""
        status = 0
        try:
            async with self._session.post(self.upstream + request.rel_url.raw_path_qs, data=upstream_body,
                                          headers=headers) as upstream:
                status = upstream.status
                cap.status = status
                resp = web.StreamResponse(status=status, reason=upstream.reason,
                                          headers=_forward_headers(upstream.headers, False))
                streamed = "event-stream" in upstream.headers.get("Content-Type", "") or \
                    "ndjson" in upstream.headers.get("Content-Type", "")
                if not streamed and not cap.usage_requested and upstream.headers.get("Content-Length"):
                    resp.content_length = int(upstream.headers["Content-Length"])
                await resp.prepare(request)
                whole = bytearray()
                capturing = span is not None
                async for chunk in upstream.content.iter_any():
                    out = chunk
                    if capturing and streamed:
                        before = cap.chunks
                        out = self._guard("reading the stream", cap.feed, chunk, default=None)
                        if out is None:  # the parser failed: stop capturing, keep forwarding
                            capturing, out = False, chunk
                        elif cap.chunks > before:
                            now = time.perf_counter()
                            if first_ns is None:
                                first_ns = now - t0
                            elif last is not None:
                                gaps.append(now - last)
                            last = now
                    elif capturing and len(whole) < _MAX_CAPTURED_BODY:
                        whole += chunk
                    if out:
                        await resp.write(out)
                if capturing and streamed:
                    tail = self._guard("reading the stream", cap.flush, default=b"")
                    if tail:
                        await resp.write(tail)
                elif capturing:
                    self._guard("reading the response", cap.read_response, bytes(whole))
                await resp.write_eof()
                if status >= 400:
                    error_type = f"http.{status}"
        except asyncio.TimeoutError:
            error_type = "timeout"
            status = 504
        except aiohttp.ClientConnectorError:
            error_type = "upstream_unreachable"
            status = 502
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, asyncio.CancelledError) as exc:
            error_type = "client_disconnected" if resp is not None else "upstream_disconnected"
            status = status or 499
            if isinstance(exc, asyncio.CancelledError):
                self._finish(span, cap, route, t0, first_ns, gaps, status, error_type)
                raise
        except aiohttp.ClientError:
            error_type = "upstream_disconnected"
            status = status or 502
        self._finish(span, cap, route, t0, first_ns, gaps, status, error_type)
        if resp is not None and resp.prepared:
            return resp
        message = {"timeout": "the model server did not answer in time",
                   "upstream_unreachable": "the model server is unreachable"}.get(error_type, error_type)
        return web.json_response({"error": {"message": message, "type": "upstream_error", "code": error_type}},
                                 status=status if status >= 400 else 502)

    # -- span --------------------------------------------------------------------------------
    def _start_span(self, request: web.Request, cap: Capture, body: bytes, start_ns: int):
        cap.read_request(body)
        parent = _PROPAGATOR.extract(dict(request.headers))
        name = f"{cap.operation} {cap.model}".strip()
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, start_time=start_ns,
                                      attributes={**self.span_attributes, **cap.request_attributes(),
                                                  "monitor.proxy": True, "url.path": request.path})
        self.join.register(span)
        return span

    @staticmethod
    def _inject(span, headers: dict[str, str]) -> None:
        from opentelemetry.trace import set_span_in_context
        for k in [k for k in headers if k.lower() in ("traceparent", "tracestate")]:
            del headers[k]
        _PROPAGATOR.inject(headers, context=set_span_in_context(span))

    def _keep_content(self, route: str, span) -> bool:
        if not self.settings.capture_content.get(route, True):
            return False
        rate = self.settings.sample_rate
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        trace_id = span.get_span_context().trace_id.to_bytes(16, "big")
        return int.from_bytes(hashlib.blake2b(trace_id, digest_size=8).digest(), "big") / 2 ** 64 < rate

    def _finish(self, span, cap: Capture, route: str, t0: float, ttft: float | None, gaps: list[float],
                status: int, error_type: str) -> None:
        self.metrics.proxy_requests.labels(route, str(status)).inc()
        if span is None:
            return
        end_ns = time.time_ns()
        self._guard("recording the response", self._record, span, cap, route, ttft, gaps, status, error_type)
        self._guard("ending the span", self.join.finish, span, end_ns)

    def _record(self, span, cap: Capture, route: str, ttft: float | None, gaps: list[float], status: int,
                error_type: str) -> None:
        attrs: dict[str, Any] = cap.response_attributes()
        attrs["http.response.status_code"] = status
        if ttft is not None:
            attrs["monitor.client.time_to_first_token"] = ttft
        if gaps:
            attrs["monitor.client.time_per_output_token"] = sum(gaps) / len(gaps)
        if cap.model and span.name == cap.operation:  # the model was named only in the response
            span.update_name(f"{cap.operation} {cap.model}")
        if self._keep_content(route, span):
            limit = self.settings.max_field_bytes
            inputs = cap.input_messages()
            outputs = cap.output_messages()
            for m in inputs + outputs:
                for part in m.get("parts", []):
                    if isinstance(part.get("content"), str):
                        part["content"] = truncate(part["content"], limit)
            if inputs:
                attrs["gen_ai.input.messages"] = json.dumps(inputs, ensure_ascii=False, separators=(",", ":"))
            if outputs:
                attrs["gen_ai.output.messages"] = json.dumps(outputs, ensure_ascii=False, separators=(",", ":"))
        else:
            attrs["monitor.content.captured"] = False
        span.set_attributes(attrs)
        if error_type:
            span.set_attribute("error.type", error_type)
            detail = cap.error_body[:500] if cap.error_body else error_type
            span.set_status(Status(StatusCode.ERROR, detail))
