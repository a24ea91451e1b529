"""Clients: who called (the keyed hash of the API key, else the user id), their usage, and the abuse
verdicts naming them."""

import json

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import clients as q

st.header("Clients")
store = ui.store()
ui.require_events(store)
f = ui.filters()

df, total = q.usage(store, f)
if df.empty:
    ui.no_rows(f)
    st.stop()

c = st.columns(4)
c[0].metric("Clients", ui.fmt_num(total))
c[1].metric("Requests", ui.fmt_num(int(df["requests"].sum())),
            help="of the busiest clients listed" if total > len(df) else None)
c[2].metric("Tokens", ui.fmt_num(int(df["input_tokens"].sum() + df["output_tokens"].sum())))
flagged = q.verdicts(store, f)
c[3].metric("Abuse verdicts", ui.fmt_num(len(flagged)))
st.caption("A client is the keyed hash (HMAC-SHA256 with clients.secret) of the API key it sent, else "
           "user:<id>, else addr:<hash>; the key itself is never stored.")

st.subheader("Usage per client")
if total > len(df):
    st.caption(f"the busiest {len(df):,} of {total:,} clients")
ui.table(df, column_config={
    "error_rate": st.column_config.NumberColumn("error rate", format="percent"),
    "refusal_rate": st.column_config.NumberColumn("refusal rate", format="percent"),
    "cost": st.column_config.NumberColumn("cost", format="%.2f"),
    "latency_ms_p50": st.column_config.NumberColumn("p50 ms", format="%.0f"),
    "latency_ms_p95": st.column_config.NumberColumn("p95 ms", format="%.0f"),
})

top = list(df["client"].head(8))
series = q.over_time(store, f, top)
if not series.empty:
    series["client"] = series["client"].map(lambda v: v[:20])
    ui.line_chart(series, "requests", "client", "Requests per bucket, busiest clients", "requests", key="clients_ts")

st.subheader("Abuse verdicts")
if flagged.empty:
    st.success("No client was flagged in this range (volume, templated prompts, embedding coverage, PRADA, "
               "logprob extraction, jailbreak attempts).", icon=":material/check_circle:")
else:
    ui.table(flagged.drop(columns=["details"]))
    for _, r in flagged.head(20).iterrows():
        with st.expander(f"{r['timestamp']:%Y-%m-%d %H:%M:%S} · {ui.md_escape(r['signal'])} · "
                         f"{ui.md_escape(r['client'][:40])}"):
            details = json.loads(r["details"] or "{}")
            ui.plain("verdict", details.get("summary", ""))
            ui.plain("evidence", json.dumps(details.get("evidence", {}), indent=2, ensure_ascii=False), mono=True)
            for ex in details.get("examples", []):
                ui.plain(ui.md_escape(f"example prompt (trace {ex.get('trace_id', '')})"), ex.get("prompt", ""))
