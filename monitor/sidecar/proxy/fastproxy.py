"""The capture proxy's request path: a lean HTTP/1.1 reverse proxy on asyncio protocols and httptools.

It reads the client's request, forwards it to the model server, forwards the
answer to the client as it arrives, and keeps a copy. Per captured request
(POST to a route of :data:`~monitor.sidecar.proxy.capture.ROUTES`) it hands
one :class:`~monitor.sidecar.proxy.record.CaptureRecord` to ``sink`` after the
response ended or failed; parsing the stream, the span, redaction and the
engine join happen elsewhere, from that record. Every other request passes
through untouched and leaves no record.

What it changes on the way, and only that:

- captured routes: ``traceparent`` (the client's trace, a new span id of the
  proxy), ``Accept-Encoding: identity``; for an OpenAI stream without
  ``stream_options.include_usage`` it asks for the usage event and keeps it
  from the client (``proxy.request_usage``; a server that refuses the field
  with 400/422 gets the client's own body again and is not asked again);
- hop-by-hop headers (and the ones ``Connection`` names) are not forwarded,
  ``Host`` is the upstream's, ``Expect: 100-continue`` is answered here;
- with ``proxy.auth_token`` set, the client's ``Authorization`` stays here;
- with ``proxy.routes``, a captured request goes to the upstream of the model it asks for
  (:mod:`~monitor.sidecar.proxy._routes`), and a managed route's key replaces the client's
  ``Authorization``.

Failures as the client sees them: 502/504 JSON errors when nothing was sent
yet; a response cut mid-body reaches the client cut (its connection closes
without a proper end), never as a clean end. When the client goes away, the
upstream connection closes at once, so the server stops generating.

Fail open: building the record and the sink call are guarded; an error there
is counted (``monitor_proxy_capture_errors``) and logged at most once a
minute. The sink must not block; when it returns False (dropped) that is
counted (``monitor_proxy_capture_dropped``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from typing import Any, Callable, Iterable

import httptools
from prometheus_client import Counter

from monitor.auth import secret_value, server_ssl_context
from monitor.config import ProxySettings
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.proxy._exchange import Exchange, Stop, error_response
from monitor.sidecar.proxy._routes import Router
from monitor.sidecar.proxy._upstream import UpstreamPool
from monitor.sidecar.proxy.record import CaptureRecord

__all__ = ["FastProxy", "new_event_loop", "MAX_HEAD_BYTES"]

log = logging.getLogger("monitor.proxy")

MAX_HEAD_BYTES = 64 * 1024
"""Largest request head (request line and headers) accepted: 431 past it."""
LINGER_S = 2.0
"""After an error answer that closes the connection, how long the rest of the client's request is
read and dropped, so the client gets to read the answer instead of a reset."""
_PIPELINE, _UPLOAD, _BUFFER = 1, 2, 4  # why the client connection's reading is paused
_mono = time.monotonic_ns


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (the proxy's process should run on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Reject(Exception):
    """Raised in a request parser callback: answer ``args`` (status, type, code, message) and close."""


class _ClientConn(asyncio.Protocol):
    """One client connection: parses requests (httptools), runs their exchanges one after the other."""

    def __init__(self, proxy: "FastProxy") -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.tw: Callable[[bytes], None] = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.cur: Exchange | None = None
        """The exchange whose request body is being parsed."""
        self.active: Exchange | None = None
        """The exchange whose response the client gets now."""
        self.queue: deque[Exchange] = deque()
        """Pipelined requests waiting for their turn."""
        self.final: bytes | None = None
        """An error answer to send once the exchanges ahead of it have ended; then close."""
        self.stopped = False
        """No more requests are parsed on this connection (error, close)."""
        self.lost = False
        self.paused = 0
        self.write_paused = False
        self.deadline = 0
        """Monotonic ns after which the client has been too slow (head, body or keep-alive idle)."""
        self.in_head = False
        self.head_raw = 0
        self.head_size = 0
        self.t0 = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.peer = ""
        """The client's address (for its identity when it sends neither a key nor a user id)."""
        self._linger: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tw = self.transport.write
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.proxy.clients.add(self)
        self.deadline = _mono() + self.proxy.header_timeout_ns

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return  # an error answer went out: the rest is read and dropped
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self.fail(*cause.args)
            elif not isinstance(cause, Stop):  # a bug: end this connection's exchanges, never hang
                log.error("capture proxy: unexpected error while handling a request", exc_info=cause)
                ex = self.active
                if ex is not None and not ex.done:
                    if ex.head_sent:
                        self.transport.abort()
                        return
                    self.drop(ex)
                    ex.abandon()
                self.fail(500, "server_error", "proxy_error", "the capture proxy failed on this request")
        except httptools.HttpParserUpgrade:
            self.fail(501, "invalid_request_error", "upgrade_not_supported",
                      "the capture proxy does not forward protocol upgrades")
        except httptools.HttpParserError as exc:
            self.fail(400, "invalid_request_error", "bad_request", f"malformed HTTP request: {exc}")
        else:
            if self.in_head:  # a head that does not end: bounded even before httptools calls back
                self.head_raw += len(data)
                if self.head_raw > MAX_HEAD_BYTES:
                    self.fail(431, "invalid_request_error", "request_header_too_large",
                              f"request head over {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool:
        return False  # a client that closes its side is gone (as nginx sees it): close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.stopped = True
        self.proxy.clients.discard(self)
        if self._linger is not None:
            self._linger.cancel()
        ex, self.active = self.active, None
        cur, self.cur = self.cur, None
        queued = list(self.queue)
        self.queue.clear()
        if ex is not None:
            ex.client_gone()
        for other in (cur, *queued):
            if other is not None and other is not ex:
                other.abandon()

    def pause_writing(self) -> None:  # the client reads slower than the server writes
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.up is not None:
            ex.up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.up is not None:
            ex.up.resume_reading()

    # -- httptools.HttpRequestParser callbacks ---------------------------------------------
    def on_message_begin(self) -> None:
        self.t0 = _mono()
        self.in_head = True
        self.head_raw = self.head_size = 0
        self.url = b""
        self.headers = []
        self.deadline = self.t0 + self.proxy.header_timeout_ns

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            raise _Reject(431, "invalid_request_error", "request_header_too_large", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_BYTES:
            raise _Reject(431, "invalid_request_error", "request_header_too_large",
                          f"request head over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self.in_head = False
        proxy = self.proxy
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(505, "invalid_request_error", "http_version_not_supported", "HTTP/1.x only")
        ex = Exchange(self, parser.get_method(), self.url, self.headers, self.t0, version == "1.1",
                      parser.should_keep_alive())
        if ex.upgrade or ex.method == b"CONNECT":
            raise _Reject(501, "invalid_request_error", "upgrade_not_supported",
                          "the capture proxy does not forward protocol upgrades")
        if proxy.auth is not None and not hmac.compare_digest(ex.authorization, proxy.auth):
            raise _Reject(401, "authentication_error", "invalid_api_key",
                          "missing or invalid bearer token for the monitor proxy")
        if ex.capture and ex.req_length is not None and ex.req_length > proxy.max_request:
            ex.too_large()
            raise Stop
        self.cur = ex
        self.deadline = _mono() + proxy.idle_timeout_ns if ex.expects_body else 0
        if self.active is None:
            self.active = ex
            ex.activate()
        else:
            self.queue.append(ex)
            self.pause(_PIPELINE)

    def on_body(self, body: bytes) -> None:
        self.deadline = _mono() + self.proxy.idle_timeout_ns
        self.cur.on_req_body(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        ex, self.cur = self.cur, None
        self.deadline = 0
        if ex is not None:
            ex.on_req_complete()

    # -- used by exchanges and the proxy ------------------------------------------------------
    def finished(self, ex: Exchange) -> None:
        """``ex`` has ended (its response is complete, cut or answered with an error)."""
        if self.lost:
            return
        if self.active is ex:
            self.active = None
        if not ex.keep_alive or self.proxy.stopping:
            self.transport.close()
            return
        if self.queue:
            nxt = self.active = self.queue.popleft()
            if not self.queue:
                self.resume(_PIPELINE)
            nxt.activate()
        elif self.final is not None:
            self.tw(self.final)
            self._close_after_answer()
        elif self.cur is None and not self.in_head:
            self.deadline = _mono() + self.proxy.idle_timeout_ns

    def drop(self, ex: Exchange) -> None:
        if self.active is ex:
            self.active = None
        elif ex in self.queue:
            self.queue.remove(ex)
        if self.cur is ex:
            self.cur = None

    def fail(self, status: int, kind: str, code: str, message: str, counted: bool = False) -> None:
        """Answer an error and close, after the exchanges ahead of this request have ended."""
        if self.lost:
            return
        self.stopped = True
        self.in_head = False
        if not counted:
            self.proxy.count("-", status)
        cur = self.cur
        if cur is not None and not cur.done:  # its request broke off mid-body
            self.drop(cur)
            cur.abandon()
        answer = error_response(status, kind, code, message, close=True)
        if self.active is None and not self.queue:
            self.tw(answer)
            self._close_after_answer()
        else:
            self.final = answer

    def _close_after_answer(self) -> None:
        t = self.transport
        if t.can_write_eof():
            t.write_eof()  # the answer, then FIN; keep reading what the client still sends
            self._linger = asyncio.get_running_loop().call_later(LINGER_S, t.close)
        else:
            t.close()

    def pause(self, reason: int) -> None:
        if not self.paused and not self.lost:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.lost:
                self.transport.resume_reading()

    def timed_out(self) -> None:
        self.deadline = 0
        self.transport.close()

    def shutdown(self) -> None:
        if self.active is not None:
            self.active.shutdown()
        self.transport.abort()


class FastProxy:
    """The capture proxy's HTTP server. ``start()`` / ``stop()`` on the event loop that runs it.

    ``sink(record)`` is called on that loop once per captured request, after its response ended
    or failed (never between two chunks); it must not block, and returns False when it dropped
    the record."""

    def __init__(self, settings: ProxySettings, sink: Callable[[CaptureRecord], bool],
                 metrics: SelfMetrics, announce: Callable[[bytes, bytes], object] | None = None,
                 client_headers: Iterable[str] = ()) -> None:
        if not settings.upstream:
            raise ValueError("FastProxy needs proxy.upstream")
        self.settings = settings
        self.sink = sink
        self.announce = announce
        """Called with (trace id, span id) just before a captured request goes upstream (e.g.
        :meth:`RecordSender.send_start`), so the pipeline expects the record; guarded like the sink."""
        self.metrics = metrics
        self.pool = UpstreamPool(settings.upstream)
        self.router = Router(settings, self.pool)
        """``proxy.routes``: the upstream per requested model (falsy when none are configured)."""
        token = secret_value(settings.auth_token)
        self.auth = f"Bearer {token}".encode() if token is not None else None
        self.max_request = settings.max_request_bytes
        self.max_capture = settings.max_capture_bytes
        self.request_usage = settings.request_usage == "auto"
        self.header_timeout_ns = int(settings.header_timeout_s * 1e9)
        self.idle_timeout_ns = int(settings.idle_timeout_s * 1e9)
        self.upstream_timeout_ns = int(settings.upstream_timeout_s * 1e9)
        self.attributes: dict[str, Any] = {"server.address": self.pool.host, "server.port": self.pool.port}
        """Span attributes every record carries."""
        wanted = {h.strip().lower().encode("latin-1") for h in client_headers}
        if self.auth is not None:
            wanted.discard(b"authorization")  # the proxy's own token, the same for every client
        self.client_headers = frozenset(wanted)
        """Request headers (lower case) copied into each record for the client's identity
        (:func:`monitor.otlp.identity.wanted_headers`); the pipeline hashes the credential."""
        self.port = settings.port
        self.stopping = False
        self.clients: set[_ClientConn] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick_s = max(0.05, min(1.0, settings.header_timeout_s / 4, settings.idle_timeout_s / 4,
                                     settings.upstream_timeout_s / 4))
        self._counters: dict[tuple[str, int], Any] = {}
        self._dropped: Counter = metrics.proxy_capture_dropped
        self._errors_logged_at = -1e18
        self.n_requests = self.n_records = self.n_dropped = self.n_capture_errors = 0

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, reuse_port: bool | None = None) -> int:
        """Listen on ``settings.host:settings.port``; returns the bound port. With ``reuse_port``
        (default: when ``settings.workers`` > 1) several processes listen on the same port with
        SO_REUSEPORT and the kernel spreads connections among them."""
        if reuse_port is None:
            reuse_port = getattr(self.settings, "workers", 1) > 1
        loop = asyncio.get_running_loop()
        tls = getattr(self.settings, "tls", None)
        ssl_ctx = server_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file) \
            if tls is not None and tls.enabled else None
        self._server = await loop.create_server(
            lambda: _ClientConn(self), self.settings.host, self.settings.port, reuse_address=True,
            reuse_port=True if reuse_port else None, backlog=2048, ssl=ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self._tick_s, self._sweep)
        return self.port

    async def stop(self, drain_s: float) -> None:
        """Stop accepting; let exchanges in flight end for up to ``drain_s`` seconds (idle
        connections close now, busy ones after their response), then close what is left
        (records say ``proxy_stopped``). Safe to call without ``start()`` and more than once."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for c in list(self.clients):
            if c.active is None and c.cur is None and not c.queue:
                c.transport.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.clients):
            c.shutdown()
        self.router.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._server = None

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.clients),
            "in_flight": sum(1 for c in self.clients if c.active is not None),
            "requests": self.n_requests,
            "records": self.n_records,
            "records_dropped": self.n_dropped,
            "capture_errors": self.n_capture_errors,
            "upstream_connections": sum(p.open for p in self.router.pools),
            "upstream_idle": sum(len(p.idle) for p in self.router.pools),
            "request_usage": self.request_usage and not self.pool.usage_rejected,
        }

    # -- used by exchanges -------------------------------------------------------------------------
    def count(self, route: str, status: int) -> None:
        self.n_requests += 1
        key = (route, status)
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = self.metrics.proxy_requests.labels(route, str(status))
        c.inc()

    def emit(self, ex: Exchange, error: str) -> None:
        """Build the exchange's record and hand it to the sink; never raises."""
        try:
            ok = self.sink(ex.record(error))
        except Exception:
            self.capture_failed("building or handing off the capture record")
            return
        if ok is False:
            self.n_dropped += 1
            self._dropped.inc()
        else:
            self.n_records += 1

    def capture_failed(self, what: str) -> None:
        """Count a failed capture step; log it (with the traceback) at most once a minute."""
        self.n_capture_errors += 1
        self.metrics.proxy_capture_errors.inc()
        now = _mono()
        if now - self._errors_logged_at > 60e9:
            self._errors_logged_at = now
            log.warning("capture failed while %s; the request went on unmonitored (%d so far, logged at most "
                        "once a minute)", what, self.n_capture_errors, exc_info=True)

    def usage_refused(self, pool: UpstreamPool | None = None) -> None:
        pool = pool or self.pool
        if not pool.usage_rejected:
            pool.usage_rejected = True
            log.warning("the model server at %s refused stream_options.include_usage (400/422) and accepted "
                        "the request without it; the proxy no longer adds it (token usage of streams whose "
                        "clients did not ask for it is then counted from the stream)", pool.base)

    def _sweep(self) -> None:
        """Timeouts, about once a second: slow client heads and bodies, idle keep-alive clients,
        silent upstreams, stale pooled connections. No timer per request."""
        try:
            now = _mono()
            up_timeout = self.upstream_timeout_ns
            for c in list(self.clients):
                ex = c.active
                if c.deadline and now > c.deadline and (ex is None or not ex.req_done):
                    c.timed_out()
                elif ex is not None and ex.up is not None and not c.write_paused \
                        and now - ex.last_ns > up_timeout:
                    ex.upstream_timeout()
            self.router.expire(now)
        except Exception:
            log.exception("capture proxy: timeout sweep failed")
        finally:
            if self._sweeper is not None:
                self._sweeper = asyncio.get_running_loop().call_later(self._tick_s, self._sweep)
