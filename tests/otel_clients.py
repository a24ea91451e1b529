"""Real OpenTelemetry SDK clients (official OTLP exporters) that tests point at the receiver."""

from __future__ import annotations

import json
from contextlib import contextmanager

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def span_exporter(protocol: str, port: int, **kw):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, **kw)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", **kw)


@contextmanager
def tracer(protocol: str, port: int, service: str = "chat-api", **kw):
    """A tracer whose spans go through the official exporter; flushed and shut down on exit."""
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter(protocol, port, **kw), max_export_batch_size=64,
                                                   schedule_delay_millis=100))
    try:
        yield provider.get_tracer("tests.genai", "1.0")
    finally:
        assert provider.force_flush(30_000), "exporter did not flush"
        provider.shutdown()


def chat_span(tr, i: int, model: str = "llama-3-8b", error: bool = False):
    """One GenAI chat span in the current conventions, with content; returns (trace_id, span_id) hex."""
    prompt = f"Question {i}: how do I rotate the API keys of tenant {i}?"
    answer = f"Answer {i}: open Settings, then Keys, and press Rotate."
    with tr.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.provider.name", "vllm")
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("gen_ai.response.model", model + "-instruct")
        span.set_attribute("gen_ai.request.temperature", 0.2)
        span.set_attribute("gen_ai.request.max_tokens", 256)
        span.set_attribute("gen_ai.response.id", f"chatcmpl-{i}")
        span.set_attribute("gen_ai.usage.input_tokens", 10 + i)
        span.set_attribute("gen_ai.usage.output_tokens", 20 + i)
        span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
        span.set_attribute("gen_ai.system_instructions", json.dumps([{"type": "text", "content": "Be brief."}]))
        span.set_attribute("gen_ai.input.messages", json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": prompt}]}]))
        span.set_attribute("gen_ai.output.messages", json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}]))
        if error:
            span.set_attribute("error.type", "timeout")
            span.set_status(Status(StatusCode.ERROR, "upstream timed out"))
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), prompt, answer
