"""Which spans or log records of an OTLP request can hold a finding: one scan of the serialized request.

:func:`flagged` serializes the request once and runs the prefilter's
``locate`` database over all of it. A request in which no superset matches
anywhere, with no JSON escape and no URL attribute, and smaller than
``max_value_bytes``, needs nothing more (the common case: a few microseconds a
span, where walking the attributes in Python alone costs more than ten).
Otherwise the request's outer structure is read from the wire format to map
each match to its span or log record, and the fields of such an item are read
too: a match counts only where redaction looks (the span name, the status
message, a log body, the value of an attribute whose key is not a safe key), so
a hex response id (``gen_ai.response.id``, a safe key) or the random bytes of a
trace id, which the supersets of IBANs or e-mail addresses often match, cost no
walk. Only the items with a match that counts are walked.

Invariants:

- A superset match in a text is a match in the serialized bytes, since
  protobuf strings are stored as their UTF-8 bytes, and it ends inside that
  text's bytes; JSON escapes and URL encoding are covered by decoding the bytes
  of the value that holds the text (``_prefilter.views``).
- :func:`text_ranges` lists every byte range redaction scans in an item (a
  superset of it: the whole ``AnyValue`` of an array or map); an item none of
  whose ranges holds a match end, nor matches once decoded, holds no finding.
- Anything unexpected (a malformed or unfamiliar encoding, more matches than
  ``LOCATE_CAP``) means "walk everything", never "skip".
- Paths are ``(i, j, k)``: ``msg.<resource>[i].<scope>[j].<item>[k]``; traces
  and logs requests (and ``*Data``) share the field numbers 1, 2, 2.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from monitor.otlp.identity import HASH_ATTRS, HEX_HASH
from monitor.redaction import _prefilter

if TYPE_CHECKING:
    from monitor.redaction.redact import Redactor

__all__ = ["flagged", "item_ranges", "text_ranges"]

Path = tuple[int, int, int]

_ESCAPE = re.compile(_prefilter.ESCAPE)


def flagged(redactor: Redactor, msg: Message, logs: bool, safe_keys: frozenset[bytes],
            url_keys: frozenset[bytes]) -> tuple[list[Path] | None, bytes]:
    """Paths of the items that need walking, in order (``None``: walk them all), and the serialized
    request (``msg.SerializeToString()``) that was scanned.

    ``logs``: the items are log records (else spans); ``safe_keys``: the UTF-8 attribute keys whose
    values redaction never scans; ``url_keys``: those whose values it scans URL-decoded too."""
    data = msg.SerializeToString()
    return _flagged(redactor, data, logs, safe_keys, url_keys), data


def _flagged(redactor: Redactor, data: bytes, logs: bool, safe_keys: frozenset[bytes],
             url_keys: frozenset[bytes]) -> list[Path] | None:
    found = redactor._prefilter.locate(data)
    if found is None:
        return None
    limit = redactor.max_value_bytes
    if not found.matches and found.escapes == [] and not found.urls and len(data) <= limit:
        return []
    try:
        ranges = item_ranges(data)
    except (ValueError, IndexError):
        return None
    if not ranges:
        return []
    starts = [r[0] for r in ranges]

    def item_at(pos: int) -> int:
        i = bisect_right(starts, pos) - 1
        return i if i >= 0 and pos < ranges[i][1] else -1

    ends: dict[int, list[int]] = {}
    for e in found.matches:
        ends.setdefault(item_at(e - 1), []).append(e)
    ends.pop(-1, None)
    hit: set[int] = set()
    if len(data) > limit:  # a value may need cutting: walk every item that large
        hit.update(i for i, (s, e, _) in enumerate(ranges) if e - s > limit)
    if found.escapes is None:  # many: look span by span
        decode = {i for i, (s, e, _) in enumerate(ranges) if _ESCAPE.search(data, s, e)}
    else:
        decode = {item_at(e - 1) for e in found.escapes}
    urls: dict[int, list[int]] = {}
    for e in found.urls:
        urls.setdefault(item_at(e - 1), []).append(e)
    for i in (decode | urls.keys()) - hit - ends.keys() - {-1}:  # cheap first look: any decoded match at all
        s, e, _ = ranges[i]
        extra = _prefilter.views(data[s:e], url=i in urls)[1:]
        if extra and redactor._prefilter.any(*extra):
            ends.setdefault(i, [])
    for i, item_ends in ends.items():
        if i in hit:
            continue
        s, e, _ = ranges[i]
        try:
            if _holds_candidate(redactor, data, s, e, sorted(item_ends), i in decode, sorted(urls.get(i, ())),
                                logs, safe_keys, url_keys):
                hit.add(i)
        except (ValueError, IndexError):
            hit.add(i)
    return [ranges[i][2] for i in sorted(hit)]


def _holds_candidate(redactor: Redactor, data: bytes, start: int, end: int, ends: list[int], escapes: bool,
                     url_ends: list[int], logs: bool, safe_keys: frozenset[bytes],
                     url_keys: frozenset[bytes]) -> bool:
    """Whether a match end (``ends``, sorted) lies in a part of the item ``data[start:end]`` that
    redaction scans, or such a part matches once decoded: JSON-unescaped where the item holds JSON
    escapes (``escapes``), URL-decoded where a URL key ends in its field (``url_ends``, sorted).

    One walk over the item's fields: a field with no match end, no URL key and no backslash in it is
    passed in one step, and only the parts of the others are read.

    Raises ``ValueError`` or ``IndexError`` on bytes that are not a well-formed message."""
    k, last = 0, len(ends)
    backslash = data.find(b"\\", start, end) if escapes else -1  # the next one at or after the field
    pos = start
    while pos < end:
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(data, pos)
        wire = key & 7
        if wire != 2:
            pos = _skip(data, pos, wire)
            continue
        n = data[pos]
        if n < 0x80:
            pos += 1
        else:
            n, pos = _varint(data, pos)
        s, pos = pos, pos + n
        if pos > end:
            raise ValueError("field runs past its message")
        while k < last and ends[k] <= s:
            k += 1
        in_ends = k < last and ends[k] <= pos
        if 0 <= backslash < s:
            backslash = data.find(b"\\", s, end)
        decoded = s <= backslash < pos or (bool(url_ends) and _any_end(url_ends, s, pos))
        if not (in_ends or decoded):
            if backslash < 0 and k == last and not url_ends:
                return False  # nothing left past here
            continue
        for vs, ve, url in _field_parts(data, key >> 3, s, pos, logs, safe_keys, url_keys):
            if in_ends and _any_end(ends, vs, ve):
                return True
            if decoded and (url or data.find(b"\\", vs, ve) >= 0):
                extra = _prefilter.views(data[vs:ve], url=url)[1:]
                if extra and redactor._prefilter.any(*extra):
                    return True
    if pos != end:
        raise ValueError("field runs past its message")
    return False


def _any_end(ends: list[int], s: int, e: int) -> bool:
    """Whether a match ends in ``data[s:e]`` (its last byte at ``s`` or later, before ``e``)."""
    k = bisect_right(ends, s)
    return k < len(ends) and ends[k] <= e


def _skip(data: bytes, pos: int, wire: int) -> int:
    """Past the value of a field of wire type ``wire`` (not length-delimited) starting at ``pos``."""
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise ValueError(f"unexpected wire type {wire}")


# Field numbers (opentelemetry-proto): what redaction looks at in a span or log record.
_SPAN_NAME, _SPAN_ATTRIBUTES, _SPAN_EVENTS, _SPAN_LINKS, _SPAN_STATUS = 5, 9, 11, 13, 15
_EVENT_ATTRIBUTES, _LINK_ATTRIBUTES, _STATUS_MESSAGE = 3, 4, 2
_LOG_BODY, _LOG_ATTRIBUTES = 5, 6
_KV_KEY, _KV_VALUE, _ANY_STRING = 1, 2, 1
_HASH_KEYS = frozenset(k.encode() for k in HASH_ATTRS)
_HEX_HASH = re.compile(HEX_HASH.pattern.encode())


def _client_hash(key: bytes, data: bytes, start: int, end: int) -> bool:
    """Whether ``data[start:end]``, the string value of attribute ``key``, is a client hash: an id
    redaction leaves alone (request._redact_attributes skips it alike)."""
    return key in _HASH_KEYS and _HEX_HASH.fullmatch(data, start, end) is not None


def text_ranges(data: bytes, start: int, end: int, logs: bool, safe_keys: frozenset[bytes],
                url_keys: frozenset[bytes]) -> list[tuple[int, int, bool]]:
    """``(start, end, url)`` of every part of the span (or log record) ``data[start:end]`` that
    :func:`monitor.redaction.request.redact_request` scans: the span name, the status message, the
    values of span, event and link attributes whose key is not in ``safe_keys``; a log record's
    body and attributes. A string value is its UTF-8 bytes; an array or map value its whole
    encoding. ``url``: the key is one of ``url_keys``.

    Raises ``ValueError`` or ``IndexError`` on bytes that are not a well-formed message.
    """
    out: list[tuple[int, int, bool]] = []
    for field, s, e in _length_delimited(data, start, end):
        out.extend(_field_parts(data, field, s, e, logs, safe_keys, url_keys))
    return out


def _field_parts(data: bytes, field: int, s: int, e: int, logs: bool, safe_keys: frozenset[bytes],
                 url_keys: frozenset[bytes]) -> list[tuple[int, int, bool]]:
    """:func:`text_ranges` of one length-delimited field (number ``field``, bytes ``data[s:e]``) of a
    span or log record."""
    out: list[tuple[int, int, bool]] = []
    if logs:
        if field == _LOG_BODY:
            out.append((s, e, False))
        elif field == _LOG_ATTRIBUTES:
            _add(out, _value_range(data, s, e, safe_keys, url_keys))
    elif field == _SPAN_ATTRIBUTES:
        _add(out, _value_range(data, s, e, safe_keys, url_keys))
    elif field == _SPAN_NAME:
        out.append((s, e, False))
    elif field in (_SPAN_EVENTS, _SPAN_LINKS):
        wanted = _EVENT_ATTRIBUTES if field == _SPAN_EVENTS else _LINK_ATTRIBUTES
        for f2, s2, e2 in _length_delimited(data, s, e):
            if f2 == wanted:
                _add(out, _value_range(data, s2, e2, safe_keys, url_keys))
    elif field == _SPAN_STATUS:
        out.extend((s2, e2, False) for f2, s2, e2 in _length_delimited(data, s, e) if f2 == _STATUS_MESSAGE)
    return out


def _add(out: list[tuple[int, int, bool]], value: tuple[int, int, bool] | None) -> None:
    if value is not None:
        out.append(value)


def _value_range(data: bytes, start: int, end: int, safe_keys: frozenset[bytes],
                 url_keys: frozenset[bytes]) -> tuple[int, int, bool] | None:
    """``(start, end, url)`` of the value of the ``KeyValue`` ``data[start:end]``; None when its key is
    safe or it has no value."""
    key = b""
    value: tuple[int, int] | None = None
    for field, s, e in _length_delimited(data, start, end):
        if field == _KV_KEY:
            key = data[s:e]
        elif field == _KV_VALUE:
            value = (s, e)
    if value is None or key in safe_keys:
        return None
    s, e = value
    if e - s >= 2 and data[s] == (_ANY_STRING << 3 | 2):  # a string: its bytes, after the tag and length
        n, p = _varint(data, s + 1)
        if p + n == e:
            s = p
            if _client_hash(key, data, s, e):
                return None
    return s, e, key in url_keys


def item_ranges(data: bytes) -> list[tuple[int, int, Path]]:
    """``(start, end, path)`` of every span or log record in a serialized request.

    Raises ``ValueError`` or ``IndexError`` on bytes that are not a well-formed message.
    """
    out: list[tuple[int, int, Path]] = []
    i = 0
    for f1, s1, e1 in _length_delimited(data, 0, len(data)):
        if f1 != 1:
            continue
        j = 0
        for f2, s2, e2 in _length_delimited(data, s1, e1):
            if f2 != 2:
                continue
            k = 0
            pos = s2
            while pos < e2:  # the items: inline, as this loop runs once per span
                tag = data[pos]
                if tag != 0x12:  # not field 2, length-delimited: the scope or schema_url
                    pos = _field_end(data, pos)
                    continue
                n = data[pos + 1]
                if n < 0x80:
                    pos += 2
                elif data[pos + 2] < 0x80:  # spans of 128 bytes to 16 KiB
                    n = (n & 0x7F) | (data[pos + 2] << 7)
                    pos += 3
                else:
                    n, pos = _varint(data, pos + 1)
                out.append((pos, pos + n, (i, j, k)))
                pos += n
                k += 1
            if pos != e2:
                raise ValueError("field runs past its message")
            j += 1
        i += 1
    return out


def _field_end(data: bytes, pos: int) -> int:
    """Where the field starting at ``pos`` ends."""
    key, pos = _varint(data, pos)
    wire = key & 7
    if wire == 2:
        n, pos = _varint(data, pos)
        return pos + n
    return _skip(data, pos, wire)


def _length_delimited(data: bytes, pos: int, end: int):
    """``(field number, start, end)`` of each length-delimited field in ``data[pos:end]``."""
    while pos < end:
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 2:
            n, pos = _varint(data, pos)
            start, pos = pos, pos + n
            if pos > end:
                raise ValueError("field runs past its message")
            yield key >> 3, start, pos
        elif wire == 0:
            pos = _varint(data, pos)[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    if pos != end:
        raise ValueError("field runs past its message")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
