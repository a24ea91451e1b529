"""The capture proxy with the official openai SDK: identical output, one event per request, the engine
span joined, errors recorded, content controls, and requests that succeed when monitoring is broken."""

from __future__ import annotations

import json
import time
import urllib.request

import openai
import pytest
from conftest import free_port, wait_until
from fake_upstream import FakeUpstream
from test_embedded import _count

from monitor.runtime.apps import Embedded


def _events(store) -> list[dict]:
    return list(store.query("SELECT * FROM inference_events ORDER BY timestamp").named_results())


@pytest.fixture
def stack(settings):
    """monitor up --upstream <fake engine that traces to our receiver>."""
    upstream = FakeUpstream(otlp_http_port=settings.receiver.http_port).start()
    settings.proxy.upstream = upstream.url
    settings.proxy.port = free_port()
    app = Embedded(settings)
    app.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="sk-test", max_retries=0)
    direct = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-test", max_retries=0)
    yield app, upstream, client, direct
    app.stop()
    upstream.stop()


def test_chat_non_streaming_is_identical_and_recorded_with_engine_timings(stack, store):
    app, upstream, client, direct = stack
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    via = client.chat.completions.create(model="llama-3-8b", messages=messages, temperature=0, max_tokens=16)
    ref = direct.chat.completions.create(model="llama-3-8b", messages=messages, temperature=0, max_tokens=16)
    assert via.model_dump(exclude={"created"}) == ref.model_dump(exclude={"created"})  # two calls: the clock ticks
    wait_until(lambda: _count(store, "inference_events") == 1, message="one event")
    wait_until(lambda: _events(store)[0]["queue_ms"] is not None, timeout=20, message="the engine span joined")
    ev = _events(store)[0]
    assert (ev["model"], ev["operation"], ev["prompt"], ev["completion"]) == (
        "llama-3-8b", "chat", "Say hello", "Hello, world!")
    assert ev["system_prompt"] == "Be brief."
    assert (ev["input_tokens"], ev["output_tokens"], ev["finish_reason"], ev["status_code"]) == (7, 4, "stop", "Unset")
    assert ev["latency_ms"] >= ev["engine_latency_ms"] > 0  # the client waits at least as long as the engine
    assert ev["queue_ms"] == pytest.approx(2.0)
    assert ev["prefill_ms"] == pytest.approx(3.0)
    assert ev["ttft_ms"] is None  # not streamed: the client saw no first token before the last
    assert ev["attributes"]["gen_ai.request.temperature"] == "0"
    assert ev["attributes"]["gen_ai.request.max_tokens"] == "16"
    # both spans are in otel_traces, in one trace, the engine's the child of the proxy's
    spans = store.query_rows("SELECT SpanName, SpanId, ParentSpanId, TraceId FROM otel_traces ORDER BY SpanName")
    (name_a, id_a, _, trace_a), (name_b, _, parent_b, trace_b) = spans
    assert (name_a, name_b) == ("chat llama-3-8b", "llm_request")
    assert (trace_a, parent_b) == (trace_b, id_a) and ev["trace_id"] == trace_a
    assert _count(store, "inference_events") == 1  # one row per request, not one per span
    assert upstream.requests[0]["headers"]["traceparent"].split("-")[1] == trace_a


def test_chat_streaming_passes_chunks_through_and_measures_ttft(stack, store):
    app, upstream, client, direct = stack
    upstream.pace_s = 0.05
    messages = [{"role": "user", "content": "Stream please"}]
    t0 = time.perf_counter()
    arrivals, text = [], ""
    for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
        arrivals.append(time.perf_counter() - t0)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    ref = "".join(c.choices[0].delta.content or "" for c in direct.chat.completions.create(
        model="m", messages=messages, stream=True) if c.choices)
    assert text == ref == "Hello, world!"
    # chunk by chunk: the first content arrived long before the last (4 tokens, 50 ms apart)
    assert arrivals[-1] - arrivals[1] > 0.12
    # the client did not ask for usage: the proxy asked upstream and stripped the usage chunk
    assert upstream.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in client.chat.completions.create(model="m", messages=messages, stream=True))
    wait_until(lambda: _count(store, "inference_events") == 2, message="2 events")
    ev = _events(store)[0]
    assert ev["completion"] == "Hello, world!" and ev["output_tokens"] == 4 and ev["input_tokens"] == 7
    assert 40 < ev["ttft_ms"] < 1000 and 40 < ev["itl_ms"] < 200
    assert ev["latency_ms"] > ev["ttft_ms"]


def test_content_is_redacted_before_it_leaves_the_host(stack, store):
    _, upstream, client, _ = stack
    prompt = ("Hi, I'm Jane (jane.doe@example.com, +49 30 1234 5678). Charge card 4111 1111 1111 1111 "
              "and use key sk-proj-abcDEF1234567890abcDEF1234567890 from 10.20.30.40.")
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
    assert upstream.requests[-1]["body"]["messages"][0]["content"] == prompt  # the server gets it unchanged
    wait_until(lambda: _count(store, "inference_events") == 1, message="the event")
    stored = _events(store)[0]["prompt"]
    assert stored == ("Hi, I'm Jane ([EMAIL], [PHONE]). Charge card [CARD] and use key [API_KEY] from [IP].")
    raw = store.query_rows("SELECT SpanAttributes['gen_ai.input.messages'] FROM otel_traces "
                           "WHERE SpanName = 'chat m'")[0][0]
    assert "jane.doe" not in raw and "4111" not in raw and "[CARD]" in raw


def test_usage_requested_by_the_client_is_passed_on(stack, store):
    _, upstream, client, _ = stack
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 4 and not chunks[-1].choices


def test_ollama_native_chat_with_its_durations(stack, store, settings):
    req = urllib.request.Request(f"http://127.0.0.1:{settings.proxy.port}/api/chat", method="POST",
                                 data=json.dumps({"model": "llama3", "messages": [
                                     {"role": "user", "content": "Bonjour"}]}).encode())
    with urllib.request.urlopen(req, timeout=10) as r:
        lines = [json.loads(line) for line in r.read().splitlines() if line.strip()]
    assert "".join(x["message"]["content"] for x in lines) == "Hello, world!" and lines[-1]["done"]
    wait_until(lambda: _count(store, "inference_events") == 1, message="the ollama event")
    ev = _events(store)[0]
    assert (ev["model"], ev["prompt"], ev["completion"], ev["input_tokens"], ev["output_tokens"]) == (
        "llama3", "Bonjour", "Hello, world!", 9, 4)
    assert ev["engine_latency_ms"] == pytest.approx(52.0)
    assert (ev["prefill_ms"], ev["decode_ms"], ev["inference_ms"]) == (
        pytest.approx(4.0), pytest.approx(40.0), pytest.approx(44.0))
    assert ev["ttft_ms"] > 0


def test_other_paths_pass_through_untouched(stack, settings):
    req = urllib.request.Request(f"http://127.0.0.1:{settings.proxy.port}/other/x?y=1", method="PUT",
                                 data=b"payload", headers={"Authorization": "Bearer client-key"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.read() == b"echo:payload"
        assert r.headers["X-Echo-Path"] == "/other/x?y=1"
        assert r.headers["X-Echo-Auth"] == "Bearer client-key"
    _, _, client, _ = stack
    assert [m.id for m in client.models.list()] == ["fake-model"]


def test_upstream_errors_and_unreachable_upstream_are_recorded(stack, store, settings):
    _, upstream, client, _ = stack
    upstream.fail_status = 503
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503 and "engine overloaded" in str(err.value)
    upstream.stop()
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    wait_until(lambda: _count(store, "inference_events") == 2, message="2 error events")
    rows = store.query_rows("SELECT error_type, status_code, attributes['http.response.status_code'] "
                            "FROM inference_events ORDER BY timestamp")
    assert rows == [("http.503", "Error", "503"), ("upstream_unreachable", "Error", "502")]


def test_content_controls_truncation_and_per_route_capture(settings, store):
    upstream = FakeUpstream(tokens=["x" * 2000]).start()
    settings.proxy.upstream = upstream.url
    settings.proxy.port = free_port()
    settings.proxy.max_field_bytes = 500
    settings.proxy.capture_content = {"/v1/completions": False}
    app = Embedded(settings)
    app.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="k", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y" * 3000}])
        client.completions.create(model="m", prompt="The quick brown fox")
        wait_until(lambda: _count(store, "inference_events") == 2, message="2 events")
        chat, comp = (dict(zip(("op", "prompt", "completion", "captured"), r)) for r in store.query_rows(
            "SELECT operation, prompt, completion, attributes['monitor.content.captured'] FROM inference_events "
            "ORDER BY operation"))
        assert len(chat["prompt"].encode()) <= 500 and chat["prompt"].endswith("bytes]")
        assert "…[truncated 2" in chat["prompt"] and "…[truncated 1" in chat["completion"]
        assert (comp["prompt"], comp["completion"], comp["captured"]) == ("", "", "false")
        tokens = store.query_rows("SELECT input_tokens, output_tokens FROM inference_events "
                                  "WHERE operation = 'text_completion'")
        assert tokens == [(4, 2)]  # timings and usage are kept when content is not
    finally:
        app.stop()
        upstream.stop()


def test_proxy_auth(settings, store):
    upstream = FakeUpstream().start()
    settings.proxy.upstream = upstream.url
    settings.proxy.port = free_port()
    settings.proxy.auth_token = "proxy-secret"
    app = Embedded(settings)
    app.start()
    try:
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        good = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="proxy-secret",
                             max_retries=0)
        assert good.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices
        assert "authorization" not in {k.lower() for k in upstream.requests[-1]["headers"]}  # not leaked upstream
    finally:
        app.stop()
        upstream.stop()


def test_requests_succeed_when_monitoring_is_broken(settings, store):
    """Fail open: the pipeline refuses everything the proxy captures; every proxied request still succeeds."""
    from monitor.errors import TransportError

    upstream = FakeUpstream().start()
    settings.proxy.upstream = upstream.url
    settings.proxy.port = free_port()
    app = Embedded(settings)

    def broken(signal, msg):
        raise TransportError("simulated: the spool is broken")
    app.pipeline.transport.publish = broken
    app.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="k", max_retries=0)
        for i in range(30):
            stream = i % 2 == 0
            r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}],
                                               stream=stream)
            text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else \
                r.choices[0].message.content
            assert text == "Hello, world!"
        assert _count(store, "inference_events") == 0
        ok = app.metrics.proxy_requests.labels("/v1/chat/completions", "200")._value.get()
        assert ok == 30
    finally:
        app.stop()
        upstream.stop()
