"""Redact text, JSON-bearing text and OTLP values in place, before they leave the host.

Invariants:

- :class:`Redactor` compiles everything at construction; bad settings raise
  :class:`~monitor.errors.ConfigError` there, never while redacting.
- One pass per text: every detector proposes spans on the *original* text; a
  span overlapping one already claimed (by a higher-priority detector, or a
  placeholder such as ``[EMAIL]`` already in the text) is dropped. So nothing
  is replaced twice, placeholders are never matched, and
  ``redact(redact(t)) == redact(t)``.
- Speed without changing findings: a Hyperscan prefilter (:mod:`._prefilter`)
  says which detectors can match in a text, or that none can in a JSON text
  and everything nested in it; only those run. A detector skipped that way
  would have reported nothing. Without Hyperscan, or for custom rules (which
  have no superset), the literal gates decide as before.
- JSON content (object or array text) stays valid JSON: string leaves are
  redacted, keys and other values are untouched, and the text is re-serialised
  (compact, ``ensure_ascii=False``) only when a leaf changed.
- Bounded cost: an OTLP string value longer than ``max_value_bytes`` of UTF-8
  is cut to that, marker included, before anything scans it, and counted as
  :data:`TRUNCATED`; the marker (:data:`TRUNCATION_MARKER`) is appended after
  redaction, and a second pass neither cuts again nor finds anything in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from monitor.config import RedactionSettings
from monitor.errors import ConfigError
from monitor.redaction import _prefilter
from monitor.redaction.detectors import CASE_TWINS, DETECTORS, KINDS, PRIORITY, Detector

__all__ = ["Finding", "Redactor", "TRUNCATED", "TRUNCATION_MARKER"]

TRUNCATED = "TRUNCATED"
"""The count kind of a value cut at ``redaction.max_value_bytes`` (not a placeholder: nothing is replaced)."""
TRUNCATION_MARKER = "…[truncated {n} bytes]"
"""Appended to a cut value; the wording of :data:`monitor.sidecar.proxy.capture.TRUNCATION_MARKER`."""
_MARKER_ROOM = 40  # bytes kept free for the marker, as the capture proxy does: the result fits the limit
_CUSTOM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_MAX_JSON_DEPTH = 4  # JSON inside a JSON string inside ...: stop descending (<= _prefilter.MAX_JSON_LEVELS)
_SELECT_MIN_LEN = 48  # shorter texts: the literal gates cost less than a Hyperscan call


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
        self.max_value_bytes = settings.max_value_bytes
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
        """Kinds this redactor can report, in priority order (:data:`TRUNCATED` is a count, not a kind)."""
        names = sorted(set(KINDS.values()) | {d.kind for d in custom}, key=len, reverse=True)
        self._placeholder = re.compile(r"\[(?:" + "|".join(map(re.escape, names)) + r")\]")
        self._min_len = 1 if custom else 6  # nothing built-in is shorter than a@b.io
        # The prefilter: one pattern per detector with a superset (id = its place in the plan), and
        # one for the case twins, which put every case-insensitive detector in play (id = len(plan)).
        self._always = frozenset(i for i, d in enumerate(ordered) if not d.superset)
        self._twin_id = len(ordered)
        self._keyword_ids = frozenset(i for i, d in enumerate(ordered) if d.ci is not None)
        patterns = [(i, d.superset, d.ci is not None) for i, d in enumerate(ordered) if d.superset]
        if patterns and self._keyword_ids:
            twins = "|".join("".join(f"\\x{b:02x}" for b in c.encode()) for c in CASE_TWINS)
            patterns.append((self._twin_id, twins, False))
        self._prefilter = _prefilter.compile_prefilter(patterns if self.enabled else [])
        self._screens = self._prefilter is not None and not self._always
        """Whether a whole text (or request) with no prefilter match can be skipped unread."""

    # ------------------------------------------------------------------ text

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, sorted by position (empty when disabled)."""
        if not self.enabled or len(text) < self._min_len:
            return []
        plan: Iterable[tuple[Detector, int, int]] = self._plan
        if self._prefilter is not None and len(text) >= _SELECT_MIN_LEN:
            ids = self._prefilter.select(text.encode("utf-8", "surrogatepass"))
            if self._twin_id in ids:
                ids |= self._keyword_ids
            ids |= self._always
            if not ids:
                return []
            plan = [p for i, p in enumerate(self._plan) if i in ids]
        claimed: bytearray | None = None
        found: list[Finding] = []
        lower: str | None = None
        if "[" in text:
            for m in self._placeholder.finditer(text):
                if claimed is None:
                    claimed = bytearray(len(text))
                claimed[m.start():m.end()] = b"\x01" * (m.end() - m.start())
        open_: list[bool | None] = [None] * len(self._gates)
        for det, gate, gate_ci in plan:
            if gate >= 0:
                if open_[gate] is None:
                    open_[gate] = self._gates[gate].search(text) is not None
                if not open_[gate]:
                    continue
            if lower is None and (gate_ci >= 0 or det.ci is not None):
                lower = text.lower()
                if len(lower) != len(text):  # U+0130 (Turkish dotted I) lower-cases to two characters
                    lower = text.replace("\u0130", "i").lower()
            if gate_ci >= 0:
                if open_[gate_ci] is None:
                    open_[gate_ci] = self._gates[gate_ci].search(lower) is not None
                if not open_[gate_ci]:
                    continue
            for m in det.candidates(text, text if lower is None else lower):
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
            if depth == 0 and self._screens and len(text) >= self._min_len and not self._prefilter.any(
                    *_prefilter.views(text.encode("utf-8", "surrogatepass"))):
                return text  # nothing in the text nor in any string nested in it can match
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

    def _truncate(self, text: str, counts: dict[str, int]) -> tuple[str, str]:
        """``(kept, marker)``: ``text`` cut to ``max_value_bytes`` of UTF-8 with the marker included
        (counted as :data:`TRUNCATED`), or ``(text, "")`` when it fits."""
        limit = self.max_value_bytes
        if len(text) <= limit // 4:  # four bytes a character at most
            return text, ""
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) <= limit:
            return text, ""
        kept = raw[:max(0, limit - _MARKER_ROOM)].decode("utf-8", "ignore")
        counts[TRUNCATED] = counts.get(TRUNCATED, 0) + 1
        return kept, TRUNCATION_MARKER.format(n=len(raw) - len(kept.encode("utf-8", "surrogatepass")))

    def redact_text(self, text: str, counts: dict[str, int]) -> str:
        """An OTLP string (a span name, a status message) as :meth:`redact_any_value` redacts a string
        value: cut at ``max_value_bytes``, JSON kept valid; ``text`` itself when nothing changed."""
        if len(text) < self._min_len:
            return text
        kept, marker = self._truncate(text, counts)
        new = self._content(kept, counts, 0)
        return new + marker if marker else new

    def redact_any_value(self, value: Any, counts: dict[str, int]) -> None:
        """Redact the strings of an OTLP ``AnyValue`` in place (arrays and kvlists recursively);
        a string longer than ``max_value_bytes`` is cut first."""
        kind = value.WhichOneof("value")
        if kind == "string_value":
            s = value.string_value
            kept, marker = self._truncate(s, counts)
            new = self._content(kept, counts, 0)
            if marker:
                value.string_value = new + marker
            elif new is not s:
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
