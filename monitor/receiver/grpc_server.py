"""OTLP/gRPC: TraceService, MetricsService and LogsService ``Export`` (grpc.aio).

INVALID_ARGUMENT for bytes that are not the request message (bad items of a
decodable request are reported as partial success); UNAVAILABLE (retryable)
when saturated;
messages over ``receiver.max_request_bytes`` are refused by gRPC itself
with RESOURCE_EXHAUSTED. gzip is negotiated by gRPC.

With ``receiver.auth_token`` every call must carry the metadata ``authorization: Bearer <token>``
(what the official exporters send with ``OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20...``),
compared in constant time; UNAUTHENTICATED otherwise, before the message is decoded. TLS (and
client certificates) when ``receiver.tls`` is set.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.message import DecodeError as _PbDecodeError

from monitor.auth import bearer_ok
from monitor.errors import DecodeError, Overloaded, PermanentError, RetryableError
from monitor.otlp.codec import Signal, export_response, request_type
from monitor.receiver.ingress import Ingress

__all__ = ["GrpcReceiver"]

log = logging.getLogger("monitor.receiver")


_SERVICES: dict[Signal, str] = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}


def _handler(ingress: Ingress, signal: Signal, auth_token: str | None = None) -> grpc.RpcMethodHandler:
    """An ``Export`` handler that decodes the bytes itself, so corrupt input is INVALID_ARGUMENT
    (gRPC's own deserializer would answer UNKNOWN)."""
    req_type = request_type(signal)

    async def export(data: bytes, context: grpc.aio.ServicerContext):
        if auth_token is not None and not bearer_ok(dict(context.invocation_metadata() or ()).get(
                "authorization"), auth_token):
            ingress.metrics.auth_refused.labels("otlp_grpc", "unauthenticated").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid bearer token (receiver.auth_token is set)")
        def decode():  # on the ingress's worker thread
            request = req_type()
            try:
                request.ParseFromString(data)
            except _PbDecodeError as exc:
                raise DecodeError(f"not a valid {req_type.DESCRIPTOR.name}: {exc}") from None
            return request
        try:
            rejected, reason = await ingress.export_with(signal, decode, "grpc")
        except DecodeError as exc:
            ingress.metrics.requests.labels(signal, "grpc", "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            ingress.metrics.requests.labels(signal, "grpc", "UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except PermanentError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RetryableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return export_response(signal, rejected, reason if rejected else "")

    return grpc.unary_unary_rpc_method_handler(
        export, request_deserializer=None, response_serializer=lambda m: m.SerializeToString())


class GrpcReceiver:
    def __init__(self, ingress: Ingress, host: str, port: int, max_bytes: int, auth_token: str | None = None,
                 tls: tuple[bytes, bytes, bytes | None] | None = None):
        """``tls``: ``(certificate chain PEM, private key PEM, client CA PEM or None)``."""
        self.ingress = ingress
        self.auth_token = auth_token
        self.tls = tls
        self.host = host
        self.port = port
        self.max_bytes = max_bytes
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ])
        server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler(service, {"Export": _handler(self.ingress, signal, self.auth_token)})
            for signal, service in _SERVICES.items()
        ])
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.tls is not None:
            chain, key, client_ca = self.tls
            creds = grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                                require_client_auth=client_ca is not None)
            port = server.add_secure_port(f"{host}:{self.port}", creds)
        else:
            port = server.add_insecure_port(f"{host}:{self.port}")
        if port == 0:
            raise OSError(f"cannot bind OTLP/gRPC to {self.host}:{self.port} (port in use?)")
        await server.start()
        self._server = server
        self.port = port
        return port

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; in-flight calls get up to ``grace`` seconds to finish."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
