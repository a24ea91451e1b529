"""OTLP data to table rows, in the OpenTelemetry Collector ClickHouse exporter's columns. Pure.

``otel_traces``, ``otel_metrics_{gauge,sum,histogram,exponential_histogram,summary}``
and ``otel_logs`` keep the Collector's names and types, so Grafana's
ClickHouse data source and other OTel tooling read them unchanged; model
requests also become ``inference_events`` rows (see :mod:`monitor.otlp.genai`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from monitor.events import INFERENCE_EVENT_COLUMNS
from monitor.otlp.genai import span_to_event
from monitor.otlp.values import attrs_to_str_map, to_str

__all__ = ["TABLE_COLUMNS", "Rows", "traces_rows", "metrics_rows", "logs_rows", "rows_for"]

_SPAN_KIND = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
_STATUS = ("Unset", "Ok", "Error")

_METRIC_COMMON = (
    "ResourceAttributes", "ResourceSchemaUrl", "ScopeName", "ScopeVersion", "ScopeAttributes",
    "ScopeDroppedAttrCount", "ScopeSchemaUrl", "ServiceName", "MetricName", "MetricDescription",
    "MetricUnit", "Attributes", "StartTimeUnix", "TimeUnix",
)
_EXEMPLARS = ("Exemplars.FilteredAttributes", "Exemplars.TimeUnix", "Exemplars.Value",
              "Exemplars.SpanId", "Exemplars.TraceId")

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "otel_traces": (
        "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
        "ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes", "Duration",
        "StatusCode", "StatusMessage", "Events.Timestamp", "Events.Name", "Events.Attributes",
        "Links.TraceId", "Links.SpanId", "Links.TraceState", "Links.Attributes",
    ),
    "inference_events": INFERENCE_EVENT_COLUMNS,
    "otel_metrics_gauge": _METRIC_COMMON + ("Value", "Flags") + _EXEMPLARS,
    "otel_metrics_sum": _METRIC_COMMON + ("Value", "Flags") + _EXEMPLARS
    + ("AggregationTemporality", "IsMonotonic"),
    "otel_metrics_histogram": _METRIC_COMMON + ("Count", "Sum", "BucketCounts", "ExplicitBounds")
    + _EXEMPLARS + ("Flags", "Min", "Max", "AggregationTemporality"),
    "otel_metrics_exponential_histogram": _METRIC_COMMON + (
        "Count", "Sum", "Scale", "ZeroCount", "PositiveOffset", "PositiveBucketCounts",
        "NegativeOffset", "NegativeBucketCounts") + _EXEMPLARS + ("Flags", "Min", "Max", "AggregationTemporality"),
    "otel_metrics_summary": _METRIC_COMMON + (
        "Count", "Sum", "ValueAtQuantiles.Quantile", "ValueAtQuantiles.Value", "Flags"),
    "otel_logs": (
        "Timestamp", "TraceId", "SpanId", "TraceFlags", "SeverityText", "SeverityNumber", "ServiceName",
        "Body", "ResourceSchemaUrl", "ResourceAttributes", "ScopeSchemaUrl", "ScopeName", "ScopeVersion",
        "ScopeAttributes", "LogAttributes",
    ),
}
"""Insert column order per table; the schema files under schemas/clickhouse/ define the same names."""

Rows = dict[str, list[list[Any]]]
"""Table name to rows (each a list in :data:`TABLE_COLUMNS` order)."""


def _service(res_attrs: dict[str, str]) -> str:
    return res_attrs.get("service.name", "")


def traces_rows(data: Any, out: Rows | None = None) -> Rows:
    """``otel_traces`` rows for every span and ``inference_events`` rows for model requests."""
    out = out if out is not None else defaultdict(list)
    traces = out["otel_traces"]
    events = out["inference_events"]
    for rs in data.resource_spans:
        res = attrs_to_str_map(rs.resource.attributes)
        service = _service(res)
        for ss in rs.scope_spans:
            scope_name, scope_version = ss.scope.name, ss.scope.version
            for span in ss.spans:
                ev_ts, ev_name, ev_attrs = [], [], []
                for e in span.events:
                    ev_ts.append(e.time_unix_nano)
                    ev_name.append(e.name)
                    ev_attrs.append(attrs_to_str_map(e.attributes))
                l_tid, l_sid, l_state, l_attrs = [], [], [], []
                for link in span.links:
                    l_tid.append(link.trace_id.hex())
                    l_sid.append(link.span_id.hex())
                    l_state.append(link.trace_state)
                    l_attrs.append(attrs_to_str_map(link.attributes))
                duration = span.end_time_unix_nano - span.start_time_unix_nano
                span_attrs = attrs_to_str_map(span.attributes)
                traces.append([
                    span.start_time_unix_nano, span.trace_id.hex(), span.span_id.hex(),
                    span.parent_span_id.hex(), span.trace_state, span.name,
                    _SPAN_KIND[span.kind] if span.kind < len(_SPAN_KIND) else "Unspecified",
                    service, res, scope_name, scope_version, span_attrs,
                    duration if duration > 0 else 0,
                    _STATUS[span.status.code] if span.status.code < len(_STATUS) else "Unset",
                    span.status.message, ev_ts, ev_name, ev_attrs, l_tid, l_sid, l_state, l_attrs,
                ])
                event = span_to_event(span, service, span_attrs)
                if event is not None:
                    events.append(event.row())
    return out


def _exemplars(points_exemplars: Any) -> list[list]:
    fa, tu, val, sid, tid = [], [], [], [], []
    for ex in points_exemplars:
        fa.append(attrs_to_str_map(ex.filtered_attributes))
        tu.append(ex.time_unix_nano)
        val.append(ex.as_double if ex.WhichOneof("value") == "as_double" else float(ex.as_int))
        sid.append(ex.span_id.hex())
        tid.append(ex.trace_id.hex())
    return [fa, tu, val, sid, tid]


def _number(dp: Any) -> float:
    return dp.as_double if dp.WhichOneof("value") == "as_double" else float(dp.as_int)


def metrics_rows(data: Any, out: Rows | None = None) -> Rows:
    out = out if out is not None else defaultdict(list)
    for rm in data.resource_metrics:
        res = attrs_to_str_map(rm.resource.attributes)
        service = _service(res)
        for sm in rm.scope_metrics:
            scope = sm.scope
            scope_attrs = attrs_to_str_map(scope.attributes)
            for metric in sm.metrics:
                head = [res, rm.schema_url, scope.name, scope.version, scope_attrs,
                        scope.dropped_attributes_count, sm.schema_url, service, metric.name,
                        metric.description, metric.unit]
                kind = metric.WhichOneof("data")
                if kind == "gauge":
                    rows = out["otel_metrics_gauge"]
                    for dp in metric.gauge.data_points:
                        rows.append(head + [attrs_to_str_map(dp.attributes), dp.start_time_unix_nano,
                                            dp.time_unix_nano, _number(dp), dp.flags] + _exemplars(dp.exemplars))
                elif kind == "sum":
                    rows = out["otel_metrics_sum"]
                    s = metric.sum
                    for dp in s.data_points:
                        rows.append(head + [attrs_to_str_map(dp.attributes), dp.start_time_unix_nano,
                                            dp.time_unix_nano, _number(dp), dp.flags] + _exemplars(dp.exemplars)
                                    + [s.aggregation_temporality, s.is_monotonic])
                elif kind == "histogram":
                    rows = out["otel_metrics_histogram"]
                    h = metric.histogram
                    for dp in h.data_points:
                        rows.append(head + [attrs_to_str_map(dp.attributes), dp.start_time_unix_nano,
                                            dp.time_unix_nano, dp.count, dp.sum, list(dp.bucket_counts),
                                            list(dp.explicit_bounds)] + _exemplars(dp.exemplars)
                                    + [dp.flags, dp.min, dp.max, h.aggregation_temporality])
                elif kind == "exponential_histogram":
                    rows = out["otel_metrics_exponential_histogram"]
                    h = metric.exponential_histogram
                    for dp in h.data_points:
                        rows.append(head + [attrs_to_str_map(dp.attributes), dp.start_time_unix_nano,
                                            dp.time_unix_nano, dp.count, dp.sum, dp.scale, dp.zero_count,
                                            dp.positive.offset, list(dp.positive.bucket_counts),
                                            dp.negative.offset, list(dp.negative.bucket_counts)]
                                    + _exemplars(dp.exemplars)
                                    + [dp.flags, dp.min, dp.max, h.aggregation_temporality])
                elif kind == "summary":
                    rows = out["otel_metrics_summary"]
                    for dp in metric.summary.data_points:
                        rows.append(head + [attrs_to_str_map(dp.attributes), dp.start_time_unix_nano,
                                            dp.time_unix_nano, dp.count, dp.sum,
                                            [q.quantile for q in dp.quantile_values],
                                            [q.value for q in dp.quantile_values], dp.flags])
    return out


def logs_rows(data: Any, out: Rows | None = None) -> Rows:
    out = out if out is not None else defaultdict(list)
    rows = out["otel_logs"]
    for rl in data.resource_logs:
        res = attrs_to_str_map(rl.resource.attributes)
        service = _service(res)
        for sl in rl.scope_logs:
            scope = sl.scope
            scope_attrs = attrs_to_str_map(scope.attributes)
            for rec in sl.log_records:
                rows.append([
                    rec.time_unix_nano or rec.observed_time_unix_nano, rec.trace_id.hex(), rec.span_id.hex(),
                    rec.flags & 0xFF, rec.severity_text, rec.severity_number, service, to_str(rec.body),
                    rl.schema_url, res, sl.schema_url, scope.name, scope.version, scope_attrs,
                    attrs_to_str_map(rec.attributes),
                ])
    return out


_CONVERT = {"traces": traces_rows, "metrics": metrics_rows, "logs": logs_rows}


def rows_for(batch: Any) -> Rows:
    """Rows for every table from an iterable of ``(signal, message)`` pairs."""
    out: Rows = defaultdict(list)
    for signal, msg in batch:
        _CONVERT[signal](msg, out)
    return out
