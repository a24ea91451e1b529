"""The tables ingest writes: their insert columns, and how each numeric column is kept in range.

The DDL lives in ``schemas/clickhouse/NNNN_*.sql``; this module says, per
table, which columns ingest inserts (in that order) and, for every numeric
and DateTime64 column, why no value the store would reject can reach it
(:data:`RANGE_GUARDS`). ClickHouse rejects a whole insert for one value out
of its column's range (DateTime64(9) ends in 2262, a UInt32 takes no -1), and
a rejected batch that is retried as it is can never succeed: so the ranges
are enforced when rows are built (:mod:`monitor.ingest.normalize`), and
tests/test_ingest_ranges.py holds every numeric column of the live schema
against this table, so a new column cannot reintroduce the problem.
"""

from __future__ import annotations

from monitor.events import INFERENCE_EVENT_COLUMNS

__all__ = ["TABLE_COLUMNS", "RANGE_GUARDS", "DEAD_LETTERS", "DEAD_LETTER_COLUMNS", "MAX_DATETIME64_NS",
           "INSERT_ORDER"]

MAX_DATETIME64_NS = 2**63 - 1
"""The last instant a DateTime64(9) holds (2262-04-11): OTLP's fixed64 times can exceed it."""

_METRIC_COMMON = (
    "ResourceAttributes", "ResourceSchemaUrl", "ScopeName", "ScopeVersion", "ScopeAttributes",
    "ScopeDroppedAttrCount", "ScopeSchemaUrl", "ServiceName", "MetricName", "MetricDescription",
    "MetricUnit", "Attributes", "StartTimeUnix", "TimeUnix",
)
_EXEMPLARS = ("Exemplars.FilteredAttributes", "Exemplars.TimeUnix", "Exemplars.Value",
              "Exemplars.SpanId", "Exemplars.TraceId")

DEAD_LETTERS = "dead_letters"
DEAD_LETTER_COLUMNS = ("timestamp", "source", "signal", "item", "reason", "payload")

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
    DEAD_LETTERS: DEAD_LETTER_COLUMNS,
}
"""Insert column order per table; the schema files under schemas/clickhouse/ define the same names."""

INSERT_ORDER = ("otel_traces", "inference_events", "otel_metrics_gauge", "otel_metrics_sum",
                "otel_metrics_histogram", "otel_metrics_exponential_histogram", "otel_metrics_summary",
                "otel_logs", DEAD_LETTERS)
"""Tables of one batch are inserted in this order, so a partly applied batch is retried from the same
tables (each insert carries its own dedup token)."""

_CLAMPED_TS = "an OTLP fixed64 time; >= 2^63 ns is replaced (see monitor.ingest.normalize._ts) and flagged"
_WIDTH = "the OTLP field's own type fits the column"
_FLOAT = "any float, NaN and infinities included, fits Float32/Float64"
_FLAG = "0 or 1, computed"

RANGE_GUARDS: dict[tuple[str, str], str] = {
    **{(t, c): g for t in ("otel_traces",) for c, g in (
        ("Timestamp", _CLAMPED_TS), ("Events.Timestamp", _CLAMPED_TS),
        ("Duration", "end - start of the clamped times, 0 when negative"))},
    **{(t, c): g for t in ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
                           "otel_metrics_exponential_histogram", "otel_metrics_summary")
       for c, g in (("StartTimeUnix", _CLAMPED_TS), ("TimeUnix", _CLAMPED_TS),
                    ("ScopeDroppedAttrCount", _WIDTH + " (uint32)"), ("Flags", _WIDTH + " (uint32)"))},
    **{(t, c): g for t in ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
                           "otel_metrics_exponential_histogram")
       for c, g in (("Exemplars.TimeUnix", _CLAMPED_TS), ("Exemplars.Value", _FLOAT))},
    ("otel_metrics_gauge", "Value"): _FLOAT, ("otel_metrics_sum", "Value"): _FLOAT,
    ("otel_metrics_sum", "AggregationTemporality"): _WIDTH + " (enum, int32)",
    ("otel_metrics_sum", "IsMonotonic"): _WIDTH + " (bool)",
    **{("otel_metrics_histogram", c): g for c, g in (
        ("Count", _WIDTH + " (fixed64)"), ("Sum", _FLOAT), ("BucketCounts", _WIDTH + " (fixed64)"),
        ("ExplicitBounds", _FLOAT), ("Min", _FLOAT), ("Max", _FLOAT),
        ("AggregationTemporality", _WIDTH + " (enum, int32)"))},
    **{("otel_metrics_exponential_histogram", c): g for c, g in (
        ("Count", _WIDTH + " (fixed64)"), ("Sum", _FLOAT), ("Scale", _WIDTH + " (sint32)"),
        ("ZeroCount", _WIDTH + " (fixed64)"), ("PositiveOffset", _WIDTH + " (sint32)"),
        ("PositiveBucketCounts", _WIDTH + " (uint64)"), ("NegativeOffset", _WIDTH + " (sint32)"),
        ("NegativeBucketCounts", _WIDTH + " (uint64)"), ("Min", _FLOAT), ("Max", _FLOAT),
        ("AggregationTemporality", _WIDTH + " (enum, int32)"))},
    **{("otel_metrics_summary", c): g for c, g in (
        ("Count", _WIDTH + " (fixed64)"), ("Sum", _FLOAT), ("ValueAtQuantiles.Quantile", _FLOAT),
        ("ValueAtQuantiles.Value", _FLOAT))},
    ("otel_logs", "Timestamp"): _CLAMPED_TS,
    ("otel_logs", "TimestampTime"): "DEFAULT toDateTime(Timestamp), from the clamped time",
    ("otel_logs", "TraceFlags"): "flags & 0xFF",
    ("otel_logs", "SeverityNumber"): "an OTLP enum (int32): outside 0..255 it becomes 0 and is flagged",
    ("inference_events", "timestamp"): _CLAMPED_TS,
    **{("inference_events", c): "token counts from attributes: outside 0..2^32-1 they become NULL and are flagged"
       for c in ("input_tokens", "output_tokens")},
    **{("inference_events", c): _FLOAT + " (milliseconds and costs computed from floats)"
       for c in ("ttft_ms", "latency_ms", "queue_ms", "prefill_ms", "decode_ms", "inference_ms", "engine_ttft_ms",
                 "engine_latency_ms", "itl_ms", "gpu_seconds", "gpu_cost", "repetition")},
    **{("inference_events", c): _FLAG for c in ("refusal", "empty_output", "truncated", "json_valid", "degenerate",
                                                "language_mismatch")},
    ("inference_events", "pii_in_output"): "a count of placeholders, capped at 65535",
    ("inference_events", "max_tokens"): "a token limit from attributes: outside 0..2^32-1 it becomes NULL and is flagged",
    **{("inference_events", c): "a count from the request, capped at 65535 (monitor.otlp.identity, genai)"
       for c in ("top_logprobs", "logit_bias")},
    **{("inference_events", c): _FLAG for c in ("logprobs", "injection")},
    ("inference_events", "cached_tokens"): "a token count from attributes: outside 0..2^32-1 it becomes NULL and is flagged",
    ("inference_events", "token_cost"): _FLOAT + " (tokens x prices from config)",
    ("dead_letters", "timestamp"): "the time ingest set it aside (now)",
    ("dead_letters", "item"): "an index into the message (int32) or -1",
}
"""(table, column) -> why its values are always in range. Every numeric and DateTime column of the
tables ingest writes must have an entry (tests/test_ingest_ranges.py checks the live schema)."""
