"""The OTLP receiver's edges: bad bodies, size limits, gzip bombs, saturation; valid traffic unaffected."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import threading

import grpc
import pytest
from conftest import wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from otel_clients import chat_span, tracer
from test_embedded import _count, _json_request, _post

from monitor.runtime.apps import Embedded


@pytest.fixture
def up(settings):
    settings.receiver.max_request_bytes = 1024 * 1024
    app = Embedded(settings)
    app.start()
    yield app
    app.stop()


def _valid_pb(i: int) -> bytes:
    from monitor.otlp.codec import parse_json
    msg = trace_service_pb2.ExportTraceServiceRequest()
    parse_json(json.dumps(_json_request(f"{i + 1:032x}", f"{i + 1:016x}")), msg)
    return msg.SerializeToString()


def test_bad_bodies_get_their_status_and_valid_traffic_is_unaffected(up, store, settings):
    port = settings.receiver.http_port
    limit = settings.receiver.max_request_bytes
    valid = _valid_pb(0)
    bomb = gzip.compress(b"\x00" * (200 * 1024 * 1024))  # 200 MiB of zeros in ~200 KB
    assert len(bomb) < limit
    cases = {
        "malformed protobuf": (b"\xff\xff\xff\xff garbage", {"Content-Type": "application/x-protobuf"}, 400),
        "truncated protobuf": (valid[: len(valid) // 2], {"Content-Type": "application/x-protobuf"}, 400),
        "malformed json": (b'{"resourceSpans": [', {"Content-Type": "application/json"}, 400),
        "json of the wrong shape": (b'{"resourceSpans": "nope"}', {"Content-Type": "application/json"}, 400),
        "truncated gzip": (gzip.compress(valid)[:-12], {"Content-Type": "application/x-protobuf",
                                                         "Content-Encoding": "gzip"}, 400),
        "not gzip at all": (valid, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, 400),
        "oversized": (b"\x0a" * (limit + 10), {"Content-Type": "application/x-protobuf"}, 413),
        "gzip bomb": (bomb, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, 413),
        "unknown media type": (valid, {"Content-Type": "text/plain"}, 415),
        "unknown encoding": (valid, {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, 415),
    }
    results: dict[str, int] = {}
    sent: list[str] = []

    def bad_traffic():
        for _round in range(3):
            for name, (body, headers, _expected) in cases.items():
                status, _, _ = _post(port, body, headers)
                results[name] = status

    def good_traffic():
        with tracer("http", port) as tr:
            for i in range(60):
                sent.append(chat_span(tr, i)[1])

    threads = [threading.Thread(target=bad_traffic), threading.Thread(target=good_traffic)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {name: expected for name, (_, _, expected) in cases.items()}
    wait_until(lambda: _count(store, "otel_traces") == 60, message="the 60 valid spans")
    stored = {r[0] for r in store.query_rows("SELECT SpanId FROM otel_traces")}
    assert stored == set(sent)
    rejected_body = _post(port, *cases["malformed protobuf"][:2])[2]
    from google.rpc import status_pb2
    assert "not a valid ExportTraceServiceRequest" in status_pb2.Status.FromString(rejected_body).message


def test_grpc_bad_and_oversized_messages(up, settings):
    channel = grpc.insecure_channel(f"127.0.0.1:{settings.receiver.grpc_port}",
                                    options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)
    big = trace_service_pb2.ExportTraceServiceRequest()
    span = big.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "x" * (2 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as err:
        stub.Export(big, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    raw = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                              request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff garbage", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    half = trace_service_pb2.ExportTraceServiceRequest.FromString(_valid_pb(5))
    bad = half.resource_spans[0].scope_spans[0].spans.add()
    bad.CopyFrom(half.resource_spans[0].scope_spans[0].spans[0])
    bad.span_id = b"\x01\x02"
    resp = stub.Export(half, timeout=10)
    assert resp.partial_success.rejected_spans == 1
    assert "span_id" in resp.partial_success.error_message
    channel.close()


def test_saturated_pipeline_answers_503_with_retry_after_and_loses_nothing_it_accepted(settings, store):
    """A spool room for ~3 requests and a store slowed down: the receiver refuses instead of buffering,
    within a second, and every request it accepted is stored."""
    import time
    body0 = _valid_pb(0)
    settings.spool.max_bytes = 3 * len(body0) + 10
    settings.ingest.flush_interval_ms = 50
    app = Embedded(settings)
    real_write = app.node.stage.writer.write_native

    def slow_write(blocks, counts, token):
        time.sleep(0.3)
        return real_write(blocks, counts, token)

    app.node.stage.writer.write_native = slow_write
    app.start()
    try:
        port = settings.receiver.http_port
        bodies = [_valid_pb(i) for i in range(40)]

        def send(body):
            t0 = time.monotonic()
            status, headers, _ = _post(port, body, {"Content-Type": "application/x-protobuf"})
            return status, headers.get("Retry-After"), time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(send, bodies))
        accepted = [i for i, (s, _, _) in enumerate(outcomes) if s == 200]
        refused = [(s, ra, t) for s, ra, t in outcomes if s != 200]
        assert refused, "a 3-request spool behind a slow store must refuse some of 40 concurrent requests"
        assert all(s == 503 and ra == "1" for s, ra, _ in refused), refused
        assert max(t for _, _, t in refused) < 1.0  # refused at once, never queued
        wait_until(lambda: _count(store, "otel_traces") == len(accepted), message="every accepted span")
        expected = {f"{i + 1:016x}" for i in accepted}
        assert {r[0] for r in store.query_rows("SELECT SpanId FROM otel_traces")} == expected
    finally:
        app.stop()


def test_grpc_unavailable_when_saturated():
    """gRPC maps saturation to UNAVAILABLE, which OTLP exporters retry."""
    import asyncio

    from monitor.receiver.grpc_server import GrpcReceiver
    from monitor.receiver.ingress import Ingress
    from monitor.selfmetrics import SelfMetrics
    from monitor.transport.memory import MemoryTransport

    async def main():
        receiver = GrpcReceiver(Ingress(MemoryTransport(overloaded=True), SelfMetrics()), "127.0.0.1", 0, 1 << 20)
        port = await receiver.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = trace_service_pb2_grpc.TraceServiceStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(_valid_pb(1)))
                return err.value.code()
        finally:
            await receiver.stop(1)

    assert asyncio.run(main()) == grpc.StatusCode.UNAVAILABLE


def test_receiver_bearer_auth(settings, store):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from otel_clients import span_exporter

    settings.receiver.auth_token = "s3cret"
    app = Embedded(settings)
    app.start()
    try:
        body = _valid_pb(1)
        assert _post(settings.receiver.http_port, body, {"Content-Type": "application/x-protobuf"})[0] == 401
        assert _post(settings.receiver.http_port, body, {"Content-Type": "application/x-protobuf",
                                                         "Authorization": "Bearer s3cret"})[0] == 200
        for protocol, port in (("grpc", settings.receiver.grpc_port), ("http", settings.receiver.http_port)):
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(span_exporter(
                protocol, port, headers={"authorization": "Bearer s3cret"})))
            with provider.get_tracer("t").start_as_current_span("chat m") as s:
                s.set_attribute("gen_ai.operation.name", "chat")
            provider.shutdown()
        stub = trace_service_pb2_grpc.TraceServiceStub(grpc.insecure_channel(f"127.0.0.1:{settings.receiver.grpc_port}"))
        with pytest.raises(grpc.RpcError) as err:
            stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(body), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        wait_until(lambda: _count(store, "otel_traces") == 3, message="the 3 authenticated spans")
    finally:
        app.stop()
