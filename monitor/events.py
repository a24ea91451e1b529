"""The canonical event: one model request, as stored in ``inference_events``.

Every source (OTLP spans in any GenAI dialect, the capture proxy, vLLM's
engine span) is normalised into an :class:`InferenceEvent`; checks,
dashboards and alerts read only this shape. Units are fixed here:
durations in milliseconds, timestamps in nanoseconds since the epoch (UTC),
token counts as integers. ``None`` means "not reported", never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["InferenceEvent", "INFERENCE_EVENT_COLUMNS"]


@dataclass(slots=True)
class InferenceEvent:
    timestamp: int
    """Request start (the span's start time), ns since the epoch."""
    trace_id: str
    """32 lowercase hex chars."""
    span_id: str
    """16 lowercase hex chars."""
    service_name: str = ""
    model: str = ""
    """Response model if reported, else the requested model."""
    provider: str = ""
    """gen_ai.provider.name (or legacy gen_ai.system / llm.provider), e.g. ``vllm``, ``openai``."""
    operation: str = ""
    """gen_ai.operation.name: ``chat``, ``text_completion``, ``embeddings``, ... (``""`` if unknown)."""
    source: str = ""
    """Which dialect the span spoke: ``genai``, ``vllm``, ``openinference``, ``legacy``."""
    prompt: str = ""
    """Text of the last user turn (the whole prompt for text completions)."""
    completion: str = ""
    """Text of the model's output (all choices joined by a blank line)."""
    system_prompt: str = ""
    input_messages: str = ""
    """Full input as GenAI-convention JSON (``[{"role":..., "parts":[...]}]``), ``""`` if not captured."""
    output_messages: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    ttft_ms: float | None = None
    """Time to first token as the client saw it (capture proxy), else the engine's."""
    latency_ms: float | None = None
    """End-to-end latency as the client saw it (capture proxy), else the engine's, else the span's."""
    queue_ms: float | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    inference_ms: float | None = None
    finish_reason: str = ""
    """First finish reason (``stop``, ``length``, ``tool_calls``, ...); all of them are in attributes."""
    status_code: str = "Unset"
    """The span status: ``Unset``, ``Ok`` or ``Error`` (the OTel Collector's spelling)."""
    error_type: str = ""
    request_id: str = ""
    engine_ttft_ms: float | None = None
    """The engine's own time to first token (vLLM ``gen_ai.latency.time_to_first_token``)."""
    engine_latency_ms: float | None = None
    """The engine's own end-to-end time (vLLM ``gen_ai.latency.e2e``)."""
    itl_ms: float | None = None
    """Mean inter-token latency of a streamed response, as the client saw it."""
    gpu_seconds: float | None = None
    """Engine time x GPUs per request (an upper bound under continuous batching)."""
    gpu_cost: float | None = None
    """gpu_seconds x price per GPU-hour / 3600, when a price is configured."""
    prompt_language: str = ""
    """ISO 639-1 code of the prompt (``""`` when too short or uncertain); see :mod:`monitor.quality`."""
    completion_language: str = ""
    refusal: int = 0
    """1 when the completion is a refusal (multilingual patterns)."""
    empty_output: int = 0
    truncated: int = 0
    """1 when generation stopped on the token limit."""
    json_valid: int | None = None
    """1/0 when JSON output was requested (and matched the schema, if one was given); None otherwise."""
    pii_in_output: int = 0
    """Redaction placeholders the model produced in its output."""
    repetition: float = 0.0
    """Share of repeated n-grams in the completion, 0..1."""
    degenerate: int = 0
    """1 when the completion loops or repeats itself degenerately."""
    language_mismatch: int = 0
    client_id: str = ""
    """Who called (:mod:`monitor.otlp.identity`): the key hash, else ``user:<id>``, else
    ``addr:<hash>``, else ``""`` (anonymous). What the Clients page and the abuse checks group by."""
    client_key_hash: str = ""
    """HMAC-SHA256 of the API key or bearer token the client sent, hex (the key is never stored)."""
    user_id: str = ""
    """The end user (``enduser.id``/``user.id``, an ``x-user-id`` header, the OpenAI body's ``user``)."""
    conversation_id: str = ""
    """``gen_ai.conversation.id`` (or ``session.id``, an ``x-conversation-id`` header)."""
    max_tokens: int | None = None
    """The token limit the request asked for (``gen_ai.request.max_tokens``)."""
    logprobs: int = 0
    """1 when the request asked for log probabilities."""
    top_logprobs: int = 0
    """Alternatives per token it asked for (0: none)."""
    logit_bias: int = 0
    """Entries of its ``logit_bias`` (0: none)."""
    injection: int = 0
    """1 when the prompt reads like a jailbreak or prompt-injection attempt (:mod:`monitor.quality.injection`)."""
    requested_model: str = ""
    """``gen_ai.request.model``: what the client asked for (``model`` is what answered)."""
    model_version: str = ""
    """The deployment's version label (proxy route, ``model.version`` / ``service.version``), else the
    served snapshot when it differs from the requested name (:mod:`monitor.otlp.genai`)."""
    adapter: str = ""
    """The LoRA adapter that answered (``proxy.adapters``, a proxy route), ``""`` for the base model."""
    endpoint: str = ""
    """The proxy route that served it (``proxy.routes``), ``""`` when none (the default upstream)."""
    endpoint_kind: str = ""
    """``self_hosted`` or ``managed`` (priced per token), ``""`` when unknown."""
    shadow_of: str = ""
    """A shadow request's primary: that request's span id (same ``trace_id``); ``""`` otherwise."""
    cached_tokens: int | None = None
    """Input tokens served from the provider's prompt cache (part of ``input_tokens``)."""
    token_cost: float | None = None
    """Tokens x ``cost.token_prices`` (managed endpoints); None when no price applies."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Every other span attribute, stringified (content attributes excluded: they are in the columns)."""

    def row(self) -> list:
        return [getattr(self, name) for name in INFERENCE_EVENT_COLUMNS]


INFERENCE_EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(InferenceEvent))
"""Column order of ``inference_events`` inserts (the table's column names)."""
