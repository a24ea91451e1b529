"""The OTLP receiver's event loop, in a thread of its own.

The main thread stays free for signal handling (and, in ``monitor up``, for
the dashboard server); gRPC and HTTP share this one asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from monitor.auth import secret_value, server_ssl_context
from monitor.config import ReceiverSettings
from monitor.errors import ConfigError
from monitor.receiver.grpc_server import GrpcReceiver
from monitor.receiver.http_server import HttpReceiver
from monitor.receiver.ingress import Ingress

__all__ = ["ReceiverService"]

log = logging.getLogger("monitor.receiver")


class ReceiverService:
    def __init__(self, settings: ReceiverSettings, ingress: Ingress, grace: float = 2.0):
        self.settings = settings
        self.grace = grace
        self.ingress = ingress
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="monitor-receiver", daemon=True)
        self.grpc: GrpcReceiver | None = None
        self.http: HttpReceiver | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        """Bind both ports; raises OSError (port in use) before returning."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        s = self.settings
        token = secret_value(s.auth_token)
        ssl_context, pems = None, None
        if s.tls.enabled:
            assert s.tls.cert_file is not None and s.tls.key_file is not None
            ssl_context = server_ssl_context(s.tls.cert_file, s.tls.key_file, s.tls.client_ca_file)
            pems = (_read(s.tls.cert_file), _read(s.tls.key_file),
                    _read(s.tls.client_ca_file) if s.tls.client_ca_file is not None else None)
        how = ("TLS, client certificates" if s.tls.client_ca_file else "TLS") if s.tls.enabled else "plaintext"
        how += ", bearer token" if token else ""
        if s.grpc_enabled:
            self.grpc = GrpcReceiver(self.ingress, s.host, s.grpc_port, s.max_request_bytes, token, tls=pems)
            port = await self.grpc.start()
            log.info("OTLP/gRPC listening on %s:%d (%s)", s.host, port, how)
        if s.http_enabled:
            self.http = HttpReceiver(self.ingress, s.host, s.http_port, s.max_request_bytes, s.retry_after_s,
                                     token, grace=self.grace, ssl_context=ssl_context)
            port = await self.http.start()
            log.info("OTLP/HTTP listening on %s://%s:%d (/v1/traces, /v1/metrics, /v1/logs; %s)",
                     "https" if s.tls.enabled else "http", s.host, port, how)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting; requests in flight get ``grace`` seconds to finish (and be answered)."""
        grace = self.grace if grace is None else grace
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._stop(grace), self.loop)
        try:
            fut.result(grace + 10)
        except Exception:
            log.exception("receiver did not stop cleanly")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _stop(self, grace: float) -> None:
        await asyncio.gather(*(r.stop(grace) for r in (self.grpc, self.http) if r is not None))


def _read(path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
