"""Build an OTLP ``ExportMetricsServiceRequest`` point by point (one resource, one scope).

Used by the in-process metric sources (the /metrics scraper, the NVML sampler),
which produce OTLP directly rather than through the SDK's aggregating instruments:
their values are already aggregated by the system they read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from monitor import __version__

__all__ = ["MetricsBuilder", "Hist", "CUMULATIVE", "set_attributes"]

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


@dataclass
class Hist:
    """A cumulative explicit-bucket histogram point: per-bucket counts (not cumulative), +Inf last."""

    bounds: list[float]
    counts: list[int]
    count: int
    sum: float | None
    start_ns: int


def set_attributes(target: Any, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        kv = target.add()
        kv.key = key
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        else:
            kv.value.string_value = str(value)


class MetricsBuilder:
    """One ``ExportMetricsServiceRequest`` with one resource and one scope, metrics by name."""

    def __init__(self, resource: dict[str, Any] | None, scope: str, version: str = __version__):
        self.request = ExportMetricsServiceRequest()
        rm = self.request.resource_metrics.add()
        set_attributes(rm.resource.attributes, dict(resource or {}))
        self._scope = rm.scope_metrics.add()
        self._scope.scope.name = scope
        self._scope.scope.version = version
        self._metrics: dict[str, Any] = {}

    def _metric(self, name: str, kind: str, unit: str, description: str) -> Any:
        key = f"{kind}\0{name}"
        m = self._metrics.get(key)
        if m is None:
            m = self._scope.metrics.add()
            m.name, m.unit, m.description = name, unit, description
            self._metrics[key] = m
        return m

    def gauge(self, name: str, value: float, attrs: dict[str, Any], now_ns: int,
              unit: str = "", description: str = "") -> None:
        m = self._metric(name, "gauge", unit, description)
        dp = m.gauge.data_points.add()
        set_attributes(dp.attributes, attrs)
        dp.time_unix_nano = now_ns
        dp.as_double = float(value)

    def counter(self, name: str, value: float, attrs: dict[str, Any], now_ns: int, start_ns: int,
                unit: str = "", description: str = "", monotonic: bool = True) -> None:
        m = self._metric(name, "sum", unit, description)
        m.sum.aggregation_temporality = CUMULATIVE
        m.sum.is_monotonic = monotonic
        dp = m.sum.data_points.add()
        set_attributes(dp.attributes, attrs)
        dp.start_time_unix_nano = start_ns
        dp.time_unix_nano = now_ns
        dp.as_double = float(value)

    def histogram(self, name: str, hist: Hist, attrs: dict[str, Any], now_ns: int,
                  unit: str = "", description: str = "") -> None:
        m = self._metric(name, "histogram", unit, description)
        m.histogram.aggregation_temporality = CUMULATIVE
        dp = m.histogram.data_points.add()
        set_attributes(dp.attributes, attrs)
        dp.start_time_unix_nano = hist.start_ns
        dp.time_unix_nano = now_ns
        dp.count = hist.count
        if hist.sum is not None:
            dp.sum = hist.sum
        dp.explicit_bounds.extend(hist.bounds)
        dp.bucket_counts.extend(hist.counts)

    def summary(self, name: str, count: int, total: float | None, quantiles: list[tuple[float, float]],
                attrs: dict[str, Any], now_ns: int, start_ns: int, description: str = "") -> None:
        m = self._metric(name, "summary", "", description)
        dp = m.summary.data_points.add()
        set_attributes(dp.attributes, attrs)
        dp.start_time_unix_nano = start_ns
        dp.time_unix_nano = now_ns
        dp.count = count
        if total is not None:
            dp.sum = total
        for q, v in quantiles:
            qv = dp.quantile_values.add()
            qv.quantile, qv.value = q, v

    def __len__(self) -> int:
        return len(self._scope.metrics)
