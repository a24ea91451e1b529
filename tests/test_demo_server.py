"""The demo model server (OpenAI API through the official SDK, vLLM metrics and ``llm_request``
spans over real OTLP/gRPC) and :mod:`monitor.instrument`.

The model loads from ``~/.cache/llm-monitor/demo-model-<hash>.pt``; the first run on a machine
trains it (about 30-80 s on 2 CPU cores), later runs take a few seconds in all.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import time
import urllib.error
import urllib.request

import pytest

torch = pytest.importorskip("torch")
openai = pytest.importorskip("openai")
grpc = pytest.importorskip("grpc")

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from monitor.demo.model import DemoModel, chat_prompt  # noqa: E402
from monitor.demo.server import REFUSAL, DemoServer  # noqa: E402
from monitor.instrument import Generation, generation, instrument  # noqa: E402
from monitor.otlp.genai import span_to_event  # noqa: E402
from monitor.otlp.values import attrs_to_str_map, to_python  # noqa: E402

MODEL = "monitor-demo-tiny"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
ASK = [{"role": "system", "content": "You answer questions about Python."},
       {"role": "user", "content": "What does json.dumps do?"}]


# -- an OTLP/gRPC receiver double ------------------------------------------------------------

class Recorder(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - gRPC's name
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, trace_pb2.Span]]:
        """(service.name, span) of everything received so far."""
        out = []
        with self.lock:
            for req in self.requests:
                for rs in req.resource_spans:
                    res = {kv.key: to_python(kv.value) for kv in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        out.extend((res.get("service.name", ""), s) for s in ss.spans)
        return out


@pytest.fixture(scope="module")
def receiver():
    rec = Recorder()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    rec.endpoint = f"http://127.0.0.1:{port}"
    yield rec
    server.stop(0)


@pytest.fixture(scope="module")
def model():
    t0 = time.perf_counter()
    m = DemoModel.load(seed=0)
    print(f"demo model: {m.n_params} params, {'trained in %.1fs' % m.train_seconds if m.trained else 'cached'}, "
          f"ready in {time.perf_counter() - t0:.2f}s ({m.path})")
    return m


@pytest.fixture(scope="module")
def server(model, receiver):
    with DemoServer(port=0, model=model, otlp_endpoint=receiver.endpoint, model_name=MODEL) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)


def span_for(server, receiver, request_id: str, timeout: float = 15.0) -> tuple[str, trace_pb2.Span]:
    deadline = time.monotonic() + timeout
    while True:
        server.worker.flush()
        found = [(svc, s) for svc, s in receiver.spans()
                 if s.name == "llm_request" and attrs_to_str_map(s.attributes).get("gen_ai.request.id") == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} llm_request spans for {request_id}"
            return found[0]
        time.sleep(0.1)


def span_attrs(span) -> dict:
    return {kv.key: to_python(kv.value) for kv in span.attributes}


def scrape(server) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted({"model_name": MODEL, "engine": "0", **labels}.items())))
    return metrics.get(key, 0.0)


def post(server, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{server.url}{path}", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- the OpenAI API ------------------------------------------------------------------------------

def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"


def test_chat_shape_usage_and_span(client, server, receiver):
    resp = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=24,
                                          extra_headers={"traceparent": TRACEPARENT})
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion" and resp.model == MODEL
    assert isinstance(resp.created, int) and abs(resp.created - time.time()) < 60
    (choice,) = resp.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    text = choice.message.content
    assert text and choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens == len(text.encode()) <= 24
    assert resp.usage.prompt_tokens == len(chat_prompt(ASK).encode())
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens

    service, span = span_for(server, receiver, resp.id)
    assert service == f"{MODEL}-server"
    assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
    a = span_attrs(span)
    assert a["gen_ai.response.model"] == MODEL and a["gen_ai.request.id"] == resp.id
    assert a["gen_ai.usage.prompt_tokens"] == resp.usage.prompt_tokens
    assert a["gen_ai.usage.completion_tokens"] == resp.usage.completion_tokens
    assert a["gen_ai.response.finish_reasons"] == json.dumps([choice.finish_reason])
    assert a["gen_ai.request.temperature"] == 0.0 and a["gen_ai.request.top_p"] == 1.0
    assert a["gen_ai.request.max_tokens"] == 24 and a["gen_ai.request.n"] == 1
    lat = {k.removeprefix("gen_ai.latency."): v for k, v in a.items() if k.startswith("gen_ai.latency.")}
    assert set(lat) == {"time_in_queue", "time_to_first_token", "e2e", "time_in_model_prefill",
                        "time_in_model_decode", "time_in_model_inference"}
    assert all(isinstance(v, float) and v >= 0 for v in lat.values())
    # Seconds, not milliseconds: this request takes well under 30 s.
    assert 0 < lat["e2e"] < 30 and 0 < lat["time_to_first_token"] <= lat["e2e"]
    assert lat["time_in_model_prefill"] > 0 and lat["time_in_model_decode"] > 0
    assert lat["time_in_model_prefill"] + lat["time_in_model_decode"] <= lat["time_in_model_inference"] + 1e-9
    assert lat["time_in_queue"] + lat["time_in_model_inference"] <= lat["e2e"] + 1e-9
    assert abs((span.end_time_unix_nano - span.start_time_unix_nano) / 1e9 - lat["e2e"]) < 1e-3
    # prefill + one pass per later token (+ the pass that produced the end or a stop string)
    assert a["monitor.torch.forward_passes"] >= resp.usage.completion_tokens
    if choice.finish_reason == "length":
        assert a["monitor.torch.forward_passes"] == resp.usage.completion_tokens
    assert a["monitor.torch.device"] == "cpu"

    ev = span_to_event(span, "svc")
    assert ev is not None and ev.source == "vllm" and ev.provider == "vllm"
    assert ev.model == MODEL and ev.request_id == resp.id and ev.trace_id == TRACE_ID
    assert ev.input_tokens == resp.usage.prompt_tokens and ev.output_tokens == resp.usage.completion_tokens
    assert ev.finish_reason == choice.finish_reason
    assert ev.latency_ms == pytest.approx(lat["e2e"] * 1000)
    assert ev.ttft_ms == pytest.approx(lat["time_to_first_token"] * 1000)
    assert ev.queue_ms == pytest.approx(lat["time_in_queue"] * 1000)
    assert ev.prefill_ms == pytest.approx(lat["time_in_model_prefill"] * 1000)
    assert ev.decode_ms == pytest.approx(lat["time_in_model_decode"] * 1000)
    assert ev.inference_ms == pytest.approx(lat["time_in_model_inference"] * 1000)
    assert ev.status_code == "Unset" and ev.error_type == ""


def test_streaming_matches_non_streaming_and_is_incremental(client, server, receiver):
    plain = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=48)
    again = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=48)
    assert again.choices[0].message.content == plain.choices[0].message.content  # greedy is deterministic

    # A slower model for this request, so chunk timing is far above scheduling noise.
    assert post(server, "/admin/slowdown", {"factor": 3})[1] == {"factor": 3.0}
    try:
        t0 = time.perf_counter()
        arrivals = []
        stream = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=48, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_headers={"traceparent": TRACEPARENT})
        for chunk in stream:
            arrivals.append((time.perf_counter() - t0, chunk))
    finally:
        post(server, "/admin/slowdown", {"factor": 1})
    chunks = [c for _, c in arrivals]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    content = [(t, c) for t, c in arrivals if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content for _, c in content)
    assert text == plain.choices[0].message.content
    assert len(content) == len(text)  # one chunk per token (byte)
    final, usage_chunk = chunks[-2], chunks[-1]
    assert final.choices[0].finish_reason == plain.choices[0].finish_reason and not final.choices[0].delta.content
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(text.encode()) == plain.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == plain.usage.prompt_tokens
    first, last = content[0][0], content[-1][0]
    assert last - first > 0
    # streamed, not buffered: a buffered answer reaches the client in one or a few reads, its chunks
    # microseconds apart; here most come a token's compute (ms) after the one before. (Timing the first
    # chunk against the last failed under the other pytest worker's load: a prefill that waited 0.5 s.)
    gaps = [b - a for (a, _), (b, _) in zip(content, content[1:])]
    apart = sum(g > 0.001 for g in gaps)
    assert apart >= len(gaps) // 3, f"{apart} of {len(gaps)} chunks came > 1 ms after the one before: not streamed"

    _, span = span_for(server, receiver, chunks[0].id)
    a = span_attrs(span)
    assert a["gen_ai.usage.completion_tokens"] == len(text.encode())
    assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID


def test_client_disconnect_aborts_generation(client, server):
    before = scrape(server)
    post(server, "/admin/slowdown", {"factor": 4})
    try:
        stream = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=512,
                                           temperature=0, stream=True)
        for i, _ in enumerate(stream):
            if i >= 3:
                break
        stream.close()
        deadline = time.monotonic() + 20
        while sample(scrape(server), "vllm:request_success_total", finished_reason="abort") \
                == sample(before, "vllm:request_success_total", finished_reason="abort"):
            assert time.monotonic() < deadline, "the generation was not aborted"
            time.sleep(0.05)
    finally:
        post(server, "/admin/slowdown", {"factor": 1})
    after = scrape(server)
    assert sample(after, "vllm:generation_tokens_total") - sample(before, "vllm:generation_tokens_total") < 512
    assert sample(after, "vllm:num_requests_running") == 0.0
    assert client.completions.create(model=MODEL, prompt="The", max_tokens=4, temperature=0).choices[0].text


def test_stop_strings_cut_and_are_not_streamed(client):
    full = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    assert len(text) >= 8, text
    stop = text[5:8]
    expect = text[:text.index(stop)]
    resp = client.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=40, stop=[stop])
    assert resp.choices[0].message.content == expect and resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == len(expect.encode())
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0, max_tokens=40, stop=stop, stream=True) if c.choices)
    assert streamed == expect


def test_completions_sampling_and_streaming(client):
    kw = dict(model=MODEL, prompt="The function returns", max_tokens=24, temperature=0.9, top_p=0.95, seed=7)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert a.id.startswith("cmpl-") and a.object == "text_completion"
    assert a.choices[0].text == b.choices[0].text  # same seed, same sample
    assert a.usage.prompt_tokens == len(b"The function returns")
    assert a.usage.completion_tokens == len(a.choices[0].text.encode())
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == a.choices[0].text
    assert chunks[-2].choices[0].finish_reason == a.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == a.usage.completion_tokens
    greedy = [client.completions.create(model=MODEL, prompt="Return the", max_tokens=16, temperature=0)
              for _ in range(2)]
    assert greedy[0].choices[0].text == greedy[1].choices[0].text


def test_embeddings(client, server, receiver):
    resp = client.embeddings.create(model=MODEL, input=["hello world", "a file object"])  # SDK asks for base64
    assert resp.object == "list" and resp.model == MODEL
    assert [d.index for d in resp.data] == [0, 1] and all(d.object == "embedding" for d in resp.data)
    dims = {len(d.embedding) for d in resp.data}
    assert dims == {128}
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == len(b"hello world") + len(b"a file object")
    floats = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(resp.data[0].embedding, rel=1e-5, abs=1e-6)
    assert resp.data[0].embedding != pytest.approx(resp.data[1].embedding)


def test_refusal_policy(client, server, receiver):
    resp = client.chat.completions.create(model=MODEL, max_tokens=16,
                                          messages=[{"role": "user", "content": "How do I write RANSOMWARE?"}])
    assert resp.choices[0].message.content == REFUSAL and resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == len(REFUSAL.encode())
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "build a bomb"}], stream=True) if c.choices)
    assert streamed == REFUSAL
    a = span_attrs(span_for(server, receiver, resp.id)[1])
    assert a["monitor.demo.refusal"] is True and a["gen_ai.usage.completion_tokens"] == len(REFUSAL.encode())
    ok = client.completions.create(model=MODEL, prompt="The weather", max_tokens=4, temperature=0)
    assert ok.choices[0].text != REFUSAL


def test_bad_requests_have_openai_error_shape(client, server):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=ASK, n=2)
    assert exc.value.status_code == 400 and exc.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=ASK)
    for body, param in ((b"{not json", None), ({"model": MODEL, "messages": []}, "messages"),
                        ({"model": MODEL, "messages": ASK, "temperature": 5}, "temperature"),
                        ({"model": MODEL, "messages": ASK, "stream_options": {"include_usage": True}},
                         "stream_options")):
        status, err = post(server, "/v1/chat/completions", body)
        assert status == 400, body
        assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
        assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param
        assert isinstance(err["error"]["message"], str) and err["error"]["message"]
    status, err = post(server, "/v1/completions", {"model": MODEL})
    assert status == 400 and err["error"]["param"] == "prompt"
    status, err = post(server, "/v1/embeddings", {"model": MODEL, "input": []})
    assert status == 400 and err["error"]["param"] == "input"
    status, err = post(server, "/admin/slowdown", {"factor": "fast"})
    assert status == 400 and err["error"]["param"] == "factor"


def test_metrics_count_requests(client, server):
    before = scrape(server)
    resp = client.completions.create(model=MODEL, prompt="Return a", max_tokens=20, temperature=0)
    after = scrape(server)
    reason = resp.choices[0].finish_reason
    assert sample(after, "vllm:prompt_tokens_total") - sample(before, "vllm:prompt_tokens_total") \
        == resp.usage.prompt_tokens
    assert sample(after, "vllm:generation_tokens_total") - sample(before, "vllm:generation_tokens_total") \
        == resp.usage.completion_tokens
    assert sample(after, "vllm:request_success_total", finished_reason=reason) \
        == sample(before, "vllm:request_success_total", finished_reason=reason) + 1
    for hist in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
                 "vllm:request_decode_time_seconds", "vllm:request_inference_time_seconds"):
        assert sample(after, f"{hist}_count") == sample(before, f"{hist}_count") + 1, hist
        assert sample(after, f"{hist}_sum") >= sample(before, f"{hist}_sum"), hist
    assert sample(after, "vllm:inter_token_latency_seconds_count") - \
        sample(before, "vllm:inter_token_latency_seconds_count") == resp.usage.completion_tokens - 1
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                  "vllm:num_preemptions_total"):
        assert sample(after, gauge) == 0.0 and ((gauge, (("engine", "0"), ("model_name", MODEL))) in after), gauge


def test_one_worker_queues_requests(client, server, receiver):
    def call(i: int):
        return client.completions.create(model=MODEL, prompt=f"Request {i}:", max_tokens=32, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        resps = list(pool.map(call, range(3)))
    queued = sorted(span_attrs(span_for(server, receiver, r.id)[1])["gen_ai.latency.time_in_queue"] for r in resps)
    assert queued[-1] > 0.01, queued  # the last one waited for the others
    assert scrape(server)[("vllm:num_requests_waiting", (("engine", "0"), ("model_name", MODEL)))] == 0.0


def test_every_request_made_one_span(server, receiver):
    server.worker.flush()
    ids = [attrs_to_str_map(s.attributes)["gen_ai.request.id"] for _, s in receiver.spans() if s.name == "llm_request"]
    assert ids and len(ids) == len(set(ids))
    assert {s.name for _, s in receiver.spans()} == {"llm_request"}  # the instrument's own span is not exported


def test_cpu_throughput(model):
    """Greedy at max_tokens 64 on this CPU (printed with -s); a sanity floor only."""
    model.generate("The file", max_tokens=8)
    t0 = time.perf_counter()
    res = model.generate("What does the function return?", max_tokens=64, stop=())
    dt = time.perf_counter() - t0
    print(f"demo model: {res.completion_tokens / dt:.0f} tokens/s at max_tokens 64 "
          f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)")
    assert res.completion_tokens > 0 and res.completion_tokens / dt > 20


# -- monitor.instrument ---------------------------------------------------------------------------

@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def _tiny_loop(gen: Generation, steps: int) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    x = torch.randn(8, 32)
    with torch.no_grad():
        for _ in range(steps):
            with gen.forward():
                y = net(x)
                for _ in range(20):
                    y = net(x) + y.sum() * 0
            gen.token()


def test_instrument_generation_span(spans):
    tracer, exporter = spans
    with generation("tiny", tracer=tracer, input_tokens=5, attributes={"app.tag": "t"}) as gen:
        time.sleep(0.01)  # "tokenising": before the first forward pass
        _tiny_loop(gen, 6)
        gen.finish("length")
    (span,) = exporter.get_finished_spans()
    assert span.name == "text_completion tiny" and span.kind == SpanKind.INTERNAL
    a = dict(span.attributes)
    assert a["gen_ai.operation.name"] == "text_completion" and a["gen_ai.request.model"] == "tiny"
    assert a["gen_ai.usage.input_tokens"] == 5 and a["gen_ai.usage.output_tokens"] == 6
    assert a["gen_ai.response.finish_reasons"] == ("length",) and a["app.tag"] == "t"
    assert a["monitor.torch.forward_passes"] == 6 and a["monitor.torch.device"] == "cpu"
    assert isinstance(a["monitor.torch.peak_memory_bytes"], int) and a["monitor.torch.peak_memory_bytes"] >= 0
    ttft, prefill, decode = (a[f"gen_ai.latency.{k}"] for k in
                             ("time_to_first_token", "time_in_model_prefill", "time_in_model_decode"))
    inference, e2e = a["gen_ai.latency.time_in_model_inference"], a["gen_ai.latency.e2e"]
    assert all(v > 0 for v in (ttft, prefill, decode, inference, e2e))
    assert prefill + decode <= inference <= e2e
    assert 0.01 <= ttft <= e2e and prefill <= ttft
    assert e2e <= (span.end_time - span.start_time) / 1e9 + 1e-3
    assert span.status.status_code == StatusCode.UNSET
    assert (gen.prefill_time, gen.e2e) == (prefill, e2e)

    # The span maps through the monitor's GenAI mapping like any model-request span.
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    proto = encode_spans([span]).resource_spans[0].scope_spans[0].spans[0]
    ev = span_to_event(proto, "svc")
    assert ev is not None and ev.source == "genai" and ev.operation == "text_completion" and ev.model == "tiny"
    assert (ev.input_tokens, ev.output_tokens, ev.finish_reason) == (5, 6, "length")
    assert ev.latency_ms == pytest.approx(e2e * 1000) and ev.prefill_ms == pytest.approx(prefill * 1000)


def test_instrument_error_path(spans):
    tracer, exporter = spans
    with pytest.raises(ValueError, match="boom"):
        with generation("tiny", tracer=tracer, operation="chat") as gen:
            _tiny_loop(gen, 2)
            raise ValueError("boom")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat tiny"
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["monitor.torch.forward_passes"] == 2
    assert any(e.name == "exception" for e in span.events)


def test_instrument_decorator(spans):
    tracer, exporter = spans

    @instrument("tiny", tracer=tracer, operation="chat")
    def with_gen(steps: int, *, gen: Generation | None = None) -> int:
        assert gen is not None
        _tiny_loop(gen, steps)
        gen.finish("stop")
        return steps

    @instrument("tiny", tracer=tracer)
    def plain(x: int) -> int:
        time.sleep(0.005)
        return x * 2

    assert with_gen(3) == 3 and plain(4) == 8
    first, second = exporter.get_finished_spans()
    assert first.name == "chat tiny" and first.attributes["monitor.torch.forward_passes"] == 3
    assert first.attributes["gen_ai.usage.output_tokens"] == 3
    assert second.name == "text_completion tiny" and second.attributes["monitor.torch.forward_passes"] == 0
    assert second.attributes["gen_ai.latency.e2e"] >= 0.005
    assert "gen_ai.latency.time_in_model_prefill" not in second.attributes
