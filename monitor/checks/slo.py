"""Service-level objectives per model: latency and TTFT quantiles, tokens per second, error rate,
GPU utilisation and memory, KV-cache usage, against thresholds from ``checks.slo``.

Only thresholds that are set are checked. Latency figures come from ``inference_events``
(client-seen when the capture proxy measured them); GPU and KV-cache figures from the scraped and
sampled metrics in ``otel_metrics_gauge`` over the same window (KV cache per model when the
server labels it, GPU over every device the sidecars report).
"""

from __future__ import annotations

from monitor.checks.base import CheckContext, Result

__all__ = ["SloCheck"]

_EVENT_SLOS = {
    "ttft_ms_p50": ("quantile(0.5)(ttft_ms)", "max"),
    "ttft_ms_p95": ("quantile(0.95)(ttft_ms)", "max"),
    "ttft_ms_p99": ("quantile(0.99)(ttft_ms)", "max"),
    "latency_ms_p50": ("quantile(0.5)(latency_ms)", "max"),
    "latency_ms_p95": ("quantile(0.95)(latency_ms)", "max"),
    "latency_ms_p99": ("quantile(0.99)(latency_ms)", "max"),
    "tokens_per_s_p50_min": ("quantile(0.5)(if(decode_ms > 0, output_tokens / (decode_ms / 1000), "
                             "if(latency_ms > 0, output_tokens / (latency_ms / 1000), NULL)))", "min"),
    "error_rate": ("countIf(status_code = 'Error') / count()", "max"),
}
_GPU_SLOS = {
    "gpu_utilization_max": ("hw.gpu.utilization", None),
    "gpu_memory_utilization_max": ("hw.gpu.memory.utilization", None),
    "kv_cache_usage_max": ("monitor.server.kv_cache.usage", "gen_ai.request.model"),
}


class SloCheck:
    name = "slo"

    def thresholds(self, ctx: CheckContext):
        slo = ctx.settings.slo
        return slo.get(ctx.scope.model) or slo.get("*")

    def run(self, ctx: CheckContext) -> list[Result]:
        t = self.thresholds(ctx)
        if t is None:
            return []
        wanted = {k: v for k, v in t.model_dump().items() if v is not None}
        if not wanted:
            return []
        out: list[Result] = []
        where, params = ctx.where("current")
        event_keys = [k for k in wanted if k in _EVENT_SLOS]
        if event_keys:
            exprs = ", ".join(_EVENT_SLOS[k][0] for k in event_keys)
            row = ctx.store.query_rows(f"SELECT count(), {exprs} FROM {ctx.table} WHERE {where}", params)[0]
            n = int(row[0])
            for k, v in zip(event_keys, row[1:]):
                out.append(self._judge(ctx, k, v, wanted[k], _EVENT_SLOS[k][1], n))
        for k in (k for k in wanted if k in _GPU_SLOS):
            metric, model_attr = _GPU_SLOS[k]
            p = {"name": metric, "s": ctx.current.start, "e": ctx.current.end, "m": ctx.scope.model}
            cond = "MetricName = {name:String} AND TimeUnix >= {s:DateTime64(9, 'UTC')} AND TimeUnix < {e:DateTime64(9, 'UTC')}"
            if model_attr:
                cond += f" AND Attributes['{model_attr}'] IN ({{m:String}}, '')"
            n, value = ctx.store.query_rows(f"SELECT count(), avg(Value) FROM otel_metrics_gauge WHERE {cond}", p)[0]
            out.append(self._judge(ctx, k, value if n else None, wanted[k], "max", int(n)))
        return out

    @staticmethod
    def _judge(ctx: CheckContext, key: str, value, threshold: float, kind: str, n: int) -> Result:
        r = Result(check="slo", metric=key, status="ok", value=value, threshold=threshold, method=kind, current_n=n)
        if value is None or value != value or n < ctx.settings.min_samples and not key.startswith(("gpu", "kv")):
            r.status = "insufficient_data"
        elif n == 0:
            r.status = "insufficient_data"
        elif (kind == "max" and value > threshold) or (kind == "min" and value < threshold):
            r.status = "fail"
        r.details = {"rule": f"{'<=' if kind == 'max' else '>='} {threshold}"}
        return r
