"""Pure pieces: codec, Kafka splitting, values, config precedence, schema migrations."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import otlp_request
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from monitor.config import load
from monitor.errors import ConfigError, DecodeError, PayloadTooLarge
from monitor.otlp import codec
from monitor.otlp.split import split_for_kafka
from monitor.otlp.values import to_str


def test_json_ids_are_hex_both_ways():
    msg = codec.decode_message("traces", otlp_request(7, spans=2))
    text = codec.to_json(msg)
    data = json.loads(text)
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == f"{15:032x}" and span["spanId"] == f"{15:016x}"
    assert codec.decode_message("traces", text) == msg  # otlp_json on Kafka is detected and parsed


def test_gunzip_is_bounded():
    assert codec.gunzip_bounded(gzip.compress(b"a" * 1000), 1000) == b"a" * 1000
    with pytest.raises(PayloadTooLarge):
        codec.gunzip_bounded(gzip.compress(b"a" * 1001), 1000)
    with pytest.raises(DecodeError):
        codec.gunzip_bounded(gzip.compress(b"a" * 1000)[:-5], 1000)


def test_decode_errors_name_the_problem():
    with pytest.raises(codec.UnsupportedMediaType, match="text/plain"):
        codec.decode_body("traces", b"", "text/plain", None, 100)
    with pytest.raises(DecodeError, match="not valid JSON"):
        codec.decode_body("traces", b"{", "application/json", None, 100)
    with pytest.raises(DecodeError, match="empty message"):
        codec.decode_message("traces", b"")


def test_split_keys_messages_by_trace_and_keeps_resource_and_scope():
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value="api"))
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    for trace in (1, 2, 1, 3, 2):
        ss.spans.add(trace_id=trace.to_bytes(16, "big"), span_id=len(ss.spans).__add__(1).to_bytes(8, "big"))
    whole = split_for_kafka("traces", req, 1_000_000)  # the default: the request as one message, like the Collector
    assert whole.rejected == 0 and len(whole.messages) == 1 and whole.messages[0][0] is None
    assert whole.messages[0][1] == req.SerializeToString()
    split = split_for_kafka("traces", req, 1_000_000, by_trace=True)
    assert split.rejected == 0
    by_key = {k: trace_pb2.TracesData.FromString(v) for k, v in split.messages}
    assert sorted(int.from_bytes(k, "big") for k in by_key) == [1, 2, 3]
    one = by_key[(1).to_bytes(16, "big")]
    assert one.resource_spans[0].resource.attributes[0].value.string_value == "api"
    assert one.resource_spans[0].scope_spans[0].scope.name == "lib"
    assert len(one.resource_spans[0].scope_spans[0].spans) == 2


def test_split_breaks_large_traces_and_rejects_single_oversized_spans():
    req = trace_service_pb2.ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for i in range(4):
        ss.spans.add(trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"), name="x" * 3000)
    ss.spans.add(trace_id=b"\x01" * 16, span_id=b"\x09" * 8, name="y" * 20_000)
    split = split_for_kafka("traces", req, 10_000)
    assert split.rejected == 1 and "exceeds kafka.max_message_bytes" in split.reason
    assert len(split.messages) == 4 and all(len(v) <= 10_000 for _, v in split.messages)


@pytest.mark.parametrize("value,expected", [
    (common_pb2.AnyValue(string_value="a"), "a"),
    (common_pb2.AnyValue(bool_value=True), "true"),
    (common_pb2.AnyValue(int_value=-3), "-3"),
    (common_pb2.AnyValue(double_value=0.2), "0.2"),
    (common_pb2.AnyValue(double_value=1e-7), "0.0000001"),
    (common_pb2.AnyValue(double_value=3.0), "3"),
    (common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue(string_value="stop")])),
     '["stop"]'),
])
def test_attribute_values_are_stringified_like_the_collector(value, expected):
    assert to_str(value) == expected


def test_config_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text("receiver:\n  http_port: 1111\n  grpc_port: 2222\nkafka:\n  bootstrap_servers: a:1,b:2\n"
                   "store:\n  retention_days: 9\n")
    monkeypatch.setenv("MONITOR_RECEIVER__GRPC_PORT", "3333")
    monkeypatch.setenv("MONITOR_STORE__URL", "http://u:p@ch:8123/obs")
    s = load(cfg, {"receiver": {"http_port": None, "host": "0.0.0.0"}})
    assert (s.receiver.http_port, s.receiver.grpc_port, s.receiver.host) == (1111, 3333, "0.0.0.0")
    assert s.kafka.bootstrap_servers == ["a:1", "b:2"]
    assert (s.store.retention_days, s.store.database_name(), s.store.is_embedded) == (9, "obs", False)
    s = load(cfg, {"receiver": {"http_port": 4444}})
    assert s.receiver.http_port == 4444


def test_list_settings_from_env_take_commas_or_json(monkeypatch):
    monkeypatch.setenv("MONITOR_KAFKA__BOOTSTRAP_SERVERS", "kafka-0:9092, kafka-1:9092")
    monkeypatch.setenv("MONITOR_REDACTION__DETECTORS", "email,card")
    monkeypatch.setenv("MONITOR_CHECKS__GROUP_BY", '["url.path", "tenant"]')
    s = load()
    assert s.kafka.bootstrap_servers == ["kafka-0:9092", "kafka-1:9092"]
    assert s.redaction.detectors == ["email", "card"]
    assert s.checks.group_by == ["url.path", "tenant"]


def test_config_errors_say_where_to_fix(tmp_path, monkeypatch):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("receiver:\n  http_port: not-a-port\nstore:\n  url: mysql://x\n")
    with pytest.raises(ConfigError) as err:
        load(cfg)
    text = str(err.value)
    assert "receiver.http_port" in text and "MONITOR_RECEIVER__HTTP_PORT" in text
    assert "chdb://" in text and str(cfg) in text
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.yaml")
    monkeypatch.setenv("MONITOR_RECEIVER__NO_SUCH_KEY", "1")
    with pytest.raises(ConfigError, match="no_such_key"):
        load()


def test_example_config_is_valid_and_complete():
    """deploy/monitor.example.yaml loads and names every setting."""
    from pathlib import Path

    import yaml

    from monitor.config import Settings
    path = Path(__file__).resolve().parents[1] / "deploy" / "monitor.example.yaml"
    s = load(path)
    doc = yaml.safe_load(path.read_text())
    for section, model in Settings.model_fields.items():
        if hasattr(model.annotation, "model_fields"):
            assert set(doc[section]) == set(model.annotation.model_fields), section
    assert s.model_dump() == Settings().model_dump()  # the example spells out the defaults


def test_migrations_are_recorded_once_and_retention_is_altered(store):
    from monitor.store.migrate import migrate, migration_files

    versions = [v for v, _, _ in migration_files()]
    assert [r[0] for r in store.query_rows("SELECT version FROM schema_migrations ORDER BY version")] == versions
    assert migrate(store, 30) == []
    migrate(store, 7)
    ddl = store.query_rows("SELECT create_table_query FROM system.tables WHERE database = {d:String} "
                           "AND name = 'inference_events'", {"d": store.database})[0][0]
    assert "toIntervalDay(7)" in ddl
    assert store.query_rows("SELECT count() FROM schema_migrations")[0][0] == len(versions)


def test_pipeline_processors_declared_in_config():
    """pipeline.processors names the registry's processors, in a checked order, and fails closed."""
    from typing import get_args

    from monitor.config import ProcessorName, load
    from monitor.errors import ConfigError
    from monitor.runtime.sources import PROCESSORS, PipelineSources
    from monitor.selfmetrics import SelfMetrics

    assert set(get_args(ProcessorName)) == set(PROCESSORS)
    assert load().pipeline.processors == ["engine_join", "cost", "redaction"]
    for bad, says in ((["cost", "redaction", "engine_join"], "engine_join must come first"),
                      (["redaction", "cost"], "redaction must come last"),
                      (["cost", "cost", "redaction"], "listed twice"),
                      (["cost", "sampler", "redaction"], "unknown processor")):
        with pytest.raises(ConfigError, match=says):
            load(overrides={"pipeline": {"processors": bad}})
    with pytest.raises(ConfigError, match="does not list redaction"):
        load(overrides={"pipeline": {"processors": ["cost"]}})
    metrics = SelfMetrics()
    # without a proxy the engine join does not apply; without redaction only cost is left
    src = PipelineSources(load(), metrics)
    assert len(src.processors(None)) == 2
    off = load(overrides={"pipeline": {"processors": ["cost"]}, "redaction": {"enabled": False}})
    assert len(PipelineSources(off, metrics).processors(None)) == 1
    import os
    os.environ["MONITOR_PIPELINE__PROCESSORS"] = "engine_join,redaction"
    try:
        assert load().pipeline.processors == ["engine_join", "redaction"]
    finally:
        del os.environ["MONITOR_PIPELINE__PROCESSORS"]


def test_a_protobuf_message_that_looks_like_json_after_its_first_byte_is_decoded_as_protobuf():
    """The tag of field 1 is 0x0a (a newline); a first ResourceSpans of 123 bytes puts ``{`` right after
    it. Found by the fuzzing campaign: such a message was taken for JSON and set aside as undecodable,
    a valid span lost. JSON with whitespace around it still decodes as JSON."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from monitor.otlp.codec import decode_message

    made = 0
    for n in range(1, 400):
        req = ExportTraceServiceRequest()
        span = req.resource_spans.add().scope_spans.add().spans.add()
        span.name, span.trace_id, span.span_id = "s" * n, b"\x01" * 16, b"\x02" * 8
        raw = req.SerializeToString()
        if raw.lstrip()[:1] != b"{":
            continue
        made += 1
        assert decode_message("traces", raw) == req
    assert made == 1  # exactly one name length gives a 123-byte ResourceSpans
    parsed = decode_message("traces", b'\n {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "j"}]}]}]}\r\n')
    assert parsed.resource_spans[0].scope_spans[0].spans[0].name == "j"


# -- the one retry helper (monitor.backoff) -------------------------------------------------------

def test_retry_delays_share_one_scheme_and_honour_retry_after_capped_at_the_maximum():
    from monitor.backoff import Backoff, retry_delay

    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert all(0.0 <= retry_delay(attempt, 0.5, 8.0) <= ceiling for _ in range(50))  # full jitter
        assert all(ceiling / 2 <= retry_delay(attempt, 0.5, 8.0, floor=0.5) <= ceiling for _ in range(50))
    b = Backoff(0.5, 8.0)
    assert [round(b.next_delay(retry_after=100.0), 6) for _ in range(3)] == [8.0, 8.0, 8.0]  # hint capped
    b.reset()
    assert 0.25 <= b.next_delay() <= 0.5 and 0.5 <= b.next_delay() <= 1.0 and b.attempt == 2
    assert retry_delay(1, 0.01, 5.0, retry_after=2.0) == 2.0  # a longer hint wins
    for junk in (None, float("nan"), -3.0):
        assert retry_delay(1, 0.01, 5.0, retry_after=junk) <= 0.01


def test_retry_call_honours_retry_after_stops_on_a_permanent_error_and_on_shutdown():
    import threading
    import time

    from monitor.backoff import Backoff, retry_call
    from monitor.errors import Cancelled, Overloaded, PermanentError, RejectedData

    stop = threading.Event()
    calls: list[float] = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Overloaded("busy", retry_after=0.3)
        return "done"

    told = []
    assert retry_call(flaky, stop=stop, backoff=Backoff(0.001, 1.0), on_retry=lambda e, n, d: told.append((n, d))) \
        == "done"
    assert calls[1] - calls[0] >= 0.3 and told[0][0] == 1 and told[0][1] >= 0.3  # the hint, not 1 ms

    def poison():
        calls.append(time.monotonic())
        raise RejectedData("a value does not fit")

    calls.clear()
    with pytest.raises(PermanentError):
        retry_call(poison, stop=stop, backoff=Backoff(0.001, 0.01))
    assert len(calls) == 1  # never retried

    def down():
        raise Overloaded("down", retry_after=30.0)

    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        retry_call(down, stop=stop, backoff=Backoff(0.001, 60.0))
    assert time.monotonic() - t0 < 5  # the 30 s wait ended at the stop
    with pytest.raises(Cancelled):  # already stopping: not even one call
        retry_call(lambda: calls.append(0), stop=stop)
    assert calls == [calls[0]]


def test_a_loop_retrier_retries_bugs_only_when_asked_and_starts_over_after_a_success():
    import threading

    from monitor.backoff import Backoff, Retrier
    from monitor.errors import Cancelled, DecodeError, TransportError

    stop = threading.Event()
    strict = Retrier(Backoff(0.001, 0.002))
    with pytest.raises(KeyError):
        strict.delay(KeyError("a bug"))
    loop = Retrier(Backoff(0.001, 0.002), what="a loop", retry_unexpected=True)
    loop.wait(KeyError("a bug"), stop)  # logged and retried
    loop.wait(TransportError("down"), stop)
    assert loop.attempt == 2 and loop.backoff.attempt == 2
    with pytest.raises(DecodeError):
        loop.wait(DecodeError("poison"), stop)  # permanent: raised, even for a loop that never dies
    with pytest.raises(Cancelled):
        loop.wait(Cancelled("stopping"), stop)
    loop.succeeded()
    assert loop.attempt == 0 and loop.backoff.attempt == 0
    stop.set()
    with pytest.raises(Cancelled):
        loop.wait(TransportError("down", retry_after=60.0), stop)
    with pytest.raises(TransportError):
        Retrier(Backoff(0.001, 0.002), max_attempts=1).delay(TransportError("down"))


def test_a_burst_of_sigterms_stops_a_child_every_time():
    """The children's SIGTERM handling never waits for itself: a handler that set a threading.Event
    hung the process in about one of twenty bursts (the signal landing while the main thread held the
    Event's lock)."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import sys\nfrom monitor.runtime.child import stop_on_sigterm, wait_for\n"
            "s = stop_on_sigterm()\nprint('ready', flush=True)\nwait_for(s, 0.001)\n")
    hung = 0
    for _ in range(20):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            assert p.stdout.readline() == b"ready\n"
            for _ in range(300):
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    break
            try:  # 0, or killed by a late signal of the burst once the interpreter restored the default
                assert p.wait(10) in (0, -signal.SIGTERM)
            except subprocess.TimeoutExpired:
                hung += 1
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert hung == 0


def test_span_attributes_built_in_place_are_the_ones_kv_builds():
    """record_to_span adds its attributes in place (add_attributes): each the message kv() makes, in
    order, ``True``, ``1``, ``1.0`` and ``"1"`` four attributes of four types, zero values and empty
    strings kept with their type, lists and other types as kv() has them, an integer past int64 (a
    client's ``"seed": 2**70``) as text instead of failing the span, None left out."""
    from enum import IntEnum

    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from monitor.sidecar.proxy.spans import add_attributes, kv

    class Code(IntEnum):
        OK = 3

    attrs = {"b": True, "i": 1, "f": 1.0, "s": "1", "b0": False, "i0": 0, "f0": 0.0, "s0": "", "big": 2**63 - 1,
             "neg": -2**63, "huge": 2**70, "list": ["a", "b"], "tuple": ("x",), "enum": Code.OK, "none": None,
             "u": "naïve 🙂"}
    span = Span()
    add_attributes(span.attributes, attrs)
    assert list(span.attributes) == [kv(k, v) for k, v in attrs.items() if v is not None]
    kinds = {a.key: a.value.WhichOneof("value") for a in span.attributes}
    assert (kinds["b"], kinds["i"], kinds["f"], kinds["s"]) == ("bool_value", "int_value", "double_value",
                                                                "string_value")
    assert (kinds["b0"], kinds["i0"], kinds["f0"], kinds["s0"]) == ("bool_value", "int_value", "double_value",
                                                                    "string_value")
    assert kinds["big"] == kinds["neg"] == "int_value"
    assert {a.key: a.value.string_value for a in span.attributes}["huge"] == str(2**70)  # past int64: text
    assert Span.FromString(span.SerializeToString()) == span


def test_a_number_orjson_refuses_costs_the_request_nothing_but_that_number():
    """A client's request with 1e400 and NaN (read by Python's json, refused by orjson) and a seed past
    64 bits, and an answer with a NaN: the span still has the model, the messages and the answer; the
    seed is text (past int64), the temperature inf; the event ingest makes of it is the request's."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from monitor.config import ProxySettings
    from monitor.ingest.normalize import normalize
    from monitor.sidecar.proxy.record import CaptureRecord
    from monitor.sidecar.proxy.spans import record_to_span

    body = (b'{"model":"m","seed":1180591620717411303424,"temperature":1e400,"top_p":NaN,'
            b'"messages":[{"role":"user","content":"hi"}]}')
    rec = CaptureRecord(api="openai", operation="chat", path="/v1/chat/completions", trace_id=b"t" * 16,
                        span_id=b"s" * 8, start_ns=10**18, end_ns=10**18 + 10**9, status=200, request_body=body,
                        content_type="application/json",
                        response_body=b'{"model":"m","logprob":NaN,'
                                      b'"choices":[{"message":{"role":"assistant","content":"ok"}}]}')
    span = record_to_span(rec, ProxySettings())
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["gen_ai.request.model"].string_value == "m"
    assert attrs["gen_ai.request.seed"].string_value == str(2**70)
    assert attrs["gen_ai.request.temperature"].double_value == float("inf")
    assert json.loads(attrs["gen_ai.input.messages"].string_value)[0]["parts"][0]["content"] == "hi"
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.append(span)
    batch = normalize([("traces", req)])
    (event,) = batch.events
    assert (event.model, event.prompt, event.completion) == ("m", "hi", "ok")


def test_client_time_per_token_is_the_span_over_the_tokens_and_none_when_it_came_in_one_read():
    """A replayed stream's content events take the time of the read that brought them. Time per
    output token: (last - first) / (events - 1), whatever the reads' grouping; where every event came
    in one read the proxy cannot tell their spacing, and says nothing (never 0)."""
    from monitor.config import ProxySettings
    from monitor.sidecar.proxy.record import CaptureRecord
    from monitor.sidecar.proxy.spans import record_to_span

    def event(text: str) -> bytes:
        return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"

    body = b"".join(event(t) for t in ("a", "b", "c", "d", "e")) + b"data: [DONE]\n\n"
    ends = [body.index(event(t)) + len(event(t)) for t in ("a", "b", "c", "d", "e")]

    def attrs(chunks):
        rec = CaptureRecord(api="openai", operation="chat", path="/v1/chat/completions", trace_id=b"t" * 16,
                            span_id=b"s" * 8, start_ns=0, end_ns=10**9, status=200,
                            request_body=b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}',
                            content_type="text/event-stream", response_body=body, chunks=chunks)
        span = record_to_span(rec, ProxySettings())
        return {a.key: a.value for a in span.attributes}

    # a, then b+c in one read, then d+e: first at 0.1 s, last at 0.5 s, five tokens
    spread = attrs([(100_000_000, ends[0]), (300_000_000, ends[2]), (500_000_000, len(body))])
    assert spread["monitor.client.time_to_first_token"].double_value == pytest.approx(0.1)
    assert spread["monitor.client.time_per_output_token"].double_value == pytest.approx(0.4 / 4)
    once = attrs([(200_000_000, len(body))])
    assert once["monitor.client.time_to_first_token"].double_value == pytest.approx(0.2)
    assert "monitor.client.time_per_output_token" not in once


def test_the_cpu_cgroup_is_found_on_cgroup_v1_and_v2(tmp_path):
    """monitor/runtime/cpu.py finds the directory of the process's cpu cgroup from /proc/<pid>/cgroup and
    mountinfo: the v1 cpu hierarchy (alone or co-mounted with cpuacct), or v2 where its cpu controller is
    available; nothing where neither is."""
    from monitor.runtime.cpu import cpu_cgroup_dir

    v1 = "4:memory:/x\n3:cpu,cpuacct:/system.slice/app.service\n0::/system.slice/app.service\n"
    v1_mounts = ("30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
                 "31 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cpu_cgroup_dir(v1, v1_mounts) == Path("/sys/fs/cgroup/cpu,cpuacct/system.slice/app.service")
    # a container sees its own cgroup as the mount's root
    assert cpu_cgroup_dir("3:cpu:/kubepods/pod1/c1\n",
                          "30 25 0:27 /kubepods/pod1/c1 /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
                          ) == Path("/sys/fs/cgroup/cpu")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    v2_mounts = f"29 25 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    assert cpu_cgroup_dir("0::/app\n", v2_mounts) == tmp_path / "app"
    (tmp_path / "app" / "cgroup.controllers").write_text("memory pids\n")
    assert cpu_cgroup_dir("0::/app\n", v2_mounts) is None
    assert cpu_cgroup_dir("1:name=systemd:/\n", "") is None


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup/cpu/cpu.idle").exists()
                    and not Path("/sys/fs/cgroup/cpu.idle").exists(),
                    reason="creating an idle cgroup needs root and cpu.idle here (Linux 5.15+)")
def test_a_process_joins_its_supervisors_idle_cgroup_which_goes_when_the_supervisor_cleans_up():
    """join_idle_cgroup moves a process into <own cpu cgroup>/llm-monitor-<supervisor pid>-idle with cpu.idle
    = 1; remove_idle_cgroup removes it once empty; remove_stale_idle_cgroups removes those of supervisors
    that are gone and leaves a live one's alone."""
    from monitor.runtime.cpu import cpu_cgroup_dir, idle_cgroup_path, remove_idle_cgroup, remove_stale_idle_cgroups

    code = ("import os, sys, time; from monitor.runtime.cpu import join_idle_cgroup; "
            "print(join_idle_cgroup(int(sys.argv[1])), flush=True); time.sleep(60)")
    me = os.getpid()
    p = subprocess.Popen([sys.executable, "-c", code, str(me)], stdout=subprocess.PIPE, text=True)
    try:
        path = Path(p.stdout.readline().strip())
        assert path == idle_cgroup_path(me) and path.name == f"llm-monitor-{me}-idle"
        assert (path / "cpu.idle").read_text().strip() == "1"
        assert str(p.pid) in (path / "cgroup.procs").read_text().split()
        assert cpu_cgroup_dir(Path(f"/proc/{p.pid}/cgroup").read_text(),
                              Path(f"/proc/{p.pid}/mountinfo").read_text()) == path
        remove_idle_cgroup(me, wait_s=0.3)  # not empty: stays
        assert path.exists()
        threading.Timer(0.5, p.kill).start()  # as a store's ingest worker leaves a moment after the store
        remove_idle_cgroup(me)  # waits for the last process in it (up to 3 s)
        assert not path.exists()
    finally:
        p.kill()
        p.wait()
    # a group left by a supervisor that was killed (a pid that is not running) goes; a live one's stays
    dead = 2**22 + 17
    while Path(f"/proc/{dead}").exists():
        dead += 1
    stale, live = path.parent / f"llm-monitor-{dead}-idle", path.parent / f"llm-monitor-{os.getppid()}-idle"
    stale.mkdir()
    live.mkdir()
    try:
        assert remove_stale_idle_cgroups() == 1
        assert not stale.exists() and live.exists()
    finally:
        for d in (stale, live):
            if d.exists():
                d.rmdir()
