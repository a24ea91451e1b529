"""Embedded mode in-process: official OTLP exporters -> receiver -> queue -> ingest -> chdb."""

from __future__ import annotations

import gzip
import json
import time
import urllib.request

import pytest
from conftest import wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from otel_clients import chat_span, tracer

from monitor.runtime.apps import Embedded


@pytest.fixture
def up(settings):
    app = Embedded(settings)
    app.start()
    yield app
    app.stop()


def _count(store, table: str) -> int:
    return store.query_rows(f"SELECT count() FROM {table}")[0][0]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_official_exporter_spans_land_with_every_field(up, store, settings, protocol):
    port = settings.receiver.grpc_port if protocol == "grpc" else settings.receiver.http_port
    sent = []
    with tracer(protocol, port) as tr:
        for i in range(25):
            sent.append(chat_span(tr, i, error=(i == 3)))
    wait_until(lambda: _count(store, "inference_events") == 25, message="25 inference events")

    rows = store.query(
        "SELECT trace_id, span_id, service_name, model, provider, operation, source, prompt, completion, "
        "system_prompt, input_tokens, output_tokens, latency_ms, ttft_ms, queue_ms, finish_reason, status_code, "
        "error_type, request_id, attributes, input_messages, output_messages, timestamp "
        "FROM inference_events ORDER BY input_tokens").named_results()
    rows = list(rows)
    assert len(rows) == 25
    by_span = {r["span_id"]: r for r in rows}
    for i, (trace_id, span_id, prompt, answer) in enumerate(sent):
        r = by_span[span_id]
        assert r["trace_id"] == trace_id
        assert r["service_name"] == "chat-api"
        assert r["model"] == "llama-3-8b-instruct"  # response model wins over request model
        assert r["provider"] == "vllm"
        assert r["operation"] == "chat"
        assert r["source"] == "genai"
        assert r["prompt"] == prompt
        assert r["completion"] == answer
        assert r["system_prompt"] == "Be brief."
        assert r["input_tokens"] == 10 + i and r["output_tokens"] == 20 + i
        assert r["latency_ms"] is not None and 0 <= r["latency_ms"] < 5_000
        assert r["ttft_ms"] is None and r["queue_ms"] is None  # not reported -> NULL, not 0
        assert r["finish_reason"] == "stop"
        assert r["request_id"] == f"chatcmpl-{i}"
        assert r["attributes"]["gen_ai.request.temperature"] == "0.2"
        assert r["attributes"]["gen_ai.request.max_tokens"] == "256"
        assert "gen_ai.input.messages" not in r["attributes"]  # content lives in its columns
        assert json.loads(r["input_messages"])[0]["parts"][0]["content"] == prompt
        assert json.loads(r["output_messages"])[0]["finish_reason"] == "stop"
        if i == 3:
            assert (r["status_code"], r["error_type"]) == ("Error", "timeout")
        else:
            assert (r["status_code"], r["error_type"]) == ("Unset", "")

    trace_id, span_id, prompt, _ = sent[3]
    raw = list(store.query(
        "SELECT TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, ResourceAttributes, ScopeName, "
        "ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage FROM otel_traces WHERE SpanId = {s:String}",
        {"s": span_id}).named_results())
    assert len(raw) == 1
    t = raw[0]
    assert (t["TraceId"], t["ParentSpanId"], t["SpanName"], t["SpanKind"]) == (trace_id, "", "chat llama-3-8b",
                                                                                "Client")
    assert t["ServiceName"] == "chat-api"
    assert t["ResourceAttributes"]["deployment.environment"] == "test"
    assert (t["ScopeName"], t["ScopeVersion"]) == ("tests.genai", "1.0")
    assert t["SpanAttributes"]["gen_ai.usage.input_tokens"] == "13"
    assert t["SpanAttributes"]["gen_ai.response.finish_reasons"] == '["stop"]'
    assert json.loads(t["SpanAttributes"]["gen_ai.input.messages"])[0]["parts"][0]["content"] == prompt
    assert t["Duration"] > 0
    assert (t["StatusCode"], t["StatusMessage"]) == ("Error", "upstream timed out")
    assert _count(store, "otel_traces") == 25


def test_non_model_spans_stay_in_otel_traces_only(up, store, settings):
    with tracer("http", settings.receiver.http_port) as tr:
        with tr.start_as_current_span("POST /v1/chat"):
            with tr.start_as_current_span("execute_tool search") as s:
                s.set_attribute("gen_ai.operation.name", "execute_tool")
            chat_span(tr, 1)
    wait_until(lambda: _count(store, "otel_traces") == 3, message="3 spans")
    wait_until(lambda: _count(store, "inference_events") == 1, message="the model request's event")  # own insert
    time.sleep(0.3)
    assert _count(store, "inference_events") == 1
    parents = dict(store.query_rows("SELECT SpanName, ParentSpanId != '' FROM otel_traces"))
    assert parents == {"POST /v1/chat": 0, "execute_tool search": 1, "chat llama-3-8b": 1}


def test_metrics_and_logs_land_in_collector_tables(up, store, settings):
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    port = settings.receiver.http_port
    resource = Resource.create({"service.name": "vllm-0"})
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"http://127.0.0.1:{port}/v1/metrics"),
                                           export_interval_millis=60_000)
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meters.get_meter("engine")
    meter.create_counter("gen_ai.requests", unit="{request}").add(7, {"gen_ai.request.model": "llama"})
    meter.create_histogram("gen_ai.server.time_to_first_token", unit="s").record(0.12, {"model": "llama"})
    meter.create_histogram("gen_ai.server.time_to_first_token", unit="s").record(0.7, {"model": "llama"})
    meter.create_observable_gauge("vllm.kv_cache_usage", callbacks=[
        lambda _opts: [__import__("opentelemetry.metrics").metrics.Observation(0.42, {"engine": "0"})]])
    assert reader.force_flush(10_000)
    meters.shutdown()  # exports the cumulative points once more: identical rows, hence DISTINCT below

    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
        endpoint=f"http://127.0.0.1:{port}/v1/logs")))
    import logging
    from opentelemetry.sdk._logs import LoggingHandler
    logger = logging.getLogger("test.otlp.logs")
    logger.addHandler(LoggingHandler(logger_provider=logs))
    logger.warning("kv cache above %d%%", 90)
    logs.shutdown()

    wait_until(lambda: _count(store, "otel_metrics_sum") >= 1 and _count(store, "otel_metrics_histogram") >= 1
               and _count(store, "otel_metrics_gauge") >= 1 and _count(store, "otel_logs") >= 1,
               message="metrics and logs")
    assert store.query_rows("SELECT DISTINCT MetricName, Value, IsMonotonic, AggregationTemporality, Attributes, ServiceName "
                            "FROM otel_metrics_sum") == [
        ("gen_ai.requests", 7.0, True, 2, {"gen_ai.request.model": "llama"}, "vllm-0")]
    (count, total, bounds, buckets, mn, mx, unit), = store.query_rows(
        "SELECT DISTINCT Count, Sum, ExplicitBounds, BucketCounts, Min, Max, MetricUnit FROM otel_metrics_histogram")
    assert (count, unit, mn, mx) == (2, "s", 0.12, 0.7)
    assert total == pytest.approx(0.82)
    assert sum(buckets) == 2 and len(buckets) == len(bounds) + 1
    assert store.query_rows("SELECT DISTINCT MetricName, Value, Attributes FROM otel_metrics_gauge") == [
        ("vllm.kv_cache_usage", 0.42, {"engine": "0"})]
    (body, sev, svc), = store.query_rows("SELECT Body, SeverityText, ServiceName FROM otel_logs")
    assert (body, sev, svc) == ("kv cache above 90%", "WARN", "vllm-0")


def _post(port: int, body: bytes, headers: dict[str, str], path: str = "/v1/traces"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


# A fixed recent instant: rows older than the retention TTL are dropped by ClickHouse at insert.
START_NS = (int(time.time()) // 60 * 60 - 3600) * 1_000_000_000


def _json_request(trace_hex: str, span_hex: str, model: str = "qwen2") -> dict:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]},
        "scopeSpans": [{"scope": {"name": "raw"}, "spans": [{
            "traceId": trace_hex, "spanId": span_hex, "name": f"chat {model}", "kind": 3,
            "startTimeUnixNano": str(START_NS), "endTimeUnixNano": str(START_NS + 1_500_000_000),
            "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "gen_ai.request.model", "value": {"stringValue": model}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "42"}},
                {"key": "gen_ai.input.messages", "value": {"stringValue": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Wie spät ist es?"}]}])}},
            ],
            "status": {"code": 1},
            "unknownFieldFromTheFuture": True,
        }]}],
    }]}


def test_json_and_gzip_bodies(up, store, settings):
    port = settings.receiver.http_port
    body = json.dumps(_json_request("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")).encode()
    status, headers, resp = _post(port, body, {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(resp) == {}

    pb = trace_service_pb2.ExportTraceServiceRequest()
    from monitor.otlp.codec import parse_json
    parse_json(json.dumps(_json_request("5b8efff798038103d269b633813fc60d", "eee19b7ec3c1b175", "mistral")), pb)
    status, headers, resp = _post(port, gzip.compress(pb.SerializeToString()),
                                  {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(resp) == \
        trace_service_pb2.ExportTraceServiceResponse()

    status, _, _ = _post(port, gzip.compress(body), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status == 200

    wait_until(lambda: _count(store, "inference_events") == 3, message="3 events")
    rows = store.query_rows("SELECT trace_id, model, prompt, input_tokens, latency_ms, status_code, timestamp "
                            "FROM inference_events ORDER BY model, trace_id")
    assert [r[:6] for r in rows] == [
        ("5b8efff798038103d269b633813fc60d", "mistral", "Wie spät ist es?", 42, 1500.0, "Ok"),
        ("5b8efff798038103d269b633813fc60c", "qwen2", "Wie spät ist es?", 42, 1500.0, "Ok"),
        ("5b8efff798038103d269b633813fc60c", "qwen2", "Wie spät ist es?", 42, 1500.0, "Ok"),
    ]
    assert int(rows[0][6].timestamp()) * 1_000_000_000 == START_NS


def test_partial_success_rejects_only_invalid_spans(up, store, settings):
    req = _json_request("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    spans = req["resourceSpans"][0]["scopeSpans"][0]["spans"]
    bad_trace = dict(spans[0], traceId="00000000000000000000000000000000", spanId="eee19b7ec3c1b175")
    bad_span = dict(spans[0], spanId="zz")
    spans += [bad_trace, bad_span]
    status, _, resp = _post(settings.receiver.http_port, json.dumps(req).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200
    partial = json.loads(resp)["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "trace_id" in partial["errorMessage"] and "span_id" in partial["errorMessage"]
    wait_until(lambda: _count(store, "otel_traces") == 1, message="the valid span")
    assert _count(store, "otel_traces") == 1
