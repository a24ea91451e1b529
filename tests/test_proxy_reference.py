"""The issue's end-to-end check: the official openai SDK, streaming and not, through the capture proxy
to the reference torch server, which traces like vLLM. Output identical to a direct call; the stored
row has client TTFT, latency, tokens, redacted content, and the engine's timings joined on trace id."""

from __future__ import annotations

import openai
import pytest
from conftest import free_port, wait_until

from monitor.runtime.apps import Embedded

torch = pytest.importorskip("torch")
from monitor.demo.server import DemoServer  # noqa: E402


@pytest.fixture
def stack(settings):
    settings.proxy.port = free_port()
    server = DemoServer(port=0, otlp_endpoint=f"http://127.0.0.1:{settings.receiver.grpc_port}").start()
    settings.proxy.upstream = server.url
    app = Embedded(settings)
    app.start()
    via = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="x", max_retries=0)
    direct = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    yield app, via, direct
    server.stop()
    app.stop()


def test_openai_sdk_through_the_proxy_to_the_reference_server(stack, store):
    app, via, direct = stack
    model = direct.models.list().data[0].id
    # The first traced request teaches the proxy that the upstream traces (see monitor/sidecar/proxy/join.py).
    via.chat.completions.create(model=model, messages=[{"role": "user", "content": "warm up"}], max_tokens=4)
    wait_until(lambda: app.sources.capture.join.upstream_traces, timeout=30, message="the proxy to see the engine trace")
    prompt = "Write to ops@example.org about the parser: it returns the string"
    msgs = [{"role": "user", "content": prompt}]
    plain = via.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24)
    ref = direct.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24)
    assert plain.choices[0].message.content == ref.choices[0].message.content != ""
    assert plain.usage.model_dump() == ref.usage.model_dump()
    streamed = "".join(c.choices[0].delta.content or "" for c in via.chat.completions.create(
        model=model, messages=msgs, temperature=0, max_tokens=24, stream=True) if c.choices)
    assert streamed == ref.choices[0].message.content

    wait_until(lambda: store.query_rows("SELECT count() FROM inference_events "
                                        "WHERE attributes['monitor.engine.span_id'] != ''")[0][0] == 2,
               timeout=30, message="both engine spans joined")
    # one event per request: the warm-up, the two through the proxy, and the direct reference call,
    # which the server traced too (an engine-only event, source vllm)
    assert dict(store.query_rows("SELECT source, count() FROM inference_events GROUP BY source")) == {
        "genai": 3, "vllm": 1}
    rows = list(store.query("SELECT * FROM inference_events WHERE prompt != 'warm up' AND source = 'genai' "
                            "ORDER BY timestamp").named_results())
    for r in rows:
        assert r["prompt"] == "Write to [EMAIL] about the parser: it returns the string"
        assert r["completion"] == ref.choices[0].message.content
        assert (r["input_tokens"], r["output_tokens"]) == (ref.usage.prompt_tokens, ref.usage.completion_tokens)
        assert r["latency_ms"] > r["engine_latency_ms"] > 0  # client-seen includes the hop through the proxy
        assert r["prefill_ms"] > 0 and r["decode_ms"] > 0 and r["queue_ms"] >= 0
        assert r["engine_ttft_ms"] > 0
        spans = store.query_rows("SELECT SpanName, ParentSpanId, SpanId FROM otel_traces WHERE TraceId = {t:String} "
                                 "ORDER BY SpanName", {"t": r["trace_id"]})
        assert [s[0] for s in spans] == [f"chat {model}", "llm_request"]
        assert spans[1][1] == spans[0][2] == r["span_id"]  # the engine span is the proxy span's child
    nonstream, stream = rows
    assert nonstream["ttft_ms"] is None and stream["ttft_ms"] > 0 and stream["itl_ms"] > 0
    assert stream["ttft_ms"] < stream["latency_ms"]


def test_upstream_known_to_trace_joins_from_the_first_request(settings, store):
    """proxy.upstream_traces: yes -- no warm-up request: the very first event has both timings."""
    settings.proxy.port = free_port()
    settings.proxy.upstream_traces = "yes"
    server = DemoServer(port=0, otlp_endpoint=f"http://127.0.0.1:{settings.receiver.grpc_port}").start()
    settings.proxy.upstream = server.url
    app = Embedded(settings)
    app.start()
    try:
        via = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="x", max_retries=0)
        model = via.models.list().data[0].id
        via.chat.completions.create(model=model, messages=[{"role": "user", "content": "first"}], max_tokens=4)
        wait_until(lambda: store.query_rows("SELECT count() FROM inference_events")[0][0] == 1, timeout=30,
                   message="the first request's event")
        (source, engine_span, prefill, engine_latency), = store.query_rows(
            "SELECT source, attributes['monitor.engine.span_id'], prefill_ms, engine_latency_ms FROM inference_events")
        assert source == "genai" and engine_span != "" and prefill > 0 and engine_latency > 0
    finally:
        server.stop()
        app.stop()
