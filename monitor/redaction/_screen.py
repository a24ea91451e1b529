"""Which spans or log records of an OTLP request can hold a finding: one scan of the serialized request.

:func:`flagged` serializes the request once and runs the prefilter's
``locate`` database over all of it. A request in which no superset matches
anywhere, with no JSON escape and no URL attribute, and smaller than
``max_value_bytes``, needs nothing more (the common case: a few microseconds a
span, where walking the attributes in Python alone costs more than ten).
Otherwise the request's outer structure is read from the wire format to map
each match to its span or log record; only those are walked. A match outside
any content (a hex id, random bytes of a trace id) costs a walk that finds
nothing.

Invariants:

- A superset match in a text is a match in the serialized bytes, since
  protobuf strings are stored as their UTF-8 bytes; JSON escapes and URL
  encoding are covered by decoding the span's bytes (``_prefilter.views``).
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

from monitor.redaction import _prefilter

if TYPE_CHECKING:
    from monitor.redaction.redact import Redactor

__all__ = ["flagged", "item_ranges"]

Path = tuple[int, int, int]

_ESCAPE = re.compile(_prefilter.ESCAPE)


def flagged(redactor: Redactor, msg: Message) -> list[Path] | None:
    """Paths of the items that need walking, in order; ``None``: walk them all."""
    data = msg.SerializeToString()
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

    hit = {item_at(e - 1) for e in found.matches}
    if len(data) > limit:
        hit.update(i for i, (s, e, _) in enumerate(ranges) if e - s > limit)
    if found.escapes is None:  # many: look span by span
        decode = {i for i, (s, e, _) in enumerate(ranges) if _ESCAPE.search(data, s, e)}
    else:
        decode = {item_at(e - 1) for e in found.escapes}
    urls = {item_at(e - 1) for e in found.urls}
    for i in (decode | urls) - hit - {-1}:
        s, e, _ = ranges[i]
        extra = _prefilter.views(data[s:e], url=i in urls)[1:]
        if extra and redactor._prefilter.any(*extra):
            hit.add(i)
    hit.discard(-1)
    return [ranges[i][2] for i in sorted(hit)]


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
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise ValueError(f"unexpected wire type {wire}")


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
