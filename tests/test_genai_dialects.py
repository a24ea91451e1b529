"""Every GenAI dialect maps to the same inference_events row: vLLM, OpenInference, legacy, current."""

from __future__ import annotations

import json

import pytest
from conftest import wait_until
from opentelemetry.trace import SpanKind
from otel_clients import tracer
from test_embedded import _count

from monitor.runtime.apps import Embedded


@pytest.fixture
def up(settings):
    app = Embedded(settings)
    app.start()
    yield app
    app.stop()


def _row(store, span_id: str) -> dict:
    rows = list(store.query("SELECT * FROM inference_events WHERE span_id = {s:String}", {"s": span_id})
                .named_results())
    assert len(rows) == 1, rows
    return rows[0]


def _ids(span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def test_vllm_llm_request_span(up, store, settings):
    """vLLM's own span: seconds in gen_ai.latency.*, legacy token names, finish reasons as a JSON string."""
    with tracer("grpc", settings.receiver.grpc_port, service="vllm") as tr:
        with tr.start_as_current_span("llm_request", kind=SpanKind.SERVER) as span:
            span.set_attribute("gen_ai.response.model", "meta-llama/Llama-3.1-8B-Instruct")
            span.set_attribute("gen_ai.request.id", "cmpl-9f2c")
            span.set_attribute("gen_ai.request.temperature", 0.0)
            span.set_attribute("gen_ai.request.top_p", 1.0)
            span.set_attribute("gen_ai.request.max_tokens", 128)
            span.set_attribute("gen_ai.request.n", 1)
            span.set_attribute("gen_ai.usage.prompt_tokens", 187)
            span.set_attribute("gen_ai.usage.completion_tokens", 64)
            span.set_attribute("gen_ai.latency.time_in_queue", 0.0125)
            span.set_attribute("gen_ai.latency.time_to_first_token", 0.0831)
            span.set_attribute("gen_ai.latency.e2e", 1.2406)
            span.set_attribute("gen_ai.latency.time_in_model_prefill", 0.0702)
            span.set_attribute("gen_ai.latency.time_in_model_decode", 1.1553)
            span.set_attribute("gen_ai.latency.time_in_model_inference", 1.2255)
            span.set_attribute("gen_ai.response.finish_reasons", '["length"]')
            trace_id, span_id = _ids(span)
    wait_until(lambda: _count(store, "inference_events") == 1, message="the vLLM event")
    r = _row(store, span_id)
    assert r["trace_id"] == trace_id
    assert (r["source"], r["provider"], r["service_name"]) == ("vllm", "vllm", "vllm")
    assert r["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert r["request_id"] == "cmpl-9f2c"
    assert (r["input_tokens"], r["output_tokens"]) == (187, 64)
    assert r["queue_ms"] == pytest.approx(12.5)
    assert r["ttft_ms"] == pytest.approx(83.1)
    assert r["latency_ms"] == pytest.approx(1240.6)  # engine e2e, not the span's duration
    assert r["prefill_ms"] == pytest.approx(70.2)
    assert r["decode_ms"] == pytest.approx(1155.3)
    assert r["inference_ms"] == pytest.approx(1225.5)
    assert r["finish_reason"] == "length"
    assert (r["prompt"], r["completion"]) == ("", "")  # vLLM puts no content on spans
    assert r["attributes"]["gen_ai.request.max_tokens"] == "128"


def test_openinference_llm_span(up, store, settings):
    with tracer("http", settings.receiver.http_port, service="rag-app") as tr:
        with tr.start_as_current_span("ChatCompletion") as span:
            span.set_attribute("openinference.span.kind", "LLM")
            span.set_attribute("llm.model_name", "mistral-7b-instruct")
            span.set_attribute("llm.provider", "self-hosted")
            span.set_attribute("llm.token_count.prompt", 33)
            span.set_attribute("llm.token_count.completion", 9)
            span.set_attribute("llm.invocation_parameters", json.dumps({"temperature": 0.1}))
            span.set_attribute("llm.input_messages.0.message.role", "system")
            span.set_attribute("llm.input_messages.0.message.content", "You answer in French.")
            span.set_attribute("llm.input_messages.1.message.role", "user")
            span.set_attribute("llm.input_messages.1.message.content", "What is the capital of Italy?")
            span.set_attribute("llm.output_messages.0.message.role", "assistant")
            span.set_attribute("llm.output_messages.0.message.content", "La capitale de l'Italie est Rome.")
            span.set_attribute("input.value", json.dumps({"messages": []}))
            _, span_id = _ids(span)
        with tr.start_as_current_span("retrieve") as other:
            other.set_attribute("openinference.span.kind", "RETRIEVER")
        with tr.start_as_current_span("embed") as emb:
            emb.set_attribute("openinference.span.kind", "EMBEDDING")
            emb.set_attribute("embedding.model_name", "bge-small")
            emb.set_attribute("input.value", "refund policy")
            _, emb_id = _ids(emb)
    # the two tables are written one after the other: wait for both
    wait_until(lambda: (_count(store, "otel_traces"), _count(store, "inference_events")) == (3, 2),
               message="3 spans, 2 of them model requests")  # the retriever step is not a model request
    r = _row(store, span_id)
    assert (r["source"], r["model"], r["provider"], r["operation"]) == (
        "openinference", "mistral-7b-instruct", "self-hosted", "chat")
    assert (r["input_tokens"], r["output_tokens"]) == (33, 9)
    assert r["system_prompt"] == "You answer in French."
    assert r["prompt"] == "What is the capital of Italy?"
    assert r["completion"] == "La capitale de l'Italie est Rome."
    assert [m["role"] for m in json.loads(r["input_messages"])] == ["system", "user"]
    assert "llm.input_messages.1.message.content" not in r["attributes"]
    e = _row(store, emb_id)
    assert (e["operation"], e["prompt"]) == ("embeddings", "refund policy")


def test_legacy_span_events_and_system(up, store, settings):
    """Older instrumentations: gen_ai.system, prompt_tokens, content in gen_ai.*.message / gen_ai.choice events."""
    with tracer("http", settings.receiver.http_port, service="legacy") as tr:
        with tr.start_as_current_span("chat gpt-j") as span:
            span.set_attribute("gen_ai.system", "openai")
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "gpt-j")
            span.set_attribute("gen_ai.usage.prompt_tokens", 12)
            span.set_attribute("gen_ai.usage.completion_tokens", 3)
            span.add_event("gen_ai.system.message", {"content": "You are terse."})
            span.add_event("gen_ai.user.message", {"content": "First question"})
            span.add_event("gen_ai.assistant.message", {"content": "First answer"})
            span.add_event("gen_ai.user.message", {"content": "Ist das Rückgaberecht 30 Tage?"})
            span.add_event("gen_ai.choice", {"index": 0, "finish_reason": "stop",
                                             "message": json.dumps({"role": "assistant", "content": "Ja."})})
            _, span_id = _ids(span)
        with tr.start_as_current_span("completion old-lib") as old:
            old.set_attribute("gen_ai.system", "vllm")
            old.set_attribute("gen_ai.request.model", "phi-3")
            old.set_attribute("gen_ai.prompt.0.role", "user")
            old.set_attribute("gen_ai.prompt.0.content", "Complete: the quick brown")
            old.set_attribute("gen_ai.completion.0.role", "assistant")
            old.set_attribute("gen_ai.completion.0.content", "fox jumps")
            old.set_attribute("gen_ai.completion.0.finish_reason", "length")
            _, old_id = _ids(old)
    wait_until(lambda: _count(store, "inference_events") == 2, message="2 legacy events")
    r = _row(store, span_id)
    assert (r["source"], r["provider"], r["model"]) == ("legacy", "openai", "gpt-j")
    assert (r["input_tokens"], r["output_tokens"]) == (12, 3)
    assert r["system_prompt"] == "You are terse."
    assert r["prompt"] == "Ist das Rückgaberecht 30 Tage?"  # the last user turn
    assert r["completion"] == "Ja."
    assert r["finish_reason"] == "stop"
    assert [m["role"] for m in json.loads(r["input_messages"])] == ["system", "user", "assistant", "user"]
    o = _row(store, old_id)
    assert (o["provider"], o["model"], o["prompt"], o["completion"], o["finish_reason"]) == (
        "vllm", "phi-3", "Complete: the quick brown", "fox jumps", "length")


def test_mapping_is_pure_and_rejects_non_model_spans():
    from opentelemetry.proto.trace.v1 import trace_pb2

    from monitor.otlp.genai import span_to_event

    span = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="GET /health",
                          start_time_unix_nano=10, end_time_unix_nano=20)
    assert span_to_event(span, "svc") is None
    kv = span.attributes.add()
    kv.key, kv.value.string_value = "gen_ai.operation.name", "invoke_agent"
    assert span_to_event(span, "svc") is None
    kv.value.string_value = "text_completion"
    ev = span_to_event(span, "svc")
    assert ev is not None and ev.latency_ms == pytest.approx(1e-5) and ev.operation == "text_completion"
    # a content attribute that is plain text (not JSON) is taken as the user prompt
    kv2 = span.attributes.add()
    kv2.key, kv2.value.string_value = "gen_ai.input.messages", "plain prompt text"
    assert span_to_event(span, "svc").prompt == "plain prompt text"


def test_quality_columns_are_filled_at_ingest(up, store, settings):
    cases = [
        ("Wie lange dauert die Rückerstattung für meine Bestellung?", "I'm sorry, but I can't help with that.",
         "stop", {}),
        ("Return the user as JSON with name and age.", '{"name": "Ada", "age": "unknown"',
         "length", {"gen_ai.output.type": "json"}),
        ("Tell me a story about a dragon who learns to fly over the mountains.",
         "the dragon the dragon the dragon the dragon the dragon the dragon the dragon the dragon", "stop", {}),
        ("What is the capital of France?", "The capital of France is Paris. Contact [EMAIL] for more.", "stop", {}),
    ]
    ids = []
    with tracer("http", settings.receiver.http_port) as tr:
        for prompt, completion, reason, extra in cases:
            with tr.start_as_current_span("chat m") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.request.model", "m")
                span.set_attribute("gen_ai.response.finish_reasons", [reason])
                span.set_attribute("gen_ai.input.messages", json.dumps([{"role": "user", "content": prompt}]))
                span.set_attribute("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": completion}]))
                for k, v in extra.items():
                    span.set_attribute(k, v)
                ids.append(_ids(span)[1])
    wait_until(lambda: _count(store, "inference_events") == len(cases), message="the quality events")
    cols = ("prompt_language", "completion_language", "language_mismatch", "refusal", "truncated", "json_valid",
            "degenerate", "pii_in_output", "empty_output")
    got = [tuple(_row(store, i)[c] for c in cols) for i in ids]
    assert got == [
        ("de", "en", 1, 1, 0, None, 0, 0, 0),
        ("en", "", 0, 0, 1, 0, 0, 0, 0),
        ("en", "en", 0, 0, 0, None, 1, 0, 0),
        ("en", "en", 0, 0, 0, None, 0, 1, 0),
    ]
