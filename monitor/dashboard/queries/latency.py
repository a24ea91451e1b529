"""Latency & GPU: client-seen versus engine-side timings, GPU and server gauges, GPU cost."""

from __future__ import annotations

import pandas as pd

from monitor.dashboard.filters import Filters
from monitor.dashboard.queries._sql import EVENTS, TS, bucket, events_where, frame

__all__ = ["breakdown", "breakdown_series", "gauges", "cost", "GPU_METRICS", "SERVER_METRICS", "TIMINGS"]

TIMINGS = ("latency_ms", "engine_latency_ms", "ttft_ms", "engine_ttft_ms", "queue_ms", "prefill_ms", "decode_ms")
"""Client-seen (``latency_ms``, ``ttft_ms``: the capture proxy's when it measured them) and
engine-side timings (the server's own span: vLLM ``llm_request``)."""

GPU_METRICS = ("hw.gpu.utilization", "hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.power")
SERVER_METRICS = ("monitor.server.kv_cache.usage", "monitor.server.requests.waiting",
                  "monitor.server.requests.running")


def breakdown(store, f: Filters) -> pd.DataFrame:
    """Per model: requests, how many have engine timings, p50/p95/mean of every timing (ms)."""
    where, p = events_where(f)
    cols = ", ".join(f"quantiles(0.5, 0.95)({c}) AS {c}_q, avg({c}) AS {c}_mean" for c in TIMINGS)
    df = frame(store.query(
        f"SELECT model, count() AS requests, "
        f"countIf(queue_ms IS NOT NULL OR prefill_ms IS NOT NULL OR decode_ms IS NOT NULL) AS with_engine, "
        f"avgIf(latency_ms - engine_latency_ms, latency_ms IS NOT NULL AND engine_latency_ms IS NOT NULL) "
        f"AS outside_engine_ms, {cols} FROM {EVENTS} WHERE {where} GROUP BY model ORDER BY requests DESC, model", p))
    for c in TIMINGS:
        if df.empty:
            break
        df[f"{c}_p50"] = [_nan(v[0]) if v else None for v in df[f"{c}_q"]]
        df[f"{c}_p95"] = [_nan(v[1]) if v else None for v in df[f"{c}_q"]]
        df[f"{c}_mean"] = [_nan(v) for v in df[f"{c}_mean"]]
        df = df.drop(columns=[f"{c}_q"])
    if not df.empty:
        df["outside_engine_ms"] = [_nan(v) for v in df["outside_engine_ms"]]
    return df


def breakdown_series(store, f: Filters) -> pd.DataFrame:
    """Per bucket: median queue, prefill and decode time and client latency over the selected models
    (the four lines of the page's chart: every median costs a sampled sort per bucket)."""
    where, p = events_where(f)
    df = frame(store.query(
        f"SELECT {bucket()} AS t, quantile(0.5)(queue_ms) AS queue_ms, quantile(0.5)(prefill_ms) AS prefill_ms, "
        f"quantile(0.5)(decode_ms) AS decode_ms, quantile(0.5)(latency_ms) AS latency_ms "
        f"FROM {EVENTS} WHERE {where} GROUP BY t ORDER BY t", {**p, "step": f.step}))
    if not df.empty:
        df["t"] = pd.to_datetime(df["t"], utc=True)
    return df


def gauges(store, f: Filters, metrics: tuple[str, ...], series_attr: str) -> pd.DataFrame:
    """Average of gauge ``metrics`` per bucket, metric and value of attribute ``series_attr``
    (``hw.gpu.index`` for GPUs, ``gen_ai.request.model`` for the scraped server metrics)."""
    p = {"start": f.start, "end": f.end, "names": list(metrics), "attr": series_attr, "step": f.step}
    cond = ""
    if f.models and series_attr == "gen_ai.request.model":
        cond = " AND Attributes[{attr:String}] IN {models:Array(String)}"
        p["models"] = list(f.models)
    df = frame(store.query(
        f"SELECT {bucket('TimeUnix')} AS t, MetricName AS metric, Attributes[{{attr:String}}] AS series, "
        f"avg(Value) AS value, max(Value) AS max_value FROM otel_metrics_gauge "
        f"WHERE MetricName IN {{names:Array(String)}} AND TimeUnix >= {{start:{TS}}} AND TimeUnix < {{end:{TS}}}"
        f"{cond} GROUP BY t, metric, series ORDER BY t, metric, series", p))
    if not df.empty:
        df["t"] = pd.to_datetime(df["t"], utc=True)
    return df


def cost(store, f: Filters) -> pd.DataFrame:
    """Per model: GPU-seconds, cost and cost per 1,000 tokens (input + output) over the requests
    that have a cost (``gpu.price_per_gpu_hour`` set where they were recorded)."""
    where, p = events_where(f)
    df = frame(store.query(
        f"SELECT model, countIf(gpu_cost IS NOT NULL) AS requests_with_cost, sum(gpu_seconds) AS total_gpu_seconds, "
        f"sum(gpu_cost) AS total_gpu_cost, "
        f"sumIf(ifNull(input_tokens, 0) + ifNull(output_tokens, 0), gpu_cost IS NOT NULL) AS tokens "
        f"FROM {EVENTS} WHERE {where} GROUP BY model ORDER BY model", p))
    if not df.empty:
        df["cost_per_1k_tokens"] = [c / t * 1000 if t and c is not None else None
                                    for c, t in zip(df["total_gpu_cost"], df["tokens"])]
    return df


def _nan(v):
    return None if v is None or v != v else float(v)
