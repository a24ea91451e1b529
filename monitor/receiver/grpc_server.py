"""OTLP/gRPC: TraceService, MetricsService and LogsService ``Export`` (grpc.aio).

INVALID_ARGUMENT never reaches a client for a decodable request (bad items
are reported as partial success); UNAVAILABLE (retryable) when saturated;
messages over ``receiver.max_request_bytes`` are refused by gRPC itself
with RESOURCE_EXHAUSTED. gzip is negotiated by gRPC.
"""

from __future__ import annotations

import logging

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from monitor.errors import Overloaded, PermanentError, RetryableError
from monitor.otlp.codec import Signal, response_type
from monitor.receiver.ingress import Ingress

__all__ = ["GrpcReceiver"]

log = logging.getLogger("monitor.receiver")


async def _export(ingress: Ingress, signal: Signal, request, context: grpc.aio.ServicerContext):
    try:
        rejected, reason = await ingress.export(signal, request, "grpc")
    except Overloaded as exc:
        ingress.metrics.requests.labels(signal, "grpc", "UNAVAILABLE").inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except PermanentError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except RetryableError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    resp = response_type(signal)()
    if rejected:
        field = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}[signal]
        setattr(resp.partial_success, field, rejected)
        resp.partial_success.error_message = reason
    return resp


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, ingress: Ingress):
        self.ingress = ingress

    async def Export(self, request, context):  # noqa: N802 (gRPC method name)
        return await _export(self.ingress, "traces", request, context)


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, ingress: Ingress):
        self.ingress = ingress

    async def Export(self, request, context):  # noqa: N802
        return await _export(self.ingress, "metrics", request, context)


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, ingress: Ingress):
        self.ingress = ingress

    async def Export(self, request, context):  # noqa: N802
        return await _export(self.ingress, "logs", request, context)


class GrpcReceiver:
    def __init__(self, ingress: Ingress, host: str, port: int, max_bytes: int):
        self.ingress = ingress
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
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self.ingress), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self.ingress), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self.ingress), server)
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
