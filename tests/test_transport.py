"""The receiver's hand-off to the transport: the request is encoded once.

Redaction's prefilter serializes every request to scan it; when nothing was redacted those bytes
are the request as it is, and the Kafka (and local) transport stores them instead of encoding the
request again. What is spooled must be exactly what ``split_for_kafka`` would have made of the
request: the same messages, keys and bytes, with and without the hand-over, for every setting
that changes the split.
"""

from __future__ import annotations

import asyncio

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from monitor.config import KafkaSettings
from monitor.otlp.split import split_for_kafka
from monitor.receiver.ingress import Ingress
from monitor.redaction import Redactor, make_processor
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.cost import cost_processor
from monitor.transport.kafka import KafkaTransport
from monitor.transport.local import LocalTransport
from monitor.transport.memory import MemoryTransport
from monitor.transport.spool import Spool


def _kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def _traces(n: int, text: str = "Summarize the meeting notes in three bullet points.", traces: int = 3):
    spans = [trace_pb2.Span(trace_id=bytes([1 + i % traces]) * 16, span_id=bytes([1 + i]) * 8, name="chat",
                            attributes=[_kv("gen_ai.response.id", f"chatcmpl-{i:024x}"),
                                        _kv("gen_ai.input.messages", f'[{{"content": "{text} {i}"}}]')])
             for i in range(n)]
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])


def _ingress(transport, *processors) -> Ingress:
    return Ingress(transport, SelfMetrics(), list(processors), workers=1)


def _export(ingress: Ingress, *requests) -> list[tuple[int, str]]:
    async def run():
        return [await ingress.export("traces", msg, "http") for msg in requests]
    try:
        return asyncio.run(run())
    finally:
        ingress.close()


def test_the_redaction_hands_the_encoded_request_to_the_transport_when_it_changed_nothing():
    transport = MemoryTransport()
    ingress = _ingress(transport, cost_processor(lambda: 2, 1.5), make_processor(Redactor()))
    clean, leaky = _traces(5), _traces(5, text="mail jane.doe@example.com")
    assert _export(ingress, clean, leaky) == [(0, ""), (0, "")]
    # the clean request: the bytes the prefilter scanned, the GPU cost stamped before it included
    assert transport.wires[0] == clean.SerializeToString()
    assert [kv.key for kv in clean.resource_spans[0].resource.attributes] == ["monitor.gpu.count",
                                                                              "monitor.gpu.price_per_hour"]
    # redacted: the request changed after the scan, so the transport encodes it itself
    assert transport.wires[1] is None
    assert "[EMAIL]" in leaky.resource_spans[0].scope_spans[0].spans[0].attributes[1].value.string_value
    assert ingress.metrics.registry.get_sample_value(
        "monitor_receiver_items_accepted_total", {"signal": "traces", "protocol": "http"}) == 10
    # a processor after the redaction may change the request: its None wins
    after = MemoryTransport()
    assert _export(_ingress(after, make_processor(Redactor()), cost_processor(lambda: 2, 0)), _traces(2)) == [(0, "")]
    assert after.wires == [None] and len(after.published) == 1


def _spooled(transport: KafkaTransport, signal: str, msg, wire: bytes | None) -> list[tuple]:
    before = transport.spool.head(10_000, 1 << 30)
    accepted = transport.publish(signal, msg, wire)
    rows = transport.spool.head(10_000, 1 << 30)[len(before):]
    return [accepted.rejected, *[(topic, key, value) for _, topic, key, value, _ in rows]]


def test_kafka_spools_what_split_for_kafka_makes_with_or_without_the_encoded_request(tmp_path):
    logs = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(scope_logs=[
        logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value="x" * 50))])])])
    settings = [KafkaSettings(bootstrap_servers=["127.0.0.1:9"]),  # never connected: only publish runs
                KafkaSettings(bootstrap_servers=["127.0.0.1:9"], partition_traces_by_id=True),
                KafkaSettings(bootstrap_servers=["127.0.0.1:9"], max_message_bytes=2048),
                KafkaSettings(bootstrap_servers=["127.0.0.1:9"], encoding="otlp_json")]
    for n, s in enumerate(settings):
        transport = KafkaTransport(s, Spool(tmp_path / f"{n}.sqlite", 1 << 30, SelfMetrics()), SelfMetrics())
        for signal, msg in (("traces", _traces(40)), ("traces", _traces(1)), ("logs", logs)):
            split = split_for_kafka(signal, msg, s.max_message_bytes, s.encoding, s.partition_traces_by_id)
            expected = [split.rejected, *[(s.topic(signal), k, v) for k, v in split.messages]]
            assert _spooled(transport, signal, msg, None) == expected
            assert _spooled(transport, signal, msg, msg.SerializeToString()) == expected
        transport.spool.close()
    # the settings above do split: by trace (3 traces), by size (one span a message)
    by_trace = split_for_kafka("traces", _traces(40), 1_000_000, "otlp_proto", True)
    assert sorted(k for k, _ in by_trace.messages) == [bytes([t]) * 16 for t in (1, 2, 3)]
    assert len(split_for_kafka("traces", _traces(40), 2048, "otlp_proto", False).messages) == 40


def test_local_transport_spools_the_encoded_request(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", 1 << 30, SelfMetrics())
    transport = LocalTransport(spool, KafkaSettings())
    msg = _traces(3)
    transport.publish("traces", msg)
    transport.publish("traces", msg, msg.SerializeToString())
    assert [(m[1], m[2], m[3]) for m in spool.head(10, 1 << 20)] == [("otlp_spans", None, msg.SerializeToString())] * 2
    spool.close()
