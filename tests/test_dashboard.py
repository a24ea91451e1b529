"""The dashboards against a seeded store (Streamlit's AppTest, in-process): every page renders
without an exception and shows the numbers the seeded rows imply; prompts with HTML and markdown
are shown literally; the read-only guard refuses writes; queries are parameterised."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from monitor.webui.filters import AUTO, Filters, bucket_seconds, fitting_range
from monitor.webui.store import ReadOnlyError, ReadOnlyStore, register, unregister

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboards" / "app.py"
INJECTION = "<script>alert(1)</script> and [click](http://evil) **bold**"
COMPLETION_INJECTION = "<img src=x onerror=alert(2)> [more](javascript:alert(3))"

ALERT_DDL = [
    "CREATE TABLE IF NOT EXISTS alert_events (timestamp DateTime64(3), alert_id String, rule LowCardinality(String), "
    "severity LowCardinality(String), model LowCardinality(String), group String, event LowCardinality(String), "
    "notification_id String, summary String, details String) ENGINE = MergeTree ORDER BY (rule, model, group, timestamp)",
    "CREATE TABLE IF NOT EXISTS alert_outbox (notification_id String, channel LowCardinality(String), alert_id String, "
    "event LowCardinality(String), created_at DateTime64(3), updated_at DateTime64(3), status LowCardinality(String), "
    "attempts UInt32, next_attempt_at DateTime64(3), last_error String, payload String) "
    "ENGINE = ReplacingMergeTree(updated_at) ORDER BY (notification_id, channel)",
    "CREATE TABLE IF NOT EXISTS alert_deliveries (timestamp DateTime64(3), notification_id String, "
    "channel LowCardinality(String), attempt UInt32, outcome LowCardinality(String), http_status Nullable(UInt16), "
    "error String, duration_ms Float64) ENGINE = MergeTree ORDER BY (channel, timestamp)",
]

EVENT_COLUMNS = ("timestamp", "trace_id", "span_id", "service_name", "model", "operation", "source", "prompt",
                 "completion", "input_tokens", "output_tokens", "ttft_ms", "latency_ms", "queue_ms", "prefill_ms",
                 "decode_ms", "engine_latency_ms", "gpu_seconds", "gpu_cost", "finish_reason", "status_code",
                 "error_type", "refusal", "empty_output", "truncated", "json_valid", "pii_in_output", "degenerate",
                 "language_mismatch", "prompt_language", "completion_language", "attributes")


def _events(now: datetime) -> list[list]:
    """alpha: 300 requests, latency 10..3000 ms, TTFT 1..300 ms, 100 + 50 tokens, every 30th an error,
    every 10th a refusal; beta: 60 requests at 5000 ms / 500 ms, 10 + 10 tokens, the latest one carrying
    the injection strings. All within the last hour."""
    rows = []
    for i in range(300):
        err = i % 30 == 0
        rows.append([now - timedelta(seconds=10 + i * 9), f"{i:032x}", f"{i:016x}", "svc", "alpha", "chat", "proxy",
                     f"alpha prompt {i}", "" if i == 5 else f"alpha answer {i}", 100, 50, float(i + 1),
                     float(10 * (i + 1)), 5.0, 20.0, 10.0 * (i + 1) - 40, 10.0 * (i + 1) - 10, 1.0, 0.001,
                     "stop", "Error" if err else "Ok", "500" if err else "", int(i % 10 == 0), int(i == 5), 0,
                     None, 0, 0, 0, "en", "en", {}])
    for i in range(60):
        latest = i == 0
        rows.append([now - timedelta(seconds=2 + i * 50), f"b{i:031x}", f"b{i:015x}", "svc", "beta", "chat", "proxy",
                     INJECTION if latest else f"beta prompt {i}", COMPLETION_INJECTION if latest else f"beta answer {i}",
                     10, 10, 500.0, 5000.0, None, None, None, None, None, None, "length", "Ok", "", 0, 0, 1,
                     1 if i % 2 else 0, 0, 0, int(i < 6), "de", "en" if i < 6 else "de", {"tenant": "t1"}])
    return rows


@pytest.fixture
def seeded(store):
    now = datetime.now(timezone.utc)
    store.insert("inference_events", _events(now), EVENT_COLUMNS)
    trace = f"b{0:031x}"
    store.insert("otel_traces", [
        [now - timedelta(seconds=2), trace, f"b{0:015x}", "", "chat beta", "Client", "svc", {"gen_ai.request.model": "beta"},
         5_000_000_000, "Ok"],
        [now - timedelta(seconds=1.9), trace, "c" * 16, f"b{0:015x}", "llm_request", "Server", "engine",
         {"gen_ai.latency.time_in_queue": "0.1"}, 4_800_000_000, "Ok"],
    ], ("Timestamp", "TraceId", "SpanId", "ParentSpanId", "SpanName", "SpanKind", "ServiceName", "SpanAttributes",
        "Duration", "StatusCode"))
    _seed_checks(store, now)
    _seed_alerts(store, now)
    ro = register(store, refresh_s=0)
    yield {"now": now, "store": ro}
    unregister()


def _seed_checks(store, now: datetime) -> None:
    cols = ("run_id", "timestamp", "check", "model", "group", "metric", "method", "window_start", "window_end",
            "reference_start", "reference_end", "reference_kind", "value", "reference_value", "threshold", "p_value",
            "status", "current_n", "reference_n", "details")
    clusters = [{"cluster": 0, "label": "refund order", "reference_share": 0.1, "current_share": 0.4, "change": 0.3,
                 "examples": [INJECTION, "where is my refund"]},
                {"cluster": 1, "label": "password reset", "reference_share": 0.5, "current_share": 0.2, "change": -0.3,
                 "examples": ["reset my password"]}]
    rows = []
    for k, minutes in enumerate((50, 20)):
        t = now - timedelta(minutes=minutes)
        w = (t - timedelta(hours=1), t, t - timedelta(days=1, hours=1), t - timedelta(days=1), "day")
        rows.append([f"r{k}", t, "feature_drift", "alpha", "", "latency_ms", "wasserstein", *w, 0.05 + 0.25 * k, None,
                     0.1, None, "fail" if k else "ok", 300, 280, "{}"])
        rows.append([f"r{k}", t, "feature_drift", "alpha", "", "ttft_ms", "wasserstein", *w, 0.02, None, 0.1, None,
                     "ok", 300, 280, "{}"])
        rows.append([f"r{k}", t, "semantic_drift", "alpha", "", "prompt", "mmd", *w, 0.012, None, 0.01,
                     0.001 if k else 0.5, "fail" if k else "ok", 300, 280, json.dumps({"clusters": clusters})])
    store.insert("check_results", rows, cols)
    t = now - timedelta(minutes=20)
    store.insert("check_distributions", [
        ["r1", t, "feature_drift", "alpha", "", "latency_ms", f"[{b}, {b + 1})", b, 0.25, s]
        for b, s in enumerate((0.1, 0.2, 0.3, 0.4))],
        ("run_id", "timestamp", "check", "model", "group", "metric", "bucket", "bucket_order", "reference_share",
         "current_share"))


def _seed_alerts(store, now: datetime) -> None:
    for ddl in ALERT_DDL:  # schema 0009 creates them; older schemas do not
        store.command(ddl)
    cols = ("timestamp", "alert_id", "rule", "severity", "model", "group", "event", "notification_id", "summary",
            "details")
    store.insert("alert_events", [
        [now - timedelta(minutes=30), "a1", "latency-p95", "critical", "alpha", "", "fire", "n1", "p95 over 2 s", "{}"],
        [now - timedelta(minutes=40), "a2", "refusals", "warning", "beta", "", "fire", "n2", "refusals up", "{}"],
        [now - timedelta(minutes=10), "a2", "refusals", "warning", "beta", "", "resolve", "n3", "refusals normal", "{}"],
    ], cols)
    store.insert("alert_deliveries", [
        [now - timedelta(minutes=30), "n1", "ops", 1, "retry", 503, "HTTP 503", 40.0],
        [now - timedelta(minutes=29), "n1", "ops", 2, "delivered", 200, "", 30.0],
        [now - timedelta(minutes=40), "n2", "slack", 1, "delivered", 200, "", 50.0],
    ], ("timestamp", "notification_id", "channel", "attempt", "outcome", "http_status", "error", "duration_ms"))
    store.insert("alert_outbox", [
        ["n1", "ops", "a1", "fire", now, now, "delivered", 2, now, "", "{}"],
    ], ("notification_id", "channel", "alert_id", "event", "created_at", "updated_at", "status", "attempts",
        "next_attempt_at", "last_error", "payload"))


def _app(last: str = "Last hour"):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    at.selectbox(key="f_range").set_value(last).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _page(at, path: str):
    at.switch_page(path).run()
    assert not at.exception, f"{path}: " + "; ".join(e.message + "\n" + "\n".join(e.stack_trace) for e in at.exception)
    return at


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _all_text(at) -> list[str]:
    """Everything rendered as markdown (markdown, captions, info boxes) -- where injected text must never be."""
    out = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in ("info", "success", "warning", "error"):
        out += [e.value for e in getattr(at, kind)]
    return out


def _q(values, level):
    return float(np.quantile(np.asarray(values, dtype=float), level))


def test_overview_shows_rates_errors_and_quantiles(seeded):
    at = _app()
    m = _metrics(at)
    assert at.header[0].value == "Overview"
    assert m["Requests"] == "360"
    assert m["Requests/s"] == "0.1/s"                     # 360 in 3,600 s
    assert m["Tokens/s"] == f"{(300 * 150 + 60 * 20) / 3600:,.2f}/s"
    assert m["Error rate"] == f"{10 / 360 * 100:.2f}%"
    latencies = [10.0 * (i + 1) for i in range(300)] + [5000.0] * 60
    ttfts = [float(i + 1) for i in range(300)] + [500.0] * 60
    for p in (50, 95, 99):
        assert m[f"Latency p{p}"] == f"{_q(latencies, p / 100):,.0f} ms" or \
            m[f"Latency p{p}"] == f"{_q(latencies, p / 100) / 1000:,.2f} s"
        assert m[f"TTFT p{p}"] == f"{_q(ttfts, p / 100):,.0f} ms"
    per_model = at.dataframe[0].value.set_index("model")
    assert per_model.loc["alpha", "requests"] == 300 and per_model.loc["beta", "requests"] == 60
    assert per_model.loc["alpha", "error_rate"] == pytest.approx(10 / 300)
    assert per_model.loc["alpha", "latency_p50"] == pytest.approx(_q(latencies[:300], 0.5))
    assert per_model.loc["beta", "ttft_p99"] == pytest.approx(500.0)


def test_a_long_range_reads_the_rollups_and_shows_the_same_numbers(seeded):
    """At 24 hours the Overview and Latency & GPU pages read the per-minute rollups (schema 0016):
    the same counts, rates and costs as the rows give at one hour, quantiles within a percent."""
    from monitor.webui.filters import preset
    from monitor.webui.queries._sql import rollup_source

    assert rollup_source(seeded["store"], preset("Last 24 hours")) is not None
    assert rollup_source(seeded["store"], preset("Last hour")) is None
    hour, day = _metrics(_app()), _metrics(_app("Last 24 hours"))
    assert day["Requests"] == hour["Requests"] == "360" and day["Error rate"] == hour["Error rate"]
    assert float(day["Tokens/s"].removesuffix("/s")) == pytest.approx((300 * 150 + 60 * 20) / 86400, rel=0.01)
    for p in (50, 95, 99):
        for name in (f"Latency p{p}", f"TTFT p{p}"):
            a, b = (float(m[name].split()[0].replace(",", "")) * (1000 if m[name].endswith(" s") else 1)
                    for m in (hour, day))
            assert b == pytest.approx(a, rel=0.011), name
    at = _page(_app("Last 24 hours"), "views/latency_gpu.py")
    bd = at.dataframe[0].value.set_index("model")
    assert bd.loc["alpha", "requests"] == 300 and bd.loc["alpha", "with engine timings"] == 300
    assert bd.loc["alpha", "client latency p50"] == pytest.approx(1505.0, rel=0.011)
    cost = at.dataframe[1].value.set_index("model")
    assert cost.loc["alpha", "cost"] == pytest.approx(0.3)


def test_model_filter_narrows_every_number(seeded):
    at = _app()
    at.multiselect(key="f_models").set_value(["beta"]).run()
    assert not at.exception
    m = _metrics(at)
    assert m["Requests"] == "60" and m["Error rate"] == "0.00%" and m["Latency p50"] == "5,000 ms"


def test_latency_gpu_page_breaks_down_engine_time_and_cost(seeded):
    at = _page(_app(), "views/latency_gpu.py")
    assert at.header[0].value == "Latency & GPU"
    bd = at.dataframe[0].value.set_index("model")
    assert bd.loc["alpha", "with engine timings"] == 300 and bd.loc["beta", "with engine timings"] == 0
    assert bd.loc["alpha", "queue p50"] == pytest.approx(5.0)
    assert bd.loc["alpha", "client latency p50"] == pytest.approx(1505.0)
    assert bd.loc["alpha", "engine latency p50"] == pytest.approx(1495.0)
    cost = at.dataframe[1].value.set_index("model")
    assert cost.loc["alpha", "cost"] == pytest.approx(0.3)
    assert cost.loc["alpha", "cost per 1k tokens"] == pytest.approx(0.3 / (300 * 150) * 1000)
    infos = " ".join(i.value for i in at.info)
    assert "No GPU metrics" in infos and "--scrape" in infos  # empty states say what to do


def test_drift_page_shows_scores_distributions_and_clusters_literally(seeded):
    at = _page(_app(), "views/drift.py")
    m = _metrics(at)
    assert m["Results"] == "3" and m["Drifting"] == "2"
    latest = at.dataframe[0].value
    row = latest[(latest["metric"] == "latency_ms")].iloc[0]
    assert row["status"] == "fail" and row["value"] == pytest.approx(0.30)
    assert m["p-value"] == "0.001" and m["Status"] == "fail"
    assert INJECTION in [c.value for c in at.text]           # an example prompt, as plain text
    assert all("<script>" not in t and "](http://evil)" not in t for t in _all_text(at))
    assert any("grew 30.0 pts" in e.label for e in at.expander)
    assert any("shrank 30.0 pts" in e.label for e in at.expander)


def test_quality_page_rates_and_examples(seeded):
    at = _page(_app(), "views/quality.py")
    m = _metrics(at)
    assert m["Refusals"] == f"{30 / 360 * 100:.2f}%"
    assert m["Truncated"] == f"{60 / 360 * 100:.2f}%"
    assert m["Invalid JSON (where JSON was requested)"] == "50.00%"   # of beta's 60 JSON requests, 30 invalid
    assert m["Language mismatch"] == f"{6 / 360 * 100:.2f}%"
    assert m["Empty outputs"] == f"{1 / 360 * 100:.2f}%"
    per_model = at.dataframe[0].value.set_index("model")
    assert per_model.loc["alpha", "refusal"] == pytest.approx(0.1)
    at.selectbox(key="quality_signal").set_value("truncated").run()
    ex = at.dataframe[1].value  # the examples, one row each, as plain cell text
    assert INJECTION in list(ex["prompt_preview"]) and COMPLETION_INJECTION in list(ex["completion_preview"])


def test_quality_page_over_a_long_range_reads_the_rollups_and_gives_the_rows_numbers(seeded):
    """From 6 hours on the Quality page reads the rollups' quality counts (schema 0018): every count,
    denominator and rate per model and per bucket equals what the rows give over the same range."""
    import pandas.testing as pdt

    from monitor.webui.filters import preset
    from monitor.webui.queries import quality
    from monitor.webui.queries._sql import rollup_source
    from monitor.webui.store import ReadOnlyStore

    ro = seeded["store"]
    f = preset("Last 24 hours")
    assert rollup_source(ro, f, needs="language_mismatch_n") is not None
    assert rollup_source(ro, f, needs="no_such_column") is None

    class Rows(ReadOnlyStore):
        def has_column(self, table, column):  # as a store without schema 0018
            return False

    rows = Rows(ro._store, prefetch_s=0)
    for got, want in zip(quality.all_rates(ro, f), quality.all_rates(rows, f)):
        pdt.assert_frame_equal(got, want, check_dtype=False)
    per_model = quality.all_rates(ro, f)[0].set_index("model")
    assert per_model["requests"].sum() == 360 and per_model["refusal_n"].sum() == 30
    assert per_model.loc["beta", "invalid_json_d"] == 60 and per_model.loc["beta", "invalid_json"] == 0.5
    at = _page(_app("Last 24 hours"), "views/quality.py")
    m = _metrics(at)
    assert m["Refusals"] == f"{30 / 360 * 100:.2f}%" and m["Invalid JSON (where JSON was requested)"] == "50.00%"
    assert m["Language mismatch"] == f"{6 / 360 * 100:.2f}%" and m["Empty outputs"] == f"{1 / 360 * 100:.2f}%"


def test_requests_page_filters_and_shows_one_request_literally(seeded):
    at = _page(_app(), "views/requests.py")
    rows = at.dataframe[0].value
    assert len(rows) == 200 and rows.iloc[0]["prompt"] == INJECTION   # newest first, plain cell text
    codes = [c.value for c in at.text]
    assert INJECTION in codes and COMPLETION_INJECTION in codes
    assert all("<script>" not in t and "](http://evil)" not in t and "<img" not in t for t in _all_text(at))
    spans = at.dataframe[1].value
    assert list(spans["name"]) == ["chat beta", "llm_request"]
    m = _metrics(at)
    assert m["Latency"] == "5,000 ms" and m["Finish reason"] == "length"
    assert len(at.code) == 0  # the raw JSON only when asked (a code block costs the browser's highlighter)
    at.toggle(key="req_json").set_value(True).run()
    at.toggle(key="req_span_json").set_value(True).run()
    blocks = [c.value for c in at.code]
    attributes = json.loads(blocks[-3])  # the request's attributes, then each span's
    assert attributes and all(isinstance(k, str) for k in attributes)
    assert len(blocks) >= 3 and all(json.loads(b) is not None for b in blocks[-2:])
    assert [c.value for c in at.caption if "· attributes" in c.value] == \
        ["chat beta · 5000\\.0 ms · attributes", "llm\\_request · 4800\\.0 ms · attributes"]
    assert all("<script>" not in t and "](http://evil)" not in t for t in _all_text(at))
    at.toggle(key="req_json").set_value(False).run()
    at.toggle(key="req_span_json").set_value(False).run()

    at.radio(key="f_status").set_value("error").run()
    rows = at.dataframe[0].value
    assert len(rows) == 10 and set(rows["status"]) == {"Error"}
    at.radio(key="f_status").set_value("all").run()
    at.text_input(key="f_search").set_value("ALPHA ANSWER 29").run()   # case-insensitive, prompt or completion
    rows = at.dataframe[0].value
    assert sorted(rows["completion"]) == sorted(["alpha answer 29"] + [f"alpha answer {i}" for i in range(290, 300)])
    assert not at.exception


def test_alerts_page_firing_history_and_deliveries(seeded):
    at = _page(_app(), "views/alerts.py")
    m = _metrics(at)
    assert m["Firing"] == "1" and m["Fired in range"] == "2" and m["Resolved in range"] == "1"
    firing = at.dataframe[0].value
    assert list(firing["alert_id"]) == ["a1"] and firing.iloc[0]["severity"] == "critical"
    assert len(at.dataframe[1].value) == 3
    summary = at.dataframe[2].value.set_index("channel")
    assert summary.loc["ops", "attempts"] == 2 and summary.loc["ops", "retries"] == 1
    assert summary.loc["ops", "last_error"] == "HTTP 503"
    deliveries = at.dataframe[3].value
    assert set(deliveries["channel"]) == {"ops"}
    outbox = at.dataframe[4].value
    assert outbox.iloc[0]["status"] == "delivered"


def test_counts_come_from_sql_not_from_capped_lists(store):
    """More rows than any list shows (alerts history and delivery log: 500, requests: 200): every
    count and total on the pages is the store's, and each capped list says how many it left out."""
    from monitor.webui.queries.alerts import HISTORY_ROWS

    now = datetime.now(timezone.utc)
    for ddl in ALERT_DDL:
        store.command(ddl)
    fired, resolved = 302, 301  # 603 events in the hour: over the history's 500
    events = [[now - timedelta(seconds=5 * i + 1), f"a{i}", "latency-p95", "warning", "alpha", "",
               "fire" if i < fired else "resolve", f"n{i}", "p95 over 2 s", "{}"] for i in range(fired + resolved)]
    store.insert("alert_events", events, ("timestamp", "alert_id", "rule", "severity", "model", "group", "event",
                                          "notification_id", "summary", "details"))
    attempts = HISTORY_ROWS + 37
    store.insert("alert_deliveries", [
        [now - timedelta(seconds=5 * i + 1), f"n{i}", "ops", 1, "retry" if i % 3 == 0 else "delivered",
         503 if i % 3 == 0 else 200, "HTTP 503" if i % 3 == 0 else "", 10.0] for i in range(attempts)],
        ("timestamp", "notification_id", "channel", "attempt", "outcome", "http_status", "error", "duration_ms"))
    n_requests = 250
    rows = []
    for i in range(n_requests):
        rows.append([now - timedelta(seconds=10 * i + 1), f"{i:032x}", f"{i:016x}", "svc", "alpha", "chat", "proxy",
                     f"prompt {i}", f"answer {i}", 10, 10, 5.0, 50.0, None, None, None, None, None, None, "stop",
                     "Ok", "", 0, 0, 0, 1, 0, 0, 0, "en", "en", {}])
    store.insert("inference_events", rows, EVENT_COLUMNS)
    register(store, refresh_s=0)
    try:
        at = _page(_app(), "views/alerts.py")
        m = _metrics(at)
        assert (m["Fired in range"], m["Resolved in range"]) == (f"{fired}", f"{resolved}")
        assert m["Firing"] == f"{fired}"  # one event per alert id: every fire is its alert's latest
        assert len(at.dataframe[1].value) == HISTORY_ROWS
        captions = [c.value for c in at.caption]
        assert f"the latest {HISTORY_ROWS:,} of {fired + resolved:,} events in the range" in captions, captions
        summary = at.dataframe[2].value.set_index("channel")
        assert summary.loc["ops", "attempts"] == attempts
        assert summary.loc["ops", "retries"] == len(range(0, attempts, 3))
        assert len(at.dataframe[3].value) == HISTORY_ROWS
        assert f"the latest {HISTORY_ROWS:,} of {attempts:,} attempts" in captions, captions

        _page(at, "views/requests.py")
        assert len(at.dataframe[0].value) == 200
        assert any(c.value.startswith(f"{n_requests:,} matching requests; the latest 200 below")
                   for c in at.caption), [c.value for c in at.caption]
        _page(at, "views/overview.py")
        assert f"{n_requests:,} requests" in " ".join(c.value for c in at.caption)
    finally:
        unregister()


def test_empty_store_tells_the_user_what_to_do(store):
    from streamlit.testing.v1 import AppTest

    register(store, refresh_s=0)
    try:
        at = AppTest.from_file(str(APP), default_timeout=60).run()
        assert not at.exception
        assert "http://127.0.0.1:8080/v1" in at.info[0].value and ":4317" in at.info[0].value
        for page in ("views/latency_gpu.py", "views/quality.py", "views/requests.py", "views/drift.py",
                     "views/alerts.py"):
            _page(at, page)
            assert at.info, page
    finally:
        unregister()


def test_read_only_guard_refuses_writes_and_multiple_statements(store):
    ro = ReadOnlyStore(store)
    for sql in ("INSERT INTO inference_events (model) VALUES ('x')", "DROP TABLE inference_events",
                "  -- hidden\n ALTER TABLE inference_events DELETE WHERE 1", "/* c */ OPTIMIZE TABLE inference_events",
                "SELECT 1; DROP TABLE inference_events", "SYSTEM FLUSH LOGS", ""):
        with pytest.raises(ReadOnlyError):
            ro.query(sql)
    assert ro.query_rows("WITH 1 AS x SELECT x") == [(1,)]
    assert ro.query_rows("SELECT count() FROM inference_events") == [(0,)]
    # chdb keeps settings for the session: the guard must not have made the shared store read-only
    store.insert("inference_events", [[datetime.now(timezone.utc), "m"]], ("timestamp", "model"))


def test_text_search_is_a_parameter_not_sql(seeded):
    from monitor.webui.queries import requests as q

    now = seeded["now"]
    f = Filters(start=now - timedelta(hours=2), end=now + timedelta(seconds=1),
                search="x') OR 1=1 OR position(prompt, '")
    assert q.count(seeded["store"], f) == 0
    f = Filters(start=now - timedelta(hours=2), end=now + timedelta(seconds=1), search="<script>")
    assert q.count(seeded["store"], f) == 1


def test_the_default_range_fits_the_data(seeded):
    """No 24-hour axis for 45 minutes of data: the default is the shortest preset holding every event."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="f_range").value == AUTO
    assert any("Auto: last hour" in c.value for c in at.sidebar.caption), [c.value for c in at.sidebar.caption]


def test_fitting_range_is_the_shortest_preset_holding_the_first_event():
    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    assert fitting_range(None, now) == "Last 24 hours"
    assert fitting_range(now - timedelta(minutes=10), now) == "Last 15 minutes"
    assert fitting_range(now - timedelta(minutes=16), now) == "Last hour"
    assert fitting_range(now - timedelta(hours=30), now) == "Last 7 days"
    assert fitting_range(now - timedelta(days=90), now) == "Last 30 days"


def test_bucket_gives_a_bounded_number_of_points():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for span in (timedelta(minutes=15), timedelta(hours=1), timedelta(days=1), timedelta(days=7), timedelta(days=30),
                 timedelta(days=365)):
        step = bucket_seconds(t, t + span)
        assert span.total_seconds() / step <= 180 or step == 7 * 86400
    assert bucket_seconds(t, t + timedelta(hours=1)) == 30


def test_the_app_is_found_from_a_checkout_and_shipped_in_the_wheel():
    import tomllib

    from monitor.webui.server import app_path

    assert app_path() == APP
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]["dashboards"] == "monitor/_dashboards"



def test_a_held_chdb_directory_says_what_to_do(tmp_path):
    """`monitor dashboard` on a data dir another process holds: a clear message, non-zero exit, no traceback."""
    import fcntl
    import subprocess

    from conftest import MONITOR

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "status", "wb") as held:  # what a running `monitor up` holds (ClickHouse's status file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run([*MONITOR, "dashboard", "--clickhouse", f"chdb://{data}", "--port", "0"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"the chdb data directory {data} is held by another process" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_search_pattern_takes_like_wildcards_literally():
    from monitor.webui.queries._sql import like_pattern

    assert like_pattern("50%") == "%50\\%%"
    assert like_pattern("snake_case") == "%snake\\_case%"
    assert like_pattern("C:\\Temp") == "%C:\\\\Temp%"
    assert like_pattern("plain words") == "%plain words%"


SEARCH_ROWS = [  # (prompt, completion)
    ("Discount is 50% today", "ok"), ("only 500 today", "ok"),
    ("use snake_case names", ""), ("use snakeXcase names", ""),
    ("path C:\\Temp\\x", "done"), ("path C:Temp", "done"),
    ("plain", "Answer with ÄPFEL und Straße"),
    ("LOUD PROMPT", "quiet"),
]


def _search_store(store, now: datetime) -> None:
    """SEARCH_ROWS, plus three parts of 9,000 filler rows each (two granules per part) whose text
    differs per part, so the n-gram indexes (schema 0010) have granules to skip."""
    rows = [[now - timedelta(seconds=i + 1), f"s{i:031x}", f"s{i:015x}", "svc", "alpha", p, c]
            for i, (p, c) in enumerate(SEARCH_ROWS)]
    store.insert("inference_events", rows, ("timestamp", "trace_id", "span_id", "service_name", "model", "prompt",
                                            "completion"))
    for k, word in enumerate(("kiwi", "mango", "papaya")):
        store.command(
            "INSERT INTO inference_events (timestamp, trace_id, span_id, model, prompt, completion) "
            f"SELECT now64(9) - INTERVAL (number + 100) SECOND, concat('f{k}', toString(number)), toString(number), "
            f"'beta', concat('{word} order ', toString(number)), concat('{word.upper()} reply ', toString(number % 97)) "
            "FROM numbers(9000)")


@pytest.mark.parametrize("term,expected", [
    ("50%", {"Discount is 50% today"}),
    ("e_c", {"use snake_case names"}),
    ("c:\\temp", {"path C:\\Temp\\x"}),
    ("äpfel", {"plain"}),          # completion, UTF-8 case folding
    ("STRASSE", set()),            # lowercasing, not Unicode case folding: ß is not ss
    ("loud prompt", {"LOUD PROMPT"}),
    ("QUIET", {"LOUD PROMPT"}),
    ("  Loud  ", {"LOUD PROMPT"}),  # the term is stripped, as the search box's value is
])
def test_text_search_is_a_literal_case_insensitive_substring(store, term, expected):
    from monitor.webui.queries import requests as q

    now = datetime.now(timezone.utc)
    _search_store(store, now)
    f = Filters(start=now - timedelta(hours=2), end=now + timedelta(seconds=1), search=term, models=("alpha",))
    rows, n, exact, _ = q.listing(ReadOnlyStore(store), f)
    assert (set(rows["prompt_preview"]) if len(rows) else set()) == expected and n == len(expected) and exact


def _search(store, f: Filters) -> tuple[list, str]:
    """A text search's trace ids (the same without skip indexes, checked) and its ``EXPLAIN indexes = 1``."""
    from monitor.webui.queries._sql import EVENTS, events_where

    where, p = events_where(f, search=True)
    sql = f"SELECT trace_id FROM {EVENTS} WHERE {where} ORDER BY trace_id"
    rows = store.query_rows(sql, p)
    assert rows == store.query_rows(sql + " SETTINGS use_skip_indexes = 0", p), f.search
    return rows, "\n".join(r[0] for r in store.query_rows(f"EXPLAIN indexes = 1 {sql}", p))


def _granules(plan: str) -> tuple[int, int]:
    """(granules read, granules in the parts) after the skip indexes, from :func:`_search`'s plan."""
    m = re.search(r"Final set of granules after AND/OR processing\n\s*Parts: \d+/\d+\n\s*Granules: (\d+)/(\d+)", plan)
    assert m, plan
    return int(m.group(1)), int(m.group(2))


def test_text_search_gives_the_same_rows_with_and_without_its_index(store):
    now = datetime.now(timezone.utc)
    _search_store(store, now)
    have = {r[0] for r in store.query_rows(
        "SELECT name FROM system.data_skipping_indices WHERE database = currentDatabase() AND table = 'inference_events'")}
    assert {"idx_prompt_ngram", "idx_completion_ngram"} <= have
    skipped = {}
    for term in ("mango", "MANGO reply 42", "papaya order 8999", "kiwi", "no such thing", "50%", "äpfel", "order 1",
                 "reply", "e_c", "x"):
        f = Filters(start=now - timedelta(days=1), end=now + timedelta(seconds=1), search=term)
        with_index, plan = _search(store, f)
        assert "idx_prompt_ngram" in plan and "idx_completion_ngram" in plan, plan
        skipped[term] = (len(with_index), plan)
    # the index is used: a term of one part's text reads that part's granules only, a term nobody
    # wrote reads none
    assert skipped["mango"][0] == 9000
    read, total = _granules(skipped["mango"][1])
    assert 0 < read < total and total >= 4
    assert skipped["no such thing"][0] == 0 and _granules(skipped["no such thing"][1])[0] == 0
    assert _granules(skipped["reply"][1])[0] == total - 1  # in every filler part: nothing to skip


def test_ingest_leaves_the_search_index_to_merges_and_search_answers_the_same(store):
    """Ingest's inserts skip the n-gram indexes (monitor.store.writer: a third of an insert's CPU);
    a part without them is read whole, with the same answers, and the merge that reaches it builds
    them, after which a search skips granules again."""
    from monitor.events import InferenceEvent
    from monitor.selfmetrics import SelfMetrics
    from monitor.store.native import column_types, encode
    from monitor.store.tables import TABLE_COLUMNS
    from monitor.store.writer import Writer

    now = datetime.now(timezone.utc)
    t0 = int((now - timedelta(minutes=5)).timestamp() * 1e9)
    writer = Writer(store, SelfMetrics())
    columns = TABLE_COLUMNS["inference_events"]
    types = column_types(store, "inference_events", columns)
    for k, word in enumerate(("kiwi", "mango")):  # one batch, one part, of 2 granules each
        rows = [InferenceEvent(t0 + k * 10**9 + i, f"i{k}{i:030x}", f"{i:016x}", model="alpha",
                               prompt=f"{word} order {i}", completion=f"{word.upper()} reply {i % 97}").row()
                for i in range(9000)]
        blocks = {"inference_events": encode("inference_events", columns, types, rows)}
        assert writer.write_native(blocks, {"inference_events": len(rows)}, f"search-index:{k}") == {}

    def search(term: str) -> tuple[list, tuple[int, int]]:
        rows, plan = _search(store, Filters(start=now - timedelta(hours=1), end=now + timedelta(seconds=1),
                                            search=term))
        return rows, _granules(plan)

    got, (read, total) = search("mango")
    assert len(got) == 9000
    assert read == total  # no part has the index yet: nothing is skipped
    assert search("no such thing") == ([], (total, total))
    store.command("OPTIMIZE TABLE inference_events FINAL")
    got_after, (read, total) = search("mango")
    assert got_after == got
    assert 0 < read < total  # the merged part has it: kiwi's granules are skipped
    assert search("no such thing") == ([], (0, total))


def test_request_detail_near_its_listed_time_is_the_same_row(seeded):
    from monitor.webui.queries import requests as q

    now = seeded["now"]
    rows, _, _, _ = q.listing(seeded["store"], Filters(start=now - timedelta(hours=2), end=now + timedelta(seconds=1)))
    for _, r in rows.iloc[[0, 7, len(rows) - 1]].iterrows():
        d = q.detail(seeded["store"], r["trace_id"], r["span_id"], near=r["timestamp"])
        assert d is not None and d == q.detail(seeded["store"], r["trace_id"], r["span_id"])
    # a wrong time finds nothing rather than another row
    r = rows.iloc[0]
    assert q.detail(seeded["store"], r["trace_id"], r["span_id"], near=r["timestamp"] - timedelta(hours=1)) is None


def test_text_search_stops_at_its_time_budget_and_says_how_far_it_got(store):
    """The Requests page bounds a search's time: it says which part it read; the button reads the rest."""
    from monitor.webui.queries import requests as q

    now = datetime.now(timezone.utc)
    old = now - timedelta(hours=30)
    store.insert("inference_events", [[now - timedelta(minutes=5), "a" * 32, "a" * 16, "m", "recent kiwi", "ok"],
                                      [old, "b" * 32, "b" * 16, "m", "ancient durian", "ok"]],
                 ("timestamp", "trace_id", "span_id", "model", "prompt", "completion"))
    f = Filters(start=now - timedelta(days=3), end=now, search="durian")
    ro = ReadOnlyStore(store)
    # a zero budget: the first window (the last hour) is always searched, nothing after it
    cut = q.listing(ro, f, budget_s=0.0)
    assert cut.rows.empty and cut.count == 0 and cut.searched_from == now - timedelta(hours=1)
    whole = q.listing(ro, f, budget_s=None)
    assert list(whole.rows["prompt_preview"]) == ["ancient durian"] and whole.searched_from is None
    roomy = q.listing(ro, f, budget_s=60.0)  # a budget the search fits in: the same answer as no budget
    assert list(roomy.rows["prompt_preview"]) == ["ancient durian"] and roomy.searched_from is None


# -- chart labels from stored text ----------------------------------------------------------------------

EVIL = "<a href=https://evil.example>CLICK-ME</a><b>BOLD</b><br>"
SHOWN = "&lt;a href=https://evil.example&gt;CLICK-ME&lt;/a&gt;&lt;b&gt;BOLD&lt;/b&gt;&lt;br&gt;"
ENTITY = "a&lt;b&gt; & c"          # stored text that looks like entities: shown as typed, decoded exactly once
ENTITY_SHOWN = "a&amp;lt;b&amp;gt; &amp; c"


@pytest.fixture
def evil(store):
    """Every label a chart takes from the store is HTML: model, service, span name, kind and status,
    GPU index, drift metric and bucket; a second model's name looks like entities."""
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(20):
        e = i % 2 == 0
        rows.append([now - timedelta(seconds=5 + i * 60), f"e{i:031x}", f"e{i:015x}", EVIL if e else ENTITY,
                     EVIL if e else ENTITY, "chat", "proxy", f"prompt {i}", f"answer {i}", 10, 20, 50.0, 400.0,
                     5.0 if e else None, 20.0 if e else None, 300.0 if e else None, 330.0 if e else None, None, None,
                     EVIL, "Ok", EVIL if i == 3 else "", 0, 0, 0, None, 0, 0, 0, EVIL, EVIL, {}])
    store.insert("inference_events", rows, EVENT_COLUMNS)
    store.insert("otel_traces", [[now - timedelta(seconds=5), f"e{0:031x}", f"e{0:015x}", "", EVIL, EVIL, EVIL,
                                  {"gen_ai.request.model": EVIL}, 400_000_000, EVIL]],
                 ("Timestamp", "TraceId", "SpanId", "ParentSpanId", "SpanName", "SpanKind", "ServiceName",
                  "SpanAttributes", "Duration", "StatusCode"))
    store.insert("otel_metrics_gauge", [
        [now - timedelta(minutes=m), name, {attr: EVIL}, value]
        for m in (1, 10) for name, attr, value in (("monitor.server.kv_cache.usage", "gen_ai.request.model", 0.5),
                                                  ("hw.gpu.utilization", "hw.gpu.index", 0.9))],
        ("TimeUnix", "MetricName", "Attributes", "Value"))
    t = now - timedelta(minutes=10)
    w = (t - timedelta(hours=1), t, t - timedelta(days=1, hours=1), t - timedelta(days=1), "day")
    store.insert("check_results", [["r9", t, "feature_drift", EVIL, "", EVIL, "psi", *w, 0.4, None, 0.1, None, "fail",
                                    10, 10, "{}"]],
                 ("run_id", "timestamp", "check", "model", "group", "metric", "method", "window_start", "window_end",
                  "reference_start", "reference_end", "reference_kind", "value", "reference_value", "threshold",
                  "p_value", "status", "current_n", "reference_n", "details"))
    store.insert("check_distributions", [["r9", t, "feature_drift", EVIL, "", EVIL, f"{EVIL}{b}", b, 0.5, s]
                                         for b, s in enumerate((0.2, 0.8))],
                 ("run_id", "timestamp", "check", "model", "group", "metric", "bucket", "bucket_order",
                  "reference_share", "current_share"))
    register(store, refresh_s=0)
    yield
    unregister()


def _figures(at) -> list[dict]:
    """The spec of every chart on the page, as the chart component (dashboards/static/chart.js) receives it."""
    from monitor.webui.charts import COMPONENT

    return [json.loads(el.proto.json) for el in at.get("bidi_component") if el.proto.component_name == COMPONENT]


def test_chart_labels_from_stored_text_reach_the_charts_as_stored(evil):
    """uPlot writes legends and titles as textContent and draws ticks on its canvas, so stored text
    goes into the spec unchanged (no escaping to undo, nothing shown twice-decoded); the browser test
    checks that Chromium shows it literally and makes no element of it."""
    at = _app()
    figs = _figures(at)
    assert len(figs) == 5  # requests/s, error rate, tokens/s, latency, TTFT
    for f in figs:
        assert f["kind"] == "line" and f["lib"] == "/app/static/uplot/uPlot.esm.js"
        assert sorted(s["name"] for s in f["series"]) == sorted([EVIL, ENTITY])
        assert all(len(s["y"]) == len(f["x"]) for s in f["series"])

    at = _page(at, "views/latency_gpu.py")
    figs = _figures(at)
    by_title = {f["title"]: f for f in figs}
    assert sorted(by_title) == sorted(["Mean time per request (ms)", "Median per bucket (ms)", "Utilisation", "Memory",
                                       "Power", "KV-cache usage", "Requests waiting / running"])
    parts = by_title["Mean time per request (ms)"]
    assert parts["kind"] == "bar" and parts["orientation"] == "h" and parts["labels"] == [EVIL]  # model per row
    assert [s["name"] for s in parts["series"]] == ["queue", "prefill", "decode", "outside the engine (network, proxy)"]
    ends = [s["y1"][0] for s in parts["series"]]
    assert ends == sorted(ends) and [s["y0"][0] for s in parts["series"][1:]] == ends[:-1]  # stacked end to end
    assert [s["name"] for s in by_title["KV-cache usage"]["series"]] == [EVIL]
    assert [s["name"] for s in by_title["Utilisation"]["series"]] == [f"GPU {EVIL}"]

    at = _page(at, "views/drift.py")
    scores, dist = _figures(at)
    assert [s["name"] for s in scores["series"]] == [EVIL]                      # the metric, in the legend
    assert dist["title"] == f"{EVIL}: share per bucket (latest run)" and dist["percent"]
    assert dist["labels"] == [f"{EVIL}0", f"{EVIL}1"] and dist["mode"] == "group"
    assert [(s["name"], s["y"]) for s in dist["series"]] == [("reference", [0.5, 0.5]), ("current", [0.2, 0.8])]

    at = _page(at, "views/requests.py")
    (trace,) = _figures(at)
    (service,) = trace["series"]
    assert service["name"] == EVIL and trace["labels"] == [EVIL]                  # service; span name per row
    assert service["y0"] == [0.0] and service["y1"] == [400.0]                    # from the trace's start, 400 ms
    assert trace["hover"] == {"columns": ["kind", "status", "span_id"], "rows": [[EVIL, EVIL, f"e{0:015x}"]]}


# -- chart specs (monitor/webui/charts.py: what dashboards/static/chart.js draws) ---------------------------


def test_line_spec_aligns_series_on_shared_times_and_keeps_gaps_and_the_range():
    import pandas as pd

    from monitor.webui.charts import line_spec

    t0 = pd.Timestamp("2026-12-06 10:00:00")  # naive: UTC wall time, as the queries return it
    df = pd.DataFrame({"t": [t0, t0 + pd.Timedelta(minutes=1), t0 + pd.Timedelta(minutes=2), t0],
                       "v": [1.0, float("nan"), 3.0, 10.0], "model": ["a", "a", "a", "b"]})
    spec = line_spec(df, "v", "model", "T", "ms", False, t0.timestamp() - 3600, t0.timestamp() + 3600)
    base = pd.Timestamp("2026-12-06 10:00:00", tz="UTC").timestamp()
    assert spec["x"] == [base, base + 60, base + 120]
    assert [(s["name"], s["y"]) for s in spec["series"]] == [("a", [1.0, None, 3.0]), ("b", [10.0, None, None])]
    assert spec["x_min"] == t0.timestamp() - 3600 and spec["y_min"] == 0.0 and spec["y_max"] == pytest.approx(10.5)
    assert spec["markers"] is True                                              # few points: marked
    empty = line_spec(df.iloc[0:0], "v", "model", "T", "ms", True, 0.0, 60.0)
    assert empty["x"] == [] and empty["series"] == [] and (empty["y_min"], empty["y_max"]) == (0.0, 1.05)


def test_bar_spec_stacks_groups_and_lays_a_waterfall():
    import pandas as pd

    from monitor.webui.charts import bar_spec

    parts = pd.DataFrame({"model": ["m1", "m1", "m2", "m2", "m1"], "part": ["queue", "decode", "queue", "decode", "net"],
                          "ms": [5.0, 100.0, 7.0, 50.0, -2.0]})
    s = bar_spec(parts, "T", 200, x="ms", y="model", color="part", orientation="h")
    assert s["labels"] == ["m1", "m2"] and s["mode"] == "stack" and s["orientation"] == "h"
    by = {x["name"]: x for x in s["series"]}
    assert by["queue"]["y0"] == [0.0, 0.0] and by["queue"]["y1"] == [5.0, 7.0]
    assert by["decode"]["y0"] == [5.0, 7.0] and by["decode"]["y1"] == [105.0, 57.0]    # on top of the queue
    assert by["net"]["y0"] == [0.0, None] and by["net"]["y1"] == [-2.0, None]         # negatives stack below 0
    assert by["decode"]["y"] == [100.0, 50.0]                                           # the legend: own length
    assert s["y_min"] < -2.0 and s["y_max"] > 105.0

    shares = pd.DataFrame({"bucket": ["b0", "b1", "b0", "b1"], "share": [0.5, 0.5, 0.2, 0.8],
                           "window": ["reference", "reference", "current", "current"]})
    g = bar_spec(shares, "T", 300, x="bucket", y="share", color="window", barmode="group", percent=True)
    assert g["mode"] == "group" and g["percent"] and g["labels"] == ["b0", "b1"]
    assert [x["y1"] for x in g["series"]] == [[0.5, 0.5], [0.2, 0.8]] and all(v == 0.0 for x in g["series"] for v in x["y0"])

    spans = pd.DataFrame({"name": ["chat", "llm_request", "chat"], "offset_ms": [0.0, 3.0, 90.0],
                          "duration_ms": [100.0, 80.0, 5.0], "service": ["proxy", "vllm", "proxy"],
                          "kind": ["CLIENT", "SERVER", "INTERNAL"]})
    w = bar_spec(spans, "T", 200, x="duration_ms", y="name", base="offset_ms", orientation="h", color="service",
                 hover_data=["kind"])
    assert w["labels"] == ["chat", "llm_request", "chat"]                   # one row per span, names may repeat
    proxy, vllm = w["series"]
    assert proxy["y0"] == [0.0, None, 90.0] and proxy["y1"] == [100.0, None, 95.0]
    assert vllm["y0"] == [None, 3.0, None] and vllm["y1"] == [None, 83.0, None]
    assert w["hover"] == {"columns": ["kind"], "rows": [["CLIENT"], ["SERVER"], ["INTERNAL"]]}

    t0 = pd.Timestamp("2026-12-06 10:00:00")
    audit = pd.DataFrame({"t": [t0, t0 + pd.Timedelta(minutes=10), t0], "entries": [3, 4, 1],
                          "action": ["read", "read", "erase"]})
    a = bar_spec(audit, "T", 260, x="t", y="entries", color="action")
    assert a["labels"] is None and a["band"] == 600.0 and len(a["x"]) == 2      # time buckets, 10 min apart
    read, erase = a["series"]
    assert read["y1"] == [3.0, 4.0] and erase["y0"] == [3.0, None] and erase["y1"] == [4.0, None]
    assert a["x_min"] == a["x"][0] - 600.0 and a["x_max"] == a["x"][-1] + 600.0


class _Files:
    """An ASGI app answering like Streamlit's static files, counting the requests that reach it."""

    def __init__(self, bodies: dict[str, tuple[int, list[bytes], list[tuple[bytes, bytes]]]]):
        self.bodies = bodies
        self.calls: list[str] = []

    async def __call__(self, scope, receive, send):
        self.calls.append(scope["path"])
        status, parts, headers = self.bodies[scope["path"]]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})


def _get(app, path: str, method: str = "GET", headers=(), query: bytes = b"") -> list[dict]:
    import asyncio

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    return sent


def test_bundle_files_are_replayed_from_memory_exactly_and_nothing_else_is():
    from monitor.webui.bundle import BundleCache

    js = [(b"content-type", b"application/javascript"), (b"content-length", b"11"), (b"etag", b'"abc"'),
          (b"cache-control", b"public, immutable, max-age=31536000")]
    files = _Files({
        "/static/js/index.1.js": (200, [b"hello", b" world"], js),  # in two pieces
        "/static/js/gone.2.js": (404, [b"not found"], [(b"content-length", b"9")]),
        "/static/js/zipped.3.js": (200, [b"\x1f\x8b"], [(b"content-encoding", b"gzip"), (b"content-length", b"2")]),
        "/static/js/short.4.js": (200, [b"abc"], [(b"content-length", b"10")]),  # cut short: never kept
        "/static/js/cookie.5.js": (200, [b"x"], [(b"content-length", b"1"), (b"Set-Cookie", b"session=s1")]),
        "/static/js/odd.6.js": (200, [b"x"], [(b"content-length", b"one")]),
        "/static/js/not-a-file.js": (200, [b"<html>"], [(b"content-length", b"6")]),  # the SPA's fallback
        "/": (200, [b"<html>"], [(b"content-length", b"6")]),
    })
    app = BundleCache(files, files=frozenset({"/static/js/index.1.js", "/static/js/gone.2.js",
                                              "/static/js/zipped.3.js", "/static/js/short.4.js",
                                              "/static/js/cookie.5.js", "/static/js/odd.6.js"}))
    first, again = _get(app, "/static/js/index.1.js"), _get(app, "/static/js/index.1.js")
    assert files.calls == ["/static/js/index.1.js"] and app.hits == 1
    assert again[0] == {"type": "http.response.start", "status": 200, "headers": js}
    assert [m["body"] for m in first[1:]] == [b"hello", b" world"]  # the first answer as Streamlit sent it
    assert b"".join(m.get("body", b"") for m in first[1:]) == again[1]["body"] == b"hello world"
    assert again[1]["more_body"] is False and app.kept_bytes() == 11

    # not kept: an error, an encoded answer, a body shorter than its length, one with a cookie (it would go
    # to every later client) or a length that is no number, a path that is no bundle file
    for path in ("/static/js/gone.2.js", "/static/js/zipped.3.js", "/static/js/short.4.js",
                 "/static/js/cookie.5.js", "/static/js/odd.6.js", "/static/js/not-a-file.js", "/"):
        files.calls.clear()
        assert _get(app, path)[0]["status"] == files.bodies[path][0] and _get(app, path)
        assert files.calls == [path, path], path
    # a kept file still goes to Streamlit for a range, a revalidation, a HEAD or a query string
    for kw in ({"headers": [(b"range", b"bytes=0-3")]}, {"headers": [(b"If-None-Match", b'"abc"')]},
               {"method": "HEAD"}, {"query": b"v=2"}):
        files.calls.clear()
        _get(app, "/static/js/index.1.js", **kw)
        assert files.calls == ["/static/js/index.1.js"], kw
    assert app.kept_bytes() == 11


def test_the_bundle_index_names_streamlits_files_only(tmp_path):
    from monitor.webui.bundle import bundle_files

    (tmp_path / "static" / "js").mkdir(parents=True)
    (tmp_path / "static" / "media").mkdir()
    (tmp_path / "static" / "js" / "a.1.js").write_text("x")
    (tmp_path / "static" / "media" / "f.woff2").write_bytes(b"x")
    (tmp_path / "index.html").write_text("<html>")
    assert bundle_files(tmp_path) == {"/static/js/a.1.js", "/static/media/f.woff2"}
