"""OTLP/HTTP: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` (aiohttp).

- ``application/x-protobuf`` and ``application/json``; the answer uses the request's type.
- ``Content-Encoding: gzip``, inflated with a bound (a gzip bomb costs at most the limit).
- 413 past ``receiver.max_request_bytes`` (compressed or inflated), 400 for undecodable
  bodies (not retryable), 415 for other media types, 503 + Retry-After when saturated,
  200 with ``partial_success`` when some items were invalid.
- With ``receiver.auth_token``: 401 without ``Authorization: Bearer <token>`` (compared in
  constant time). Without one (loopback only): 403 for a ``Host`` DNS rebinding could produce.
  A credential in the query string is 400 either way, before anything else is read.
- TLS when ``receiver.tls`` has a certificate (:func:`monitor.auth.server_ssl_context`).
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from monitor.auth import bearer_ok, host_allowed, query_has_credential
from monitor.errors import DecodeError, Overloaded, PayloadTooLarge, PermanentError, RetryableError
from monitor.otlp.codec import JSON, PROTOBUF, Signal, UnsupportedMediaType, decode_body, encode_response
from monitor.receiver.ingress import Ingress

__all__ = ["build_app", "HttpReceiver"]

log = logging.getLogger("monitor.receiver")

_PATHS: dict[str, Signal] = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}


def _status_body(message: str, as_json: bool) -> bytes:
    """A ``google.rpc.Status`` with only ``message`` set (field 2; ``code`` stays 0), as OTLP/HTTP
    error bodies are. Encoded by hand: one length-delimited field needs no generated module."""
    if as_json:
        import json
        return json.dumps({"message": message}).encode()
    raw = message.encode("utf-8")
    return b"\x12" + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _refusal(request: web.Request, auth_token: str | None, bind_host: str,
             client_certs: bool) -> tuple[int, str, str] | None:
    """``(status, reason label, message)`` when the request may not be served, else None."""
    if request.query_string and query_has_credential(request.query.items(), auth_token):
        return 400, "credential_in_query", "credentials are not accepted in the query string; " \
            "send Authorization: Bearer <token>"
    if auth_token is not None:
        if not bearer_ok(request.headers.get("Authorization"), auth_token):
            return 401, "unauthenticated", "missing or invalid bearer token (receiver.auth_token is set)"
    elif not client_certs and not host_allowed(request.host, bind_host):
        return 403, "bad_host", "the Host header does not name this receiver (only IP addresses and " \
            "localhost are served without receiver.auth_token)"
    return None


def build_app(ingress: Ingress, max_bytes: int, retry_after: int, auth_token: str | None = None,
              bind_host: str = "127.0.0.1", client_certs: bool = False) -> web.Application:
    """``client_certs``: TLS authenticates every client by certificate (no Host check then)."""
    # client_max_size guards aiohttp's own readers; the handler enforces the limit itself.
    app = web.Application(client_max_size=max_bytes + 1)

    async def handle(request: web.Request) -> web.Response:
        signal = _PATHS[request.path]
        as_json = (request.content_type or "").lower() == JSON
        ctype = JSON if as_json else PROTOBUF

        def fail(status: int, message: str, headers: dict | None = None) -> web.Response:
            ingress.metrics.requests.labels(signal, "http", str(status)).inc()
            return web.Response(status=status, body=_status_body(message, as_json), content_type=ctype,
                                headers=headers)

        refused = _refusal(request, auth_token, bind_host, client_certs)
        if refused is not None:
            status, reason, message = refused
            ingress.metrics.auth_refused.labels("otlp_http", reason).inc()
            return fail(status, message, {"WWW-Authenticate": "Bearer"} if status == 401 else None)
        if request.content_length is not None and request.content_length > max_bytes:
            return fail(413, f"body of {request.content_length} bytes exceeds the {max_bytes}-byte limit")
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > max_bytes:
                return fail(413, f"body exceeds the {max_bytes}-byte limit")
        ctype_header, encoding = request.headers.get("Content-Type"), request.headers.get("Content-Encoding")
        raw = bytes(body)
        del body

        def decode():  # on the ingress's worker thread: inflating and parsing grow with the body
            return decode_body(signal, raw, ctype_header, encoding, max_bytes)[0]
        try:
            rejected, reason = await ingress.export_with(signal, decode, "http")
        except PayloadTooLarge as exc:
            return fail(413, str(exc))
        except UnsupportedMediaType as exc:
            return fail(415, str(exc))
        except DecodeError as exc:
            return fail(400, str(exc))
        except Overloaded as exc:
            return fail(503, str(exc), {"Retry-After": str(int(exc.retry_after or retry_after))})
        except PermanentError as exc:
            return fail(400, str(exc))
        except RetryableError as exc:
            return fail(503, str(exc), {"Retry-After": str(int(exc.retry_after or retry_after))})
        return web.Response(status=200, body=encode_response(signal, rejected, reason, as_json),
                            content_type=ctype)

    async def health(request: web.Request) -> web.Response:
        """Open to probes (it says nothing), but not through DNS rebinding."""
        if auth_token is None and not client_certs and not host_allowed(request.host, bind_host):
            return web.json_response({"error": "forbidden Host"}, status=403)
        return web.json_response({"status": "ok"})

    for path in _PATHS:
        app.router.add_post(path, handle)
    app.router.add_get("/health", health)
    return app


class HttpReceiver:
    """Runs :func:`build_app` on ``host:port`` inside the caller's event loop."""

    def __init__(self, ingress: Ingress, host: str, port: int, max_bytes: int, retry_after: int,
                 auth_token: str | None = None, grace: float = 2.0, ssl_context=None):
        self.app = build_app(ingress, max_bytes, retry_after, auth_token, host,
                             client_certs=ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED)
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.grace = grace
        """Seconds requests in flight get to finish when the receiver stops."""
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        # auto_decompress=False: aiohttp would inflate gzip without a bound; decode_body does it bounded.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, auto_decompress=False,
                                     shutdown_timeout=self.grace)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; in-flight requests get up to :attr:`grace` seconds to finish."""
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
