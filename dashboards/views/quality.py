"""Quality: refusal, empty, truncated, invalid-JSON, PII, repetition and language-mismatch rates
over time, per model, with examples."""

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import quality as q

st.header("Quality")
store = ui.store()
ui.require_events(store)
f = ui.filters()

per_model, series = q.all_rates(store, f)  # one query for both
if per_model.empty:
    ui.no_rows(f)
    st.stop()

totals = per_model[[c for c in per_model.columns if c.endswith(("_n", "_d"))]].sum()
cols = st.columns(len(q.SIGNALS))
for c, (k, (title, _, _)) in zip(cols, q.SIGNALS.items()):
    d = totals[f"{k}_d"]
    c.metric(title, ui.fmt_pct(totals[f"{k}_n"] / d if d else None),
             help=f"{int(totals[f'{k}_n']):,} of {int(d):,} requests")

long = series.melt(id_vars="t", value_vars=list(q.SIGNALS), var_name="signal", value_name="rate").dropna()
long["signal"] = long["signal"].map({k: v[0] for k, v in q.SIGNALS.items()})
ui.line_chart(long, "rate", "signal", "Rates per bucket", "", percent=True, key="quality_ts")

st.subheader("Per model")
show = per_model[["model", "requests", *q.SIGNALS]]
ui.table(show, column_config={k: st.column_config.NumberColumn(v[0], format="percent") for k, v in q.SIGNALS.items()})

def examples() -> None:
    """Flagged requests for one signal, one row each; picking another signal reruns only this part."""
    st.subheader("Examples")
    signal = st.selectbox("Signal", list(q.SIGNALS), format_func=lambda k: q.SIGNALS[k][0], key="quality_signal")
    ex = q.examples(store, f, signal)
    if ex.empty:
        st.caption("no flagged requests for this signal and filter")
        return
    # one grid (plain strings on a canvas) instead of an expander per request: a browser drew the
    # 20 expanders' 120 elements in ~1 s; the Requests page shows one request in full
    shown = ex[["timestamp", "model", "finish_reason", "prompt_language", "prompt_preview", "completion_language",
                "completion_preview", "trace_id"]]
    ui.table(shown, column_config={
        "timestamp": st.column_config.DatetimeColumn("time (UTC)", format="YYYY-MM-DD HH:mm:ss"),
        "finish_reason": "finish", "prompt_language": "prompt lang.", "prompt_preview": st.column_config.TextColumn(
            "prompt", width="large"), "completion_language": "completion lang.",
        "completion_preview": st.column_config.TextColumn("completion", width="large"), "trace_id": "trace"})
    st.caption("the latest 20, texts cut at 2,000 characters; the Requests page shows a request in full "
               "(search a phrase of its prompt)")


ui.fragment(examples, "Quality")
