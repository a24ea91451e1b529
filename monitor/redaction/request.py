"""Redact the content of OTLP requests in place: which attributes are content, and the receiver processor.

Invariants:

- :func:`redact_request` touches content only: GenAI/OpenInference content
  attributes of spans, every attribute of message events, content attributes of
  any other event, the query string of ``url.full`` / ``url.query``, and bodies
  and attributes of log records. Resource attributes, ids, timings, metrics and
  the other span attributes are never changed.
- With a prefilter (:mod:`._screen`) only the spans or log records in which a
  detector can match are walked; the others are left exactly as they came.
- A query string is redacted parameter by parameter on its decoded text
  (``email=jane%40example.com`` -> ``email=[EMAIL]``, ``password=x`` ->
  ``password=[API_KEY]``): only values change, re-encoded, and only when
  something was found in them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from google.protobuf.message import Message

from monitor.otlp.codec import Signal
from monitor.redaction import _screen
from monitor.redaction.redact import Redactor

__all__ = ["redact_request", "make_processor", "CONTENT_KEYS", "CONTENT_PREFIXES", "URL_KEYS"]

CONTENT_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.prompt", "gen_ai.completion", "input.value", "output.value",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
})
"""Span and event attributes whose values are prompt, completion or tool content."""
CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
"""Prefixes of flattened content attributes (``gen_ai.prompt.0.content``)."""
URL_KEYS = frozenset({"url.full", "url.query"})
"""Span attributes whose query string is redacted (``url.query`` holds only that)."""
_CONTENT_EVENTS = frozenset({"gen_ai.choice", "gen_ai.content.prompt", "gen_ai.content.completion"})
_MESSAGE_EVENT = re.compile(r"^gen_ai\.[\w.]+\.message$")


def _is_content_key(key: str) -> bool:
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


def _is_content_event(name: str) -> bool:
    return name in _CONTENT_EVENTS or _MESSAGE_EVENT.match(name) is not None


def redact_request(redactor: Redactor, signal: Signal, msg: Message) -> dict[str, int]:
    """Redact the content of an OTLP export request (or ``*Data``) in place; findings per kind.

    traces: content attributes (:data:`CONTENT_KEYS`, :data:`CONTENT_PREFIXES`), every attribute
    of ``gen_ai.*.message`` / ``gen_ai.choice`` / ``gen_ai.content.*`` events, content attributes
    of other events, query strings of :data:`URL_KEYS`; logs: bodies and log record attributes;
    metrics: nothing. Values cut at ``max_value_bytes`` count as ``TRUNCATED``.
    """
    counts: dict[str, int] = {}
    if not redactor.enabled:
        return counts
    if signal == "traces":
        for span in _items(redactor, msg, "resource_spans", "scope_spans", "spans"):
            _redact_span(redactor, span, counts)
    elif signal == "logs":
        for record in _items(redactor, msg, "resource_logs", "scope_logs", "log_records"):
            if record.HasField("body"):
                redactor.redact_any_value(record.body, counts)
            for kv in record.attributes:
                redactor.redact_any_value(kv.value, counts)
    return counts


def make_processor(
    redactor: Redactor, on_counts: Callable[[dict[str, int]], None] | None = None,
) -> Callable[[Signal, Message], None]:
    """A receiver :data:`~monitor.receiver.ingress.Processor` running :func:`redact_request`.

    ``on_counts`` (e.g. a self-metric's ``inc`` per kind) gets the non-empty counts of each request.
    """

    def process(signal: Signal, msg: Message) -> None:
        counts = redact_request(redactor, signal, msg)
        if counts and on_counts is not None:
            on_counts(counts)

    return process


def _items(redactor: Redactor, msg: Message, outer: str, scope: str, item: str) -> Iterator[Any]:
    """The spans or log records to walk: those the prefilter flags, or all of them."""
    paths = _screen.flagged(redactor, msg) if redactor._screens else None
    if paths is None:
        for a in getattr(msg, outer):
            for b in getattr(a, scope):
                yield from getattr(b, item)
        return
    for i, j, k in paths:
        yield getattr(getattr(getattr(msg, outer)[i], scope)[j], item)[k]


def _redact_span(redactor: Redactor, span: Any, counts: dict[str, int]) -> None:
    for kv in span.attributes:
        key = kv.key
        if _is_content_key(key):
            redactor.redact_any_value(kv.value, counts)
        elif key in URL_KEYS:
            _redact_url(redactor, key, kv.value, counts)
    for event in span.events:
        every = _is_content_event(event.name)
        for kv in event.attributes:
            if every or _is_content_key(kv.key):
                redactor.redact_any_value(kv.value, counts)


def _redact_url(redactor: Redactor, key: str, value: Any, counts: dict[str, int]) -> None:
    if value.WhichOneof("value") != "string_value":
        return
    s = value.string_value
    kept, marker = redactor._truncate(s, counts)
    new = kept
    if key == "url.query":
        new = _redact_query(redactor, kept, counts)
    elif (q := kept.find("?")) >= 0:
        end = kept.find("#", q + 1)
        end = len(kept) if end < 0 else end
        query = kept[q + 1:end]
        redacted = _redact_query(redactor, query, counts)
        if redacted is not query:
            new = kept[:q + 1] + redacted + kept[end:]
    if marker:
        value.string_value = new + marker
    elif new is not s:
        value.string_value = new


def _redact_query(redactor: Redactor, query: str, counts: dict[str, int]) -> str:
    """A URL query string with findings in its decoded values replaced; ``query`` itself when none.

    Each ``name=value`` is scanned decoded and whole, so the name gives context
    (``password=hunter2``); a finding that starts in the name is left alone.
    """
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        name, eq, raw = part.partition("=")
        if eq:
            prefix = unquote_plus(name) + "="
            text = prefix + unquote_plus(raw)
        else:
            prefix, text = "", unquote_plus(part)
        offset = len(prefix)
        findings = [f for f in redactor.scan(text) if f.start >= offset]
        if not findings:
            continue
        out: list[str] = []
        pos = offset
        for f in findings:
            out += [text[pos:f.start], f"[{f.kind}]"]
            pos = f.end
            counts[f.kind] = counts.get(f.kind, 0) + 1
        out.append(text[pos:])
        encoded = quote_plus("".join(out), safe="[]")
        parts[i] = f"{name}={encoded}" if eq else encoded
        changed = True
    return "&".join(parts) if changed else query
