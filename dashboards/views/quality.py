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
    """Flagged requests for one signal; picking another signal reruns only this part."""
    st.subheader("Examples")
    signal = st.selectbox("Signal", list(q.SIGNALS), format_func=lambda k: q.SIGNALS[k][0], key="quality_signal")
    ex = q.examples(store, f, signal)
    if ex.empty:
        st.caption("no flagged requests for this signal and filter")
    for _, r in ex.iterrows():
        with st.expander(f"{r['timestamp']:%Y-%m-%d %H:%M:%S} · {ui.md_escape(r['model'])} · "
                         f"{ui.md_escape(r['finish_reason'] or '')}"):
            ui.plain(ui.md_escape(f"prompt ({r['prompt_language'] or '?'})"), r["prompt_preview"])
            ui.plain(ui.md_escape(f"completion ({r['completion_language'] or '?'})"), r["completion_preview"])
            st.caption(f"trace {r['trace_id']} · span {r['span_id']}")


ui.fragment(examples, "Quality")
