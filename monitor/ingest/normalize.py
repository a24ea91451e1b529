"""Normalisation: decoded OTLP requests to table rows and canonical events. Pure: no I/O.

``otel_traces``, ``otel_metrics_*`` and ``otel_logs`` rows keep the
OpenTelemetry Collector ClickHouse exporter's names and string forms (so
Grafana and other OTel tooling read them unchanged); every model request also
becomes an :class:`~monitor.events.InferenceEvent` (:mod:`monitor.otlp.genai`),
which the enrich step completes with quality signals before it is a row.

Nothing the store would reject leaves here (see
:data:`monitor.store.tables.RANGE_GUARDS`): a time past DateTime64(9)'s end
(OTLP times are fixed64; 2^64-1 ns is a valid wire value) is replaced by the
nearest sound time of the same item (a span's start by its end, an event's by
its span's start, ...) or by the time of ingest, and the item keeps the
original value in the attribute ``monitor.fixed``; token counts outside
UInt32 become NULL the same way (in :mod:`monitor.otlp.genai`); a log
severity outside 0..255 becomes 0. Attribute values longer than
:data:`MAX_VALUE_CHARS` are cut with a visible marker, so one huge attribute
costs a bounded amount downstream.

Each row remembers which message of the batch it came from (:attr:`Batch.origin`),
so a row the store still rejects can be set aside with its message's bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from monitor.events import InferenceEvent
from monitor.otlp.genai import FIXED_KEY, JOINED_KEY, build_event, is_model_request, resource_facts
from monitor.otlp.values import array_str, double_str, to_str
from monitor.store.tables import MAX_DATETIME64_NS

__all__ = ["Batch", "normalize", "traces_rows", "metrics_rows", "logs_rows", "MAX_VALUE_CHARS", "attrs_map"]

MAX_VALUE_CHARS = 1 << 20
"""Attribute values (and log bodies) longer than this are cut, with ``…[truncated N chars]`` appended."""

_SPAN_KIND = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
_STATUS = ("Unset", "Ok", "Error")


@dataclass(slots=True)
class Batch:
    """Rows per table, where each came from, and the model requests still to enrich."""

    rows: dict[str, list[list]] = field(default_factory=dict)
    origin: dict[str, list[int]] = field(default_factory=dict)
    """Per table, per row: the index of the message it came from."""
    events: list[InferenceEvent] = field(default_factory=list)
    event_origin: list[int] = field(default_factory=list)
    fixed: int = 0
    """Values replaced because the store could not hold them."""
    messages: list = field(default_factory=list)
    """Origin index -> the message it stands for (set by the caller, for setting refused rows aside)."""

    def add(self, table: str, row: list, origin: int) -> None:
        rows = self.rows.get(table)
        if rows is None:
            rows = self.rows[table] = []
            self.origin[table] = []
        rows.append(row)
        self.origin[table].append(origin)

    def finish_events(self) -> None:
        """Turn the (enriched) events into ``inference_events`` rows."""
        if self.events:
            self.rows["inference_events"] = [e.row() for e in self.events]
            self.origin["inference_events"] = list(self.event_origin)

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


def _cut(s: str) -> str:
    return s[:MAX_VALUE_CHARS] + f"…[truncated {len(s) - MAX_VALUE_CHARS} chars]"


def attrs_map(kvs: Any) -> dict[str, str]:
    """OTLP attributes as the Collector stores them: every value a string (see monitor.otlp.values).

    Each protobuf field read costs about as much as the Python around it, so the value is probed by
    its likely kind (a non-empty string, then a non-zero integer) before asking which kind it is."""
    out: dict[str, str] = {}
    for kv in kvs:
        v = kv.value
        s = v.string_value  # "" unless the value is a non-empty string
        if s:
            out[kv.key] = s if len(s) <= MAX_VALUE_CHARS else _cut(s)
            continue
        i = v.int_value  # 0 unless the value is a non-zero integer
        if i:
            out[kv.key] = str(i)
            continue
        kind = v.WhichOneof("value")
        if kind == "bool_value":
            out[kv.key] = "true" if v.bool_value else "false"
        elif kind is None or kind == "string_value":
            out[kv.key] = ""
        elif kind == "int_value":
            out[kv.key] = "0"
        elif kind == "double_value":
            out[kv.key] = double_str(v.double_value)
        elif kind == "array_value":
            s = array_str(v.array_value)
            out[kv.key] = s if len(s) <= MAX_VALUE_CHARS else _cut(s)
        else:
            s = to_str(v)
            out[kv.key] = s if len(s) <= MAX_VALUE_CHARS else _cut(s)
    return out


def _fix(attrs: dict[str, str], what: str, value: int) -> None:
    note = f"{what}={value}"
    attrs[FIXED_KEY] = f"{attrs[FIXED_KEY]},{note}" if FIXED_KEY in attrs else note


def normalize(decoded: list[tuple[str, Any]], now_ns: int | None = None) -> Batch:
    """Rows for every table from ``(signal, message)`` pairs (the message's index is its origin)."""
    out = Batch()
    now_ns = now_ns if now_ns is not None else time.time_ns()
    for i, (signal, msg) in enumerate(decoded):
        if signal == "traces":
            traces_rows(msg, out, i, now_ns)
        elif signal == "metrics":
            metrics_rows(msg, out, i, now_ns)
        elif signal == "logs":
            logs_rows(msg, out, i, now_ns)
        else:
            raise ValueError(f"unknown signal {signal!r}")
    return out


def traces_rows(data: Any, out: Batch, origin: int = 0, now_ns: int = 0) -> Batch:
    """``otel_traces`` rows for every span; an event for every model request (in ``out.events``).

    One pass per span: its attributes are read once (the row's map is the one the event reads and
    notes fixes in), its ids turned to hex once, its resource's facts worked out once per resource."""
    max_ts = MAX_DATETIME64_NS
    rows: list[list] = []
    events, event_origin = out.events, out.event_origin
    span_kinds, statuses = _SPAN_KIND, _STATUS
    for rs in data.resource_spans:
        res = attrs_map(rs.resource.attributes)
        service = res.get("service.name", "")
        facts = resource_facts(res)
        for ss in rs.scope_spans:
            scope = ss.scope
            scope_name, scope_version = scope.name, scope.version
            for span in ss.spans:
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                span_attrs = attrs_map(span.attributes)
                if start > max_ts or end > max_ts:
                    out.fixed += 1
                    if start > max_ts:
                        _fix(span_attrs, "start_time_unix_nano", start)
                    if end > max_ts:
                        _fix(span_attrs, "end_time_unix_nano", end)
                    start = start if start <= max_ts else (end if end <= max_ts else now_ns)
                    end = end if end <= max_ts else start
                ev_ts, ev_name, ev_attrs = [], [], []
                span_events = span.events
                if span_events:
                    for e in span_events:
                        t = e.time_unix_nano
                        if t > max_ts:
                            out.fixed += 1
                            _fix(span_attrs, f"events.{len(ev_ts)}.time_unix_nano", t)
                            t = start
                        ev_ts.append(t)
                        ev_name.append(e.name)
                        ev_attrs.append(attrs_map(e.attributes))
                l_tid, l_sid, l_state, l_attrs = [], [], [], []
                links = span.links
                if links:
                    for link in links:
                        l_tid.append(link.trace_id.hex())
                        l_sid.append(link.span_id.hex())
                        l_state.append(link.trace_state)
                        l_attrs.append(attrs_map(link.attributes))
                duration = end - start
                status = span.status
                code = status.code
                kind = span.kind
                name = span.name
                trace_id, span_id = span.trace_id.hex(), span.span_id.hex()
                rows.append([
                    start, trace_id, span_id, span.parent_span_id.hex(), span.trace_state,
                    name, span_kinds[kind] if 0 <= kind < 6 else "Unspecified",
                    service, res, scope_name, scope_version, span_attrs, duration if duration > 0 else 0,
                    statuses[code] if 0 <= code < 3 else "Unset", status.message,
                    ev_ts, ev_name, ev_attrs, l_tid, l_sid, l_state, l_attrs,
                ])
                dialect = is_model_request(name, span_attrs)
                if dialect is not None and JOINED_KEY not in span_attrs:
                    events.append(build_event(span, dialect, span_attrs, service, start, end, trace_id, span_id,
                                              kind, code, facts))
                    event_origin.append(origin)
    if rows:
        table = out.rows.get("otel_traces")
        if table is None:
            table = out.rows["otel_traces"] = []
            out.origin["otel_traces"] = []
        table.extend(rows)
        out.origin["otel_traces"].extend([origin] * len(rows))
    return out


def _exemplars(points_exemplars: Any, point_time: int, out: Batch) -> list[list]:
    fa, tu, val, sid, tid = [], [], [], [], []
    for ex in points_exemplars:
        fa.append(attrs_map(ex.filtered_attributes))
        t = ex.time_unix_nano
        if t > MAX_DATETIME64_NS:
            out.fixed += 1
            fa[-1][FIXED_KEY] = f"time_unix_nano={t}"
            t = point_time
        tu.append(t)
        val.append(ex.as_double if ex.WhichOneof("value") == "as_double" else float(ex.as_int))
        sid.append(ex.span_id.hex())
        tid.append(ex.trace_id.hex())
    return [fa, tu, val, sid, tid]


def _number(dp: Any) -> float:
    return dp.as_double if dp.WhichOneof("value") == "as_double" else float(dp.as_int)


def _point_times(dp: Any, attrs: dict[str, str], out: Batch, now_ns: int) -> tuple[int, int]:
    start, t = dp.start_time_unix_nano, dp.time_unix_nano
    if t > MAX_DATETIME64_NS or start > MAX_DATETIME64_NS:
        out.fixed += 1
        if t > MAX_DATETIME64_NS:
            _fix(attrs, "time_unix_nano", t)
            t = now_ns
        if start > MAX_DATETIME64_NS:
            _fix(attrs, "start_time_unix_nano", start)
            start = t
    return start, t


def metrics_rows(data: Any, out: Batch, origin: int = 0, now_ns: int = 0) -> Batch:
    for rm in data.resource_metrics:
        res = attrs_map(rm.resource.attributes)
        service = res.get("service.name", "")
        for sm in rm.scope_metrics:
            scope = sm.scope
            scope_attrs = attrs_map(scope.attributes)
            for metric in sm.metrics:
                head = [res, rm.schema_url, scope.name, scope.version, scope_attrs,
                        scope.dropped_attributes_count, sm.schema_url, service, metric.name,
                        metric.description, metric.unit]
                kind = metric.WhichOneof("data")
                if kind == "gauge":
                    for dp in metric.gauge.data_points:
                        attrs = attrs_map(dp.attributes)
                        start, t = _point_times(dp, attrs, out, now_ns)
                        out.add("otel_metrics_gauge", head + [attrs, start, t, _number(dp), dp.flags]
                                + _exemplars(dp.exemplars, t, out), origin)
                elif kind == "sum":
                    s = metric.sum
                    for dp in s.data_points:
                        attrs = attrs_map(dp.attributes)
                        start, t = _point_times(dp, attrs, out, now_ns)
                        out.add("otel_metrics_sum", head + [attrs, start, t, _number(dp), dp.flags]
                                + _exemplars(dp.exemplars, t, out) + [s.aggregation_temporality, s.is_monotonic],
                                origin)
                elif kind == "histogram":
                    h = metric.histogram
                    for dp in h.data_points:
                        attrs = attrs_map(dp.attributes)
                        start, t = _point_times(dp, attrs, out, now_ns)
                        out.add("otel_metrics_histogram", head + [
                            attrs, start, t, dp.count, dp.sum, list(dp.bucket_counts), list(dp.explicit_bounds)]
                            + _exemplars(dp.exemplars, t, out) + [dp.flags, dp.min, dp.max,
                                                                  h.aggregation_temporality], origin)
                elif kind == "exponential_histogram":
                    h = metric.exponential_histogram
                    for dp in h.data_points:
                        attrs = attrs_map(dp.attributes)
                        start, t = _point_times(dp, attrs, out, now_ns)
                        out.add("otel_metrics_exponential_histogram", head + [
                            attrs, start, t, dp.count, dp.sum, dp.scale, dp.zero_count, dp.positive.offset,
                            list(dp.positive.bucket_counts), dp.negative.offset, list(dp.negative.bucket_counts)]
                            + _exemplars(dp.exemplars, t, out) + [dp.flags, dp.min, dp.max,
                                                                  h.aggregation_temporality], origin)
                elif kind == "summary":
                    for dp in metric.summary.data_points:
                        attrs = attrs_map(dp.attributes)
                        start, t = _point_times(dp, attrs, out, now_ns)
                        out.add("otel_metrics_summary", head + [
                            attrs, start, t, dp.count, dp.sum, [q.quantile for q in dp.quantile_values],
                            [q.value for q in dp.quantile_values], dp.flags], origin)
    return out


def logs_rows(data: Any, out: Batch, origin: int = 0, now_ns: int = 0) -> Batch:
    for rl in data.resource_logs:
        res = attrs_map(rl.resource.attributes)
        service = res.get("service.name", "")
        for sl in rl.scope_logs:
            scope = sl.scope
            scope_attrs = attrs_map(scope.attributes)
            for rec in sl.log_records:
                attrs = attrs_map(rec.attributes)
                t = rec.time_unix_nano or rec.observed_time_unix_nano
                if t > MAX_DATETIME64_NS:
                    out.fixed += 1
                    _fix(attrs, "time_unix_nano", t)
                    t = rec.observed_time_unix_nano if 0 < rec.observed_time_unix_nano <= MAX_DATETIME64_NS \
                        else now_ns
                severity = rec.severity_number
                if not 0 <= severity <= 255:
                    out.fixed += 1
                    _fix(attrs, "severity_number", severity)
                    severity = 0
                body = to_str(rec.body)
                out.add("otel_logs", [
                    t, rec.trace_id.hex(), rec.span_id.hex(), rec.flags & 0xFF, rec.severity_text, severity,
                    service, body if len(body) <= MAX_VALUE_CHARS else _cut(body), rl.schema_url, res,
                    sl.schema_url, scope.name, scope.version, scope_attrs, attrs,
                ], origin)
    return out
