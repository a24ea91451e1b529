"""Records governance (README "Records governance"): retention per table and per model applied at a
restart, erasure of one person's rows from every table, exports that round-trip, and the audit log
(from the commands, the admin endpoint of ``monitor up`` and the dashboards' queries).

Data goes in through the real ingest stage (OTLP protobuf -> normalize -> writer) into the worker's
chdb directory, one database per test; each table's rows of the person erased are identified here
independently of :mod:`monitor.governance.erase` (by the trace ids and values the test wrote)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from monitor.ingest.stage import IngestStage, Message
from monitor.selfmetrics import SelfMetrics
from monitor.store.writer import Writer

USERS = ("alice", "bob", "carol")
PER_USER = 4
TOKEN = "admin-token-for-the-governance-tests"


# -- data -----------------------------------------------------------------------------------------


def _kv(container, key, value):
    a = container.add()
    a.key = key
    if isinstance(value, int):
        a.value.int_value = value
    else:
        a.value.string_value = value


def _tid(n: int) -> bytes:
    return (0xABC0_0000 + n).to_bytes(16, "big")


def trace_ids(user: str) -> list[str]:
    u = USERS.index(user)
    return [_tid(u * PER_USER + i + 1).hex() for i in range(PER_USER)]


def prompt(user: str, i: int) -> str:
    return f"prompt of {user} number {i}: " + "lorem ipsum " * (40 if i == 0 else 1)


def traces_request(now_ns: int) -> bytes:
    """Per user, PER_USER traces of two spans: the client-facing GenAI span with the user's identity
    and content, and the engine's own span (vLLM ``llm_request``) without any identity."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _kv(rs.resource.attributes, "service.name", "app")
    ss = rs.scope_spans.add()
    for u, user in enumerate(USERS):
        for i in range(PER_USER):
            n = u * PER_USER + i + 1
            t = now_ns - (n * 60 + 3600) * 10**9
            parent = ss.spans.add()
            parent.trace_id, parent.span_id, parent.name, parent.kind = _tid(n), (2 * n).to_bytes(8, "big"), "chat m", 3
            parent.start_time_unix_nano, parent.end_time_unix_nano = t, t + 10**9
            for k, v in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", f"model-{i % 2}"),
                         ("enduser.id", user), ("gen_ai.conversation.id", f"conv-{user}-{i % 2}"),
                         ("gen_ai.input.messages", json.dumps([{"role": "user", "content": prompt(user, i)}])),
                         ("gen_ai.output.messages", json.dumps([{"role": "assistant", "parts": [
                             {"type": "text", "content": f"answer to {user} {i}"}]}])),
                         ("gen_ai.usage.input_tokens", 5 + i), ("gen_ai.usage.output_tokens", 3)):
                _kv(parent.attributes, k, v)
            child = ss.spans.add()
            child.trace_id, child.span_id = _tid(n), (2 * n + 1).to_bytes(8, "big")
            child.parent_span_id = parent.span_id
            child.name, child.kind = "llm_request", 2
            child.start_time_unix_nano, child.end_time_unix_nano = t + 10**8, t + 9 * 10**8
            for k, v in (("gen_ai.request.model", f"model-{i % 2}"), ("gen_ai.usage.prompt_tokens", 5 + i),
                         ("gen_ai.usage.completion_tokens", 3)):
                _kv(child.attributes, k, v)
    # a span with no user, no trace of anyone's
    s = ss.spans.add()
    s.trace_id, s.span_id, s.name = _tid(999), (999).to_bytes(8, "big"), "health check"
    s.start_time_unix_nano, s.end_time_unix_nano = now_ns - 10**9, now_ns
    return req.SerializeToString()


def logs_request(now_ns: int) -> bytes:
    """A log line in each user's first trace, one naming alice without a trace, one of nobody's."""
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    _kv(rl.resource.attributes, "service.name", "app")
    sl = rl.scope_logs.add()
    for user in USERS:
        r = sl.log_records.add()
        r.time_unix_nano, r.trace_id, r.span_id = now_ns - 4000 * 10**9, bytes.fromhex(trace_ids(user)[0]), b"\x01" * 8
        r.body.string_value = f"tool output for {user}"
    r = sl.log_records.add()
    r.time_unix_nano = now_ns - 4000 * 10**9
    r.body.string_value = "login"
    _kv(r.attributes, "enduser.id", "alice")
    r = sl.log_records.add()
    r.time_unix_nano = now_ns - 4000 * 10**9
    r.body.string_value = "server started"
    return req.SerializeToString()


def metrics_request(now_ns: int) -> bytes:
    """A per-user gauge (one point per user) and a server-wide one."""
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _kv(rm.resource.attributes, "service.name", "app")
    sm = rm.scope_metrics.add()
    m = sm.metrics.add()
    m.name = "app.user.requests"
    for k, user in enumerate(USERS):
        p = m.gauge.data_points.add()
        p.time_unix_nano, p.as_double = now_ns - 4000 * 10**9, float(k + 1)
        _kv(p.attributes, "enduser.id", user)
    m = sm.metrics.add()
    m.name = "app.queue"
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.as_double = now_ns - 4000 * 10**9, 7.0
    return req.SerializeToString()


def populate(store) -> None:
    """Every table erasure reaches, with rows of each user and rows of nobody's."""
    from monitor.checks.embeddings import text_hash

    now = time.time_ns()
    stage = IngestStage(Writer(store, SelfMetrics()), SelfMetrics(), quality=False)
    result = stage.run([Message("traces", traces_request(now), "t"), Message("logs", logs_request(now), "l"),
                        Message("metrics", metrics_request(now), "m")], "governance:1", threading.Event())
    assert not result.dead, result.dead
    store.insert("embedding_cache", [["mini", text_hash(prompt(u, i)), [0.1, 0.2], datetime.now(timezone.utc)]
                                     for u in USERS for i in range(PER_USER)] + [
        ["mini", text_hash("a text nobody erased"), [0.3], datetime.now(timezone.utc)]],
        ("model", "text_hash", "embedding", "created"))
    at = datetime.now(timezone.utc)
    quality = {"examples": [{"trace_id": trace_ids(u)[1], "prompt": prompt(u, 1)[:300], "completion": "x"}
                            for u in USERS]}
    semantic = {"clusters": [{"label": "lorem", "examples": [prompt(u, 0)[:299] + "…" for u in USERS]
                              + [prompt("bob", 2)]}]}
    cols = ("run_id", "timestamp", "check", "model", "group", "metric", "status", "details")
    store.insert("check_results", [["r1", at, "quality", "model-1", "", "refusal_rate", "fail", json.dumps(quality)],
                                   ["r1", at, "semantic_drift", "model-0", "", "prompt", "fail", json.dumps(semantic)],
                                   ["r1", at, "slo", "model-0", "", "latency_ms_p95", "pass", "{}"]], cols)
    store.insert("dead_letters", [[at, f"spool:{u}", "traces", 0, "refused", f"\x0aenduser.id\x12{u}\x00".encode()]
                                  for u in USERS], ("timestamp", "source", "signal", "item", "reason", "payload"))


def fingerprint(store, table: str, where: str = "1") -> tuple[int, int]:
    """Rows of ``table`` matching ``where`` and a hash over all their values."""
    n, h = store.query_rows(f"SELECT count(), sum(cityHash64(toString(tuple(*)))) FROM {table} WHERE {where}")[0]
    return int(n), int(h)


def person_rows(user: str) -> dict[str, str]:
    """Per table, the WHERE of ``user``'s rows, from what populate() wrote."""
    tids = "[" + ", ".join(f"'{t}'" for t in trace_ids(user)) + "]"
    return {
        "inference_events": f"has({tids}, trace_id)",
        "otel_traces": f"has({tids}, TraceId)",
        "otel_traces_trace_id_ts": f"has({tids}, TraceId)",
        "otel_logs": f"has({tids}, TraceId) OR LogAttributes['enduser.id'] = '{user}'",
        "otel_metrics_gauge": f"Attributes['enduser.id'] = '{user}'",
        "embedding_cache": "text_hash IN (" + ", ".join(
            f"unhex('{_hash(prompt(user, i))}')" for i in range(PER_USER)) + ")",
        "dead_letters": f"source = 'spool:{user}'",
    }


def _hash(text: str) -> str:
    from monitor.checks.embeddings import text_hash
    return text_hash(text).hex()


# -- retention ------------------------------------------------------------------------------------


def _ttl(store, table: str) -> str:
    full = store.query_rows("SELECT engine_full FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                            {"d": store.database, "t": table})[0][0]
    return full


def test_retention_per_table_and_model_changes_at_restart_and_expired_rows_go(settings, caplog):
    from monitor.config import RetentionSettings
    from monitor.runtime.apps import open_store

    store = open_store(settings)
    try:
        assert "toIntervalDay(30)" in _ttl(store, "inference_events")
        assert "toIntervalDay(365)" in _ttl(store, "audit_log")  # its own default
        now = datetime.now(timezone.utc)
        store.insert("inference_events", [[now - timedelta(days=d), f"{m}{d}", "s", m, "p"]
                                          for m in ("keep-long", "short", "other") for d in (1, 4, 8, 20)],
                     ("timestamp", "trace_id", "span_id", "model", "prompt"))
        store.insert("otel_traces", [[now - timedelta(days=d), f"t{d}", "s", "x", {"gen_ai.request.model": m}]
                                     for m in ("short", "other") for d in (1, 4, 8)],
                     ("Timestamp", "TraceId", "SpanId", "SpanName", "SpanAttributes"))
    finally:
        store.close()

    # restart with new retention: otel_traces 7 days, model "short" 3 days, "keep-long" 90
    settings.retention = RetentionSettings(tables={"otel_traces": 7}, models={"short": 3, "keep-long": 90})
    # only what the restart logs: the first open's own lines (audit_log's 365-day default applied) are
    # captured too when an earlier test in this worker left monitor.store at INFO
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monitor.store"):
        store = open_store(settings)
    try:
        changed = {r.getMessage().split()[2] for r in caplog.records if r.getMessage().startswith("retention of ")}
        assert changed == {"inference_events", "inference_events_1m", "inference_events_10m", "otel_traces",
                           "otel_traces_trace_id_ts"}, changed
        ev = _ttl(store, "inference_events")
        assert "multiIf(model = 'keep-long', 90, model = 'short', 3, 30)" in ev and "ttl_only_drop_parts = 0" in ev
        tr = _ttl(store, "otel_traces")  # spans of a model never outlive spans: only the shorter one
        assert "toIntervalDay(multiIf(" in tr and "'short', 3, 7))" in tr and "keep-long" not in tr, tr
        assert "toIntervalDay(30)" in _ttl(store, "otel_logs")
        store.command("OPTIMIZE TABLE inference_events FINAL")
        store.command("OPTIMIZE TABLE otel_traces FINAL")
        kept = sorted(store.query_rows("SELECT model, dateDiff('day', timestamp, now()) AS d FROM inference_events "
                                       "ORDER BY model, d"))
        assert kept == [("keep-long", 1), ("keep-long", 4), ("keep-long", 8), ("keep-long", 20),
                        ("other", 1), ("other", 4), ("other", 8), ("other", 20), ("short", 1)], kept
        for rollup in ("inference_events_1m", "inference_events_10m"):  # the rollups: the same days
            store.command(f"OPTIMIZE TABLE {rollup} FINAL")
            rolled = store.query_rows(f"SELECT model, sum(requests) FROM {rollup} GROUP BY model ORDER BY model")
            assert rolled == [("keep-long", 4), ("other", 4), ("short", 1)], (rollup, rolled)
        spans = sorted(store.query_rows("SELECT SpanAttributes['gen_ai.request.model'] AS m, "
                                        "dateDiff('day', Timestamp, now()) AS d FROM otel_traces ORDER BY m, d"))
        assert spans == [("other", 1), ("other", 4), ("short", 1)], spans
    finally:
        store.close()

    # the same settings again: nothing to change
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="monitor.store"):
        open_store(settings).close()
    assert not [r for r in caplog.records if r.getMessage().startswith("retention of ")]

    # back to the defaults: one TTL per table, whole parts dropped again
    settings.retention = RetentionSettings()
    store = open_store(settings)
    try:
        ev = _ttl(store, "inference_events")
        assert "toIntervalDay(30)" in ev and "ttl_only_drop_parts = 1" in ev
    finally:
        store.close()


def test_retention_naming_no_table_stops_the_start(settings):
    from monitor.config import RetentionSettings
    from monitor.errors import ConfigError
    from monitor.runtime.apps import open_store

    settings.retention = RetentionSettings(tables={"otel_trace": 7})
    with pytest.raises(ConfigError, match="otel_trace.*matches no table"):
        open_store(settings)


def test_retention_of_odd_model_names_is_stable(store):
    """Quotes, backslashes and non-ASCII in a model name survive ClickHouse's formatting: a second
    start finds nothing to change."""
    from monitor.config import RetentionSettings
    from monitor.store.retention import apply_retention

    r = RetentionSettings(models={"it's": 2, "back\\slash": 3, "模型 ü": 4})
    assert "inference_events" in apply_retention(store, 30, r)
    assert apply_retention(store, 30, r) == []


# -- erasure --------------------------------------------------------------------------------------


def test_erase_removes_every_row_of_one_user_and_no_other(store):
    from monitor.governance.erase import erase

    populate(store)
    tables = list(person_rows("alice"))
    alice = {t: fingerprint(store, t, w)[0] for t, w in person_rows("alice").items()}
    others = {t: fingerprint(store, t, f"NOT ({w})") for t, w in person_rows("alice").items()}
    assert alice == {"inference_events": 2 * PER_USER, "otel_traces": 2 * PER_USER, "otel_traces_trace_id_ts": PER_USER,
                     "otel_logs": 2, "otel_metrics_gauge": 1, "embedding_cache": PER_USER, "dead_letters": 1}
    assert all(others[t][0] > 0 for t in tables)

    dry = erase(store, "user", "alice", dry_run=True)
    assert dry.traces == PER_USER
    assert {t: n for t, n in dry.counts().items() if t in alice} == alice
    assert dry.counts()["check_results"] == 2  # the quality and the semantic result quote alice
    assert {t: fingerprint(store, t, w)[0] for t, w in person_rows("alice").items()} == alice  # nothing deleted

    t0 = time.monotonic()
    done = erase(store, "user", "alice")
    assert time.monotonic() - t0 < 60
    assert {t: n for t, n in done.counts().items() if t in alice} == alice
    assert all(t.left == 0 for t in done.tables), done.tables
    for t, w in person_rows("alice").items():
        assert fingerprint(store, t, w)[0] == 0, t
        assert fingerprint(store, t, f"NOT ({w})") == others[t], f"{t}: another person's rows changed"
    # no trace of alice anywhere in the text of what is left
    for t, col in (("inference_events", "concat(prompt, toString(attributes))"),
                   ("otel_traces", "toString(SpanAttributes)"), ("otel_logs", "concat(Body, toString(LogAttributes))"),
                   ("check_results", "details"), ("dead_letters", "payload")):
        assert store.query_rows(f"SELECT count() FROM {t} WHERE position({col}, 'alice') > 0")[0][0] == 0, t
    # check results stay, without alice's examples and with the others'
    details = {c: json.loads(d) for c, d in store.query_rows("SELECT check, details FROM check_results")}
    assert [e["trace_id"] for e in details["quality"]["examples"]] == [trace_ids("bob")[1], trace_ids("carol")[1]]
    assert len(details["semantic_drift"]["clusters"][0]["examples"]) == 3
    assert details["semantic_drift"]["erased_examples"] == 1 and details["slo"] == {}
    # erasing again finds nothing
    assert sum(erase(store, "user", "alice").counts().values()) == 0


def test_erase_by_conversation_and_client(store):
    from monitor.governance.erase import erase

    populate(store)
    # bob's conversation conv-bob-1 is his requests 1 and 3: their two traces, nothing else of his
    res = erase(store, "conversation", "conv-bob-1")
    assert res.traces == 2 and res.counts()["inference_events"] == 4 and res.counts()["otel_traces"] == 4
    left = {r[0] for r in store.query_rows("SELECT trace_id FROM inference_events")}
    assert left == set(trace_ids("alice")) | set(trace_ids("carol")) | {trace_ids("bob")[0], trace_ids("bob")[2]}
    # a client id that nobody has: nothing matches, nothing changes
    before = fingerprint(store, "otel_traces")
    assert sum(erase(store, "client", "0" * 32).counts().values()) == 0
    assert fingerprint(store, "otel_traces") == before


def test_erase_uses_identity_columns_where_they_exist(store):
    """Schema 0014 adds user_id / client_key_hash / conversation_id: a row naming the user only
    there (no attribute) is found too."""
    from monitor.governance.erase import erase

    cols = {c for (c,) in store.query_rows("SELECT name FROM system.columns WHERE database = {d:String} "
                                           "AND table = 'inference_events'", {"d": store.database})}
    if "user_id" not in cols:
        pytest.skip("no user_id column in this schema")
    now = datetime.now(timezone.utc)
    store.insert("inference_events", [[now, "", "s1", "m", "dave's prompt", "dave"], [now, "", "s2", "m", "x", "eve"]],
                 ("timestamp", "trace_id", "span_id", "model", "prompt", "user_id"))
    res = erase(store, "user", "dave")
    assert res.counts()["inference_events"] == 1
    assert [r[0] for r in store.query_rows("SELECT user_id FROM inference_events")] == ["eve"]


# -- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_round_trips(store, tmp_path, fmt):
    import pandas as pd

    from monitor.store.export import export_to_file

    populate(store)
    start, end = datetime.now(timezone.utc) - timedelta(days=1), datetime.now(timezone.utc) + timedelta(minutes=1)
    out = tmp_path / f"events.{fmt}"
    res = export_to_file(store, out, "inference_events", start, end, "model-0", fmt)
    want = store.query("SELECT * FROM inference_events WHERE model = 'model-0' ORDER BY timestamp")
    assert res.rows == len(want.result_rows) == len(USERS) * PER_USER  # two spans per request, half model-0
    assert out.stat().st_size == res.bytes > 0 and not (tmp_path / f"events.{fmt}.part").exists()
    if fmt == "parquet":
        got = pd.read_parquet(out)
    else:
        lines = out.read_text().splitlines()
        got = pd.DataFrame([json.loads(x) for x in lines])
        assert got["timestamp"].iloc[0].endswith("Z")  # ISO 8601, UTC
        got["timestamp"] = pd.to_datetime(got["timestamp"])
    assert list(got.columns) == list(want.column_names)
    expect = pd.DataFrame(want.result_rows, columns=want.column_names)
    for col in ("trace_id", "span_id", "model", "prompt", "completion", "source", "status_code"):
        assert got[col].tolist() == expect[col].tolist(), col
    assert got["input_tokens"].fillna(-1).astype(int).tolist() == expect["input_tokens"].fillna(-1).astype(int).tolist()
    assert [dict(a) for a in got["attributes"]] == [dict(a) for a in expect["attributes"]]
    ts = pd.to_datetime(got["timestamp"], utc=True)
    # the file keeps ClickHouse's nanoseconds; the Python client reads microseconds
    assert [t.value // 1000 for t in ts] == [pd.Timestamp(t, tz="UTC").value // 1000 for t in expect["timestamp"]]
    # ClickHouse reads the file back to the same values, column for column
    fmt_name = {"parquet": "Parquet", "jsonl": "JSONEachRow"}[fmt]
    back = store.query_rows(f"SELECT count(), sum(cityHash64(trace_id, span_id, prompt, completion, model)) FROM "
                            f"file({{p:String}}, '{fmt_name}', 'trace_id String, span_id String, prompt String, "
                            "completion String, model String')", {"p": str(out)})
    assert back == store.query_rows("SELECT count(), sum(cityHash64(trace_id, span_id, prompt, completion, model)) "
                                    "FROM inference_events WHERE model = 'model-0'")


def test_export_of_spans_by_model_and_an_empty_range(store, tmp_path):
    import pandas as pd

    from monitor.store.export import export_to_file

    populate(store)
    now = datetime.now(timezone.utc)
    res = export_to_file(store, tmp_path / "spans.parquet", "otel_traces", now - timedelta(days=1), now, "model-1")
    assert res.rows == 2 * len(USERS) * PER_USER // 2  # both spans of every model-1 request
    assert set(pd.read_parquet(tmp_path / "spans.parquet")["SpanName"]) == {"chat m", "llm_request"}
    res = export_to_file(store, tmp_path / "none.jsonl", "inference_events", now - timedelta(days=9),
                         now - timedelta(days=8), None, "jsonl")
    assert res.rows == 0 and (tmp_path / "none.jsonl").read_text() == ""


# -- the commands, the admin endpoint, the dashboards: the audit log ------------------------------


def _cli(settings, *args, **env):
    from monitor.cli import main

    base = {"MONITOR_STORE__URL": settings.store.url, "MONITOR_STORE__DATABASE": settings.store.database,
            "MONITOR_CHECKS__ADMIN_PORT": str(settings.checks.admin_port or 1),
            "MONITOR_CHECKS__ADMIN_TOKEN": TOKEN, "MONITOR_DASHBOARD__ENABLED": "false"}
    return CliRunner().invoke(main, list(args), env={**base, **env}, catch_exceptions=False)


def _audit(store) -> list[tuple]:
    return store.query_rows("SELECT actor, action, target, origin, details FROM audit_log ORDER BY timestamp")


def test_commands_erase_export_audit_with_the_store_opened_directly(settings, store, tmp_path):
    populate(store)
    r = _cli(settings, "erase", "--user", "bob", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["dry_run"] is True
    r = _cli(settings, "erase", "--user", "bob")
    assert r.exit_code == 0, r.output
    assert "inference_events" in r.output and "8 rows" in r.output.replace(",", "")
    assert store.query_rows("SELECT count() FROM inference_events WHERE attributes['enduser.id'] = 'bob'")[0][0] == 0
    out = tmp_path / "e.jsonl"
    r = _cli(settings, "export", "--from", "-1d", "--format", "jsonl", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 2 * 2 * PER_USER  # alice's and carol's requests, two rows each
    assert _cli(settings, "export", "--from", "-1d", "--out", str(out)).exit_code != 0  # exists: --force
    r = _cli(settings, "erase", "--user", "bob", "--client", "x")
    assert r.exit_code == 2 and "exactly one" in r.output
    entries = _audit(store)
    assert [(a, act, o) for a, act, _, o, _ in entries] == [("local", "erase", "cli"), ("local", "erase", "cli"),
                                                           ("local", "export", "cli")]
    import hashlib
    assert entries[1][2] == "user:sha256:" + hashlib.sha256(b"bob").hexdigest()  # never the id itself
    assert "bob" not in " ".join(str(e) for e in entries)
    assert json.loads(entries[2][4])["rows"] == 2 * 2 * PER_USER
    r = _cli(settings, "audit", "--json")
    assert [e["action"] for e in json.loads(r.stdout)] == ["export", "erase", "erase"]


class _Admin:
    """The AdminServer of ``monitor up`` on a loop thread of its own, over the test's store."""

    def __init__(self, store, settings):
        from monitor.checks.runner import CheckRunner
        from monitor.runtime.admin import AdminServer

        self.server = AdminServer(CheckRunner(store, settings.checks, checks=[]), "127.0.0.1", 0, None, token=TOKEN)
        self.pending = 0
        self.server.pending = lambda: self.pending
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_commands_go_through_the_admin_endpoint_of_a_running_monitor(settings, store, tmp_path):
    import pandas as pd

    populate(store)
    admin = _Admin(store, settings)
    try:
        settings.checks.admin_port = admin.port
        admin.pending = 3
        r = _cli(settings, "erase", "--conversation", "conv-carol-0", "--json")
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["traces"] == 2 and {t["table"]: t["matched"] for t in out["tables"]}["inference_events"] == 4
        assert "3 accepted request(s) were still waiting" in out["notes"][0]
        path = tmp_path / "e.parquet"
        r = _cli(settings, "export", "--from", "-1d", "--model", "model-0", "--out", str(path))
        assert r.exit_code == 0, r.output
        # model-0 is every user's requests 0 and 2, two rows each; conv-carol-0 was carol's two of them
        assert len(pd.read_parquet(path)) == 2 * (len(USERS) * PER_USER // 2) - 4
        assert not list((settings.store.chdb_path() / "exports").iterdir())  # the engine's copy is gone
        r = _cli(settings, "export", "--from", "-1d", "--to", "-2d", "--out", str(tmp_path / "x.parquet"))
        assert r.exit_code == 1 and "must be after" in r.output
        r = _cli(settings, "baseline", "pin", "--model", "model-0", "--from", "-2h", "--to", "-1h")
        assert r.exit_code == 0, r.output
        r = _cli(settings, "audit", "--since", "1h", "--json")
        got = [(e["actor"], e["action"], e["origin"]) for e in json.loads(r.stdout)]
        assert got == [("admin-token", "pin_baseline", "admin"), ("admin-token", "export", "admin"),
                       ("admin-token", "erase", "admin")], got
        r = _cli(settings, "audit", "--action", "export")
        assert r.exit_code == 0 and "admin-token" in r.output and "export" in r.output
    finally:
        admin.close()


def test_dashboard_search_and_open_request_are_audited_once_per_session(store, settings):
    from monitor.webui import audit
    from monitor.webui.filters import preset
    from monitor.webui.queries import requests
    from monitor.webui.store import ReadOnlyStore

    populate(store)
    ro = ReadOnlyStore(store)
    audit.register(store)
    try:
        f = preset("Last 24 hours", search="Lorem IPSUM")
        listing = requests.listing(ro, f)
        assert listing.count == len(USERS) * PER_USER
        row = listing.rows.iloc[0]
        assert requests.detail(ro, row["trace_id"], row["span_id"], near=row["timestamp"]) is not None
        requests.listing(ro, preset("Last 24 hours"))  # no search: nothing to record
    finally:
        audit.unregister()
    got = [(a, act, t, o) for a, act, t, o, _ in _audit(store)]
    assert got == [("local", "search", "Lorem IPSUM", "dashboard"),
                   ("local", "open_request", f"{row['trace_id']}/{row['span_id']}", "dashboard")], got


def test_dashboard_actor_with_a_token_and_a_proxy_user(monkeypatch):
    from monitor.governance import actor

    class Ctx:
        headers = {"Authorization": "Bearer t", "X-Forwarded-User": "ana@example.org"}
        ip_address = "10.0.0.5"

    import streamlit as st
    monkeypatch.setattr(st, "context", Ctx())
    assert actor.dashboard_actor(token_required=False) == "local"
    assert actor.dashboard_actor(token_required=True) == "ana@example.org"
    Ctx.headers = {"Cookie": "session"}  # signed in with the form: no proxy, no user header believed
    assert actor.dashboard_actor(token_required=True) == "dashboard-token"
    Ctx.headers = {"X-Forwarded-User": "mallory"}  # a user header without the token is not believed
    assert actor.dashboard_actor(token_required=True) == "dashboard-token"
    actor.set_dashboard_identity(lambda: "sso:jo")
    try:
        assert actor.dashboard_actor(token_required=True) == "sso:jo"
    finally:
        actor.set_dashboard_identity(None)


def test_audit_page_shows_who_did_what(store):
    """The Audit page (Streamlit's AppTest over the test's store): counts per actor and action, the
    entries newest first, and the actor filter narrowing both."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from monitor.governance.audit import AuditLog
    from monitor.webui.store import register, unregister

    log = AuditLog(store)
    log.record("ana@example.org", "search", "lorem", {"rows": 12}, origin="dashboard", address="10.0.0.5")
    time.sleep(0.01)  # distinct milliseconds: the list's order is the entries' times
    log.record("admin-token", "erase", "user:sha256:" + "ab" * 32, {"rows": {"inference_events": 8}}, origin="admin")
    time.sleep(0.01)
    log.record("admin-token", "export", "inference_events", {"rows": 3}, origin="admin")
    app = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
    register(store, refresh_s=0)
    try:
        at = AppTest.from_file(str(app), default_timeout=60).run()
        at.selectbox(key="f_range").set_value("Last hour").run()
        at.switch_page("views/audit.py").run()
        assert not at.exception, [e.message for e in at.exception]
        assert at.header[0].value == "Audit"
        m = {x.label: x.value for x in at.metric}
        assert (m["Entries"], m["Actors"], m["Searches / requests opened"], m["Exports / erasures"]) == \
            ("3", "2", "1 / 0", "1 / 1"), m
        summary = at.dataframe[0].value
        assert sorted(zip(summary["actor"], summary["action"], summary["entries"])) == [
            ("admin-token", "erase", 1), ("admin-token", "export", 1), ("ana@example.org", "search", 1)]
        listed = at.dataframe[1].value
        assert list(listed["action"]) == ["export", "erase", "search"]  # newest first
        assert listed.iloc[2]["target"] == "lorem" and listed.iloc[2]["address"] == "10.0.0.5"
        at.multiselect(key="audit_actors").set_value(["ana@example.org"]).run()
        assert not at.exception
        assert {x.label: x.value for x in at.metric}["Entries"] == "1"
        assert list(at.dataframe[1].value["actor"]) == ["ana@example.org"]
    finally:
        unregister()
