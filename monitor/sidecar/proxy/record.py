"""What the capture proxy hands off per request: the bytes both ways and when they moved. Pure.

The proxy's request path only forwards bytes and keeps a copy; everything
that interprets them (parsing the stream, reassembling the output, the span,
redaction, the engine-span join) happens later, in the pipeline process, from
a :class:`CaptureRecord`. Records cross the process boundary as
:func:`encode` / :func:`decode` frames (a small JSON header, then the raw
request and response bodies), so a 30 MB prompt costs one memcpy on the
request path, never a parse.

Before it forwards a captured request upstream, the proxy also sends a
:class:`CaptureStart` (a 25-byte frame: the span id it put in ``traceparent``):
the engine's own span (vLLM's ``llm_request``, a child of that span) can reach
the pipeline before the record does, and the pipeline must know then that a
proxy span is coming, to join the two into one event.

Timings: ``start_ns`` / ``end_ns`` are wall-clock nanoseconds (the span's
times); ``chunks`` are ``(t_ns, offset)`` pairs in monotonic nanoseconds
after the request's first byte: at ``t_ns`` the response bytes up to
``offset`` (of :attr:`response_body`, as the upstream sent them) had been
written to the client. TTFT and inter-token latency are derived from them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson

__all__ = ["CaptureRecord", "CaptureStart", "encode", "encode_start", "decode", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_START = 2
_HEAD = struct.Struct("<BIII")  # version, header length, request body length, response body length


@dataclass(frozen=True, slots=True)
class CaptureStart:
    """A captured request went upstream with this trace and span id; its record follows."""

    trace_id: bytes
    span_id: bytes


@dataclass(slots=True)
class CaptureRecord:
    api: str
    """``openai`` or ``ollama`` (the dialect of the route)."""
    operation: str
    """``chat``, ``text_completion`` or ``embeddings``."""
    path: str
    """The request path as the client sent it (no query string)."""
    trace_id: bytes
    """16 bytes: the client's trace (from its ``traceparent``) or a new one."""
    span_id: bytes
    """8 bytes: the proxy's span, sent upstream as the parent in ``traceparent``."""
    parent_span_id: bytes = b""
    """The client's span (from its ``traceparent``), or empty."""
    trace_state: str = ""
    start_ns: int = 0
    end_ns: int = 0
    request_body: bytes = b""
    request_size: int = 0
    """Bytes the client sent (``request_body`` holds at most the capture limit of them)."""
    status: int = 0
    """The upstream's HTTP status; 0 when no response head arrived."""
    content_type: str = ""
    """The upstream response's Content-Type."""
    response_body: bytes = b""
    """The response body as the upstream sent it (de-chunked), including a usage event the proxy asked
    for and did not pass on; at most the capture limit."""
    response_size: int = 0
    chunks: list[tuple[int, int]] = field(default_factory=list)
    """``(t_ns, offset)``: when the body up to ``offset`` had reached the client (see the module doc).
    Empty in a record that carries the :attr:`digest` instead of the stream (the digest holds the times
    that brought content)."""
    headers_ns: int | None = None
    """Monotonic ns after the first byte when the upstream's response head arrived."""
    usage_requested: bool = False
    """The proxy added ``stream_options.include_usage``; the usage event was kept from the client."""
    error_type: str = ""
    """Empty on a complete exchange, else ``timeout``, ``upstream_unreachable``,
    ``upstream_disconnected``, ``client_disconnected``, ``request_too_large``, ..."""
    upstream: str = ""
    """The upstream base URL that served it (``http://host:port``)."""
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)
    """Extra span attributes from the proxy (``server.address``, ``server.port``, ...)."""
    client_headers: dict[str, str] = field(default_factory=dict, repr=False)
    """The client's request headers its identity comes from (``clients.key_headers``, ``user_headers``,
    ``conversation_headers``; lower-case names, values as latin-1, the first of a repeated one). The
    pipeline hashes the credential among them when it makes the span
    (:func:`monitor.otlp.identity.client_attributes`) and drops the rest: never a span attribute,
    never spooled. Absent from a record that does not carry it (an older proxy, or none of them sent): the
    request then has no key hash, its user and conversation come from the body alone."""
    client_address: str = field(default="", repr=False)
    """The peer address of the client's connection (for ``clients.address_fallback``: hashed, never
    stored as is)."""
    digest: dict | None = field(default=None, repr=False)
    """An OpenAI SSE or Ollama NDJSON stream as the native proxy reassembled it after the response, off
    its event loop (``native/proxy/src/digest.rs``): then :attr:`response_body` is empty (or, for the
    parity test, the stream too) and :func:`monitor.sidecar.proxy.spans.record_to_span` reads this
    instead of replaying the stream (:meth:`monitor.sidecar.proxy.capture.Capture.apply_digest`).
    Keys: ``body_len`` (bytes of the stream it read), ``model`` / ``id`` (the last non-empty),
    ``output`` / ``roles`` (per choice index), ``finish``, ``pieces`` (content pieces), ``content_t``
    (the chunk times, as in :attr:`chunks`, that brought content), ``usage`` / ``timings`` (every such
    object, as sent), ``done`` (Ollama: the last object's counts and durations, as sent)."""

    @property
    def truncated(self) -> bool:
        kept = self.digest["body_len"] if self.digest is not None else len(self.response_body)
        return self.request_size > len(self.request_body) or self.response_size > kept


_FIELDS = ("api", "operation", "path", "trace_state", "start_ns", "end_ns", "request_size", "status",
           "content_type", "response_size", "chunks", "headers_ns", "usage_requested", "error_type", "upstream",
           "attributes")
_IDENTITY_FIELDS = ("client_headers", "client_address")
"""Written only when set (the native proxy writes them the same way); a frame without them decodes with the
defaults."""
_DIGEST_KEYS = {"body_len": int, "output": list, "roles": list, "finish": list, "pieces": int, "content_t": list,
                "usage": list, "timings": list}


def encode(r: CaptureRecord) -> bytes:
    """One frame: header (version, lengths), JSON metadata, request body, response body."""
    meta = {k: getattr(r, k) for k in _FIELDS}
    for k in _IDENTITY_FIELDS:
        v = getattr(r, k)
        if v:
            meta[k] = v
    meta["ids"] = (r.trace_id + r.span_id + r.parent_span_id).hex()
    if r.digest is not None:  # the native proxy writes it last, too
        meta["digest"] = r.digest
    head = orjson.dumps(meta)
    return b"".join((_HEAD.pack(FORMAT_VERSION, len(head), len(r.request_body), len(r.response_body)), head,
                     r.request_body, r.response_body))


def encode_start(trace_id: bytes, span_id: bytes) -> bytes:
    return bytes((_START,)) + trace_id + span_id


def decode(frame: bytes | memoryview) -> CaptureRecord | CaptureStart:
    """Inverse of :func:`encode` and :func:`encode_start`; raises ValueError on a frame of another
    version or a bad length."""
    view = memoryview(frame)
    if len(view) == 25 and view[0] == _START:
        return CaptureStart(bytes(view[1:17]), bytes(view[17:25]))
    if len(view) < _HEAD.size:
        raise ValueError("capture frame shorter than its header")
    version, n_head, n_req, n_resp = _HEAD.unpack_from(view)
    if version != FORMAT_VERSION:
        raise ValueError(f"capture frame version {version}, expected {FORMAT_VERSION}")
    if _HEAD.size + n_head + n_req + n_resp != len(view):
        raise ValueError("capture frame length does not match its header")
    pos = _HEAD.size
    meta = orjson.loads(view[pos:pos + n_head])
    pos += n_head
    req = bytes(view[pos:pos + n_req])
    resp = bytes(view[pos + n_req:pos + n_req + n_resp])
    ids = bytes.fromhex(meta.pop("ids"))
    meta["chunks"] = [tuple(c) for c in meta["chunks"]]
    headers = meta.get("client_headers")
    if headers is not None and not (isinstance(headers, dict)
                                    and all(isinstance(v, str) for v in headers.values())):
        raise ValueError("capture frame: client_headers is not an object of strings")
    if not isinstance(meta.get("client_address", ""), str):
        raise ValueError("capture frame: client_address is not a string")
    digest = meta.get("digest")
    if digest is not None and not (isinstance(digest, dict) and all(
            isinstance(digest.get(k), t) for k, t in _DIGEST_KEYS.items())):
        raise ValueError("capture frame: digest is not the native proxy's digest object")
    return CaptureRecord(trace_id=ids[:16], span_id=ids[16:24], parent_span_id=ids[24:], request_body=req,
                         response_body=resp, **meta)
