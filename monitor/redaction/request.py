"""Redact OTLP requests in place: every string a client sent per span or log record, but the known-safe keys.

Invariants:

- :func:`redact_request` scans, in spans: the name, every string attribute
  value (arrays and maps too; JSON text stays valid JSON) but those of
  :data:`SAFE_KEYS`, the same for every event and link, and the status
  message; in log records: the body and every attribute but :data:`SAFE_KEYS`.
  Resource and scope attributes (they describe the sender: ``service.name``,
  ``host.name``), ids, timings, event names and metrics are never changed.
- URLs are scanned decoded, part by part: the query string parameter by
  parameter (``email=jane%40example.com`` -> ``email=[EMAIL]``, ``password=x`` ->
  ``password=[API_KEY]``), the path as one text, and of the authority only
  credentials (``https://user:[API_KEY]@host``); the host, an infrastructure
  address like ``server.address``, stays. Only what was found changes,
  re-encoded.
- With a prefilter (:mod:`._screen`) only the spans or log records in which a
  detector can match, in a part this module scans, are walked; the others are
  left exactly as they came.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from google.protobuf.message import Message

from monitor.otlp.codec import Signal
from monitor.otlp.genai import JOINED_KEY
from monitor.otlp.identity import HASH_ATTRS, HEX_HASH
from monitor.redaction import _screen
from monitor.redaction.redact import Redactor

__all__ = ["redact_request", "make_processor", "CONTENT_KEYS", "CONTENT_PREFIXES", "SAFE_KEYS", "URL_KEYS"]

CONTENT_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.prompt", "gen_ai.completion", "input.value", "output.value",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
})
"""Span and event attributes whose values are prompt, completion or tool content (scanned like any other)."""
CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
"""Prefixes of flattened content attributes (``gen_ai.prompt.0.content``)."""
SAFE_KEYS = frozenset({
    # GenAI conventions: names, ids and enumerations the pipeline and the dashboards group by
    "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system", "gen_ai.request.model",
    "gen_ai.response.model", "gen_ai.response.id", "gen_ai.request.id", "gen_ai.response.finish_reasons",
    "gen_ai.output.type", "gen_ai.token.type", "gen_ai.tool.name", "gen_ai.tool.call.id", "gen_ai.tool.type",
    "gen_ai.agent.id", "gen_ai.agent.name", "gen_ai.data_source.id", "gen_ai.conversation.id",
    "gen_ai.request.encoding_formats", "llm.model_name", "llm.provider", "llm.system", "openinference.span.kind",
    # the model server, the protocol, the code: infrastructure, not people
    "server.address", "service.name", "service.version", "http.request.method", "http.method", "http.route",
    "http.scheme", "http.flavor", "url.scheme", "network.protocol.name", "network.protocol.version",
    "network.transport", "network.type", "rpc.system", "rpc.service", "rpc.method", "db.system",
    "messaging.system", "error.type", "exception.type", "otel.status_code", "otel.scope.name",
    "code.function", "code.namespace", "thread.name",
    # written by the monitor itself
    "monitor.proxy", JOINED_KEY, "monitor.content.captured", "monitor.fixed",
})
"""Attribute keys whose string values are never scanned: ids, model names and enumerations, which
a finding could only corrupt. Every other string value is scanned (``user.note``, ``client.address``,
``exception.message``, ``gen_ai.request.stop_sequences`` ...)."""
URL_KEYS = frozenset({"url.full", "url.query", "url.path", "http.url", "http.target"})
"""Attributes holding a URL or part of one (``http.url`` / ``http.target``: the older names), scanned decoded."""

def redact_request(redactor: Redactor, signal: Signal, msg: Message) -> dict[str, int]:
    """Redact an OTLP export request (or ``*Data``) in place; findings per kind.

    traces: span names, attributes, events, links and status messages; logs: bodies and
    attributes; metrics: nothing (module docstring). Values cut at ``max_value_bytes`` count as
    ``TRUNCATED``.
    """
    return _redact(redactor, signal, msg)[0]


def make_processor(
    redactor: Redactor, on_counts: Callable[[dict[str, int]], None] | None = None,
) -> Callable[[Signal, Message], bytes | None]:
    """A receiver :data:`~monitor.receiver.ingress.Processor` running :func:`redact_request`.

    ``on_counts`` (e.g. a self-metric's ``inc`` per kind) gets the non-empty counts of each request.
    Returns the request's wire form when the prefilter serialized it and nothing was changed after.
    """

    def process(signal: Signal, msg: Message) -> bytes | None:
        counts, wire = _redact(redactor, signal, msg)
        if counts and on_counts is not None:
            on_counts(counts)
        return wire

    return process


def _redact(redactor: Redactor, signal: Signal, msg: Message) -> tuple[dict[str, int], bytes | None]:
    """:func:`redact_request`'s counts, and ``msg.SerializeToString()`` when the screen serialized
    it and nothing changed since (no finding, nothing cut), else None."""
    counts: dict[str, int] = {}
    if not redactor.enabled or signal not in ("traces", "logs"):
        return counts, None
    outer, scope, item = (("resource_spans", "scope_spans", "spans") if signal == "traces"
                          else ("resource_logs", "scope_logs", "log_records"))
    items, wire = _items(redactor, msg, outer, scope, item)
    if signal == "traces":
        for span in items:
            _redact_span(redactor, span, counts)
    else:
        for record in items:
            if record.HasField("body"):
                redactor.redact_any_value(record.body, counts)
            _redact_attributes(redactor, record.attributes, counts)
    return counts, None if counts else wire


_SAFE_BYTES = frozenset(k.encode() for k in SAFE_KEYS)
_URL_BYTES = frozenset(k.encode() for k in URL_KEYS)


def _items(redactor: Redactor, msg: Message, outer: str, scope: str, item: str) -> tuple[Iterable[Any], bytes | None]:
    """The spans or log records to walk (those the prefilter flags, or all of them), and the
    serialized request when the prefilter serialized it."""
    paths, wire = _screen.flagged(redactor, msg, item == "log_records", _SAFE_BYTES, _URL_BYTES) \
        if redactor._screens else (None, None)
    if paths is None:
        return (x for a in getattr(msg, outer) for b in getattr(a, scope) for x in getattr(b, item)), wire
    return (getattr(getattr(getattr(msg, outer)[i], scope)[j], item)[k] for i, j, k in paths), wire


def _redact_span(redactor: Redactor, span: Any, counts: dict[str, int]) -> None:
    name = redactor.redact_text(span.name, counts)
    if name is not span.name:
        span.name = name
    _redact_attributes(redactor, span.attributes, counts)
    for event in span.events:
        _redact_attributes(redactor, event.attributes, counts)
    for link in span.links:
        _redact_attributes(redactor, link.attributes, counts)
    if span.status.message:
        message = redactor.redact_text(span.status.message, counts)
        if message is not span.status.message:
            span.status.message = message


def _redact_attributes(redactor: Redactor, attributes: Iterable[Any], counts: dict[str, int]) -> None:
    for kv in attributes:
        key = kv.key
        if key in URL_KEYS:
            _redact_url(redactor, key, kv.value, counts)
        elif key in HASH_ATTRS and HEX_HASH.fullmatch(kv.value.string_value):
            continue  # a client hash (monitor.otlp.identity): an id; anything else in that key is scanned
        elif key not in SAFE_KEYS:
            redactor.redact_any_value(kv.value, counts)


_AUTHORITY = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
_SECRET_KINDS = frozenset({"API_KEY", "BEARER_TOKEN"})


def _redact_url(redactor: Redactor, key: str, value: Any, counts: dict[str, int]) -> None:
    """A URL (``url.full``), a path (``url.path``), a path and query (``http.target``) or a query
    (``url.query``), each part scanned decoded; non-string values as any other attribute."""
    if value.WhichOneof("value") != "string_value":
        redactor.redact_any_value(value, counts)
        return
    s = value.string_value
    kept, marker = redactor._truncate(s, counts)
    if key == "url.query":
        new = _redact_query(redactor, kept, counts)
    elif key == "url.path":
        new = _redact_path(redactor, kept, counts)
    else:
        authority = _AUTHORITY.match(kept) if key != "http.target" else None
        head = authority.group() if authority else ""
        end = len(kept)
        fragment = kept.find("#", len(head))
        if fragment >= 0:
            end = fragment
        q = kept.find("?", len(head), end)
        path, query = (kept[len(head):q], kept[q + 1:end]) if q >= 0 else (kept[len(head):end], None)
        new_head = _redact_credentials(redactor, head, counts) if "@" in head else head
        new_path = _redact_path(redactor, path, counts)
        new_query = _redact_query(redactor, query, counts) if query is not None else None
        if new_head is head and new_path is path and new_query is query:
            new = kept
        else:
            new = new_head + new_path + ("?" + new_query if new_query is not None else "") + kept[end:]
    if marker:
        value.string_value = new + marker
    elif new is not s and new != s:
        value.string_value = new


def _replace(text: str, findings: Iterable[Any], counts: dict[str, int]) -> str:
    out: list[str] = []
    pos = 0
    for f in findings:
        out += [text[pos:f.start], f"[{f.kind}]"]
        pos = f.end
        counts[f.kind] = counts.get(f.kind, 0) + 1
    out.append(text[pos:])
    return "".join(out)


def _redact_credentials(redactor: Redactor, head: str, counts: dict[str, int]) -> str:
    """``scheme://user:password@host``: only secrets (the password); the host stays."""
    findings = [f for f in redactor.scan(head) if f.kind in _SECRET_KINDS]
    return _replace(head, findings, counts) if findings else head


def _redact_path(redactor: Redactor, path: str, counts: dict[str, int]) -> str:
    """A URL path scanned decoded as one text (``/users/jane%40example.com`` -> ``/users/[EMAIL]``);
    ``path`` itself when nothing was found, else re-encoded."""
    if len(path) < 2:
        return path
    text = unquote(path)
    findings = redactor.scan(text)
    if not findings:
        return path
    return quote(_replace(text, findings, counts), safe="/:@!$&'()*+,;=[]~")


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
