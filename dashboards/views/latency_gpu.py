"""Latency & GPU: client-seen versus engine-side time (queue, prefill, decode), GPU utilisation,
memory and power, KV-cache usage and queue depth from the scraped server metrics, GPU cost."""

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import latency as q

st.header("Latency & GPU")
store = ui.store()
ui.require_events(store)
f = ui.filters()

st.subheader("Where the time goes")
bd, series, cost = q.timings(store, f)  # one query for the request numbers of the page
gauges = q.all_gauges(store, f)         # and one for the GPU and server gauges
if bd.empty:
    ui.no_rows(f)
else:
    rows = []
    for _, r in bd.iterrows():
        for part, col in (("queue", "queue_ms"), ("prefill", "prefill_ms"), ("decode", "decode_ms")):
            rows.append({"model": r["model"], "part": part, "ms": r[f"{col}_mean"]})
        rows.append({"model": r["model"], "part": "outside the engine (network, proxy)", "ms": r["outside_engine_ms"]})
    import pandas as pd

    parts = pd.DataFrame(rows).dropna()
    if parts.empty or not bd["with_engine"].sum():
        st.info("No engine-side timings yet: they come from the server's own spans (vLLM "
                "`--otlp-traces-endpoint http://127.0.0.1:4317`); the capture proxy joins them to the "
                "client-seen request.", icon=":material/info:")
    else:
        ui.bar_chart(parts, "Mean time per request (ms)", "parts", 120 + 40 * len(bd), x="ms", y="model", color="part",
                     orientation="h")
    show = bd[["model", "requests", "with_engine", "latency_ms_p50", "engine_latency_ms_p50", "ttft_ms_p50",
               "engine_ttft_ms_p50", "queue_ms_p50", "prefill_ms_p50", "decode_ms_p50", "latency_ms_p95",
               "engine_latency_ms_p95", "queue_ms_p95", "prefill_ms_p95", "decode_ms_p95"]]
    ui.table(show.rename(columns={"with_engine": "with engine timings", "latency_ms_p50": "client latency p50",
                                  "engine_latency_ms_p50": "engine latency p50", "ttft_ms_p50": "client TTFT p50",
                                  "engine_ttft_ms_p50": "engine TTFT p50", "queue_ms_p50": "queue p50",
                                  "prefill_ms_p50": "prefill p50", "decode_ms_p50": "decode p50",
                                  "latency_ms_p95": "client latency p95", "engine_latency_ms_p95": "engine latency p95",
                                  "queue_ms_p95": "queue p95", "prefill_ms_p95": "prefill p95",
                                  "decode_ms_p95": "decode p95"}))
    st.caption("milliseconds; client-seen = measured by the capture proxy (else the engine's own figure)")
    long = series.melt(id_vars="t", value_vars=["queue_ms", "prefill_ms", "decode_ms", "latency_ms"],
                       var_name="part", value_name="ms").dropna()
    if not long.empty:
        ui.line_chart(long, "ms", "part", "Median per bucket (ms)", "ms", key="parts_ts")

st.subheader("GPU")
gpu = gauges[gauges["metric"].isin(q.GPU_METRICS)].copy()
if gpu.empty:
    st.info("No GPU metrics in this range. The NVML sampler runs inside `monitor up` / `monitor sidecar` on a host "
            "with an NVIDIA GPU and its driver (setting `gpu.enabled`); without one it says so once in the log.",
            icon=":material/memory:")
else:
    gpu["series"] = "GPU " + gpu["series"].astype(str)
    c1, c2, c3 = st.columns(3)
    with c1:
        ui.line_chart(gpu[gpu["metric"] == "hw.gpu.utilization"], "value", "series", "Utilisation", "",
                      percent=True, key="gpu_util")
    with c2:
        mem = gpu[gpu["metric"].isin(["hw.gpu.memory.usage", "hw.gpu.memory.limit"])].copy()
        mem["GiB"] = mem["value"] / 2**30
        mem["series"] = mem["series"] + mem["metric"].map({"hw.gpu.memory.usage": " used",
                                                          "hw.gpu.memory.limit": " total"})
        ui.line_chart(mem, "GiB", "series", "Memory", "GiB", key="gpu_mem")
    with c3:
        ui.line_chart(gpu[gpu["metric"] == "hw.power"], "value", "series", "Power", "W", key="gpu_power")

st.subheader("Model server")
srv = gauges[gauges["metric"].isin(q.SERVER_METRICS)].copy()
if srv.empty:
    st.info("No scraped server metrics in this range. Add `--scrape http://127.0.0.1:8000/metrics` to `monitor up` "
            "(vLLM, TGI, SGLang and llama.cpp pages are understood) for KV-cache usage and queue depth.",
            icon=":material/dns:")
else:
    srv["series"] = srv["series"].replace("", "(all)")
    c1, c2 = st.columns(2)
    with c1:
        ui.line_chart(srv[srv["metric"] == "monitor.server.kv_cache.usage"], "value", "series", "KV-cache usage", "",
                      percent=True, key="kv")
    with c2:
        depth = srv[srv["metric"].isin(["monitor.server.requests.waiting", "monitor.server.requests.running"])].copy()
        depth["series"] = depth["series"] + depth["metric"].map({"monitor.server.requests.waiting": " waiting",
                                                                 "monitor.server.requests.running": " running"})
        ui.line_chart(depth, "value", "series", "Requests waiting / running", "requests", key="depth")

st.subheader("GPU cost")
if cost.empty or not cost["requests_with_cost"].sum():
    st.info("No cost recorded: set `gpu.price_per_gpu_hour` (and `gpu.gpus_per_request` for tensor parallel) in the "
            "config; requests recorded from then on carry GPU-seconds and cost.", icon=":material/payments:")
else:
    ui.table(cost.rename(columns={"requests_with_cost": "requests with cost", "total_gpu_seconds": "GPU-seconds",
                                  "total_gpu_cost": "cost", "cost_per_1k_tokens": "cost per 1k tokens"}),
             column_config={"cost per 1k tokens": st.column_config.NumberColumn(format="%.6f"),
                            "cost": st.column_config.NumberColumn(format="%.4f")})
    st.caption("GPU-seconds per request = engine time x GPUs per request: an upper bound under batching")
