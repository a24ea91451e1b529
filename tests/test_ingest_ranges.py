"""Nothing a client sends stops ingest (issue: one out-of-range span wedged it forever).

- Every numeric and DateTime column ingest writes has a declared range guard (a new column
  cannot slip through without one).
- Out-of-range values from real OTLP requests are fixed at normalisation, flagged, and stored
  with everything else; the next request is stored too.
- A row the store still refuses is isolated by splitting the insert; it lands in dead_letters
  with the reason and its message's bytes; every other row of the batch lands; ingest goes on.
- An undecodable message is set aside the same way.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from conftest import post_traces, wait_until
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from monitor.errors import RejectedData
from monitor.ingest.stage import IngestStage, Message
from monitor.runtime.apps import Embedded
from monitor.selfmetrics import SelfMetrics
from monitor.store.tables import RANGE_GUARDS, TABLE_COLUMNS
from monitor.store.writer import Writer

U64_MAX = 2**64 - 1
NOW = time.time_ns() // 10**9 * 10**9  # recent: older rows would be gone by the tables' TTL
_NUMERIC = re.compile(r"^(Nullable\()?(LowCardinality\()?(U?Int\d+|Float\d+|DateTime|DateTime64|Bool|Decimal)")


def _numeric(ch_type: str) -> bool:
    inner = ch_type
    while inner.startswith("Array("):
        inner = inner[len("Array("):-1]
    return bool(_NUMERIC.match(inner))


def test_every_numeric_column_ingest_writes_has_a_range_guard(store):
    cols = store.query_rows("SELECT table, name, type FROM system.columns WHERE database = {db:String}",
                            {"db": store.database})
    missing = [(t, c, ty) for t, c, ty in cols if t in TABLE_COLUMNS and _numeric(ty) and (t, c) not in RANGE_GUARDS]
    assert missing == [], "add each to monitor.store.tables.RANGE_GUARDS (and guard it in ingest.normalize)"
    stale = [k for k in RANGE_GUARDS if k not in {(t, c) for t, c, _ in cols}]
    assert stale == []


def _span(ss, n: int, **kw) -> None:
    span = ss.spans.add(trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), name="chat m", kind=3,
                        start_time_unix_nano=kw.get("start", NOW),
                        end_time_unix_nano=kw.get("end", NOW + 500_000_000))
    for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "m"),
                       ("gen_ai.input.messages", f'[{{"role":"user","content":"q{n}"}}]')):
        span.attributes.add(key=key).value.string_value = value
    for key, value in kw.get("ints", {}).items():
        span.attributes.add(key=key).value.int_value = value
    for t in kw.get("events", ()):
        span.events.add(time_unix_nano=t, name="e")


def test_out_of_range_values_are_fixed_flagged_and_stored_with_the_rest(settings, store):
    app = Embedded(settings)
    app.start()
    try:
        port = settings.receiver.http_port
        req = trace_service_pb2.ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        _span(ss, 1, start=U64_MAX)                                    # start past 2262
        _span(ss, 2, end=U64_MAX)                                      # end past 2262
        _span(ss, 3, start=U64_MAX, end=U64_MAX)                       # both
        _span(ss, 4, ints={"gen_ai.usage.input_tokens": -1, "gen_ai.usage.output_tokens": 2**32,
                           "gen_ai.request.max_tokens": 2**40, "monitor.request.top_logprobs": 10**6,
                           "monitor.request.logit_bias": -3})  # schema 0014's counts
        _span(ss, 5, events=[U64_MAX])                                 # an event's time
        _span(ss, 6)                                                   # a normal one
        assert post_traces(port, req.SerializeToString()) == 200

        metrics = metrics_service_pb2.ExportMetricsServiceRequest()
        m = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name="g")
        m.gauge.data_points.add(time_unix_nano=U64_MAX, start_time_unix_nano=U64_MAX, as_double=1.0)
        m.gauge.data_points[0].exemplars.add(time_unix_nano=U64_MAX, as_double=2.0)
        assert _post(port, "metrics", metrics.SerializeToString()) == 200

        logs = logs_service_pb2.ExportLogsServiceRequest()
        logs.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=U64_MAX, severity_number=1000)
        assert _post(port, "logs", logs.SerializeToString()) == 200

        later = trace_service_pb2.ExportTraceServiceRequest()
        _span(later.resource_spans.add().scope_spans.add(), 7)
        assert post_traces(port, later.SerializeToString()) == 200   # and ingest goes on

        wait_until(lambda: store.query_rows("SELECT count() FROM otel_traces")[0][0] == 7, timeout=30,
                   message="every span stored")
        wait_until(lambda: store.query_rows("SELECT count() FROM otel_logs")[0][0] == 1, timeout=30,
                   message="the log record stored")
        rows = {int(sid, 16): (ts, attrs) for sid, ts, attrs in store.query_rows(
            "SELECT SpanId, toUnixTimestamp64Nano(Timestamp), SpanAttributes FROM otel_traces")}
        assert rows[1][0] == NOW + 500_000_000                 # start replaced by the end
        assert rows[1][1]["monitor.fixed"] == f"start_time_unix_nano={U64_MAX}"
        assert rows[3][1]["monitor.fixed"] == f"start_time_unix_nano={U64_MAX},end_time_unix_nano={U64_MAX}"
        assert "monitor.fixed" not in rows[6][1]
        ev = {int(s, 16): (i, o, a, m, t, b, lp) for s, i, o, a, m, t, b, lp in store.query_rows(
            "SELECT span_id, input_tokens, output_tokens, attributes, max_tokens, top_logprobs, logit_bias, "
            "logprobs FROM inference_events")}
        assert ev[4][:2] == (None, None)
        assert ev[4][2]["monitor.fixed"] == (f"gen_ai.usage.input_tokens=-1,gen_ai.usage.output_tokens={2**32},"
                                             f"gen_ai.request.max_tokens={2**40}")
        assert ev[4][3:] == (None, 65535, 0, 1)  # counts capped or floored, a limit past UInt32 dropped
        assert ev[6][3:] == (None, 0, 0, 0)
        assert store.query_rows("SELECT count() FROM inference_events")[0][0] == 7
        assert store.query_rows("SELECT SeverityNumber, LogAttributes['monitor.fixed'] FROM otel_logs")[0] == (
            0, f"time_unix_nano={U64_MAX},severity_number=1000")
        assert store.query_rows("SELECT count() FROM otel_metrics_gauge")[0][0] == 1
        assert store.query_rows("SELECT count() FROM dead_letters")[0][0] == 0  # fixed, not set aside
        assert app.metrics.values_fixed._value.get() >= 8
    finally:
        app.stop()


def _post(port: int, signal: str, body: bytes) -> int:
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/{signal}", data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status


class _Picky:
    """A store that refuses any insert holding a span whose name contains ``poison``, like ClickHouse
    refusing a value out of its column's range."""

    def __init__(self, store):
        self.store = store
        self.inserts = 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def insert(self, table, rows, columns, settings=None):
        self.inserts += 1
        if table == "otel_traces" and any("poison" in r[5] for r in rows):
            raise RejectedData("ClickHouse refused the insert: Code: 407. DECIMAL_OVERFLOW (simulated)")
        return self.store.insert(table, rows, columns, settings=settings)

    def insert_native(self, table, block, columns, settings=None):  # a batch's first, whole insert
        self.inserts += 1
        if table == "otel_traces" and b"poison" in block:
            raise RejectedData("ClickHouse refused the insert: Code: 407. DECIMAL_OVERFLOW (simulated)")
        return self.store.insert_native(table, block, columns, settings=settings)


def _request(names: list[str], first: int) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i, name in enumerate(names):
        ss.spans.add(trace_id=(first + i).to_bytes(16, "big"), span_id=(first + i).to_bytes(8, "big"), name=name,
                     start_time_unix_nano=NOW, end_time_unix_nano=NOW + 100_000_000)
    return req.SerializeToString()


def test_a_refused_row_is_isolated_set_aside_with_its_bytes_and_the_rest_lands(store):
    picky = _Picky(store)
    stage = IngestStage(Writer(picky, SelfMetrics()), SelfMetrics(), quality=False)
    bad = _request(["a", "poison b", "c"], 1)
    messages = [Message("traces", _request([f"s{i}" for i in range(20)], 100 + 20 * i), f"src:{i}")
                for i in range(5)] + [Message("traces", bad, "src:bad")]
    result = stage.run(messages, "test:refused", threading.Event())
    assert store.query_rows("SELECT count() FROM otel_traces")[0][0] == 100 + 2
    assert len(result.dead) == 1 and result.dead[0].item == 1  # the second span of its message
    (source, signal, item, reason, payload), = store.query_rows(
        "SELECT source, signal, item, reason, payload FROM dead_letters")
    assert (source, signal, item) == ("src:bad", "traces", 1)
    assert "DECIMAL_OVERFLOW" in reason
    assert bytes.fromhex(payload) == bad  # the message's own bytes (clickhouse-connect shows binary as hex)
    # the same batch again (a crash before the source moved on): nothing is stored twice
    stage.run(messages, "test:refused", threading.Event())
    assert store.query_rows("SELECT count() FROM otel_traces")[0][0] == 102
    assert store.query_rows("SELECT count() FROM dead_letters")[0][0] == 1


def test_an_undecodable_message_is_set_aside_and_the_batch_goes_on(store):
    stage = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False)
    messages = [Message("traces", b"\xff\xfe not protobuf", "src:garbage"),
                Message("traces", _request(["ok"], 1), "src:good")]
    result = stage.run(messages, "test:undecodable", threading.Event())
    assert store.query_rows("SELECT count() FROM otel_traces")[0][0] == 1
    assert [d.message.source for d in result.dead] == ["src:garbage"]
    (reason,), = store.query_rows("SELECT reason FROM dead_letters")
    assert reason.startswith("undecodable:")


@pytest.mark.parametrize("value", [-1, 2**32, 2**40])
def test_token_counts_outside_uint32_never_reach_the_store(value):
    from monitor.otlp.genai import span_to_event
    from opentelemetry.proto.trace.v1.trace_pb2 import Span
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, name="chat m", start_time_unix_nano=1,
                end_time_unix_nano=2)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = value
    ev = span_to_event(span, "svc")
    assert ev.input_tokens is None and ev.attributes["monitor.fixed"] == f"gen_ai.usage.input_tokens={value}"
    assert json.dumps(ev.row(), default=str)  # a row, ready for the store


def test_values_that_once_raised_in_normalisation_are_stored_with_the_rest(store):
    """A token count of "inf" (int(float) overflows) and content JSON nested past Python's recursion
    limit each raised out of normalisation and failed their whole batch; now the count is not a number
    (NULL), the content is plain text, and both spans land with their neighbour."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i, (key, value) in enumerate([("gen_ai.usage.input_tokens", "inf"),
                                      ("gen_ai.input.messages", "[" * 50_000),
                                      ("gen_ai.response.finish_reasons", "[" * 50_000),
                                      ("gen_ai.usage.output_tokens", "7")]):
        span = spans.add(trace_id=bytes([i + 1]) * 16, span_id=bytes([i + 1]) * 8, name="chat m",
                         start_time_unix_nano=NOW, end_time_unix_nano=NOW + 10**6)
        span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
        span.attributes.add(key=key).value.string_value = value
    stage = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False)
    result = stage.run([Message("traces", req.SerializeToString(), "src:odd")], "test:odd", threading.Event())
    assert result.dead == []
    rows = store.query_rows("SELECT span_id, input_tokens, output_tokens, prompt, finish_reason "
                            "FROM inference_events ORDER BY span_id")
    assert rows == [("01" * 8, None, None, "", ""), ("02" * 8, None, None, "[" * 50_000, ""),
                    ("03" * 8, None, None, "", "[" * 50_000), ("04" * 8, None, 7, "", "")]
