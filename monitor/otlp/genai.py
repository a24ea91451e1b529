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
from collections.abc import Sequence
from typing import Any, NamedTuple

from monitor.events import INFERENCE_EVENT_COLUMNS, InferenceEvent
from monitor.otlp.identity import (
    LOGIT_BIAS_ATTR,
    LOGPROBS_ATTR,
    TOP_LOGPROBS_ATTR,
    identity_tuple,
)
from monitor.otlp.model_identity import MANAGED, identify
from monitor.otlp.values import attrs_to_str_map, json_text, to_python

__all__ = ["FIXED_KEY", "GPU_COUNT_KEY", "GPU_PRICE_KEY", "JOINED_KEY", "ResourceFacts", "build_event", "is_model_request",
           "resource_facts", "span_to_event", "wants_quality"]

FIXED_KEY = "monitor.fixed"
"""Attribute listing values ingest had to replace (``name=original``, comma-separated)."""
GPU_COUNT_KEY = "monitor.gpu.count"
"""GPUs serving one request (stamped by the sidecar's cost processor)."""
GPU_PRICE_KEY = "monitor.gpu.price_per_hour"
JOINED_KEY = "monitor.joined_into"
"""Set by the sidecar's join on an engine span whose timings it copied onto the proxy's span (the value:
that span's id); ingest then makes no event of the engine span, the proxy's event already has them."""

_UINT32 = 1 << 32

MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings", "completion"})
"""gen_ai.operation.name values that are model requests (not execute_tool, invoke_agent, ...)."""

_OI_MODEL_KINDS = frozenset({"LLM", "EMBEDDING"})
_STATUS = {0: "Unset", 1: "Ok", 2: "Error"}
_INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
_OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion")

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

    ``attrs`` is the span's attributes as the Collector stringifies them (every value a string; arrays
    and maps as JSON); pass it when already computed for ``otel_traces`` so the work is done once.
    ``start`` / ``end``: the span's times after ingest's range checks (default: as sent). ``resource``:
    the resource's attributes (the GPU count may be stamped there, see :mod:`monitor.sidecar.cost`).
    """
    if attrs is None:
        attrs = attrs_to_str_map(span.attributes)
    dialect = is_model_request(span.name, attrs)
    if dialect is None or JOINED_KEY in attrs:
        return None  # not a model request, or an engine span already joined into the proxy's event
    return build_event(span, dialect, attrs, service_name,
                       span.start_time_unix_nano if start is None else start,
                       span.end_time_unix_nano if end is None else end,
                       span.trace_id.hex(), span.span_id.hex(), span.kind, span.status.code,
                       resource_facts(resource))


class ResourceFacts(NamedTuple):
    """What an event reads from its resource's attributes, worked out once per resource."""

    gpus: int | None
    gpu_price: float | None
    model_version: str
    service_version: str


_NO_RESOURCE = ResourceFacts(None, None, "", "")


def resource_facts(resource: dict[str, str] | None) -> ResourceFacts:
    if not resource:
        return _NO_RESOURCE
    return ResourceFacts(_first_int(resource, GPU_COUNT_KEY), _first_float(resource, GPU_PRICE_KEY),
                         _s(resource, "model.version"), _s(resource, "service.version"))


def build_event(span: Any, dialect: str, attrs: dict[str, str], service_name: str, start: int, end: int,
                trace_id: str, span_id: str, kind: int, status: int, res: ResourceFacts) -> InferenceEvent:
    """The event of a model-request span (:func:`is_model_request` gave ``dialect``), from what the
    caller already read off the span: its string attributes (a token count outside UInt32 is noted
    in them, under :data:`FIXED_KEY`), checked times, hex ids, kind, status code and resource facts.
    ``span`` itself is read only for content carried in its events."""
    get = attrs.get
    requested = get("gen_ai.request.model") or ""
    served = get("gen_ai.response.model") or ""
    model = served or requested or get("llm.model_name") or ""
    provider = (get("gen_ai.provider.name") or get("gen_ai.system") or get("llm.provider")
                or get("llm.system") or ("vllm" if dialect == "vllm" else ""))
    operation = get("gen_ai.operation.name") or ""
    if not operation and dialect == "openinference":
        operation = "embeddings" if str(get("openinference.span.kind")).upper() == "EMBEDDING" else "chat"
    request_id = get("gen_ai.response.id") or get("gen_ai.request.id") or ""

    # token counts: plain decimal text of under 10 digits fits UInt32 as it is; anything else is checked
    v = get("gen_ai.usage.input_tokens")
    input_tokens = int(v) if v and len(v) < 10 and v.isdigit() and v.isascii() else _tokens(attrs, *_INPUT_TOKENS)
    v = get("gen_ai.usage.output_tokens")
    output_tokens = int(v) if v and len(v) < 10 and v.isdigit() and v.isascii() else _tokens(attrs, *_OUTPUT_TOKENS)
    v = get("gen_ai.request.max_tokens")
    max_tokens = None if v is None else (int(v) if len(v) < 10 and v.isdigit() and v.isascii()
                                         else _tokens(attrs, "gen_ai.request.max_tokens"))
    client_id, client_key_hash, user_id, conversation_id = identity_tuple(attrs)
    v = get(LOGPROBS_ATTR)
    logprobs = 1 if v is not None and str(v).lower() in ("true", "1") else 0
    top_logprobs = logit_bias = 0
    if TOP_LOGPROBS_ATTR in attrs:
        top_logprobs = min(max(_first_int(attrs, TOP_LOGPROBS_ATTR) or 0, 0), 65535)
        if top_logprobs:
            logprobs = 1
    if LOGIT_BIAS_ATTR in attrs:
        logit_bias = min(max(_first_int(attrs, LOGIT_BIAS_ATTR) or 0, 0), 65535)

    duration_ns = end - start
    span_ms = duration_ns / 1e6 if end and duration_ns >= 0 else None
    v = get("gen_ai.latency.e2e")
    engine_latency = None if v is None else _ms(v)
    engine_ttft = (_seconds_ms(attrs, "gen_ai.latency.time_to_first_token", "gen_ai.server.time_to_first_token")
                   if "gen_ai.latency.time_to_first_token" in attrs or "gen_ai.server.time_to_first_token" in attrs
                   else None)
    itl = None
    if get("monitor.proxy") == "true":
        # The capture proxy measured what the client saw; the engine's figures stay in engine_*.
        latency = span_ms
        v = get("monitor.client.time_to_first_token")
        ttft = None if v is None else _ms(v)
        v = get("monitor.client.time_per_output_token")
        itl = None if v is None else _ms(v)
    else:
        latency = engine_latency if engine_latency is not None else span_ms
        if engine_ttft is not None:
            ttft = engine_ttft
        else:
            v = get("gen_ai.response.time_to_first_chunk")
            ttft = None if v is None else _ms(v)
    v = get("gen_ai.latency.time_in_queue")
    queue = None if v is None else _ms(v)
    v = get("gen_ai.latency.time_in_model_prefill")
    prefill = None if v is None else _ms(v)
    v = get("gen_ai.latency.time_in_model_decode")
    decode = None if v is None else _ms(v)
    v = get("gen_ai.latency.time_in_model_inference")
    inference = None if v is None else _ms(v)

    gpu_seconds = gpu_cost = None
    gpus = _first_int(attrs, GPU_COUNT_KEY) if GPU_COUNT_KEY in attrs else None
    if gpus is None:
        gpus = res.gpus
    if gpus:
        engine_ms = next((v for v in (inference, engine_latency, latency) if v is not None), None)
        if engine_ms is not None:
            gpu_seconds = engine_ms / 1000 * gpus
            price = _first_float(attrs, GPU_PRICE_KEY)
            if price is None:
                price = res.gpu_price
            if price:
                gpu_cost = gpu_seconds * price / 3600

    # version, adapter, endpoint, shadow link, token cost (monitor.otlp.model_identity)
    model_version, adapter, endpoint, endpoint_kind, shadow_of, cached_tokens, token_cost = identify(
        attrs, kind, requested, served, res.model_version, res.service_version, input_tokens, output_tokens)
    if endpoint_kind == MANAGED:
        gpu_seconds = gpu_cost = None  # a managed API's GPUs are not ours: it is priced per token

    reasons = _finish_reasons(get("gen_ai.response.finish_reasons"))
    status_code = _STATUS.get(status, "Unset")
    error_type = get("error.type") or ""
    if not error_type and status_code == "Error":
        error_type = _exception_type(span) or "error"

    inputs, outputs, system, raw_in, raw_out = _content(span, attrs, dialect)
    if not reasons:
        reasons = [m["finish_reason"] for m in outputs if m.get("finish_reason")]
    prompt = completion = input_messages = output_messages = ""
    if inputs:
        if not system:
            system = "\n".join([_text(m) for m in inputs if m.get("role") == "system"])
        last_user = None
        for m in inputs:
            if m.get("role") == "user":
                last_user = m
        prompt = _text(last_user) if last_user is not None else "\n".join(
            [_text(m) for m in inputs if m.get("role") != "system"])
        input_messages = raw_in or json_text(inputs)
    if outputs:
        texts = [t for t in map(_text, outputs) if t]
        completion = texts[0] if len(texts) == 1 else "\n\n".join(texts)
        output_messages = raw_out or json_text(outputs)

    kept = _without_content(attrs)
    if len(reasons) > 1:
        kept["gen_ai.response.finish_reasons"] = json.dumps(reasons)
    # every field, in _EVENT_FIELDS' order (one call: a keyword per field costs more than the event)
    return InferenceEvent(
        start, trace_id, span_id, service_name, model, provider, operation, dialect,
        prompt, completion, system, input_messages, output_messages, input_tokens, output_tokens,
        ttft, latency, queue, prefill, decode, inference,
        reasons[0] if reasons else "", status_code, error_type, request_id, engine_ttft, engine_latency, itl,
        gpu_seconds, gpu_cost,
        "", "", 0, 0, 0, None, 0, 0.0, 0, 0,  # quality: filled by ingest's enrich step
        client_id, client_key_hash, user_id, conversation_id, max_tokens, logprobs, top_logprobs, logit_bias,
        0,  # injection (enrich)
        requested, model_version, adapter, endpoint, endpoint_kind, shadow_of, cached_tokens, token_cost, kept)


_EVENT_FIELDS = (
    "timestamp", "trace_id", "span_id", "service_name", "model", "provider", "operation", "source",
    "prompt", "completion", "system_prompt", "input_messages", "output_messages", "input_tokens", "output_tokens",
    "ttft_ms", "latency_ms", "queue_ms", "prefill_ms", "decode_ms", "inference_ms",
    "finish_reason", "status_code", "error_type", "request_id", "engine_ttft_ms", "engine_latency_ms", "itl_ms",
    "gpu_seconds", "gpu_cost",
    "prompt_language", "completion_language", "refusal", "empty_output", "truncated", "json_valid",
    "pii_in_output", "repetition", "degenerate", "language_mismatch",
    "client_id", "client_key_hash", "user_id", "conversation_id", "max_tokens", "logprobs", "top_logprobs",
    "logit_bias",
    "injection",
    "requested_model", "model_version", "adapter", "endpoint", "endpoint_kind", "shadow_of", "cached_tokens",
    "token_cost", "attributes",
)
if INFERENCE_EVENT_COLUMNS != _EVENT_FIELDS:
    raise ImportError("monitor.events.InferenceEvent's fields changed: update build_event's call and _EVENT_FIELDS")


_PLAIN: set[str] = set()
"""Attribute names seen that are not content (bounded; names are few in practice)."""


def _without_content(attrs: dict[str, str]) -> dict[str, str]:
    """``attrs`` less the content attributes (they have columns), in order."""
    kept = attrs.copy()
    unknown = set(attrs).difference(_PLAIN)  # (not keys() - _PLAIN: that walks all of _PLAIN)
    if unknown:
        for k in unknown:
            if k in _CONTENT_KEYS or k.startswith(_CONTENT_PREFIXES):
                del kept[k]
            elif len(_PLAIN) < 4096:
                _PLAIN.add(k)
    return kept


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

def _s(attrs: dict[str, Any], key: str) -> str:
    v = attrs.get(key)
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _first_int(attrs: dict[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` that reads as an integer (``"12"``, ``"12.7"`` -> 12); infinities and NaN
    do not."""
    for k in keys:
        v = attrs.get(k)
        if v is None or isinstance(v, bool):
            continue
        try:
            return int(v)
        except (TypeError, ValueError):
            try:
                return int(float(v))
            except (TypeError, ValueError, OverflowError):
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


def _ms(v: Any) -> float | None:
    """A value in seconds, in milliseconds; None when it is not a number."""
    if isinstance(v, bool):
        return None
    try:
        return float(v) * 1000.0
    except (TypeError, ValueError):
        return None


def _seconds_ms(attrs: dict[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` present, read as seconds and returned in milliseconds."""
    v = _first_float(attrs, *keys)
    return None if v is None else v * 1000.0


_REASONS: dict[str, tuple[str, ...]] = {}
"""Finish-reason attribute values already read (a handful of distinct short strings in practice)."""


def _finish_reasons(v: Any) -> Sequence[str]:
    if v is None:
        return ()
    if isinstance(v, str):
        got = _REASONS.get(v)
        if got is None:
            got = tuple(_read_reasons(v))
            if len(v) <= 64:
                if len(_REASONS) >= 512:
                    _REASONS.clear()
                _REASONS[v] = got
        return got
    return _read_reasons(v)


def _read_reasons(v: Any) -> list[str]:
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):  # vLLM sends a JSON-encoded list
            try:
                v = json.loads(s)
            except (ValueError, RecursionError):
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
    system = attrs.get("gen_ai.system_instructions")
    system = "" if system is None else _system(system)
    if not inputs and not outputs:
        inputs, outputs = _from_events(span)
    if not inputs and not outputs:
        inputs, outputs = _from_indexed(attrs)
    if not inputs and not outputs and dialect == "openinference":
        inputs = _from_value(attrs.get("input.value"), "user")
        outputs = _from_value(attrs.get("output.value"), "assistant")
    return inputs, outputs, system, raw_in if canon_in else None, raw_out if canon_out else None


_scan = json.JSONDecoder().scan_once  # json.loads without its wrappers (the text is stripped already)


def _parse_json(v: Any) -> Any:
    """``v`` parsed when it is JSON text of a list or an object, else ``v`` itself (nesting too deep
    to parse is text, too)."""
    if isinstance(v, str):
        s = v.strip()
        if s[:1] in ("[", "{"):
            try:
                parsed, end = _scan(s, 0)
            except (ValueError, StopIteration, RecursionError):
                return v
            # json.loads refuses anything after the value; s ends in a non-space, so any rest is that
            return parsed if end == len(s) else v
    return v


def _messages(v: Any) -> tuple[list[dict], bool]:
    """Normalised messages, and whether ``v`` already was GenAI-convention JSON."""
    v = _parse_json(v)
    if isinstance(v, list):
        pass
    elif v is None or v == "":
        return [], False
    elif isinstance(v, dict):
        v = [v]
    elif isinstance(v, str):
        return [{"role": "user", "parts": [{"type": "text", "content": v}]}], False
    else:
        return [], False
    out = []
    canonical = True
    for m in v:
        if isinstance(m, dict):
            parts = m.get("parts")
            if "role" not in m or not isinstance(parts, list) or "content" in m or "message" in m:
                canonical = False
                out.append(_normalise_message(m))
            else:  # already in shape: what _normalise_message keeps of it
                n = {"role": m["role"] or "user", "parts": parts}
                if m.get("finish_reason"):
                    n["finish_reason"] = m["finish_reason"]
                out.append(n)
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
    """The text parts of a normalised message, joined."""
    texts = []
    for p in m.get("parts", ()):
        if isinstance(p, dict) and p.get("type", "text") == "text":
            c = p.get("content")
            if isinstance(c, str):
                texts.append(c)
    return texts[0] if len(texts) == 1 else "".join(texts)


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
