"""OTLP/gRPC: TraceService, MetricsService and LogsService ``Export`` (grpc.aio).

INVALID_ARGUMENT for bytes that are not the request message (bad items of a
decodable request are reported as partial success); UNAVAILABLE (retryable)
when saturated;
messages over ``receiver.max_request_bytes`` are refused by gRPC itself
with RESOURCE_EXHAUSTED. gzip is negotiated by gRPC.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.message import DecodeError as _PbDecodeError

from monitor.errors import DecodeError, Overloaded, PermanentError, RetryableError
from monitor.otlp.codec import Signal, request_type, response_type
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
        if auth_token is not None and dict(context.invocation_metadata() or ()).get(
                "authorization") != f"Bearer {auth_token}":
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
        resp = response_type(signal)()
        if rejected:
            field = {"traces": "rejected_spans", "metrics": "rejected_data_points",
                     "logs": "rejected_log_records"}[signal]
            setattr(resp.partial_success, field, rejected)
            resp.partial_success.error_message = reason
        return resp

    return grpc.unary_unary_rpc_method_handler(
        export, request_deserializer=None, response_serializer=lambda m: m.SerializeToString())


class GrpcReceiver:
    def __init__(self, ingress: Ingress, host: str, port: int, max_bytes: int, auth_token: str | None = None):
        self.ingress = ingress
        self.auth_token = auth_token
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
