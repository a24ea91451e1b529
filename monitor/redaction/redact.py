"""Redact text, JSON-bearing text and OTLP requests in place, before they leave the host.

Invariants:

- :class:`Redactor` compiles everything at construction; bad settings raise
  :class:`~monitor.errors.ConfigError` there, never while redacting.
- One pass per text: every detector proposes spans on the *original* text; a
  span overlapping one already claimed (by a higher-priority detector, or a
  placeholder such as ``[EMAIL]`` already in the text) is dropped. So nothing
  is replaced twice, placeholders are never matched, and
  ``redact(redact(t)) == redact(t)``.
- JSON content (object or array text) stays valid JSON: string leaves are
  redacted, keys and other values are untouched, and the text is re-serialised
  (compact, ``ensure_ascii=False``) only when a leaf changed.
- :func:`redact_request` touches content only: GenAI/OpenInference content
  attributes and message events of spans, bodies and attributes of log
  records. Resource attributes, ids, timings, metrics are never changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from monitor.config import RedactionSettings
from monitor.errors import ConfigError
from monitor.otlp.codec import Signal
from monitor.redaction.detectors import DETECTORS, KINDS, PRIORITY, Detector

__all__ = ["Finding", "Redactor", "redact_request", "make_processor", "CONTENT_KEYS", "CONTENT_PREFIXES"]

CONTENT_KEYS = frozenset({
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
    "gen_ai.prompt", "gen_ai.completion", "input.value", "output.value",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result",
})
"""Span attributes whose values are prompt, completion or tool content."""
CONTENT_PREFIXES = ("gen_ai.prompt.", "gen_ai.completion.", "llm.input_messages.", "llm.output_messages.")
"""Prefixes of flattened content attributes (``gen_ai.prompt.0.content``)."""
_CONTENT_EVENTS = frozenset({"gen_ai.choice", "gen_ai.content.prompt", "gen_ai.content.completion"})
_MESSAGE_EVENT = re.compile(r"^gen_ai\.[\w.]+\.message$")
_CUSTOM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_MAX_JSON_DEPTH = 4  # JSON inside a JSON string inside ...: stop descending after this many levels


@dataclass(frozen=True, slots=True)
class Finding:
    """``text[start:end]`` is sensitive data of ``kind``; it becomes ``[kind]``."""

    kind: str
    start: int
    end: int


class Redactor:
    """Detectors chosen by :class:`RedactionSettings`, compiled once; thread-safe (no mutable state)."""

    def __init__(self, settings: RedactionSettings | None = None):
        settings = settings or RedactionSettings()
        self.enabled = settings.enabled
        unknown = sorted(set(settings.detectors) - set(DETECTORS))
        if unknown:
            raise ConfigError(
                f"redaction.detectors: unknown detector(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(PRIORITY)}")
        custom = tuple(_compile_custom(name, rx) for name, rx in settings.custom.items())
        chosen = set(settings.detectors)
        ordered: list[Detector] = []
        for name in PRIORITY:
            if name in chosen:
                ordered.extend(DETECTORS[name])
            if name == "api_key":
                ordered.extend(custom)
        # Prefilters shared by several detectors (digits, ...) are evaluated once per text:
        # each distinct literal set becomes one compiled alternation, a "gate".
        gates: dict[tuple[tuple[str, ...], bool], int] = {}

        def gate(literals: tuple[str, ...], ci: bool) -> int:
            return gates.setdefault((literals, ci), len(gates)) if literals else -1

        self._plan = tuple((d, gate(d.prefilter, False), gate(d.prefilter_ci, True)) for d in ordered)
        self._gates = tuple(re.compile("|".join(map(re.escape, lits))) for lits, _ in gates)
        self.kinds: tuple[str, ...] = tuple(dict.fromkeys(d.kind for d in ordered))
        """Kinds this redactor can report, in priority order."""
        names = sorted(set(KINDS.values()) | {d.kind for d in custom}, key=len, reverse=True)
        self._placeholder = re.compile(r"\[(?:" + "|".join(map(re.escape, names)) + r")\]")
        self._needs_lower = any(d.prefilter_ci or d.ci is not None for d in ordered)
        self._min_len = 1 if custom else 6  # nothing built-in is shorter than a@b.io

    # ------------------------------------------------------------------ text

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, sorted by position (empty when disabled)."""
        if not self.enabled or len(text) < self._min_len:
            return []
        claimed: bytearray | None = None
        found: list[Finding] = []
        lower = text
        if self._needs_lower:
            lower = text.lower()
            if len(lower) != len(text):  # U+0130 (Turkish dotted I) lower-cases to two characters
                lower = text.replace("\u0130", "i").lower()
        if "[" in text:
            for m in self._placeholder.finditer(text):
                if claimed is None:
                    claimed = bytearray(len(text))
                claimed[m.start():m.end()] = b"\x01" * (m.end() - m.start())
        open_: list[bool | None] = [None] * len(self._gates)
        for det, gate, gate_ci in self._plan:
            if gate >= 0:
                if open_[gate] is None:
                    open_[gate] = self._gates[gate].search(text) is not None
                if not open_[gate]:
                    continue
            if gate_ci >= 0:
                if open_[gate_ci] is None:
                    open_[gate_ci] = self._gates[gate_ci].search(lower) is not None
                if not open_[gate_ci]:
                    continue
            for m in det.candidates(text, lower):
                start, end = det.span(m)
                if start >= end:
                    continue
                if claimed is not None and 1 in claimed[start:end]:
                    continue
                if det.validate is not None and not det.validate(m, text):
                    continue
                if claimed is None:
                    claimed = bytearray(len(text))
                claimed[start:end] = b"\x01" * (end - start)
                found.append(Finding(det.kind, start, end))
        found.sort(key=lambda f: f.start)
        return found

    def redact(self, text: str) -> str:
        """``text`` with every finding replaced by ``[KIND]``; ``text`` itself when nothing matched."""
        return self.redact_with_counts(text)[0]

    def redact_with_counts(self, text: str, counts: dict[str, int] | None = None) -> tuple[str, dict[str, int]]:
        """Redacted text and findings per kind; adds to ``counts`` when given (and returns it)."""
        counts = {} if counts is None else counts
        findings = self.scan(text)
        if not findings:
            return text, counts
        parts: list[str] = []
        pos = 0
        for f in findings:
            parts.append(text[pos:f.start])
            parts.append(f"[{f.kind}]")
            pos = f.end
            counts[f.kind] = counts.get(f.kind, 0) + 1
        parts.append(text[pos:])
        return "".join(parts), counts

    def redact_content(self, text: str, counts: dict[str, int] | None = None) -> tuple[str, dict[str, int]]:
        """Like :meth:`redact_with_counts`, but JSON object/array text stays valid JSON."""
        counts = {} if counts is None else counts
        return self._content(text, counts, 0), counts

    def _content(self, text: str, counts: dict[str, int], depth: int) -> str:
        head = text.lstrip()[:1]
        if head in ("{", "[") and depth < _MAX_JSON_DEPTH:
            try:
                data = json.loads(text)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, (dict, list)):
                leaf_counts: dict[str, int] = {}
                try:
                    changed = self._walk(data, leaf_counts, depth + 1)
                except RecursionError:  # absurdly deep: redact the raw text instead
                    return self.redact_with_counts(text, counts)[0]
                for kind, n in leaf_counts.items():
                    counts[kind] = counts.get(kind, 0) + n
                if not changed:
                    return text
                return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        return self.redact_with_counts(text, counts)[0]

    def _walk(self, node: Any, counts: dict[str, int], depth: int) -> bool:
        """Redact string leaves of parsed JSON in place; True when one changed."""
        changed = False
        items: Iterable[tuple[Any, Any]] = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, str):
                new = self._content(value, counts, depth)
                if new is not value and new != value:
                    node[key] = new
                    changed = True
            elif isinstance(value, (dict, list)):
                changed = self._walk(value, counts, depth) or changed
        return changed

    # ------------------------------------------------------------------ OTLP values

    def redact_any_value(self, value: Any, counts: dict[str, int]) -> None:
        """Redact the strings of an OTLP ``AnyValue`` in place (arrays and kvlists recursively)."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            s = value.string_value
            new = self._content(s, counts, 0)
            if new is not s:
                value.string_value = new
        elif kind == "array_value":
            for v in value.array_value.values:
                self.redact_any_value(v, counts)
        elif kind == "kvlist_value":
            for kv in value.kvlist_value.values:
                self.redact_any_value(kv.value, counts)


def _compile_custom(name: str, rx: str) -> Detector:
    if not _CUSTOM_NAME.match(name):
        raise ConfigError(
            f"redaction.custom: rule name {name!r} must be letters, digits and underscores, "
            "starting with a letter (it becomes the placeholder [NAME])")
    try:
        pattern = re.compile(rx)
    except re.error as exc:
        raise ConfigError(f"redaction.custom.{name}: invalid regular expression {rx!r}: {exc}") from None
    if pattern.fullmatch(""):
        raise ConfigError(f"redaction.custom.{name}: regular expression {rx!r} matches the empty string")
    groups = ("value",) if "value" in pattern.groupindex else (0,)
    return Detector(name, pattern, groups)


# ---------------------------------------------------------------------- requests


def _is_content_key(key: str) -> bool:
    return key in CONTENT_KEYS or key.startswith(CONTENT_PREFIXES)


def _is_content_event(name: str) -> bool:
    return name in _CONTENT_EVENTS or _MESSAGE_EVENT.match(name) is not None


def redact_request(redactor: Redactor, signal: Signal, msg: Message) -> dict[str, int]:
    """Redact the content of an OTLP export request (or ``*Data``) in place; findings per kind.

    traces: content attributes (:data:`CONTENT_KEYS`, :data:`CONTENT_PREFIXES`) and every
    attribute of ``gen_ai.*.message`` / ``gen_ai.choice`` / ``gen_ai.content.*`` events;
    logs: string bodies and log record attributes; metrics: nothing.
    """
    counts: dict[str, int] = {}
    if not redactor.enabled:
        return counts
    if signal == "traces":
        for rs in msg.resource_spans:  # type: ignore[attr-defined]
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for kv in span.attributes:
                        if _is_content_key(kv.key):
                            redactor.redact_any_value(kv.value, counts)
                    for event in span.events:
                        if _is_content_event(event.name):
                            for kv in event.attributes:
                                redactor.redact_any_value(kv.value, counts)
    elif signal == "logs":
        for rl in msg.resource_logs:  # type: ignore[attr-defined]
            for sl in rl.scope_logs:
                for record in sl.log_records:
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
