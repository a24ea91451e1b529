"""The stock OpenTelemetry Collector (built here, tests/partners.py) on either side of the monitor, with counts.

(a) in front: official OTLP exporters -> Collector (otlp receiver, batch, kafka exporter, otlp_proto) -> the
    real Kafka broker -> ``monitor ingest`` -> chdb: every span and metric point in the tables, GenAI fields
    mapped; spans too large for one record when batched 512 at a time still arrive (the record-size guards
    of the config).
(b) behind: official OTLP exporter -> ``monitor sidecar --kafka`` -> Kafka -> Collector (kafka receiver,
    file exporter): every span intact (ids, names, times, status, attributes, resource; the sidecar adds
    only ``monitor.gpu.count`` to the resource, its cost input).

Both run the deploy/otelcol/ files themselves, their ports and brokers set through the environment the
files read (``${env:...}``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import partners
import pytest
from conftest import MONITOR, ROOT, chdb_query, free_port, wait_until

pytestmark = [pytest.mark.kafka]

DEPLOY = ROOT / "deploy" / "otelcol"


class MonitorProc:
    """A ``monitor`` command as a subprocess: ready once it logs so, stopped with SIGINT (as Ctrl-C)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, ready_timeout: float = 180):
        self.log = log
        self._f = open(log, "w")
        self.proc = subprocess.Popen([*MONITOR, *args], stdout=self._f, stderr=subprocess.STDOUT, cwd=log.parent,
                                     env=dict(os.environ, MONITOR_CHECKS__ENABLED="false", **(env or {})))
        wait_until(lambda: "ready; Ctrl-C to stop" in self.text() or self.proc.poll() is not None,
                   timeout=ready_timeout, message=f"monitor {args[0]} ready")
        assert self.proc.poll() is None, self.text()[-3000:]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, port: int, name: str, **labels: str) -> float:
        from monitor.status import fetch
        try:
            snap = fetch(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            return 0.0
        return sum(v for lab, v in snap.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._f.closed:
            self._f.close()
        return self.proc.returncode


def _provider(service: str, exporter, memory=None):
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=128, schedule_delay_millis=100,
                                                   max_queue_size=4096))
    if memory is not None:
        provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider


def _send_chat_spans(provider, n: int, first: int = 0, prompt_pad: int = 0) -> dict[str, tuple]:
    """n GenAI chat spans (tests/otel_clients.py's shape), every 10th an error; span id -> expectations."""
    from otel_clients import chat_span

    tr = provider.get_tracer("tests.otelcol", "1.0")
    sent = {}
    for i in range(first, first + n):
        if prompt_pad:
            # a long prompt: the record-size guards must split batches of these
            with tr.start_as_current_span("chat llama-3-8b") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.request.model", "llama-3-8b")
                span.set_attribute("gen_ai.usage.input_tokens", i)
                text = f"long prompt {i}: " + "lorem ipsum dolor sit amet " * (prompt_pad // 27)
                span.set_attribute("gen_ai.input.messages", json.dumps([{"role": "user", "content": text}]))
                ctx = span.get_span_context()
                sent[format(ctx.span_id, "016x")] = (format(ctx.trace_id, "032x"), text, "", i, None, False)
            continue
        trace_id, span_id, prompt, answer = chat_span(tr, i, error=i % 10 == 9)
        sent[span_id] = (trace_id, prompt, answer, 10 + i, 20 + i, i % 10 == 9)
    return sent


def _metrics_request(service: str):
    """8 data points from the SDK's real instruments, collected once (an in-memory reader, so exactly
    one collection is exported: a periodic reader would export again at shutdown)."""
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": service}))
    meter = mp.get_meter("tests.otelcol", "1.0")
    requests = meter.create_counter("app.requests", unit="{request}")
    usage = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    inflight = meter.create_up_down_counter("app.inflight", unit="{request}")
    meter.create_observable_gauge("app.kv_cache.usage", callbacks=[lambda _opts: [Observation(0.25)]], unit="1")
    for model, n in (("llama-3-8b", 3), ("qwen-2", 2)):
        requests.add(n, {"gen_ai.request.model": model})
        duration.record(0.5 * n, {"gen_ai.request.model": model})
    for kind, tokens in (("input", 120), ("output", 48)):
        usage.record(tokens, {"gen_ai.token.type": kind, "gen_ai.request.model": "llama-3-8b"})
    inflight.add(4)
    inflight.add(-1)
    data = reader.get_metrics_data()
    mp.shutdown()
    return data


def _points(data) -> int:
    return sum(len(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics)


def test_collector_in_front_kafka_then_monitor_ingest(kafka, otelcol, tmp_path):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import MetricExportResult

    uid = uuid.uuid4().hex[:8]
    service = f"otelcol-front-{uid}"
    data_dir = tmp_path / "chdb"
    ingest_port = free_port()
    t0 = time.monotonic()
    ingest = MonitorProc(["ingest", "--kafka", kafka.bootstrap, "--clickhouse", f"chdb://{data_dir}",
                          "--group-id", f"ingest-{uid}", "--metrics-port", str(ingest_port)], tmp_path / "ingest.log",
                         env={"MONITOR_INGEST__FLUSH_INTERVAL_MS": "200"})
    grpc, http = free_port(), free_port()
    col = otelcol(DEPLOY / "otlp-to-kafka.yaml", env={
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc}", "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http}",
        "KAFKA_BROKERS": kafka.bootstrap}, wait_port=grpc)
    try:
        provider = _provider(service, OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc}", insecure=True))
        sent = _send_chat_spans(provider, 1000)
        # 60 spans of ~40 KB (2.4 MB): one batch of them is over the broker's ~1 MB record limit
        big = _send_chat_spans(provider, 60, first=5000, prompt_pad=40_000)
        assert provider.force_flush(60_000)
        provider.shutdown()
        metrics = _metrics_request(service)
        assert _points(metrics) == 8
        assert OTLPMetricExporter(endpoint=f"http://127.0.0.1:{http}/v1/metrics").export(metrics) == \
            MetricExportResult.SUCCESS
        want = len(sent) + len(big)
        try:
            wait_until(lambda: ingest.metric(ingest_port, "monitor_store_rows_written_total",
                                             table="inference_events") >= want,
                       timeout=120, message=f"{want} events written by monitor ingest")
        except AssertionError as exc:
            written = ingest.metric(ingest_port, "monitor_store_rows_written_total", table="inference_events")
            problems = "\n".join(line for line in col.text().splitlines() if '"error"' in line or "\terror\t" in line
                                  or "warn" in line)
            raise AssertionError(f"{exc}; {written:.0f} written\nCollector warnings and errors:\n{problems[-6000:]}"
                                 f"\nmonitor ingest log:\n{ingest.text()[-3000:]}") from None
        wait_until(lambda: sum(ingest.metric(ingest_port, "monitor_store_rows_written_total", table=t)
                               for t in ("otel_metrics_sum", "otel_metrics_gauge", "otel_metrics_histogram")) >= 8,
                   timeout=60, message="8 metric points written")
        elapsed = time.monotonic() - t0
    finally:
        col.stop()
        rc = ingest.stop()
    assert rc == 0, ingest.text()[-3000:]
    assert "exceeds max message size" not in col.text() and "MESSAGE_TOO_LARGE" not in col.text(), col.text()[-3000:]

    q = lambda sql: chdb_query(data_dir, sql)  # noqa: E731
    svc = f"ServiceName = '{service}'"
    assert q(f"SELECT count(), uniqExact(SpanId) FROM otel_traces WHERE {svc}")[0] == [want, want]
    rows = {r[0]: r[1:] for r in q(
        "SELECT span_id, trace_id, prompt, completion, input_tokens, output_tokens, status_code = 'Error', model, "
        f"operation, finish_reason, provider FROM inference_events WHERE service_name = '{service}'")}
    assert len(rows) == want
    for span_id, (trace_id, prompt, answer, tin, tout, error) in {**sent, **big}.items():
        got = rows[span_id]
        assert got[:6] == [trace_id, prompt, answer, tin, tout, error], (span_id, got)
    normal = [rows[s] for s in sent]
    assert {tuple(r[6:]) for r in normal} == {("llama-3-8b-instruct", "chat", "stop", "vllm")}
    # the largest record Kafka holds for these spans: under the broker's limit (the guards split them)
    per_table = dict(q(
        f"SELECT 'sum', count() FROM otel_metrics_sum WHERE {svc} UNION ALL "
        f"SELECT 'gauge', count() FROM otel_metrics_gauge WHERE {svc} UNION ALL "
        f"SELECT 'histogram', count() FROM otel_metrics_histogram WHERE {svc}"))
    assert per_table == {"sum": 3, "gauge": 1, "histogram": 4}, per_table
    sums = {(r[0], r[1].get("gen_ai.request.model", "")): r[2] for r in q(
        f"SELECT MetricName, Attributes, Value FROM otel_metrics_sum WHERE {svc}")}
    assert sums == {("app.requests", "llama-3-8b"): 3, ("app.requests", "qwen-2"): 2, ("app.inflight", ""): 3}
    hist = {(r[0], r[1].get("gen_ai.token.type") or r[1].get("gen_ai.request.model")): r[2:] for r in q(
        f"SELECT MetricName, Attributes, Count, Sum FROM otel_metrics_histogram WHERE {svc}")}
    assert hist == {("gen_ai.client.token.usage", "input"): [1, 120], ("gen_ai.client.token.usage", "output"): [1, 48],
                    ("gen_ai.client.operation.duration", "llama-3-8b"): [1, 1.5],
                    ("gen_ai.client.operation.duration", "qwen-2"): [1, 1.0]}
    assert q(f"SELECT MetricName, Value FROM otel_metrics_gauge WHERE {svc}") == [["app.kv_cache.usage", 0.25]]
    print(f"\n[otelcol front] {want} spans + 8 points: Collector -> Kafka -> monitor ingest in {elapsed:.1f}s")


def _file_spans(path: Path) -> dict[str, tuple]:
    """span id -> (span as OTLP/JSON dict, resource attributes) from the file exporter's JSON lines."""
    out: dict[str, tuple] = {}
    dup = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a line being written
        for rs in doc.get("resourceSpans", []):
            res = {a["key"]: _value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    if sp["spanId"] in out:
                        dup.append(sp["spanId"])
                    out[sp["spanId"]] = (sp, res, ss.get("scope", {}))
    assert not dup, f"spans delivered twice: {dup[:5]}"
    return out


def _value(v: dict):
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        return tuple(_value(x) for x in v["arrayValue"].get("values", []))
    return v


def test_monitor_sidecar_kafka_then_collector_behind(kafka, otelcol, tmp_path):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    uid = uuid.uuid4().hex[:8]
    service = f"otelcol-behind-{uid}"
    out = tmp_path / "out" / "telemetry.jsonl"
    grpc, http, mport = free_port(), free_port(), free_port()
    t0 = time.monotonic()
    sidecar = MonitorProc(["sidecar", "--kafka", kafka.bootstrap, "--spool", str(tmp_path / "spool.sqlite"),
                           "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(mport)],
                          tmp_path / "sidecar.log")
    col = otelcol(DEPLOY / "kafka-to-file.yaml", env={
        "KAFKA_BROKERS": kafka.bootstrap, "OTELCOL_KAFKA_GROUP": f"otelcol-{uid}", "OTELCOL_FILE_PATH": str(out)})
    memory = InMemorySpanExporter()
    try:
        provider = _provider(service, OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http}/v1/traces"), memory)
        _send_chat_spans(provider, 1000)
        assert provider.force_flush(60_000)
        provider.shutdown()
        sent = {format(s.context.span_id, "016x"): s for s in memory.get_finished_spans()}
        assert len(sent) == 1000
        wait_until(lambda: len(set(_file_spans(out)) & set(sent)) == len(sent), timeout=120,
                   message="1000 spans in the Collector's file")
        elapsed = time.monotonic() - t0
    finally:
        rc = sidecar.stop()
        col.stop()
    assert rc == 0, sidecar.text()[-3000:]
    got = _file_spans(out)
    ours = {k: v for k, v in got.items() if v[1].get("service.name") == service}
    assert set(ours) == set(sent)  # every span, once (no duplicates: _file_spans checks), nothing else of ours
    for span_id, s in sent.items():
        sp, res, scope = ours[span_id]
        assert sp["traceId"] == format(s.context.trace_id, "032x")
        assert sp["name"] == s.name and sp.get("kind") == 3  # CLIENT
        assert int(sp["startTimeUnixNano"]) == s.start_time and int(sp["endTimeUnixNano"]) == s.end_time
        attrs = {a["key"]: _value(a["value"]) for a in sp.get("attributes", [])}
        want = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in s.attributes.items()}
        assert attrs == want, (span_id, set(attrs) ^ set(want))
        assert sp.get("status", {}).get("code", 0) == s.status.status_code.value
        assert sp.get("status", {}).get("message", "") == (s.status.description or "")
        # the sidecar's one addition: the GPU count of its host on the resource (monitor/sidecar/cost.py)
        res = dict(res)
        assert isinstance(res.pop("monitor.gpu.count"), int)
        assert res == dict(s.resource.attributes)
        assert scope.get("name") == "tests.otelcol" and scope.get("version") == "1.0"
    print(f"\n[otelcol behind] 1000 spans: monitor sidecar -> Kafka -> Collector -> file in {elapsed:.1f}s")


def test_a_missing_toolchain_skips_loudly_and_says_what_is_missing(tmp_path, monkeypatch, capsys):
    """No `go` (or no cmake / C++ compiler, or no registry): the tests that need the partner are skipped with
    the missing piece named, never silently; MONITOR_REQUIRE_PARTNERS=1 makes it a failure."""
    import shutil as _shutil

    monkeypatch.setenv("MONITOR_CACHE_DIR", str(tmp_path))  # an empty cache: a build would be needed
    monkeypatch.setattr(partners, "_unavailable", {})
    real_which = _shutil.which
    monkeypatch.setattr(partners.shutil, "which", lambda tool: None if tool in ("go", "cmake") else real_which(tool))
    for name, missing in (("otelcol", "`go` is not on PATH"), ("llama-server", "`cmake` is not on PATH")):
        monkeypatch.setattr(partners.PARTNERS[name], "memo", {})
        monkeypatch.delenv("MONITOR_REQUIRE_PARTNERS", raising=False)
        with pytest.raises(pytest.skip.Exception) as skipped:
            partners.need(name)
        assert missing in str(skipped.value) and "SKIPPED" in str(skipped.value)
        assert "REAL PARTNER MISSING" in capsys.readouterr().err or name in partners._unavailable
        monkeypatch.setenv("MONITOR_REQUIRE_PARTNERS", "1")
        with pytest.raises(pytest.fail.Exception, match=missing.replace("`", ".")):
            partners.need(name)
        assert not (tmp_path / "partners" / f"{name}-{partners.PARTNERS[name].version}" / "build.json").exists()
    # everything a build needs is here but the partner is not built: the test does not build it (minutes,
    # inside its timeout) but skips with the command that does
    monkeypatch.setattr(partners, "_unavailable", {})
    monkeypatch.delenv("MONITOR_REQUIRE_PARTNERS", raising=False)
    monkeypatch.setattr(partners.PARTNERS["otelcol"], "check", lambda: None)
    monkeypatch.setattr(partners.PARTNERS["otelcol"], "build", lambda d, b: pytest.fail("built inside a test"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        partners.need("otelcol")
    assert "REAL PARTNER NOT BUILT" in str(skipped.value)
    assert "tests/partners.py build otelcol" in str(skipped.value) and str(tmp_path) in str(skipped.value)
    assert partners._unavailable["otelcol"] == str(skipped.value)  # said once per process, then reused
    with pytest.raises(partners.PartnerUnavailable, match="no network to http://127.0.0.1:9/"):
        partners._need_host("the model", "http://127.0.0.1:9/")  # nothing listens on the discard port
