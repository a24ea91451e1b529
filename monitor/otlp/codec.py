"""The OTLP wire format: protobuf and JSON bodies, gzip, size bounds, Kafka payloads.

No envelope of our own: a Kafka message is the bytes of ``TracesData`` /
``MetricsData`` / ``LogsData`` (wire-identical to the ``Export*ServiceRequest``
the receiver got), exactly what the OpenTelemetry Collector's Kafka exporter
writes with ``encoding: otlp_proto``; ``otlp_json`` is read as well.

OTLP/JSON differs from protobuf's canonical JSON in one way that matters:
trace and span ids are hex strings, not base64. :func:`parse_json` and
:func:`to_json` translate them.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from monitor.errors import DecodeError, PayloadTooLarge

__all__ = [
    "Signal",
    "SIGNALS",
    "UnsupportedMediaType",
    "request_type",
    "response_type",
    "decode_body",
    "decode_message",
    "encode_message",
    "encode_response",
    "export_response",
    "gunzip_bounded",
    "parse_json",
    "to_json",
    "item_count",
]

Signal = Literal["traces", "metrics", "logs"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_REQUEST = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class UnsupportedMediaType(DecodeError):
    """Content-Type or Content-Encoding the receiver does not speak (HTTP 415)."""


def request_type(signal: Signal) -> type[Message]:
    return _REQUEST[signal]


def response_type(signal: Signal) -> type[Message]:
    return _RESPONSE[signal]


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Inflate a gzip body, refusing to produce more than ``limit`` bytes.

    A gzip bomb costs at most ``limit`` bytes of memory: inflation stops at
    the limit instead of running to completion.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DecodeError(f"invalid gzip body: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the {limit}-byte limit")
    if not inflater.eof:
        raise DecodeError("truncated gzip body")
    return out


def decode_body(signal: Signal, body: bytes, content_type: str | None,
                content_encoding: str | None, limit: int) -> tuple[Message, bool]:
    """Decode an OTLP/HTTP request body; returns ``(request, is_json)``.

    Raises :class:`UnsupportedMediaType`, :class:`PayloadTooLarge` or
    :class:`DecodeError` with a message fit for the client.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in (PROTOBUF, JSON):
        raise UnsupportedMediaType(
            f"unsupported content type {content_type!r}; use {PROTOBUF} or {JSON}")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = gunzip_bounded(body, limit)
    elif encoding not in ("identity", "none", ""):
        raise UnsupportedMediaType(f"unsupported content encoding {content_encoding!r}; use gzip or none")
    if len(body) > limit:
        raise PayloadTooLarge(f"body exceeds the {limit}-byte limit")
    is_json = media == JSON
    msg = _REQUEST[signal]()
    if is_json:
        parse_json(body, msg)
    else:
        try:
            msg.ParseFromString(body)
        except _PbDecodeError as exc:
            raise DecodeError(f"body is not a valid {msg.DESCRIPTOR.name} protobuf: {exc}") from None
    return msg, is_json


_REJECTED_FIELD = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}


def export_response(signal: Signal, rejected: int = 0, error_message: str = "") -> Message:
    """An ``Export*ServiceResponse`` message, with ``partial_success`` when something was rejected."""
    resp = _RESPONSE[signal]()
    if rejected or error_message:
        ps = resp.partial_success
        setattr(ps, _REJECTED_FIELD[signal], rejected)
        ps.error_message = error_message
    return resp


def encode_response(signal: Signal, rejected: int = 0, error_message: str = "",
                    as_json: bool = False) -> bytes:
    """:func:`export_response`, serialized (protobuf, or OTLP/JSON)."""
    resp = export_response(signal, rejected, error_message)
    if as_json:
        return json_format.MessageToJson(resp, indent=None).encode()
    return resp.SerializeToString()


def _hex_ids_to_b64(obj: Any) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _ID_KEYS and isinstance(v, str):
                try:
                    obj[k] = base64.b64encode(bytes.fromhex(v)).decode() if v else ""
                except ValueError:
                    # Not hex: leave an id of the wrong length so validation rejects
                    # this item alone (partial success) instead of the whole request.
                    obj[k] = base64.b64encode(b"\x00").decode()
            elif isinstance(v, (dict, list)):
                _hex_ids_to_b64(v)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                _hex_ids_to_b64(v)
    return obj


def _b64_ids_to_hex(obj: Any) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in _ID_KEYS and isinstance(v, str):
                obj[k] = base64.b64decode(v).hex()
            elif isinstance(v, (dict, list)):
                _b64_ids_to_hex(v)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                _b64_ids_to_hex(v)
    return obj


def parse_json(body: bytes | str, msg: Message) -> Message:
    """Parse OTLP/JSON into ``msg`` (hex ids, integer enums, unknown fields ignored)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("body is JSON nested too deeply to be OTLP") from None
    if not isinstance(data, dict):
        raise DecodeError("OTLP/JSON body must be a JSON object")
    try:
        json_format.ParseDict(_hex_ids_to_b64(data), msg, ignore_unknown_fields=True)
    except (json_format.ParseError, binascii.Error, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"body is not a valid OTLP/JSON {msg.DESCRIPTOR.name}: {exc}") from None
    except RecursionError:
        raise DecodeError(f"body is nested too deeply for an OTLP/JSON {msg.DESCRIPTOR.name}") from None
    return msg


def to_json(msg: Message) -> bytes:
    """OTLP/JSON bytes for ``msg`` (hex ids, lowerCamelCase keys)."""
    data = json_format.MessageToDict(msg, use_integers_for_enums=True)
    return json.dumps(_b64_ids_to_hex(data), separators=(",", ":")).encode()


def encode_message(msg: Message, encoding: str = "otlp_proto") -> bytes:
    """Kafka payload for ``msg`` in the Collector's ``otlp_proto`` or ``otlp_json`` encoding."""
    return to_json(msg) if encoding == "otlp_json" else msg.SerializeToString()


def decode_message(signal: Signal, value: bytes | None) -> Message:
    """Decode one Kafka message (``otlp_proto`` or ``otlp_json``, detected from the bytes).

    A protobuf ``*Data`` message can never start with ``{`` (that would be
    field 15 with the deprecated group wire type), so a first byte ``{`` tells. JSON after
    leading whitespace is tried as JSON first but may still be protobuf: the tag of field 1 is
    ``0x0a`` (a newline), and a first ``ResourceSpans`` of 123 bytes puts ``{`` right after it.
    """
    if not value:
        raise DecodeError("empty message")
    if value[:1] == b"{":
        return parse_json(value, _REQUEST[signal]())
    stripped = value.strip()
    json_error: DecodeError | None = None
    if stripped[:1] == b"{" and stripped[-1:] == b"}":
        try:
            return parse_json(value, _REQUEST[signal]())
        except DecodeError as exc:
            json_error = exc
    msg = _REQUEST[signal]()
    try:
        msg.ParseFromString(value)
    except _PbDecodeError as exc:
        raise json_error or DecodeError(f"not a valid otlp_proto {signal} payload: {exc}") from None
    return msg


def item_count(signal: Signal, msg: Message) -> int:
    """Spans, metric data points or log records in ``msg``."""
    if signal == "traces":
        return sum(len(ss.spans) for rs in msg.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        return sum(len(sl.log_records) for rl in msg.resource_logs for sl in rl.scope_logs)
    return sum(_points(m) for rm in msg.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)


def _points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0
