"""One request through the capture proxy: forwarded upstream, the answer forwarded back, a copy kept.

An :class:`Exchange` is made when the client's request head has been parsed.
When its turn comes on the client connection (:meth:`Exchange.activate`) it
takes a pooled upstream connection (or opens one), sends the request, and
becomes the protocol of that connection's response parser, so every response
callback lands here. Nothing awaits on the request path: each step is an
httptools or asyncio callback.

Per response chunk the work is one write, one time stamp and two appends
(plus a substring check while the usage event the proxy asked for has not
gone by). Everything that interprets the bytes happens later, from the
:class:`~monitor.sidecar.proxy.record.CaptureRecord` built in :meth:`Exchange.record`
after the response ended.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

import httptools
import orjson

from monitor.sidecar.proxy._upstream import UpstreamConn
from monitor.sidecar.proxy._usage import EVENT_ENDS, USAGE_KEY, UsageStripper, with_usage_option
from monitor.sidecar.proxy.capture import operation_of
from monitor.sidecar.proxy.record import CaptureRecord

if TYPE_CHECKING:
    from monitor.sidecar.proxy.fastproxy import FastProxy, _ClientConn

__all__ = ["Exchange", "Stop", "error_response", "HOP_BY_HOP"]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"trailers", b"transfer-encoding", b"upgrade"})
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_CAPTURE_DROP = _REQUEST_DROP | {b"traceparent", b"tracestate", b"accept-encoding"}
_RAW, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2  # how the body goes to the client
_BIG = 64 * 1024  # bodies from this size are written without joining them to their framing
_mono = time.monotonic_ns
_getrandbits = random.getrandbits
_REASONS = {400: b"Bad Request", 401: b"Unauthorized", 413: b"Payload Too Large",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
            502: b"Bad Gateway", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}


class Stop(Exception):
    """Raised in a parser callback to stop that parser: its owner has already acted."""


def error_response(status: int, kind: str, code: str, message: str, close: bool) -> bytes:
    """A whole JSON error response in the OpenAI API's shape."""
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code}})
    return b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n%b" % (
        status, _REASONS.get(status, b"Error"), len(body), b"Connection: close\r\n" if close else b"", body)


def parse_traceparent(value: bytes) -> tuple[bytes, bytes] | None:
    """(trace id, span id) of a valid W3C ``traceparent``, else None."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff" or (parts[0] == b"00" and len(parts) != 4):
        return None
    version, trace, span, flags = parts[:4]
    if len(trace) != 32 or len(span) != 16 or len(flags) != 2:
        return None
    if (version + trace + span + flags).lower() != version + trace + span + flags:
        return None  # W3C: lowercase hex only
    try:
        t, s = bytes.fromhex(trace.decode("ascii")), bytes.fromhex(span.decode("ascii"))
        bytes.fromhex((version + flags).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if t == bytes(16) or s == bytes(8):
        return None
    return t, s


class Exchange:
    __slots__ = (
        "conn", "proxy", "pool", "tw", "method", "target", "headers", "lnames", "named", "t0", "start_ns",
        "http11", "keep_alive", "path", "route", "capture", "req_length", "req_chunked", "expect", "upgrade",
        "authorization", "traceparent", "tracestate", "req_parts", "req_size", "req_buffered", "req_done",
        "replayable", "body", "up_body", "up_head", "usage_added", "usage_retry", "stale_retried",
        "trace_id", "span_id", "parent_span_id", "trace_state", "up", "connecting", "informational",
        "resp_begun", "status", "reason", "resp_headers", "head_sent", "mode", "until_close", "stripper",
        "parts", "cap_left", "resp_size", "chunks", "headers_ns", "last_ns", "content_type", "done",
        "client_status", "up_auth")

    def __init__(self, conn: "_ClientConn", method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 t0: int, http11: bool, keep_alive: bool) -> None:
        proxy = conn.proxy
        self.conn = conn
        self.proxy: FastProxy = proxy
        self.pool = proxy.pool
        self.tw = conn.transport.write
        self.method = method
        self.target = target
        self.headers = headers
        self.t0 = t0
        self.start_ns = time.time_ns()
        self.http11 = http11
        self.keep_alive = keep_alive and http11
        self.req_length: int | None = None
        self.req_chunked = self.expect = self.upgrade = False
        self.authorization = self.traceparent = b""
        self.tracestate: list[bytes] = []
        named: set[bytes] | None = None
        lnames = []
        for name, value in headers:
            ln = name.lower()
            lnames.append(ln)
            if ln == b"content-length":
                self.req_length = int(value)
            elif ln == b"transfer-encoding":
                self.req_chunked = True  # llhttp refuses a request whose last coding is not chunked
            elif ln == b"connection":
                named = (named or set()) | {t.strip().lower() for t in value.split(b",")}
            elif ln == b"expect":
                self.expect = value.strip().lower() == b"100-continue"
            elif ln == b"upgrade":
                self.upgrade = True
            elif ln == b"authorization":
                self.authorization = value
            elif ln == b"traceparent":
                self.traceparent = value
            elif ln == b"tracestate":
                self.tracestate.append(value)
        self.lnames = lnames
        self.named = named
        self.path = target.split(b"?", 1)[0].decode("latin-1")
        self.route = operation_of(self.path) if method == b"POST" else None
        self.capture = self.route is not None
        self.req_parts: list[bytes] | None = []
        self.req_size = self.req_buffered = 0
        self.req_done = False
        self.replayable = self.capture
        self.body: bytes | None = None
        self.up_body = b""
        self.up_head = b""
        self.usage_added = self.usage_retry = self.stale_retried = False
        self.up_auth: bytes | None = None
        """A managed route's ``Bearer <key>``: replaces the client's Authorization upstream."""
        self.trace_id = self.span_id = self.parent_span_id = b""
        self.trace_state = ""
        self.up: UpstreamConn | None = None
        self.connecting: asyncio.Task | None = None
        self.informational = self.resp_begun = self.head_sent = self.until_close = self.done = False
        self.status = 0
        self.client_status = 0
        self.reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.mode = _RAW
        self.stripper: UsageStripper | None = None
        self.parts: list[bytes] = []
        self.cap_left = proxy.max_capture if self.capture else 0
        self.resp_size = 0
        self.chunks: list[tuple[int, int]] = []
        self.headers_ns: int | None = None
        self.last_ns = t0
        self.content_type = b""

    @property
    def expects_body(self) -> bool:
        return self.req_chunked or bool(self.req_length)

    @property
    def route_label(self) -> str:
        return (self.path.rstrip("/") or self.path) if self.capture else "other"

    # -- request side (called by the client connection) ------------------------------------------
    def activate(self) -> None:
        """Its turn on the client connection: the previous response has ended."""
        if self.expect and not self.req_done and self.expects_body:
            self.tw(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not self.capture or self.req_done:
            self._start()

    def on_req_body(self, data: bytes) -> None:
        if self.done:  # answered already (an early error): the rest of the body is read and dropped
            return
        n = len(data)
        self.req_size += n
        if self.capture:
            if self.req_size > self.proxy.max_request:
                self.too_large()
                raise Stop
            self.req_parts.append(data)  # type: ignore[union-attr]
            return
        up = self.up
        if up is None:
            self.req_parts.append(data)  # type: ignore[union-attr]
            self.req_buffered += n
            if self.req_buffered > 1024 * 1024:
                self.conn.pause(4)
        else:
            self.last_ns = _mono()  # the server is not silent while the client still uploads
            up.transport.write(b"%x\r\n%b\r\n" % (n, data) if self.req_chunked else data)

    def on_req_complete(self) -> None:
        self.req_done = True
        if self.done:
            return
        if self.capture:
            if self is self.conn.active:
                self._start()
        elif self.up is not None and self.req_chunked:
            self.up.transport.write(b"0\r\n\r\n")

    def too_large(self) -> None:
        """A captured request over ``max_request_bytes``: 413, a record, the connection closes."""
        self.done = True
        self.keep_alive = False
        if not self.req_size and self.req_length:  # refused on its Content-Length, before reading it
            self.req_size = self.req_length
        self.proxy.count(self.route_label, 413)
        self.client_status = 413
        self.proxy.emit(self, "request_too_large")
        self.conn.drop(self)
        self.conn.fail(413, "invalid_request_error", "request_too_large",
                       f"request body over the proxy's limit of {self.proxy.max_request} bytes", counted=True)

    def client_gone(self) -> None:
        """The client closed its connection: the upstream connection closes at once."""
        if self.done:
            return
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        self._drop_upstream()
        self.keep_alive = False
        # A client that closes right after the stream's last event (``data: [DONE]``), before the
        # upstream's closing chunk arrived, had the whole answer: the openai SDK does that.
        self._finish("" if self._stream_delivered() else "client_disconnected")

    def _stream_delivered(self) -> bool:
        """Everything of an SSE answer up to its ``[DONE]`` event reached the client (the copy ends
        with it and nothing is held back)."""
        if not self.head_sent or not self.parts or (self.stripper is not None and self.stripper.held):
            return False
        tail = self.parts[-1] if len(self.parts[-1]) >= 24 else b"".join(self.parts[-2:])
        return tail.rstrip().endswith(b"data: [DONE]")

    def abandon(self) -> None:
        """Its request broke off (the client left, or sent something malformed): no answer, no record."""
        if not self.done:
            self.done = True
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            self._drop_upstream()

    def shutdown(self) -> None:
        """The proxy stops and its drain time is over."""
        if not self.done:
            if self.connecting is not None:
                self.connecting.cancel()
                self.connecting = None
            self._drop_upstream()
            self.keep_alive = False
            self._finish("proxy_stopped")

    # -- sending upstream --------------------------------------------------------------------------
    def _start(self) -> None:
        proxy = self.proxy
        if self.capture:
            parts = self.req_parts or ()
            self.body = self.up_body = parts[0] if len(parts) == 1 else b"".join(parts)
            self.req_parts = None
            try:
                if proxy.router:  # several upstreams: the one of the model the body asks for
                    route = proxy.router.route(self.body)
                    if route is not None:
                        self.pool, self.up_auth = route.pool, route.auth
            except Exception:
                proxy.capture_failed("choosing the route")
            try:
                self._trace()
                if proxy.announce is not None:
                    proxy.announce(self.trace_id, self.span_id)
                if proxy.request_usage and not self.pool.usage_rejected and self.route[0] == "openai" \
                        and self.route[1] != "embeddings":  # type: ignore[index]
                    patched = with_usage_option(self.body)
                    if patched is not None:
                        self.up_body = patched
                        self.usage_added = True
            except Exception:
                proxy.capture_failed("preparing the request")
        else:
            self.replayable = self.req_done and not self.req_size and not self.req_chunked
        self.up_head = self._head()
        self._send(self.pool.get(_mono()))

    def _trace(self) -> None:
        """The proxy's span: a new span id, the client's trace when its traceparent is valid."""
        ids = parse_traceparent(self.traceparent) if self.traceparent else None
        if ids is not None:
            self.trace_id, self.parent_span_id = ids
            self.trace_state = b",".join(self.tracestate).decode("latin-1")
        else:
            self.trace_id = (_getrandbits(128) or 1).to_bytes(16, "big")
        self.span_id = (_getrandbits(64) or 1).to_bytes(8, "big")

    def _head(self) -> bytes:
        """The request head for the upstream, up to (not including) its framing headers."""
        proxy = self.proxy
        drop = _CAPTURE_DROP if self.capture else _REQUEST_DROP
        named = self.named
        up_auth = self.up_auth
        drop_auth = proxy.auth is not None or up_auth is not None
        target = self.pool.prefix + self.target if self.target[:1] == b"/" else self.target
        out = [self.method, b" ", target, b" HTTP/1.1\r\nHost: ", self.pool.host_header, b"\r\n"]
        for (name, value), ln in zip(self.headers, self.lnames):
            if ln in drop or (named is not None and ln in named) or (drop_auth and ln == b"authorization"):
                continue
            out += (name, b": ", value, b"\r\n")
        if up_auth is not None:
            out += (b"Authorization: ", up_auth, b"\r\n")
        if self.capture:
            if not self.trace_id:  # the capture step failed: still a valid trace for the engine
                self._trace()
            out.append(b"Accept-Encoding: identity\r\ntraceparent: 00-%b-%b-01\r\n" % (
                self.trace_id.hex().encode(), self.span_id.hex().encode()))
            if self.trace_state:
                out.append(b"tracestate: %b\r\n" % self.trace_state.encode("latin-1"))
        return b"".join(out)

    def _send(self, up: UpstreamConn | None) -> None:
        if up is not None:
            self._attach(up)
        else:
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            up = await self.pool.connect()
        except (TimeoutError, asyncio.TimeoutError):
            self.connecting = None
            self._error(504, "timeout", "the model server did not accept a connection in time")
        except OSError as exc:
            self.connecting = None
            self._error(502, "upstream_unreachable", f"the model server is unreachable: {exc}")
        else:
            self.connecting = None
            if self.done:
                self.pool.put(up)
            else:
                self._attach(up)

    def _attach(self, up: UpstreamConn) -> None:
        self.up = up
        up.ex = self
        up.parser = httptools.HttpResponseParser(self)
        self.resp_begun = self.informational = False
        self.last_ns = _mono()
        write = up.transport.write
        if self.capture:
            body = self.up_body
            head = self.up_head + b"Content-Length: %d\r\n\r\n" % len(body)
            if len(body) < _BIG:
                write(head + body)
            else:
                up.transport.writelines((head, body))
        else:
            if self.req_chunked:
                head = self.up_head + b"Transfer-Encoding: chunked\r\n\r\n"
                pending = [b"%x\r\n%b\r\n" % (len(p), p) for p in self.req_parts or ()]
                if self.req_done:
                    pending.append(b"0\r\n\r\n")
            else:
                head = self.up_head + (b"Content-Length: %d\r\n\r\n" % self.req_length
                                       if self.req_length is not None else b"\r\n")
                pending = self.req_parts or []
            up.transport.writelines([head, *pending]) if pending else write(head)
            self.req_parts = None
            if self.req_buffered:
                self.req_buffered = 0
                self.conn.resume(4)
        if self.conn.write_paused:
            up.pause_reading()

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.abort()

    def _release(self, keep: bool) -> None:
        up, self.up = self.up, None
        if up is None:
            return
        if keep:
            self.pool.put(up)
        else:
            up.ex = None
            up.parser = None
            up.transport.close()
            up.lost = True
            self.pool.forget(up)

    # -- response callbacks (httptools.HttpResponseParser) ------------------------------------
    def on_message_begin(self) -> None:
        self.resp_begun = True
        self.resp_headers = []
        self.reason = b""

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        up = self.up
        if self.done or up is None:
            raise Stop
        status = up.parser.get_status_code()  # type: ignore[union-attr]
        if status < 200:
            if status == 101:  # the proxy refused every upgrade: a 101 is a broken server
                self.upstream_broken()
                raise Stop
            self.informational = True  # 1xx (103 Early Hints...): not passed on
            return
        now = _mono()
        self.last_ns = now
        self.headers_ns = now - self.t0
        if self.usage_added and (status == 400 or status == 422):
            self._retry_without_usage()
            raise Stop
        if self.usage_retry:
            self.usage_retry = False
            if status < 400:
                self.proxy.usage_refused(self.pool)
        self.status = self.client_status = status
        out = [b"HTTP/1.1 %d %b\r\n" % (status, self.reason)]
        length = None
        chunked = False
        conn_named = None
        for name, value in self.resp_headers:
            ln = name.lower()
            if ln in HOP_BY_HOP:
                if ln == b"transfer-encoding":
                    chunked = value.rstrip().lower().endswith(b"chunked")
                elif ln == b"connection":
                    conn_named = (conn_named or set()) | {t.strip().lower() for t in value.split(b",")}
                continue
            if ln == b"content-length":
                length = value
                continue
            if ln == b"content-type":
                self.content_type = value
            out.append(name + b": " + value + b"\r\n")
        if conn_named:
            out = [out[0]] + [line for line in out[1:] if line.split(b":", 1)[0].lower() not in conn_named]
        no_body = self.method == b"HEAD" or status == 204 or status == 304
        strip = self.usage_added and status == 200 and b"text/event-stream" in self.content_type.lower()
        if no_body:
            if length is not None and status != 204:
                out.append(b"Content-Length: " + length + b"\r\n")
        elif length is not None and not strip:
            out.append(b"Content-Length: " + length + b"\r\n")
        elif self.http11:
            self.mode = _CHUNKED
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.mode = _UNTIL_CLOSE
        self.until_close = length is None and not chunked and not no_body
        if strip:
            self.stripper = UsageStripper()
        if self.keep_alive and (self.mode == _UNTIL_CLOSE or self.proxy.stopping or not self.req_done):
            self.keep_alive = False
        if not self.keep_alive:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        self.tw(b"".join(out))
        self.head_sent = True
        if self.method == b"HEAD":  # llhttp would wait for the announced body
            self._complete(up.parser.should_keep_alive())  # type: ignore[union-attr]
            raise Stop

    def on_body(self, piece: bytes) -> None:
        if self.done:
            raise Stop
        now = _mono()
        self.last_ns = now
        n = len(piece)
        size = self.resp_size = self.resp_size + n
        out = piece
        st = self.stripper
        # UsageStripper.feed's fast path, inline: whole events without "usage" pass as they are
        if st is not None and (st.held or USAGE_KEY in piece or not piece.endswith(EVENT_ENDS)):
            try:
                out = st.feed(piece)
            except Exception:  # fail open: the stream goes on unchanged
                out = st.flush() + piece
                st.done = True
                self.proxy.capture_failed("removing the usage event")
            if st.done:  # the usage event went by: nothing more to look for
                self.stripper = None
                st = None
        if out:
            if self.mode == _CHUNKED:
                if len(out) < _BIG:
                    self.tw(b"%x\r\n%b\r\n" % (len(out), out))
                else:
                    self.conn.transport.writelines((b"%x\r\n" % len(out), out, b"\r\n"))
            else:
                self.tw(out)
        if self.capture:
            if self.cap_left:
                if n <= self.cap_left:
                    self.parts.append(piece)
                    self.cap_left -= n
                else:
                    self.parts.append(piece[:self.cap_left])
                    self.cap_left = 0
            self.chunks.append((now - self.t0, size - len(st.held) if st is not None else size))

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if not self.done and self.up is not None:
            self._complete(self.up.parser.should_keep_alive())  # type: ignore[union-attr]

    # -- endings -----------------------------------------------------------------------------------
    def _end_body(self) -> None:
        st = self.stripper
        if st is not None and st.held:
            rest = st.flush()
            self.tw(b"%x\r\n%b\r\n" % (len(rest), rest) if self.mode == _CHUNKED else rest)
            if self.capture:
                self.chunks.append((_mono() - self.t0, self.resp_size))
        if self.mode == _CHUNKED:
            self.tw(b"0\r\n\r\n")
        elif self.mode == _UNTIL_CLOSE:
            self.keep_alive = False

    def _complete(self, keep_upstream: bool) -> None:
        self._end_body()
        self._release(keep_upstream)
        self._finish("")

    def upstream_closed(self, reused: bool) -> None:
        """The upstream connection ended (EOF, reset) while serving this exchange; ``reused``: it
        came from the pool."""
        self.up = None
        if self.done:
            return
        if self.head_sent:
            if self.until_close:  # a body delimited by the close: complete
                self._end_body()
                self._finish("")
            else:
                self._cut("upstream_disconnected")
        elif not self.resp_begun and self.replayable and not self.stale_retried and reused:
            self.stale_retried = True  # the keep-alive race: the server closed as the request went out
            self._send(None)
        else:
            self._error(502, "upstream_disconnected", "the model server closed the connection without an answer")

    def upstream_broken(self) -> None:
        """The upstream sent something that is not HTTP (or a write to a client that has just gone
        failed inside a response callback)."""
        if self.conn.lost or self.conn.transport.is_closing():
            self.client_gone()
            return
        self._drop_upstream()
        if self.head_sent:
            self._cut("upstream_protocol_error")
        else:
            self._error(502, "upstream_protocol_error", "the model server sent an invalid HTTP response")

    def upstream_timeout(self) -> None:
        """Nothing from the upstream for ``upstream_timeout_s``."""
        self._drop_upstream()
        if self.head_sent:
            self._cut("timeout")
        else:
            self._error(504, "timeout", "the model server did not answer in time")

    def _retry_without_usage(self) -> None:
        """The upstream refused the request the proxy added ``stream_options`` to: send the client's own."""
        self._drop_upstream()
        self.usage_added = False
        self.usage_retry = True
        self.up_body = self.body  # type: ignore[assignment]
        self._send(self.pool.get(_mono()))

    def _cut(self, error: str) -> None:
        """Mid-body failure: the client's connection closes without a proper end of the response,
        so it sees a truncated response as it would from the server directly."""
        self.keep_alive = False
        self._finish(error)

    def _error(self, status: int, code: str, message: str) -> None:
        """A failure before any byte went to the client: a JSON error of the proxy."""
        if self.done:
            return
        self._drop_upstream()
        if not self.req_done:
            self.keep_alive = False
        self.tw(error_response(status, "upstream_error", code, message, close=not self.keep_alive))
        self.client_status = status
        self._finish(code)

    def _finish(self, error: str) -> None:
        self.done = True
        proxy = self.proxy
        proxy.count(self.route_label, self.client_status or 499)
        if self.capture:
            proxy.emit(self, error)
        self.conn.finished(self)

    # -- the record -------------------------------------------------------------------------------
    def record(self, error: str) -> CaptureRecord:
        if not self.span_id:
            self._trace()
        body = self.body if self.body is not None else b"".join(self.req_parts or ())
        limit = self.proxy.max_capture
        attrs = dict(self.proxy.attributes)
        if self.pool is not self.proxy.pool:
            attrs["server.address"], attrs["server.port"] = self.pool.host, self.pool.port
        if self.client_status and self.client_status != self.status:
            attrs["http.response.status_code"] = self.client_status
        api, operation = self.route  # type: ignore[misc]
        wanted = self.proxy.client_headers
        client_headers: dict[str, str] = {}
        if wanted:
            for (_, value), ln in zip(self.headers, self.lnames):
                if ln in wanted:
                    client_headers.setdefault(ln.decode("latin-1"), value.decode("latin-1"))
        return CaptureRecord(
            api=api, operation=operation, path=self.path, trace_id=self.trace_id, span_id=self.span_id,
            parent_span_id=self.parent_span_id, trace_state=self.trace_state, start_ns=self.start_ns,
            end_ns=time.time_ns(), request_body=body if len(body) <= limit else body[:limit],
            request_size=self.req_size, status=self.status, content_type=self.content_type.decode("latin-1"),
            response_body=b"".join(self.parts), response_size=self.resp_size, chunks=self.chunks,
            headers_ns=self.headers_ns, usage_requested=self.usage_added, error_type=error,
            upstream=self.pool.base, attributes=attrs, client_headers=client_headers,
            client_address=self.conn.peer)
