"""Distributed mode against a real Kafka 4.x broker: sidecar -> Kafka -> ingest -> chdb."""

from __future__ import annotations

import json

import pytest
from conftest import wait_until
from kafka import KafkaConsumer, KafkaProducer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from otel_clients import chat_span, tracer
from test_embedded import _count, _json_request

from monitor.otlp.codec import parse_json
from monitor.runtime.apps import Ingest, Sidecar

pytestmark = pytest.mark.kafka


@pytest.fixture
def pipeline(kafka, settings):
    settings.kafka.bootstrap_servers = [kafka.bootstrap]
    ingest = Ingest(settings)
    ingest.start()
    sidecar = Sidecar(settings)
    sidecar.start()
    yield sidecar, ingest
    sidecar.stop()
    ingest.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_official_exporters_through_kafka_into_clickhouse(pipeline, store, settings, kafka, protocol):
    port = settings.receiver.grpc_port if protocol == "grpc" else settings.receiver.http_port
    sent = []
    with tracer(protocol, port) as tr:
        for i in range(40):
            sent.append(chat_span(tr, i))
    wait_until(lambda: _count(store, "inference_events") == 40, timeout=60, message="40 events via Kafka")
    rows = {r[0]: r[1:] for r in store.query_rows(
        "SELECT span_id, trace_id, prompt, completion, input_tokens, model FROM inference_events")}
    for i, (trace_id, span_id, prompt, answer) in enumerate(sent):
        assert rows[span_id] == (trace_id, prompt, answer, 10 + i, "llama-3-8b-instruct")
    assert _count(store, "otel_traces") == 40

    # The wire format on the topic is the Collector's: otlp_proto TracesData, one message per request
    # (kafka.partition_traces_by_id keys by trace id instead; tests/test_units.py).
    consumer = KafkaConsumer(settings.kafka.spans_topic, bootstrap_servers=kafka.bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    seen = {}
    for m in consumer:
        data = trace_pb2.TracesData.FromString(m.value)
        for rs in data.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    assert m.key is None
                    seen[span.span_id.hex()] = rs.resource.attributes[0].key
        if len(seen) == 40:
            break
    consumer.close()
    assert set(seen) == {s[1] for s in sent}


def test_collector_style_batches_and_json_messages_are_consumed(pipeline, store, settings, kafka):
    """A stock Collector may put a whole batch in one message (proto) or use otlp_json."""
    batch = trace_service_pb2.ExportTraceServiceRequest()
    for i in range(5):
        part = trace_service_pb2.ExportTraceServiceRequest()
        parse_json(json.dumps(_json_request(f"{0xabc0 + i:032x}", f"{0xdef0 + i:016x}", "batch-model")), part)
        batch.resource_spans.extend(part.resource_spans)
    as_json = json.dumps(_json_request(f"{0xabcf:032x}", f"{0xdeff:016x}", "json-model")).encode()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    producer.send(settings.kafka.spans_topic, batch.SerializeToString())  # no key: partition by Collector
    producer.send(settings.kafka.spans_topic, as_json)
    producer.flush()
    producer.close()
    wait_until(lambda: _count(store, "inference_events") == 6, timeout=60, message="6 events")
    assert dict(store.query_rows("SELECT model, count() FROM inference_events GROUP BY model")) == {
        "batch-model": 5, "json-model": 1}


def test_undecodable_messages_go_to_the_dead_letter_topic_and_ingest_goes_on(pipeline, store, settings, kafka):
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    good = trace_service_pb2.ExportTraceServiceRequest()
    parse_json(json.dumps(_json_request(f"{0x1234:032x}", f"{0x5678:016x}", "after-poison")), good)
    producer.send(settings.kafka.spans_topic, key=b"k1", value=b"\x0a\xff\xff\xff\xff\xff not otlp")
    producer.send(settings.kafka.spans_topic, key=b"k2", value=b'{"resourceSpans": [')
    producer.send(settings.kafka.spans_topic, key=b"k3", value=good.SerializeToString())
    producer.flush()
    producer.close()
    wait_until(lambda: _count(store, "inference_events") == 1, timeout=60, message="the good message")

    dlq = KafkaConsumer(settings.kafka.spans_topic + "_dlq", bootstrap_servers=kafka.bootstrap,
                        auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    dead = []
    for m in dlq:
        dead.append((m.key, m.value, dict(m.headers)))
        if len(dead) == 2:
            break
    dlq.close()
    assert sorted(d[0] for d in dead) == [b"k1", b"k2"]
    for key, value, headers in dead:
        assert value in (b"\x0a\xff\xff\xff\xff\xff not otlp", b'{"resourceSpans": [')
        assert headers["monitor.dlq.reason"]
        assert headers["monitor.dlq.source"].startswith(settings.kafka.spans_topic.encode() + b"/")
    reasons = b" ".join(d[2]["monitor.dlq.reason"] for d in dead)
    assert b"JSON" in reasons and b"otlp_proto" in reasons
    ingest = pipeline[1]
    assert ingest.metrics.dead_lettered.labels(settings.kafka.spans_topic)._value.get() == 2


def test_oversized_span_is_rejected_as_partial_success_not_lost(pipeline, store, settings):
    """A span that cannot fit a Kafka message is refused (the client is told), never silently dropped."""
    import urllib.request
    req = _json_request(f"{0x77:032x}", f"{0x88:016x}")
    small = req["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    huge = json.loads(json.dumps(small))
    huge["spanId"] = f"{0x99:016x}"
    huge["attributes"].append({"key": "blob", "value": {"stringValue": "x" * 1_200_000}})
    req["resourceSpans"][0]["scopeSpans"][0]["spans"].append(huge)
    r = urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{settings.receiver.http_port}/v1/traces", data=json.dumps(req).encode(),
        headers={"Content-Type": "application/json"}), timeout=30)
    partial = json.loads(r.read())["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "max_message_bytes" in partial["errorMessage"]
    wait_until(lambda: _count(store, "otel_traces") == 1, timeout=60, message="the small span")


def test_a_batch_is_written_once_it_holds_max_batch_bytes(kafka, settings, store):
    """ingest.max_batch_bytes bounds a batch from Kafka as it bounds one from the spool: the batch is
    written once its messages hold that many bytes, however far flush_interval_ms and
    max_batch_messages are (before, only the message count and the interval did: 512 bench-sized
    requests were ~180 MB in memory)."""
    settings.kafka.bootstrap_servers = [kafka.bootstrap]
    settings.ingest.flush_interval_ms = 600_000
    settings.ingest.max_batch_messages = 100_000
    settings.ingest.max_batch_bytes = 2048
    ingest = Ingest(settings)
    ingest.start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
        sent = 0
        for i in range(3):
            body = json.dumps(_json_request(f"{0xbb00 + i:032x}", f"{0xcc00 + i:016x}", "bytes-model")).encode()
            producer.send(settings.kafka.spans_topic, body, key=b"one-partition")
            sent += len(body)
        producer.flush()
        producer.close()
        assert sent >= 2048
        wait_until(lambda: _count(store, "inference_events") >= 2, timeout=60,
                   message="a batch written by its bytes, not after flush_interval_ms (10 min)")
    finally:
        ingest.stop()
