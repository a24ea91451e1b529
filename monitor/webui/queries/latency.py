"""Latency & GPU: client-seen versus engine-side timings, GPU and server gauges, GPU cost."""

from __future__ import annotations

import pandas as pd

from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import EVENTS, ROLLUP_Q, TS, bucket, events_where, frame, rollup_source

__all__ = ["timings", "breakdown", "breakdown_series", "gauges", "all_gauges", "cost", "GPU_METRICS", "SERVER_METRICS",
           "TIMINGS"]

TIMINGS = ("latency_ms", "engine_latency_ms", "ttft_ms", "engine_ttft_ms", "queue_ms", "prefill_ms", "decode_ms")
"""Client-seen (``latency_ms``, ``ttft_ms``: the capture proxy's when it measured them) and
engine-side timings (the server's own span: vLLM ``llm_request``)."""

GPU_METRICS = ("hw.gpu.utilization", "hw.gpu.memory.usage", "hw.gpu.memory.limit", "hw.power")
_SERIES = ("queue_ms", "prefill_ms", "decode_ms", "latency_ms")
"""The medians per bucket (the page's chart)."""
SERVER_METRICS = ("monitor.server.kv_cache.usage", "monitor.server.requests.waiting",
                  "monitor.server.requests.running")


@prefetchable
def timings(store, f: Filters) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The page's request numbers in one pass over the range: ``(breakdown, series, cost)`` as
    :func:`breakdown`, :func:`breakdown_series` and :func:`cost` describe them (one query,
    ``GROUPING SETS ((model), (t))``: the rows are read once; from 6 hours on, the rollups' rows, see
    :func:`~monitor.webui.queries._sql.rollup_source`)."""
    rolled = rollup_source(store, f)
    if rolled is None:
        where, p = events_where(f)
        source, ts = f"{EVENTS} WHERE {where}", "timestamp"
        select = [("count()", "requests"),
                  ("countIf(queue_ms IS NOT NULL OR prefill_ms IS NOT NULL OR decode_ms IS NOT NULL)", "with_engine"),
                  ("avgIf(latency_ms - engine_latency_ms, latency_ms IS NOT NULL AND engine_latency_ms IS NOT NULL)",
                   "outside_engine_ms")]
        for c in TIMINGS:
            select += [(f"quantiles(0.5, 0.95)({c})", f"{c}_qs"), (f"avg({c})", f"{c}_mean")]
        # the medians' aliases must not be column names: ClickHouse would read the other aggregates'
        # arguments as these aggregates (ILLEGAL_AGGREGATION)
        select += [(f"quantile(0.5)({c})", f"median_{c}") for c in _SERIES]
        select += [("countIf(gpu_cost IS NOT NULL)", "requests_with_cost"), ("sum(gpu_seconds)", "total_gpu_seconds"),
                   ("sum(gpu_cost)", "total_gpu_cost"),
                   ("sumIf(ifNull(input_tokens, 0) + ifNull(output_tokens, 0), gpu_cost IS NOT NULL)", "tokens")]
    else:
        (source, p), ts = rolled, "minute"
        select = [("sum(requests)", "requests"), ("sum(with_engine)", "with_engine"),
                  ("sum(outside_engine_sum) / sum(outside_engine_n)", "outside_engine_ms")]
        for c in TIMINGS:
            select += [(f"{ROLLUP_Q}({c}_q)", f"{c}_qs"),
                       (f"sum({c}_sum) / sum({c}_n)", f"{c}_mean")]
        select += [(f"{ROLLUP_Q}({c}_q)[1]", f"median_{c}") for c in _SERIES]
        select += [("sum(requests_with_cost)", "requests_with_cost"), ("sum(gpu_seconds_sum)", "total_gpu_seconds"),
                   ("sum(gpu_cost_sum)", "total_gpu_cost"), ("sum(cost_tokens)", "tokens")]
    select = [("grouping(model)", "per_bucket"), ("model", "model"), (bucket(ts), "t"), *select]
    df = frame(store.query(
        f"SELECT {', '.join(f'{e} AS {a}' for e, a in select)} "
        f"FROM {source} GROUP BY GROUPING SETS ((model), (t)) "
        f"ORDER BY per_bucket, requests DESC, model, t", {**p, "step": f.step}), [a for _, a in select])
    per_model = df[df["per_bucket"] == 0]
    bd = per_model[["model", "requests", "with_engine", "outside_engine_ms",
                    *[f"{c}_{k}" for c in TIMINGS for k in ("qs", "mean")]]].reset_index(drop=True)
    for c in TIMINGS:
        bd[f"{c}_p50"] = [_nan(v[0]) if len(v) else None for v in bd[f"{c}_qs"]]
        bd[f"{c}_p95"] = [_nan(v[1]) if len(v) else None for v in bd[f"{c}_qs"]]
        bd[f"{c}_mean"] = [_nan(v) for v in bd[f"{c}_mean"]]
        bd = bd.drop(columns=[f"{c}_qs"])
    bd["outside_engine_ms"] = [_nan(v) for v in bd["outside_engine_ms"]]
    series = df[df["per_bucket"] == 1][["t", *[f"median_{c}" for c in _SERIES]]]
    series = series.rename(columns={f"median_{c}": c for c in _SERIES}).sort_values("t").reset_index(drop=True)
    series["t"] = pd.to_datetime(series["t"], utc=True)
    for c in _SERIES:
        series[c] = [_nan(v) for v in series[c]]
    cost = per_model[["model", "requests_with_cost", "total_gpu_seconds", "total_gpu_cost", "tokens"]]
    cost = cost.sort_values("model").reset_index(drop=True)
    cost["cost_per_1k_tokens"] = [c / t * 1000 if t and c is not None and c == c else None
                                  for c, t in zip(cost["total_gpu_cost"], cost["tokens"])]
    return bd, series, cost


@prefetchable
def breakdown(store, f: Filters) -> pd.DataFrame:
    """Per model: requests, how many have engine timings, p50/p95/mean of every timing (ms)."""
    return timings(store, f)[0]


@prefetchable
def breakdown_series(store, f: Filters) -> pd.DataFrame:
    """Per bucket: median queue, prefill and decode time and client latency over the selected models
    (the four lines of the page's chart)."""
    return timings(store, f)[1]


@prefetchable
def all_gauges(store, f: Filters) -> pd.DataFrame:
    """:func:`gauges` of :data:`GPU_METRICS` (series: ``hw.gpu.index``) and :data:`SERVER_METRICS`
    (series: ``gen_ai.request.model``; the model filter applies to these) in one query."""
    p = {"start": f.start, "end": f.end, "gpu": list(GPU_METRICS), "server": list(SERVER_METRICS), "step": f.step}
    cond = ""
    if f.models:
        cond = " AND (MetricName IN {gpu:Array(String)} OR Attributes['gen_ai.request.model'] IN {models:Array(String)})"
        p["models"] = list(f.models)
    df = frame(store.query(
        f"SELECT {bucket('TimeUnix')} AS t, MetricName AS metric, "
        "if(MetricName IN {gpu:Array(String)}, Attributes['hw.gpu.index'], Attributes['gen_ai.request.model']) "
        "AS series, avg(Value) AS value, max(Value) AS max_value FROM otel_metrics_gauge "
        "WHERE MetricName IN arrayConcat({gpu:Array(String)}, {server:Array(String)}) "
        f"AND TimeUnix >= {{start:{TS}}} AND TimeUnix < {{end:{TS}}}{cond} "
        "GROUP BY t, metric, series ORDER BY t, metric, series", p), ["t", "metric", "series", "value", "max_value"])
    if not df.empty:
        df["t"] = pd.to_datetime(df["t"], utc=True)
    return df


@prefetchable
def gauges(store, f: Filters, metrics: tuple[str, ...], series_attr: str) -> pd.DataFrame:
    """Average of gauge ``metrics`` (some of :data:`GPU_METRICS` or :data:`SERVER_METRICS`) per
    bucket, metric and series (``hw.gpu.index`` for GPUs, ``gen_ai.request.model`` for the scraped
    server metrics), from :func:`all_gauges`."""
    if series_attr not in ("hw.gpu.index", "gen_ai.request.model"):
        raise ValueError(f"no gauge series by {series_attr!r}")
    df = all_gauges(store, f)
    return df[df["metric"].isin(metrics)].reset_index(drop=True)


@prefetchable
def cost(store, f: Filters) -> pd.DataFrame:
    """Per model: GPU-seconds, cost and cost per 1,000 tokens (input + output) over the requests
    that have a cost (``gpu.price_per_gpu_hour`` set where they were recorded)."""
    return timings(store, f)[2]


def _nan(v):
    return None if v is None or v != v else float(v)
