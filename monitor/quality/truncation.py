"""Truncated completions: the finish reason says the token budget ran out. Pure."""

from __future__ import annotations

import orjson

__all__ = ["TRUNCATION_REASONS", "is_truncated"]


TRUNCATION_REASONS: frozenset[str] = frozenset({
    "length",             # OpenAI chat/completions, vLLM, TGI, SGLang, llama.cpp
    "max_tokens",         # Anthropic, Bedrock, Gemini (MAX_TOKENS), Cohere
    "max_output_tokens",  # OpenAI Responses API (incomplete_details.reason)
    "max_length", "model_length", "token_limit", "max_new_tokens",
})
"""Finish reasons meaning "stopped because the token budget ran out" (compared lower-cased)."""


def is_truncated(finish_reason: str) -> bool:
    """True when ``finish_reason`` says the output hit its token limit.

    Invariants: case- and whitespace-insensitive; a ``FINISH_REASON_`` prefix (Gemini's proto
    enum names) and a JSON list (``["length"]``, as ``gen_ai.response.finish_reasons`` is
    stored) are understood; any other value, and ``""``, is False.
    """
    if not finish_reason:
        return False
    r = finish_reason.strip().lower()
    if r.startswith("["):
        try:
            reasons = orjson.loads(r)
        except orjson.JSONDecodeError:
            return False
        return isinstance(reasons, list) and any(isinstance(x, str) and is_truncated(x) for x in reasons)
    if r.startswith("finish_reason_"):
        r = r[len("finish_reason_"):]
    return r in TRUNCATION_REASONS
