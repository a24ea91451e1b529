"""OTLP/HTTP: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` (aiohttp).

- ``application/x-protobuf`` and ``application/json``; the answer uses the request's type.
- ``Content-Encoding: gzip``, inflated with a bound (a gzip bomb costs at most the limit).
- 413 past ``receiver.max_request_bytes`` (compressed or inflated), 400 for undecodable
  bodies (not retryable), 415 for other media types, 503 + Retry-After when saturated,
  200 with ``partial_success`` when some items were invalid.
"""

from __future__ import annotations

import logging

from aiohttp import web

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


def build_app(ingress: Ingress, max_bytes: int, retry_after: int, auth_token: str | None = None) -> web.Application:
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

        if auth_token is not None and request.headers.get("Authorization") != f"Bearer {auth_token}":
            return fail(401, "missing or invalid bearer token (receiver.auth_token is set)")
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

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    for path in _PATHS:
        app.router.add_post(path, handle)
    app.router.add_get("/health", health)
    return app


class HttpReceiver:
    """Runs :func:`build_app` on ``host:port`` inside the caller's event loop."""

    def __init__(self, ingress: Ingress, host: str, port: int, max_bytes: int, retry_after: int,
                 auth_token: str | None = None, grace: float = 2.0):
        self.app = build_app(ingress, max_bytes, retry_after, auth_token)
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
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; in-flight requests get up to :attr:`grace` seconds to finish."""
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None
