"""Alerts: what is firing, the history of fire / resolve events, the delivery log per webhook."""

import streamlit as st

from monitor.dashboard import ui
from monitor.dashboard.queries import alerts as q

st.header("Alerts")
store = ui.store()
f = ui.filters()

have = q.available(store)
if "alert_events" not in have:
    st.info("This store has no alert tables yet: they come with the alerts schema (0009), which `monitor up` / "
            "`monitor alerts` apply at start. Upgrade the monitor and restart it.", icon=":material/info:")
    st.stop()

firing = q.firing(store, f)
history = q.history(store, f)
c = st.columns(3)
c[0].metric("Firing", ui.fmt_num(len(firing)))
c[1].metric("Fired in range", ui.fmt_num((history["event"] == "fire").sum() if not history.empty else 0))
c[2].metric("Resolved in range", ui.fmt_num((history["event"] == "resolve").sum() if not history.empty else 0))

st.subheader("Firing")
if firing.empty:
    st.success("Nothing is firing.", icon=":material/check_circle:")
else:
    ui.table(firing.drop(columns=["last_event"]))

st.subheader("History")
if history.empty:
    st.info("No alert events in this range. Alerts fire from check results by the rules under `alerts:` in the "
            "config (rules and channels; see the README's Alerts section); `monitor alerts test` sends a test "
            "notification.", icon=":material/info:")
else:
    ui.table(history)

st.subheader("Deliveries")
if "alert_deliveries" in have:
    summary = q.delivery_summary(store, f)
    if summary.empty:
        st.caption("no delivery attempts in this range")
    else:
        ui.table(summary, column_config={"median_ms": st.column_config.NumberColumn("median (ms)", format="%.0f")})
        channel = st.selectbox("Channel", list(summary["channel"]), key="alerts_channel")
        ui.table(q.deliveries(store, f, channel),
                 column_config={"duration_ms": st.column_config.NumberColumn("duration (ms)", format="%.0f")})
if "alert_outbox" in have:
    box = q.outbox(store)
    if not box.empty:
        st.caption("outbox now (pending notifications are retried; dead ones gave up)")
        ui.table(box)
