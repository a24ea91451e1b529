"""Which detectors can match in a text, or where in a serialized request: Hyperscan scans.

A :class:`Prefilter` holds the detectors' ``superset`` patterns (see
:mod:`monitor.redaction.detectors`) compiled twice: one database reports which
patterns match in a text (:meth:`~Prefilter.select`, :meth:`~Prefilter.any`),
the other where matches end in a whole serialized request
(:meth:`~Prefilter.locate`), in the same pass as where JSON escapes and URL
attribute keys are. They only say where a detector *might* report a finding;
the Python patterns and checks still decide, so findings do not depend on
whether Hyperscan is there.

Invariants:

- :func:`views` turns a byte string into the byte strings to scan so that every
  text the redactor would look at inside it is a substring of one of them: the
  raw bytes (plain text, strings of a serialized request, JSON that does not
  parse), then the bytes with JSON escapes decoded once per level of JSON nested
  in JSON strings (``\\n``, ``\\"``, ``\\u0040``), and, when asked, with URL query
  encoding decoded (``%40``, ``+``). A ``\\u`` escape of a non-ASCII character
  becomes :data:`STAND_IN`, which the supersets treat like any non-ASCII character
  (the case twins ``İ`` and Kelvin ``K`` keep their own bytes). Decoding a whole
  buffer gives every JSON string the text decoding it alone would: a run of
  backslashes inside a JSON string starts after a character of that string.
- Without the ``hyperscan`` module (no wheel for the platform)
  :func:`compile_prefilter` returns ``None`` and the redactor keeps to its
  pure-Python literal gates: slower, same findings.
- Thread-safe: databases are read-only once compiled; each thread gets its own
  scratch space (Hyperscan refuses a scratch in use, and a scan releases the GIL).
- Fails towards scanning: should a scan fail, the answer is "every pattern may
  match" (:meth:`~Prefilter.select`, :meth:`~Prefilter.any`) or "walk it all"
  (:meth:`~Prefilter.locate`), never "nothing here".
- Compiling takes a few tenths of a second, so databases are cached per pattern set.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

try:
    import hyperscan
except ImportError:  # no wheel for this platform: the redactor uses its pure-Python gates
    hyperscan = None

MAX_JSON_LEVELS = 4
"""JSON inside a JSON string inside ...: at least as deep as the redactor parses."""
STAND_IN = b"\xc2\x80"
"""What a ``\\u`` escape of a non-ASCII character (or a surrogate pair) decodes to in a view."""
LOCATE_CAP = 1024
"""More matches than this in one request (or than one per :data:`LOCATE_BYTES` of it, if more):
:meth:`Prefilter.locate` gives up (the caller walks it all)."""
LOCATE_BYTES = 256
"""A large request may hold a match per this many bytes before :meth:`Prefilter.locate` gives up: ids and
addresses in safe keys match a superset 3-4 times in every capture proxy span (~1.7 KB), so a flat cap
made every batch of more than ~300 of them walk every span (a quarter of the pipeline's CPU at 128
streams, py-spy). Each match costs a Python callback, so the cap stays proportional to the bytes."""
ESCAPE_CAP = 64
"""More JSON escapes than this in one request: :meth:`Prefilter.locate` stops listing them."""
ESCAPE = rb"\\(?:[\"\\/bfnrt]|u[0-9a-fA-F]{4})"
"""A JSON escape: where a text is not its own bytes in a serialized request."""
URL_KEYS = (b"url.full", b"url.query", b"url.path", b"http.url", b"http.target")
"""Attribute keys whose values are redacted URL-decoded: where a text is not its own bytes either."""

_SIMPLE_ESCAPES = ((b'\\"', b'"'), (b"\\/", b"/"), (b"\\b", b"\b"), (b"\\f", b"\f"), (b"\\n", b"\n"),
                   (b"\\r", b"\r"), (b"\\t", b"\t"))
_SIMPLE = {esc[1:2]: char for esc, char in _SIMPLE_ESCAPES} | {b"\\": b"\\"}
_EXACT = rb"00[0-7][0-9a-fA-F]|0130|212[aA]"  # ASCII and the case twins decode to their own bytes
_PAIR = rb"[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_ESCAPE = re.compile(rb"\\(?:u" + _PAIR + rb"|u[0-9a-fA-F]{4}|[\"\\/bfnrt])")
_U_STAND_IN = re.compile(rb"\\u(?:" + _PAIR + rb"|(?!" + _EXACT + rb")[0-9a-fA-F]{4})")
_U_EXACT = re.compile(rb"\\u(?:" + _EXACT + rb")")
_MAKES_BACKSLASH = re.compile(rb"\\\\|\\u005[cC]")
_FEW_ESCAPES = 32  # below this many backslashes one regex pass with a callback beats eight replace() passes
_FLAGS_SELECT = 0
_FLAGS_LOCATE = 0
if hyperscan is not None:
    _FLAGS_LOCATE = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_DOTALL
    _FLAGS_SELECT = _FLAGS_LOCATE | hyperscan.HS_FLAG_SINGLEMATCH

Pattern = tuple[int, str, bool]
"""``(id, hyperscan pattern, caseless)``."""


class Located:
    """What one :meth:`Prefilter.locate` pass found: end offsets of pattern matches, of JSON escapes
    (``None``: more than :data:`ESCAPE_CAP`) and of URL attribute keys."""

    __slots__ = ("matches", "escapes", "urls", "cap")

    def __init__(self, cap: int = LOCATE_CAP) -> None:
        self.matches: list[int] = []
        self.escapes: list[int] | None = []
        self.urls: list[int] = []
        self.cap = cap
        """Matches past which the pass gives up."""


class Prefilter:
    """``patterns`` compiled for :meth:`select` / :meth:`any` and for :meth:`locate`.

    Raises ``hyperscan.error`` at construction when a pattern does not compile.
    """

    def __init__(self, patterns: Sequence[Pattern]):
        self._select = _compile(patterns, _FLAGS_SELECT)
        self._ids = frozenset(i for i, _, _ in patterns)
        self._escape_id = max(i for i, _, _ in patterns) + 1
        self._url_id = self._escape_id + 1
        urls = (self._url_id, "|".join(re.escape(k.decode()) for k in URL_KEYS), False)
        self._locate = _compile([*patterns, urls, (self._escape_id, ESCAPE.decode(), False)], _FLAGS_LOCATE)
        self._locate_no_escapes = _compile([*patterns, urls], _FLAGS_LOCATE)
        self._local = threading.local()

    def _scratch(self) -> tuple:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = tuple(
                hyperscan.Scratch(db) for db in (self._select, self._locate, self._locate_no_escapes))
        return scratch

    def select(self, data: bytes) -> set[int]:
        """Ids of the ``select`` patterns that match somewhere in ``data``."""
        found: set[int] = set()
        try:
            self._select.scan(data, match_event_handler=_collect, context=found, scratch=self._scratch()[0])
        except hyperscan.error:
            return set(self._ids)
        return found

    def any(self, *buffers: bytes) -> bool:
        """Whether a ``select`` pattern matches in one of ``buffers`` (stops at the first match)."""
        scratch = self._scratch()[0]
        for data in buffers:
            try:
                self._select.scan(data, match_event_handler=_stop, scratch=scratch)
            except hyperscan.error:  # ScanTerminated: a match; anything else: assume one
                return True
        return False

    def locate(self, data: bytes) -> Located | None:
        """Where matches, JSON escapes and URL keys end in ``data``; ``None`` past :data:`LOCATE_CAP`
        matches (or one per :data:`LOCATE_BYTES`, if more). Past :data:`ESCAPE_CAP` escapes the pass
        starts again without them (``escapes`` None)."""
        _, locate, no_escapes = self._scratch()
        cap = max(LOCATE_CAP, len(data) // LOCATE_BYTES)
        found = Located(cap)
        handler = self._on_match
        try:
            self._locate.scan(data, match_event_handler=handler, context=found, scratch=locate)
        except hyperscan.ScanTerminated:
            if found.escapes is not None:
                return None  # too many matches
            found = Located(cap)
            found.escapes = None
            try:
                self._locate_no_escapes.scan(data, match_event_handler=handler, context=found, scratch=no_escapes)
            except hyperscan.error:
                return None
            found.escapes = None
        except hyperscan.error:
            return None
        return found

    def _on_match(self, pattern_id: int, start: int, end: int, flags: int, found: Located) -> bool:
        if pattern_id == self._escape_id:
            found.escapes.append(end)
            if len(found.escapes) > ESCAPE_CAP:
                found.escapes = None
                return True
        elif pattern_id == self._url_id:
            found.urls.append(end)
        else:
            found.matches.append(end)
            return len(found.matches) > found.cap
        return False


def _compile(patterns: Sequence[Pattern], flags: int):
    db = hyperscan.Database()
    db.compile(expressions=[p.encode("ascii") for _, p, _ in patterns], ids=[i for i, _, _ in patterns],
               elements=len(patterns),
               flags=[flags | (hyperscan.HS_FLAG_CASELESS if ci else 0) for _, _, ci in patterns])
    return db


def _collect(pattern_id: int, start: int, end: int, flags: int, found: set[int]) -> None:
    found.add(pattern_id)


def _stop(pattern_id: int, start: int, end: int, flags: int, context: object) -> bool:
    return True


_CACHE: dict[tuple, Prefilter] = {}
_CACHE_LOCK = threading.Lock()


def compile_prefilter(patterns: Sequence[Pattern]) -> Prefilter | None:
    """A :class:`Prefilter` (cached per pattern set), or ``None`` without Hyperscan or patterns."""
    if hyperscan is None or not patterns:
        return None
    key = tuple(patterns)
    with _CACHE_LOCK:
        pf = _CACHE.get(key)
        if pf is None:
            pf = _CACHE[key] = Prefilter(patterns)
    return pf


# ---------------------------------------------------------------------- views


def views(data: bytes, *, url: bool = False) -> list[bytes]:
    """``data`` and its decoded views (module docstring): every text inside is a substring of one."""
    out = [data]
    if b"\\" in data:
        level = data
        for _ in range(MAX_JSON_LEVELS):
            decoded = json_unescape(level)
            if decoded == level:
                break
            out.append(decoded)
            if not _MAKES_BACKSLASH.search(level):
                break  # no backslash came out of decoding: nothing left for a deeper level
            level = decoded
    if url and (b"%" in data or b"+" in data):
        out.append(unquote_to_bytes(data.replace(b"+", b" ")))
    return out


def json_unescape(data: bytes) -> bytes:
    """Every valid JSON escape in ``data`` decoded, left to right (``\\u`` of a non-ASCII character:
    :data:`STAND_IN`, but for the case twins); anything else, invalid escapes too, left as it is."""
    if data.count(b"\\") < _FEW_ESCAPES:
        return _ESCAPE.sub(_decode_one, data)
    parts = data.split(b"\\\\")  # escaped backslashes pair up left to right, as a JSON parser pairs them
    for i, part in enumerate(parts):
        if b"\\" not in part:
            continue
        for esc, char in _SIMPLE_ESCAPES:  # before \u: a decoded \u005c must not start an escape
            if esc in part:
                part = part.replace(esc, char)
        if b"\\u" in part:
            part = _U_EXACT.sub(_decode_one, _U_STAND_IN.sub(STAND_IN, part))
        parts[i] = part
    return b"\\".join(parts)


def _decode_one(m: re.Match[bytes]) -> bytes:
    s = m[0]
    if s[1:2] != b"u":
        return _SIMPLE[s[1:2]]
    if len(s) > 6:
        return STAND_IN  # a surrogate pair: one character
    char = chr(int(s[2:6], 16))
    return char.encode() if char.isascii() or char in "\u0130\u212a" else STAND_IN
