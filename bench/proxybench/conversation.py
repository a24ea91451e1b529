"""The conversation every path carries: the request bodies the load generator sends and the answer the
fake upstream streams for each. Both are deterministic functions of the request's ``seed`` (64
variants with quotes, backslashes, newlines, tabs and non-ASCII), so the client can check every
answer against the text the direct path returns."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

CHAT = "/v1/chat/completions"
MODEL = "bench-model-8b"
N_VARIANTS = 64

_VOCAB = [" the", " model", " answers", " a", " question", " about", " streaming", " tokens", ",", ".",
          " latency", " proxy", " naïve", " café", " 日本語", " тест", " emoji 🙂", ' "quoted"', " back\\slash",
          "\n", "\t", " {json}", " </s>", " data:", " 42", " 3.14", " é", " ü", " and", " of", " to", " in"]
_PROMPTS = [
    "Summarise the attached incident report in three bullet points for the on-call engineer.",
    "Translate the following paragraph into French, keeping the technical terms in English.",
    "Write a SQL query that returns the ten slowest requests of the last hour per model.",
    "Explain the difference between time to first token and inter-token latency to a manager.",
    "Draft a polite reply to a customer who asks why the chatbot answered slowly yesterday.",
]


def answer_tokens(variant: int, n: int) -> list[str]:
    """The ``n`` content pieces the upstream streams for ``seed`` ``variant`` (deterministic)."""
    rng = random.Random(1000 + variant)
    return [rng.choice(_VOCAB) for _ in range(n)]


def request_body(variant: int, stream: bool, include_usage: bool, max_tokens: int) -> bytes:
    rng = random.Random(variant)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer concisely and cite sources."},
            {"role": "user", "content": f"{rng.choice(_PROMPTS)} (ticket #{variant}) " + " ".join(
                rng.choice(["context", "line", "log", "trace", "metric", "span", "user", "café"])
                for _ in range(40))},
        ],
        "temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens, "seed": variant, "stream": stream,
    }
    if stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, ensure_ascii=False).encode()


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (what the capture proxy runs on), else asyncio's."""
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()
