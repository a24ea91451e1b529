"""Overview: requests/s, tokens/s, error rate, latency and TTFT quantiles per model; auto-refresh."""

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import overview as q

st.header("Overview")
store = ui.store()
ui.require_events(store)


def body() -> None:
    f = ui.filters()
    summary, ts = q.traffic(store, f)  # one query for the whole page
    if summary.empty:
        ui.no_rows(f)
        return
    total = summary[summary["model"].isna()].iloc[0]
    st.caption(f"{f.start:%Y-%m-%d %H:%M} – {f.end:%Y-%m-%d %H:%M} UTC · {ui.fmt_num(total['requests'])} requests · "
               f"refreshed {ui.now():%H:%M:%S}, {ui.freshness(f)}")
    c = st.columns(4)
    c[0].metric("Requests/s", ui.fmt_rate(total["requests_per_s"]))
    c[1].metric("Tokens/s", ui.fmt_rate(total["tokens_per_s"]), help="input + output tokens")
    c[2].metric("Error rate", ui.fmt_pct(total["error_rate"]))
    c[3].metric("Requests", ui.fmt_num(total["requests"]))
    c = st.columns(6)
    for i, (col, name) in enumerate((("latency", "Latency"), ("ttft", "TTFT"))):
        for j, p in enumerate((50, 95, 99)):
            c[i * 3 + j].metric(f"{name} p{p}", ui.fmt_ms(total[f"{col}_p{p}"]))

    st.subheader("Per model")
    per_model = summary[summary["model"].notna()]
    ui.table(per_model[["model", "requests", "requests_per_s", "tokens_per_s", "error_rate", "latency_p50",
                        "latency_p95", "latency_p99", "ttft_p50", "ttft_p95", "ttft_p99"]],
             column_config={"error_rate": st.column_config.NumberColumn("error rate", format="percent"),
                            "requests_per_s": st.column_config.NumberColumn("requests/s", format="%.3f"),
                            "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.1f"),
                            **{f"{c}_p{p}": st.column_config.NumberColumn(f"{c} p{p} (ms)", format="%.0f")
                               for c in ("latency", "ttft") for p in (50, 95, 99)}})

    st.caption(f"one point per {f.step // 60 if f.step >= 60 else f.step} {'min' if f.step >= 60 else 's'}")
    left, right = st.columns(2)
    with left:
        ui.line_chart(ts, "requests_per_s", "model", "Requests/s", "req/s", key="rps")
        ui.line_chart(ts, "error_rate", "model", "Error rate", "", percent=True, key="err")
    with right:
        ui.line_chart(ts, "tokens_per_s", "model", "Tokens/s (input + output)", "tokens/s", key="tps")
        quant = st.radio("Quantile", ["p50", "p95", "p99"], index=1, horizontal=True, key="ov_q")
        ui.line_chart(ts, f"latency_{quant}", "model", f"Latency {quant}", "ms", key="lat")
        ui.line_chart(ts, f"ttft_{quant}", "model", f"TTFT {quant}", "ms", key="ttft")


# Auto-refresh reruns only this fragment (the sidebar keeps its state); the time range moves with now.
ui.fragment(body, "Overview", run_every=ui.refresh_interval())
