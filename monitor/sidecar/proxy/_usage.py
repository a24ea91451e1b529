"""The usage event the capture proxy asks for on a client's behalf, and keeps from it. Pure: no I/O.

OpenAI-compatible servers report the token usage of a stream only when the
request says ``"stream_options": {"include_usage": true}``; they then send one
more SSE event, with an empty ``choices`` list and a ``usage`` object, before
``data: [DONE]``. For a client that did not ask, the proxy adds the option
(:func:`with_usage_option`) and takes exactly that one event out of what the
client receives (:class:`UsageStripper`); every other byte goes through as the
server sent it, unparsed.
"""

from __future__ import annotations

import re

import orjson

__all__ = ["with_usage_option", "UsageStripper", "USAGE_KEY", "EVENT_ENDS"]

USAGE_KEY = b'"usage"'
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_OPTION = b'"stream_options":{"include_usage":true},'


def with_usage_option(body: bytes) -> bytes | None:
    """``body`` asking for the usage event, or None when it needs no change: not a JSON object
    with ``"stream": true``, or the client asked for usage itself.

    When the body has no ``stream_options`` the option is inserted after the opening brace, so
    every byte the client sent reaches the server as it was; otherwise the merged object is
    re-serialised (orjson)."""
    if b'"stream"' not in body:  # substring first: most bodies end here without a parse
        return None
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(req, dict) or req.get("stream") is not True:
        return None
    opts = req.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return None
    if "stream_options" not in req:
        brace = body.index(b"{")
        return body[:brace + 1] + _OPTION + body[brace + 1:]
    req["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return orjson.dumps(req)


def _last_event_end(buf: bytes) -> int:
    """Offset just past the last complete event in ``buf`` (0 when there is none)."""
    lf, crlf, cr = buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n"), buf.rfind(b"\r\r")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0, cr + 2 if cr >= 0 else 0)


def _is_usage_only(event: bytes) -> bool:
    """An SSE event whose data is a JSON object with ``"choices": []`` and a ``usage`` object."""
    data = [line[6:] if line[5:6] == b" " else line[5:]
            for line in _LINE_END.split(event) if line.startswith(b"data:")]
    if not data:
        return False
    try:
        obj = orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


class UsageStripper:
    """Feeds an SSE stream through, minus the first usage-only event.

    Holds back at most the bytes of one incomplete event (until its terminator
    arrives: ``\\n\\n``, ``\\r\\n\\r\\n`` or ``\\r\\r``); nothing else is held.
    Only events that contain ``"usage"`` and an empty ``choices`` list are
    parsed (servers that put ``"usage": null`` in every chunk cost a regex
    search per chunk, not a parse). Once the event is out, everything passes
    straight through.
    """

    __slots__ = ("held", "done")

    def __init__(self) -> None:
        self.held = b""
        """Bytes of an incomplete event, not passed on yet."""
        self.done = False
        """The usage event was removed: nothing more to look for."""

    def feed(self, piece: bytes) -> bytes:
        """The bytes to pass on now: ``piece`` (with what was held before it), less the usage
        event and the trailing incomplete event."""
        if self.done:
            return piece
        if not self.held:
            if USAGE_KEY not in piece or _EMPTY_CHOICES.search(piece) is None:
                if piece.endswith(EVENT_ENDS):
                    return piece  # the common case: whole events, none of them the usage event
                end = _last_event_end(piece)
                self.held = piece[end:]
                return piece[:end]
            return self._scan(piece)
        return self._scan(self.held + piece)

    def flush(self) -> bytes:
        """At the end of the stream: whatever was held (an unterminated last event)."""
        rest, self.held = self.held, b""
        return rest

    def _scan(self, buf: bytes) -> bytes:
        out = []
        start = emitted = 0
        for m in _EVENT_END.finditer(buf):
            end = m.end()
            if buf.find(USAGE_KEY, start, end) != -1 and _EMPTY_CHOICES.search(buf, start, end) is not None \
                    and _is_usage_only(buf[start:m.start()]):
                out.append(buf[emitted:start])
                self.done = True
                out.append(buf[end:])  # nothing more is held once the event is out
                self.held = b""
                return b"".join(out)
            start = end
        self.held = buf[start:]
        out.append(buf[emitted:start])
        return b"".join(out)
