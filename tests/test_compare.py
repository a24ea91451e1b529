"""Comparing models, versions and endpoints (README "Comparing models"): routing by requested model to
self-hosted and managed upstreams through the capture proxy (the official openai SDK), the managed
key kept out of everything stored and logged, per-token cost, shadow traffic linked to its primary
with A's latency unchanged, the ``canary`` check and ``monitor compare --json``."""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import openai
import pytest
from aiohttp import web
from click.testing import CliRunner
from conftest import free_port, wait_until
from fake_upstream import FakeUpstream

from monitor.checks.compare.stats import (
    compare_rates,
    compare_values,
    mann_whitney,
    non_inferior,
)
from monitor.runtime.apps import Embedded

MANAGED_KEY = "sk-managed-" + uuid.uuid4().hex
CLIENT_KEY = "sk-client-" + uuid.uuid4().hex
KEY_ENV = "MONITOR_TEST_MANAGED_KEY"


class ManagedUpstream(FakeUpstream):
    """An OpenAI-compatible "managed" endpoint: 401 without its own API key; reports cached tokens."""

    async def chat(self, request):
        if request.headers.get("Authorization") != f"Bearer {MANAGED_KEY}":
            self.requests.append({"body": None, "headers": dict(request.headers)})
            return web.json_response({"error": {"message": "invalid api key", "type": "invalid_request_error"}},
                                     status=401)
        body = await request.json()
        if body.get("stream"):
            return await super().chat(request)
        self.requests.append({"body": body, "headers": dict(request.headers)})
        await asyncio_sleep(self.pace_s)
        return web.json_response({
            "id": "chatcmpl-managed", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"] + "-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Managed answer."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                      "prompt_tokens_details": {"cached_tokens": 1000}}})


async def asyncio_sleep(s: float) -> None:
    import asyncio
    await asyncio.sleep(s)


PRICES = {"input_per_1m": 0.15, "output_per_1m": 0.6, "cached_input_per_1m": 0.075}


def _events(store, where: str = "1") -> list[dict]:
    return list(store.query(f"SELECT * FROM inference_events WHERE {where} ORDER BY timestamp").named_results())


@pytest.fixture(params=["python", "native"])
def hybrid(request, settings, monkeypatch):
    """monitor up (in-process) with three upstreams: the default (self-hosted ``llama``), ``llama-v2``
    on another self-hosted server labelled v2, and ``gpt-4o-mini*`` on a managed endpoint; on each
    request path (the fake managed endpoint speaks http, so the native proxy routes it too)."""
    from monitor.sidecar.proxy.native import native_binary

    if request.param == "native" and native_binary() is None:
        pytest.skip("NATIVE PROXY NOT BUILT: monitor/_native/monitor-proxy is missing (pip install -e . with cargo)")
    settings.proxy.implementation = request.param
    monkeypatch.setenv(KEY_ENV, MANAGED_KEY)
    primary = FakeUpstream(pace_s=0.01).start()
    candidate = FakeUpstream(tokens=["Hi", " there", "!"], pace_s=0.012).start()
    managed = ManagedUpstream(pace_s=0.01).start()
    p = settings.proxy
    p.upstream, p.port = primary.url, free_port()
    from monitor.config import ProxyRoute, ShadowRule, TokenPrice
    p.routes = [ProxyRoute(model="gpt-4o-mini*", upstream=managed.url, kind="managed", api_key_env=KEY_ENV,
                           name="managed-openai"),
                ProxyRoute(model="llama-v2", upstream=candidate.url, model_version="v2", name="gpu-b")]
    p.shadow = [ShadowRule(model="llama", to="llama-v2", share=1.0, max_per_s=1000, max_concurrency=64)]
    settings.cost.token_prices = {"gpt-4o-mini*": TokenPrice(**PRICES)}
    settings.gpu.price_per_gpu_hour = 2.0
    settings.gpu.gpus_per_request = 1
    app = Embedded(settings)
    app.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{p.port}/v1", api_key=CLIENT_KEY, max_retries=0)
    yield app, client, primary, candidate, managed
    app.stop()
    for u in (primary, candidate, managed):
        u.stop()


def test_routes_by_model_replaces_the_managed_key_and_prices_tokens(hybrid, store, caplog):
    caplog.set_level(logging.DEBUG)
    app, client, primary, candidate, managed = hybrid
    msgs = [{"role": "user", "content": "Summarise the quarterly report in one line."}]
    r1 = client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=50)
    assert r1.choices[0].message.content == "Managed answer." and r1.model == "gpt-4o-mini-2024-07-18"
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello, world!"
    r3 = client.chat.completions.create(model="llama-v2", messages=msgs)
    assert r3.choices[0].message.content == "Hi there!"
    r4 = client.chat.completions.create(model="llama-x", messages=msgs)  # no route: the default upstream
    assert r4.choices[0].message.content == "Hello, world!"
    # routing by requested model, and each upstream's credentials
    assert [r["body"]["model"] for r in managed.requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert {r["headers"]["Authorization"] for r in managed.requests} == {f"Bearer {MANAGED_KEY}"}
    assert [r["body"]["model"] for r in candidate.requests] == ["llama-v2"]
    assert [r["body"]["model"] for r in primary.requests] == ["llama-x"]
    assert primary.requests[0]["headers"]["Authorization"] == f"Bearer {CLIENT_KEY}"  # self-hosted: the client's
    wait_until(lambda: len(_events(store)) == 4, message="four events")
    rows = {(e["requested_model"], e["attributes"].get("gen_ai.request.stream")): e for e in _events(store)}
    ns = rows[("gpt-4o-mini", "false")]
    assert (ns["model"], ns["model_version"], ns["endpoint"], ns["endpoint_kind"]) == (
        "gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "managed-openai", "managed")
    assert (ns["input_tokens"], ns["output_tokens"], ns["cached_tokens"]) == (1200, 300, 1000)
    # (1200 - 1000) x 0.15 + 1000 x 0.075 + 300 x 0.6, per million tokens
    assert ns["token_cost"] == pytest.approx((200 * 0.15 + 1000 * 0.075 + 300 * 0.6) / 1e6, rel=1e-12)
    assert ns["gpu_cost"] is None and ns["gpu_seconds"] is None  # a managed API's GPUs are not ours
    st = rows[("gpt-4o-mini", "true")]
    assert (st["input_tokens"], st["output_tokens"]) == (7, 4)
    assert st["token_cost"] == pytest.approx((7 * 0.15 + 4 * 0.6) / 1e6, rel=1e-12)
    v2 = rows[("llama-v2", "false")]
    assert (v2["model_version"], v2["endpoint"], v2["endpoint_kind"], v2["token_cost"]) == ("v2", "gpu-b",
                                                                                           "self_hosted", None)
    assert v2["gpu_cost"] == pytest.approx(v2["latency_ms"] / 1000 * 2.0 / 3600, rel=1e-9)
    default = rows[("llama-x", "false")]
    assert (default["endpoint"], default["model_version"]) == ("", "")
    # the managed key is nowhere: not in a stored row, span, log line
    for table in ("inference_events", "otel_traces"):
        n = store.query_rows(f"SELECT count() FROM {table} WHERE positionCaseInsensitive(toString(tuple(*)), "
                             "{k:String}) > 0", {"k": MANAGED_KEY})[0][0]
        assert n == 0, table
    assert MANAGED_KEY not in caplog.text
    # the new versions were recorded as they appeared (by a materialized view, in the same insert: its part
    # is committed after inference_events' own, so a query between the two sees the events without it)
    expected = {("llama-v2", "v2", "gpu-b"), ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18", "managed-openai")}
    wait_until(lambda: expected <= {(v["model"], v["model_version"], v["endpoint"]) for v in _versions(store)},
               timeout=10, message="model_versions to hold the new versions")


def _versions(store):
    from monitor.checks.compare.queries import versions
    return versions(store)


def test_a_missing_managed_key_stops_the_proxy_at_start(settings, monkeypatch):
    from monitor.config import ProxyRoute
    from monitor.errors import ConfigError
    from monitor.selfmetrics import SelfMetrics
    from monitor.sidecar.proxy.fastproxy import FastProxy

    monkeypatch.delenv(KEY_ENV, raising=False)
    settings.proxy.upstream = "http://127.0.0.1:9"
    settings.proxy.routes = [ProxyRoute(model="gpt*", upstream="https://api.example.com", kind="managed",
                                        api_key_env=KEY_ENV)]
    with pytest.raises(ConfigError, match=KEY_ENV):
        FastProxy(settings.proxy, lambda r: True, SelfMetrics())


def test_routes_to_http_upstreams_run_natively_and_an_https_route_on_python(settings, caplog, monkeypatch):
    from monitor.config import ProxyRoute
    from monitor.errors import ConfigError
    from monitor.sidecar.proxy import native

    monkeypatch.setattr(native, "native_binary", lambda: native.BINARY_PATH)  # as if built
    settings.proxy.upstream = "http://127.0.0.1:9"
    settings.proxy.routes = [ProxyRoute(model="m", upstream="http://127.0.0.1:10")]
    assert native.choose_implementation(settings.proxy) == "native"
    monkeypatch.setenv(KEY_ENV, MANAGED_KEY)
    settings.proxy.routes.append(ProxyRoute(model="gpt*", upstream="https://api.example.com", kind="managed",
                                            api_key_env=KEY_ENV))
    caplog.set_level(logging.INFO, logger="monitor.proxy")
    assert native.choose_implementation(settings.proxy) == "python"
    assert "'gpt*' to 'https://api.example.com'" in caplog.text and MANAGED_KEY not in caplog.text
    settings.proxy.implementation = "native"
    with pytest.raises(ConfigError, match="plain http"):
        native.choose_implementation(settings.proxy)
    # the binary's config carries each route, a managed route's key as its Authorization
    settings.proxy.routes[1] = ProxyRoute(model="gpt*", upstream="http://127.0.0.1:11", kind="managed",
                                          api_key_env=KEY_ENV)
    assert native.native_config(settings.proxy, None)["model_routes"] == [
        {"model": "m", "upstream": "http://127.0.0.1:10", "authorization": None},
        {"model": "gpt*", "upstream": "http://127.0.0.1:11", "authorization": f"Bearer {MANAGED_KEY}"}]
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=KEY_ENV):
        native.native_config(settings.proxy, None)


def test_model_of_finds_the_top_level_model_cheaply():
    from monitor.sidecar.proxy._routes import model_of

    long = "x" * 200_000
    body = json.dumps({"messages": [{"role": "user", "content": long}], "model": "llama-v2"}).encode()
    assert model_of(body) == "llama-v2"
    nested = json.dumps({"tools": [{"function": {"parameters": {"properties": {"model": {"type": "string"}}}}}],
                         "model": "gpt-4o"}).encode()
    assert model_of(nested) == "gpt-4o"
    assert model_of(b'{"messages": []}') is None and model_of(b"not json") is None
    assert model_of(json.dumps({"model": "a\"b"}).encode()) == 'a"b'
    t0 = time.perf_counter()
    for _ in range(100):
        model_of(body)
    assert (time.perf_counter() - t0) / 100 < 0.005  # a 200 KB prompt: well under a millisecond or so


def test_shadow_pairs_are_linked_counted_and_leave_a_latency_alone(hybrid, store):
    app, client, primary, candidate, managed = hybrid
    msgs = [{"role": "user", "content": "How do I rotate a log file?"}]
    shadowed, plain = [], []
    for i in range(40):  # interleaved: "llama" is shadowed to llama-v2, "llama-x" is not (same upstream)
        for model, out in (("llama", shadowed), ("llama-x", plain)):
            t0 = time.perf_counter()
            stream = client.chat.completions.create(model=model, messages=msgs, stream=True)
            for _ in stream:
                pass
            out.append(time.perf_counter() - t0)
    wait_until(lambda: len(_events(store, "shadow_of != ''")) == 40, timeout=60, message="40 shadow rows")
    wait_until(lambda: len(_events(store)) == 120, timeout=30, message="120 rows")
    prim = {e["span_id"]: e for e in _events(store, "requested_model = 'llama'")}
    shadows = _events(store, "shadow_of != ''")
    assert len(prim) == 40 and len(shadows) == 40
    for s in shadows:
        p = prim[s["shadow_of"]]
        assert s["trace_id"] == p["trace_id"] and s["requested_model"] == "llama-v2"
        assert (s["model_version"], s["endpoint"]) == ("v2", "gpu-b")
        assert s["prompt"] == p["prompt"] and s["completion"] == "Hi there!" and p["completion"] == "Hello, world!"
        assert s["ttft_ms"] is not None and s["output_tokens"] == 3  # usage asked for the copy
        assert s["timestamp"] >= p["timestamp"]
    assert len(candidate.requests) == 40
    # the client only ever saw A; counted: 40 ok
    capture = app.pipeline.capture
    assert capture.shadow.counts == {"ok": 40}
    ratio = statistics.median(shadowed) / statistics.median(plain)
    print(f"A latency with/without shadowing: median {statistics.median(shadowed) * 1000:.1f} ms / "
          f"{statistics.median(plain) * 1000:.1f} ms = {ratio:.3f}")
    assert 0.8 < ratio < 1.25
    # compare A and B on the pairs
    from monitor.checks.compare.queries import Side, pairs
    now = datetime.now(timezone.utc)
    n, rows = pairs(store, Side("llama"), Side("llama-v2"), now - timedelta(hours=1), now)
    assert n == 40 and all(r["completion_a"] == "Hello, world!" and r["completion_b"] == "Hi there!" for r in rows)


def test_shadow_bounds_rate_and_budget(settings):
    """The bounds, on the sender itself: a token bucket, the concurrency limit, a managed budget."""
    from monitor.config import ProxyRoute, ShadowRule
    from monitor.selfmetrics import SelfMetrics
    from monitor.sidecar.proxy.record import CaptureRecord
    from monitor.sidecar.proxy.shadow import ShadowSender

    p = settings.proxy
    p.upstream = "http://127.0.0.1:9"
    p.routes = [ProxyRoute(model="cand", upstream="http://127.0.0.1:9", kind="managed")]
    p.shadow = [ShadowRule(model="m", to="cand", share=1.0, max_per_s=2, max_concurrency=100,
                           max_managed_tokens_per_day=1000)]
    got = []
    s = ShadowSender(p, SelfMetrics(), got.append)
    s.start()
    try:
        rec = lambda: CaptureRecord(api="openai", operation="chat", path="/v1/chat/completions",  # noqa: E731
                                    trace_id=uuid.uuid4().bytes, span_id=b"\1" * 8,
                                    request_body=b'{"model": "m", "messages": []}', request_size=30)
        for _ in range(10):
            s.offer(rec())
        assert s.counts.get("rate") == 6  # a burst of 2 x max_per_s went, the rest waited for tokens
        s.spent(0, 1500)  # the copies' answers used the day's budget
        time.sleep(1.1)
        s.offer(rec())
        assert s.counts.get("budget") == 1
        wait_until(lambda: len(got) == 4, message="the four copies were recorded (failed: nothing listens)")
        assert all(r.error_type == "upstream_unreachable" for r in got)
    finally:
        s.stop(2.0)


# -- statistics ---------------------------------------------------------------------------------------


def test_statistics_match_reference_implementations():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 0.4, 300), rng.lognormal(0.15, 0.4, 250)
    assert mann_whitney(a, b)[1] == pytest.approx(mannwhitneyu(b, a, alternative="two-sided").pvalue, rel=1e-9)
    d = compare_values("latency_ms", a, b)
    assert d.median_diff == pytest.approx(np.median(b) - np.median(a))
    assert d.median_diff_ci[0] < d.median_diff < d.median_diff_ci[1]
    r = compare_rates("refusal_rate", 10, 200, 25, 200)
    # Newcombe's hybrid score interval (method 10), as R's PropCIs::diffscoreci-like references give
    assert r.ci == pytest.approx((0.0195, 0.1326), abs=5e-4)
    assert r.p_value == pytest.approx(0.00795, abs=1e-4)
    assert non_inferior("x", 0.5, (0.4, 0.6), 0.2).status == "fail"
    assert non_inferior("x", 0.0, (-0.1, 0.1), 0.2).status == "ok"
    assert non_inferior("x", 0.15, (0.05, 0.3), 0.2).status == "warn"


# -- canary and `monitor compare`, on stored rows ---------------------------------------------------------


def _insert(store, model: str, version: str, n: int, latency: float, refusal_rate: float, seed: int,
            start: datetime, cost: float | None = None) -> None:
    rng = random.Random(seed)
    cols = ("timestamp", "trace_id", "span_id", "model", "requested_model", "model_version", "operation",
            "latency_ms", "ttft_ms", "output_tokens", "input_tokens", "refusal", "completion", "prompt", "status_code",
            "gpu_cost")
    rows = []
    for i in range(n):
        refused = rng.random() < refusal_rate
        rows.append([start + timedelta(seconds=i * 0.5), uuid.uuid4().hex, uuid.uuid4().hex[:16], model, model, version,
                     "chat", latency * rng.lognormvariate(0, 0.15), latency * 0.2, 40 + rng.randint(0, 10), 20,
                     int(refused), "I can't help with that." if refused else f"Answer number {i % 7}.",
                     f"question {i}", "Unset", cost])
    store.insert("inference_events", rows, cols)


def _cli(settings, *args, **env):
    from monitor.cli import main

    base = {"MONITOR_STORE__URL": settings.store.url, "MONITOR_STORE__DATABASE": settings.store.database,
            "MONITOR_CHECKS__ADMIN_PORT": "1", "MONITOR_DASHBOARD__ENABLED": "false"}
    return CliRunner().invoke(main, list(args), env={**base, **env}, catch_exceptions=False)


def _json(output: str) -> dict:
    """The JSON document of a command's output (log lines may come first)."""
    return json.loads(output[output.index("{") if output.startswith("{") else output.index("\n{") + 1:])


def test_canary_fails_on_a_regression_and_passes_on_a_copy(settings, store):
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    _insert(store, "llama", "v1", 400, 800.0, 0.02, 1, start, cost=0.001)
    _insert(store, "llama", "v2", 400, 1200.0, 0.10, 2, start, cost=0.001)  # 50% slower, 8 points more refusals
    _insert(store, "llama", "v1-copy", 400, 800.0, 0.02, 3, start, cost=0.001)  # the same service again
    env = {"MONITOR_CHECKS__CANARY__INCUMBENT": "llama@v1", "MONITOR_CHECKS__CANARY__CANDIDATE": "llama@v2",
           "MONITOR_CHECKS__SEMANTIC__ENABLED": "false", "MONITOR_CHECKS__ABUSE__ENABLED": "false"}
    res = _cli(settings, "check", "--window", "1h", "--only", "canary", "--json", **env)
    out = _json(res.output)
    results = {r["metric"]: r for s in out["scopes"] for r in s["results"]}
    assert res.exit_code == 1, res.output
    assert results["verdict"]["status"] == "fail"
    assert results["latency_p95"]["status"] == "fail"
    assert results["latency_p95"]["value"] == pytest.approx(0.5, abs=0.15)
    assert results["refusal_rate"]["status"] == "fail"
    assert "latency_p95" in results["verdict"]["details"]["reason"]
    res = _cli(settings, "check", "--window", "1h", "--only", "canary", "--json",
               **{**env, "MONITOR_CHECKS__CANARY__CANDIDATE": "llama@v1-copy"})
    out = _json(res.output)
    results = {r["metric"]: r for s in out["scopes"] for r in s["results"]}
    assert res.exit_code == 0, res.output
    assert results["verdict"]["status"] == "ok", results["verdict"]
    assert results["latency_p95"]["status"] == "ok" and results["error_rate"]["status"] == "ok"


def test_monitor_compare_json(settings, store):
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    _insert(store, "llama", "v1", 300, 800.0, 0.02, 1, start, cost=0.002)
    _insert(store, "llama", "v2", 300, 1200.0, 0.10, 2, start, cost=0.001)
    res = _cli(settings, "compare", "--a", "llama@v1", "--b", "llama@v2", "--window", "1h", "--json", "--no-semantic")
    assert res.exit_code == 0, res.output
    out = _json(res.output)
    assert (out["sides"]["a"]["requests"], out["sides"]["b"]["requests"]) == (300, 300)
    lat = out["distributions"]["latency_ms"]
    assert lat["p_value"] < 1e-6 and lat["median_ratio"] == pytest.approx(1.5, abs=0.1)
    assert lat["median_diff_ci"][0] < lat["median_diff"] < lat["median_diff_ci"][1]
    ref = out["rates"]["refusal_rate"]
    a_refused = store.query_rows("SELECT sum(refusal) FROM inference_events WHERE model_version = 'v1'")[0][0]
    assert ref["x_a"] == a_refused and ref["n_a"] == 300 and ref["p_value"] < 0.01
    cost = out["cost"]
    assert cost["per_1k_requests"]["a"] == pytest.approx(2.0) and cost["per_1k_requests"]["b"] == pytest.approx(1.0)
    tokens_a = out["sides"]["a"]["input_tokens"] + out["sides"]["a"]["output_tokens"]
    assert cost["per_1k_tokens"]["a"] == pytest.approx(300 * 0.002 / tokens_a * 1000)
    text = _cli(settings, "compare", "--a", "llama@v1", "--b", "llama@v2", "--window", "1h", "--no-semantic").output
    assert "latency_ms" in text and "refusal_rate" in text and "shadow pairs: 0" in text


def test_compare_page_shows_the_difference_and_the_shadow_pairs(settings, store):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from monitor.webui.store import register, unregister

    start = datetime.now(timezone.utc) - timedelta(minutes=20)
    _insert(store, "llama", "v1", 120, 800.0, 0.02, 1, start)
    _insert(store, "llama", "v2", 120, 1200.0, 0.10, 2, start)
    primary = store.query_rows("SELECT trace_id, span_id, timestamp FROM inference_events WHERE model_version = 'v1' "
                               "ORDER BY timestamp LIMIT 5")
    store.insert("inference_events", [
        [t + timedelta(seconds=1), trace, uuid.uuid4().hex[:16], "llama", "llama", "v2", "chat", 1000.0, span,
         "I can't help with that." if i == 0 else "<script>alert(1)</script> a [link](http://x)", f"question {i}",
         1 if i == 0 else 0]
        for i, (trace, span, t) in enumerate(primary)],
        ("timestamp", "trace_id", "span_id", "model", "requested_model", "model_version", "operation", "latency_ms",
         "shadow_of", "completion", "prompt", "refusal"))
    register(store, refresh_s=0)
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboards" / "app.py"), default_timeout=60)
        at.run()
        at.switch_page("views/compare.py").run()
        assert not at.exception, [e.message for e in at.exception]
        at.selectbox(key="compare_a").set_value("llama@v1").run()
        at.selectbox(key="compare_b").set_value("llama@v2").run()
        assert not at.exception, [e.message for e in at.exception]
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Shadow pairs"] == "5" and metrics["one refused"] == "1"
        assert metrics["A requests"] == "120" and metrics["B requests"] == "125"
        shown = [c.value for c in at.text]
        assert any("<script>alert(1)</script> a [link](http://x)" == v for v in shown)  # as typed, never rendered
        assert any("new version" in s.value for s in at.success)
    finally:
        unregister()
