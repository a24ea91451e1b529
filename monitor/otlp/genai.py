"""GenAI span dialects to :class:`~monitor.events.InferenceEvent`. Pure: no I/O.

Dialects understood (all may appear in one deployment):

- ``genai``: current OpenTelemetry GenAI conventions (``gen_ai.operation.name``,
  ``gen_ai.provider.name``, ``gen_ai.usage.input_tokens``, content in
  ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions``);
- ``legacy``: older names (``gen_ai.system``, ``gen_ai.usage.prompt_tokens`` /
  ``completion_tokens``, content in ``gen_ai.{system,user,assistant,tool}.message``
  and ``gen_ai.choice`` span events, ``gen_ai.content.prompt`` /
  ``gen_ai.content.completion`` events, ``gen_ai.prompt.N.*`` attributes);
- ``vllm``: vLLM's ``llm_request`` span (``gen_ai.latency.*`` in seconds,
  ``gen_ai.response.finish_reasons`` as a JSON string, no content);
- ``openinference``: Arize OpenInference (``openinference.span.kind`` LLM or
  EMBEDDING, ``llm.model_name``, ``llm.token_count.*``,
  ``llm.input_messages.N.message.*``, ``input.value`` / ``output.value``).

A span that is not a model request (a tool call, an agent step, an HTTP
handler) yields ``None`` and stays in ``otel_traces`` only.

The mapping is pure and knows nothing of quality: the quality columns are
filled later, by ingest's enrich step (:mod:`monitor.ingest.enrich`), for the
events :func:`wants_quality` selects. Token counts outside UInt32 become
``None`` and the original value is kept in the attribute :data:`FIXED_KEY`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from monitor.events import InferenceEvent
from monitor.otlp.identity import (LOGIT_BIAS_ATTR, LOGPROBS_ATTR, TOP_LOGPROBS_ATTR,
                                   identity_from_attributes)
from monitor.otlp.model_identity import apply_identity
from monitor.otlp.values import attrs_to_str_map, to_python

__all__ = ["span_to_event", "is_model_request", "wants_quality", "FIXED_KEY", "GPU_COUNT_KEY",
           "GPU_PRICE_KEY"]

FIXED_KEY = "monitor.fixed"
"""Attribute listing values ingest had to replace (``name=original``, comma-separated)."""
GPU_COUNT_KEY = "monitor.gpu.count"
"""GPUs serving one request (stamped by the sidecar's cost processor)."""
GPU_PRICE_KEY = "monitor.gpu.price_per_hour"

_UINT32 = 1 << 32

MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings", "completion"})
"""gen_ai.operation.name values that are model requests (not execute_tool, invoke_agent, ...)."""

_OI_MODEL_KINDS = frozenset({"LLM", "EMBEDDING"})
_STATUS = {0: "Unset", 1: "Ok", 2: "Error"}

# Attributes whose values are content; kept out of the attributes map (they have columns).
_CONTENT_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.prompt", "gen_ai.completion", "input.value", "output.value",
})
_CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")

_ROLE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_INDEXED = re.compile(r"^(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)\.(\d+)\.(.+)$")


def is_model_request(name: str, attrs: dict[str, Any]) -> str | None:
    """The dialect of a model-request span, or None if the span is something else."""
    op = attrs.get("gen_ai.operation.name")
    if op is not None:
        return ("genai" if "gen_ai.provider.name" in attrs or "gen_ai.system" not in attrs else "legacy") \
            if op in MODEL_OPERATIONS else None
    kind = attrs.get("openinference.span.kind")
    if kind is not None:
        return "openinference" if str(kind).upper() in _OI_MODEL_KINDS else None
    if "gen_ai.latency.e2e" in attrs or "gen_ai.latency.time_to_first_token" in attrs or name == "llm_request":
        return "vllm"
    if any(k in attrs for k in ("gen_ai.request.model", "gen_ai.response.model", "gen_ai.system",
                                "gen_ai.provider.name", "gen_ai.usage.input_tokens",
                                "gen_ai.usage.prompt_tokens")):
        return "genai" if "gen_ai.system" not in attrs else "legacy"
    return None


def span_to_event(span: Any, service_name: str, attrs: dict[str, str] | None = None,
                  start: int | None = None, end: int | None = None,
                  resource: dict[str, str] | None = None) -> InferenceEvent | None:
    """Map one ``opentelemetry.proto.trace.v1.Span``; None if it is not a model request.

    ``attrs`` is the span's attributes as the Collector stringifies them (arrays and maps as
    JSON); pass it when already computed for ``otel_traces`` so the work is done once. ``start`` /
    ``end``: the span's times after ingest's range checks (default: as sent). ``resource``: the
    resource's attributes (the GPU count may be stamped there, see :mod:`monitor.sidecar.cost`).
    """
    if attrs is None:
        attrs = attrs_to_str_map(span.attributes)
    start = span.start_time_unix_nano if start is None else start
    end = span.end_time_unix_nano if end is None else end
    dialect = is_model_request(span.name, attrs)
    if dialect is None or "monitor.joined_into" in attrs:
        return None  # not a model request, or an engine span already joined into the proxy's event

    ev = InferenceEvent(
        timestamp=start,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        service_name=service_name,
        source=dialect,
    )
    ev.model = _first_str(attrs, "gen_ai.response.model", "gen_ai.request.model", "llm.model_name")
    ev.provider = _first_str(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
    if not ev.provider and dialect == "vllm":
        ev.provider = "vllm"
    ev.operation = _first_str(attrs, "gen_ai.operation.name")
    if not ev.operation and dialect == "openinference":
        ev.operation = "embeddings" if str(attrs.get("openinference.span.kind")).upper() == "EMBEDDING" else "chat"
    ev.request_id = _first_str(attrs, "gen_ai.response.id", "gen_ai.request.id")

    ev.input_tokens = _tokens(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                              "llm.token_count.prompt")
    ev.output_tokens = _tokens(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                               "llm.token_count.completion")

    ident = identity_from_attributes(attrs)
    ev.client_id, ev.client_key_hash = ident["client_id"], ident["client_key_hash"]
    ev.user_id, ev.conversation_id = ident["user_id"], ident["conversation_id"]
    ev.max_tokens = _tokens(attrs, "gen_ai.request.max_tokens")
    ev.logprobs = 1 if str(attrs.get(LOGPROBS_ATTR, "")).lower() in ("true", "1") else 0
    ev.top_logprobs = min(max(_first_int(attrs, TOP_LOGPROBS_ATTR) or 0, 0), 65535)
    ev.logit_bias = min(max(_first_int(attrs, LOGIT_BIAS_ATTR) or 0, 0), 65535)
    if ev.top_logprobs:
        ev.logprobs = 1

    duration_ns = end - start
    span_ms = duration_ns / 1e6 if end and duration_ns >= 0 else None
    ev.engine_latency_ms = _seconds_ms(attrs, "gen_ai.latency.e2e")
    ev.engine_ttft_ms = _seconds_ms(attrs, "gen_ai.latency.time_to_first_token", "gen_ai.server.time_to_first_token")
    if attrs.get("monitor.proxy") == "true":
        # The capture proxy measured what the client saw; the engine's figures stay in engine_*.
        ev.latency_ms = span_ms
        ev.ttft_ms = _seconds_ms(attrs, "monitor.client.time_to_first_token")
        ev.itl_ms = _seconds_ms(attrs, "monitor.client.time_per_output_token")
    else:
        ev.latency_ms = ev.engine_latency_ms if ev.engine_latency_ms is not None else span_ms
        ev.ttft_ms = ev.engine_ttft_ms if ev.engine_ttft_ms is not None else _seconds_ms(
            attrs, "gen_ai.response.time_to_first_chunk")
    ev.queue_ms = _seconds_ms(attrs, "gen_ai.latency.time_in_queue")
    ev.prefill_ms = _seconds_ms(attrs, "gen_ai.latency.time_in_model_prefill")
    ev.decode_ms = _seconds_ms(attrs, "gen_ai.latency.time_in_model_decode")
    ev.inference_ms = _seconds_ms(attrs, "gen_ai.latency.time_in_model_inference")

    gpus = _first_int(attrs, GPU_COUNT_KEY)
    if gpus is None and resource:
        gpus = _first_int(resource, GPU_COUNT_KEY)
    if gpus:
        engine_ms = next((v for v in (ev.inference_ms, ev.engine_latency_ms, ev.latency_ms) if v is not None), None)
        if engine_ms is not None:
            ev.gpu_seconds = engine_ms / 1000 * gpus
            price = _first_float(attrs, GPU_PRICE_KEY)
            if price is None and resource:
                price = _first_float(resource, GPU_PRICE_KEY)
            if price:
                ev.gpu_cost = ev.gpu_seconds * price / 3600

    apply_identity(ev, span, attrs, resource)  # version, adapter, endpoint, shadow link, token cost

    reasons = _finish_reasons(attrs.get("gen_ai.response.finish_reasons"))
    ev.status_code = _STATUS.get(span.status.code, "Unset")
    ev.error_type = _first_str(attrs, "error.type")
    if not ev.error_type and ev.status_code == "Error":
        ev.error_type = _exception_type(span) or "error"

    inputs, outputs, system, raw_in, raw_out = _content(span, attrs, dialect)
    if not reasons:
        reasons = [m["finish_reason"] for m in outputs if m.get("finish_reason")]
    ev.finish_reason = reasons[0] if reasons else ""
    ev.system_prompt = system or "\n".join(_text(m) for m in inputs if m.get("role") == "system")
    user = [m for m in inputs if m.get("role") == "user"]
    ev.prompt = _text(user[-1]) if user else "\n".join(_text(m) for m in inputs if m.get("role") != "system")
    ev.completion = "\n\n".join(t for t in (_text(m) for m in outputs) if t)
    if inputs:
        ev.input_messages = raw_in or json.dumps(inputs, ensure_ascii=False, separators=(",", ":"))
    if outputs:
        ev.output_messages = raw_out or json.dumps(outputs, ensure_ascii=False, separators=(",", ":"))

    ev.attributes = {k: v for k, v in attrs.items()
                     if k not in _CONTENT_KEYS and not k.startswith(_CONTENT_PREFIXES)}
    if len(reasons) > 1:
        ev.attributes["gen_ai.response.finish_reasons"] = json.dumps(reasons)
    return ev


def wants_quality(ev: InferenceEvent) -> bool:
    """Whether the quality signals apply: generated text that was captured, from a request that did
    not fail (an error's output is not the model's answer)."""
    return (ev.operation != "embeddings" and ev.status_code != "Error"
            and ev.attributes.get("monitor.content.captured") != "false")


def _tokens(attrs: dict[str, Any], *keys: str) -> int | None:
    """A token count that fits ``UInt32``; anything else is ``None``, noted in :data:`FIXED_KEY`."""
    v = _first_int(attrs, *keys)
    if v is not None and not 0 <= v < _UINT32:
        note = f"{next(k for k in keys if k in attrs)}={v}"
        attrs[FIXED_KEY] = f"{attrs[FIXED_KEY]},{note}" if FIXED_KEY in attrs else note
        return None
    return v


# -- attribute helpers ---------------------------------------------------------

def _str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return str(v)


def _first_str(attrs: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = attrs.get(k)
        if v not in (None, ""):
            return _str(v)
    return ""


def _first_int(attrs: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = attrs.get(k)
        if v is None or isinstance(v, bool):
            continue
        try:
            return int(v)
        except (TypeError, ValueError):
            try:
                return int(float(v))
            except (TypeError, ValueError):
                continue
    return None


def _first_float(attrs: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = attrs.get(k)
        if v is None or isinstance(v, bool):
            continue
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return None


def _seconds_ms(attrs: dict[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` present, read as seconds and returned in milliseconds."""
    v = _first_float(attrs, *keys)
    return None if v is None else v * 1000.0


def _finish_reasons(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):  # vLLM sends a JSON-encoded list
            try:
                v = json.loads(s)
            except ValueError:
                return [s]
        else:
            return [s] if s else []
    if isinstance(v, list):
        return [str(x) for x in v if x not in (None, "")]
    return [str(v)]


def _exception_type(span: Any) -> str:
    for e in span.events:
        if e.name == "exception":
            for kv in e.attributes:
                if kv.key == "exception.type":
                    return kv.value.string_value
    return ""


# -- content ---------------------------------------------------------------------

def _content(span: Any, attrs: dict[str, Any], dialect: str
             ) -> tuple[list[dict], list[dict], str, str | None, str | None]:
    """Input messages, output messages and system instructions, in GenAI-convention shape, plus the
    sender's own JSON text of each list when it already had that shape (stored as sent)."""
    raw_in, raw_out = attrs.get("gen_ai.input.messages"), attrs.get("gen_ai.output.messages")
    inputs, canon_in = _messages(raw_in)
    outputs, canon_out = _messages(raw_out)
    system = _system(attrs.get("gen_ai.system_instructions"))
    if not inputs and not outputs:
        inputs, outputs = _from_events(span)
    if not inputs and not outputs:
        inputs, outputs = _from_indexed(attrs)
    if not inputs and not outputs and dialect == "openinference":
        inputs = _from_value(attrs.get("input.value"), "user")
        outputs = _from_value(attrs.get("output.value"), "assistant")
    return inputs, outputs, system, raw_in if canon_in else None, raw_out if canon_out else None


def _parse_json(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip()
        if s[:1] in ("[", "{"):
            try:
                return json.loads(s)
            except ValueError:
                return v
    return v


def _messages(v: Any) -> tuple[list[dict], bool]:
    """Normalised messages, and whether ``v`` already was GenAI-convention JSON."""
    v = _parse_json(v)
    if v is None or v == "":
        return [], False
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, str):
        return [{"role": "user", "parts": [{"type": "text", "content": v}]}], False
    if not isinstance(v, list):
        return [], False
    out = []
    canonical = True
    for m in v:
        if isinstance(m, dict):
            if "role" not in m or not isinstance(m.get("parts"), list) or "content" in m or "message" in m:
                canonical = False
            out.append(_normalise_message(m))
        elif isinstance(m, str):
            canonical = False
            out.append({"role": "user", "parts": [{"type": "text", "content": m}]})
    return out, canonical and bool(out)


def _normalise_message(m: dict, role: str | None = None) -> dict:
    """Any common message shape to ``{"role", "parts": [{"type": "text", "content"}], ...}``."""
    if "message" in m and isinstance(m["message"], dict):  # gen_ai.choice body
        inner = dict(m["message"])
        if "finish_reason" in m:
            inner.setdefault("finish_reason", m["finish_reason"])
        m = inner
    out: dict[str, Any] = {"role": m.get("role") or role or "user"}
    parts = m.get("parts")
    if isinstance(parts, list):
        out["parts"] = parts
    else:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
            out["parts"] = [
                {"type": "text", "content": p.get("text", p.get("content", ""))}
                if isinstance(p, dict) and p.get("type", "text") == "text" else p
                for p in content
            ]
        elif content is not None:
            out["parts"] = [{"type": "text", "content": content if isinstance(content, str) else json.dumps(content)}]
        else:
            out["parts"] = []
        if m.get("tool_calls"):
            out["parts"] += [{"type": "tool_call", **(tc if isinstance(tc, dict) else {"value": tc})}
                             for tc in m["tool_calls"]]
    if m.get("finish_reason"):
        out["finish_reason"] = m["finish_reason"]
    return out


def _system(v: Any) -> str:
    v = _parse_json(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "\n".join(p.get("content", "") if isinstance(p, dict) else str(p) for p in v)
    return ""


def _text(m: dict) -> str:
    return "".join(p.get("content", "") if isinstance(p.get("content"), str) else ""
                   for p in m.get("parts", []) if isinstance(p, dict) and p.get("type", "text") == "text")


def _from_events(span: Any) -> tuple[list[dict], list[dict]]:
    inputs: list[dict] = []
    outputs: list[dict] = []
    for e in span.events:
        role = _ROLE_EVENTS.get(e.name)
        if role is not None:
            body = {kv.key: to_python(kv.value) for kv in e.attributes}
            content = _parse_json(body.get("content", body.get("gen_ai.event.content", "")))
            msg = content if isinstance(content, dict) else {"content": content}
            inputs.append(_normalise_message(msg, role))
        elif e.name == "gen_ai.choice":
            body = {kv.key: to_python(kv.value) for kv in e.attributes}
            for k in ("message", "content"):
                body[k] = _parse_json(body.get(k)) if k in body else None
            if isinstance(body.get("message"), dict):
                outputs.append(_normalise_message(body, "assistant"))
            else:
                outputs.append(_normalise_message(
                    {"content": body.get("content") or "", "finish_reason": body.get("finish_reason")},
                    "assistant"))
        elif e.name == "gen_ai.content.prompt":
            v = {kv.key: to_python(kv.value) for kv in e.attributes}.get("gen_ai.prompt")
            inputs.extend(_messages(v)[0])
        elif e.name == "gen_ai.content.completion":
            v = {kv.key: to_python(kv.value) for kv in e.attributes}.get("gen_ai.completion")
            outputs.extend(_normalise_message(m, "assistant") for m in _messages(v)[0])
    return inputs, outputs


def _from_indexed(attrs: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """``gen_ai.prompt.0.role`` / ``llm.input_messages.0.message.content`` style flattened lists."""
    found: dict[str, dict[int, dict]] = {}
    for k, v in attrs.items():
        m = _INDEXED.match(k)
        if m is None:
            continue
        family, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        slot = found.setdefault(family, {}).setdefault(idx, {})
        rest = rest.removeprefix("message.")
        if rest.startswith("contents."):
            # llm.input_messages.0.message.contents.1.message_content.text
            if rest.endswith(".message_content.text"):
                slot.setdefault("_texts", []).append(v)
            continue
        slot[rest] = v
    inputs: list[dict] = []
    outputs: list[dict] = []
    for family, slots in found.items():
        target = inputs if family in ("gen_ai.prompt", "llm.input_messages") else outputs
        default_role = "user" if target is inputs else "assistant"
        for idx in sorted(slots):
            slot = slots[idx]
            content = slot.get("content")
            if content is None and "_texts" in slot:
                content = "".join(str(t) for t in slot["_texts"])
            target.append(_normalise_message(
                {"role": slot.get("role") or default_role, "content": content if content is not None else "",
                 "finish_reason": slot.get("finish_reason")}))
    return inputs, outputs


def _from_value(v: Any, role: str) -> list[dict]:
    parsed = _parse_json(v)
    if parsed is None or parsed == "":
        return []
    if isinstance(parsed, dict) and isinstance(parsed.get("messages"), list):
        return [_normalise_message(m) for m in parsed["messages"] if isinstance(m, dict)]
    if isinstance(parsed, dict) and isinstance(parsed.get("choices"), list):
        return [_normalise_message(c, "assistant") for c in parsed["choices"] if isinstance(c, dict)]
    text = parsed if isinstance(parsed, str) else json.dumps(parsed, ensure_ascii=False)
    return [{"role": role, "parts": [{"type": "text", "content": text}]}]
