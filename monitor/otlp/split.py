"""Cut a request into Kafka messages that fit the broker's limit.

By default a request travels as one message (the Collector's Kafka exporter
does the same), cut by resource, then span by span, only when it is larger
than ``kafka.max_message_bytes``. With ``partition_traces_by_id`` (the
Collector's option of that name) every message holds the spans of one trace
and is keyed by the trace id, so a trace stays in one partition; that costs a
copy of every span. A single span over the limit is rejected (reported as
partial success), never silently dropped. Metrics and logs travel as whole
requests, split by resource when too large.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from monitor.otlp.codec import Signal, encode_message, item_count

__all__ = ["Split", "split_for_kafka"]


class Split:
    """Messages ready to produce: ``(key or None, value)`` pairs, plus what did not fit."""

    __slots__ = ("messages", "rejected", "reason")

    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes]] = []
        self.rejected = 0
        self.reason = ""


def split_for_kafka(signal: Signal, msg: Message, max_bytes: int, encoding: str = "otlp_proto",
                    by_trace: bool = False) -> Split:
    out = Split()
    if signal == "traces" and by_trace:
        for trace_id, data in _by_trace(msg):
            _emit_traces(out, trace_id, data, max_bytes, encoding)
    else:
        _emit_whole(out, signal, msg, max_bytes, encoding)
    return out


def _by_trace(msg: Message) -> Iterator[tuple[bytes, trace_pb2.TracesData]]:
    groups: dict[bytes, trace_pb2.TracesData] = {}
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            # one (resource, scope) pair per trace, created lazily
            scopes: dict[bytes, trace_pb2.ScopeSpans] = {}
            for span in ss.spans:
                scope = scopes.get(span.trace_id)
                if scope is None:
                    data = groups.get(span.trace_id)
                    if data is None:
                        data = groups[span.trace_id] = trace_pb2.TracesData()
                    new_rs = data.resource_spans.add()
                    new_rs.resource.CopyFrom(rs.resource)
                    new_rs.schema_url = rs.schema_url
                    scope = scopes[span.trace_id] = new_rs.scope_spans.add()
                    scope.scope.CopyFrom(ss.scope)
                    scope.schema_url = ss.schema_url
                scope.spans.append(span)
    return iter(groups.items())


def _single(rs: Any, ss: Any, span: Any) -> trace_pb2.TracesData:
    one = trace_pb2.TracesData()
    r = one.resource_spans.add()
    r.resource.CopyFrom(rs.resource)
    r.schema_url = rs.schema_url
    s = r.scope_spans.add()
    s.scope.CopyFrom(ss.scope)
    s.schema_url = ss.schema_url
    s.spans.append(span)
    return one


def _emit_traces(out: Split, trace_id: bytes, data: trace_pb2.TracesData, max_bytes: int, encoding: str) -> None:
    value = encode_message(data, encoding)
    if len(value) <= max_bytes:
        out.messages.append((trace_id, value))
        return
    for rs in data.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                one = trace_pb2.TracesData()
                r = one.resource_spans.add()
                r.resource.CopyFrom(rs.resource)
                r.schema_url = rs.schema_url
                s = r.scope_spans.add()
                s.scope.CopyFrom(ss.scope)
                s.schema_url = ss.schema_url
                s.spans.append(span)
                value = encode_message(one, encoding)
                if len(value) <= max_bytes:
                    out.messages.append((trace_id, value))
                else:
                    out.rejected += 1
                    out.reason = f"a span of {len(value)} bytes exceeds kafka.max_message_bytes ({max_bytes})"


_DATA = {"traces": (trace_pb2.TracesData, "resource_spans"), "metrics": (metrics_pb2.MetricsData, "resource_metrics"),
         "logs": (logs_pb2.LogsData, "resource_logs")}


def _emit_whole(out: Split, signal: Signal, msg: Message, max_bytes: int, encoding: str) -> None:
    data_cls, field = _DATA[signal]
    if encoding == "otlp_proto":
        # An Export*ServiceRequest is wire-identical to the *Data message: no copy needed.
        value = msg.SerializeToString()
    else:
        data = data_cls()
        getattr(data, field).extend(getattr(msg, field))
        value = encode_message(data, encoding)
    if len(value) <= max_bytes:
        out.messages.append((None, value))
        return
    for res in getattr(msg, field):
        one = data_cls()
        getattr(one, field).append(res)
        value = encode_message(one, encoding)
        if len(value) <= max_bytes:
            out.messages.append((None, value))
        elif signal == "traces":
            for scope in res.scope_spans:  # span by span, as for a trace too large for one message
                for span in scope.spans:
                    _emit_traces(out, span.trace_id, _single(res, scope, span), max_bytes, encoding)
        else:
            out.rejected += item_count(signal, one)
            out.reason = f"a {signal} resource block of {len(value)} bytes exceeds kafka.max_message_bytes ({max_bytes})"
