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
    attributes: dict[str, str] = field(default_factory=dict)
    """Every other span attribute, stringified (content attributes excluded: they are in the columns)."""

    def row(self) -> list:
        return [getattr(self, name) for name in INFERENCE_EVENT_COLUMNS]


INFERENCE_EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(InferenceEvent))
"""Column order of ``inference_events`` inserts (the table's column names)."""
