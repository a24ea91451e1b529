"""Drop the items of a request that cannot be stored, and say how many (partial success).

OTLP lets a receiver accept part of a request: the rest is reported in
``partial_success`` and the client must not retry it. Invalid ids and
nameless metrics are rejected here, item by item; the valid rest goes on.
"""

from __future__ import annotations

from google.protobuf.message import Message

from monitor.otlp.codec import Signal

__all__ = ["reject_invalid"]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


def reject_invalid(signal: Signal, msg: Message) -> tuple[int, str]:
    """Remove invalid items from ``msg`` in place; returns ``(rejected, reason)``."""
    if signal == "traces":
        return _spans(msg)
    if signal == "metrics":
        return _metrics(msg)
    return _logs(msg)


def _spans(msg: Message) -> tuple[int, str]:
    rejected = 0
    reasons: set[str] = set()
    for rs in msg.resource_spans:
        for ss in rs.scope_spans:
            bad = []
            for i, span in enumerate(ss.spans):
                if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
                    bad.append(i)
                    reasons.add("trace_id must be 16 non-zero bytes (32 hex chars)")
                elif len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
                    bad.append(i)
                    reasons.add("span_id must be 8 non-zero bytes (16 hex chars)")
                elif span.parent_span_id and len(span.parent_span_id) != 8:
                    bad.append(i)
                    reasons.add("parent_span_id must be empty or 8 bytes")
            for i in reversed(bad):
                del ss.spans[i]
            rejected += len(bad)
    return rejected, "; ".join(sorted(reasons))


def _metrics(msg: Message) -> tuple[int, str]:
    rejected = 0
    reasons: set[str] = set()
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            bad = []
            for i, metric in enumerate(sm.metrics):
                kind = metric.WhichOneof("data")
                if not metric.name:
                    bad.append(i)
                    rejected += len(getattr(metric, kind).data_points) if kind else 0
                    reasons.add("metric name must not be empty")
            for i in reversed(bad):
                del sm.metrics[i]
    return rejected, "; ".join(sorted(reasons))


def _logs(msg: Message) -> tuple[int, str]:
    rejected = 0
    reasons: set[str] = set()
    for rl in msg.resource_logs:
        for sl in rl.scope_logs:
            bad = []
            for i, rec in enumerate(sl.log_records):
                if rec.trace_id and len(rec.trace_id) != 16 or rec.span_id and len(rec.span_id) != 8:
                    bad.append(i)
                    reasons.add("log trace_id/span_id must be empty or 16/8 bytes")
            for i in reversed(bad):
                del sl.log_records[i]
            rejected += len(bad)
    return rejected, "; ".join(sorted(reasons))
