"""Alerts: what is firing, the history of fire / resolve events, the delivery log per webhook."""

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import alerts as q

st.header("Alerts")
store = ui.store()
f = ui.filters()

have = q.available(store)
if "alert_events" not in have:
    st.info("This store has no alert tables yet: they come with the alerts schema (0009), which `monitor up` / "
            "`monitor alerts` apply at start. Upgrade the monitor and restart it.", icon=":material/info:")
    st.stop()

firing = q.firing(store, f)
n = q.counts(store, f)  # totals from ClickHouse: the history list below is capped
c = st.columns(3)
c[0].metric("Firing", ui.fmt_num(len(firing)))
c[1].metric("Fired in range", ui.fmt_num(n["fired"]))
c[2].metric("Resolved in range", ui.fmt_num(n["resolved"]))

st.subheader("Firing")
if firing.empty:
    st.success("Nothing is firing.", icon=":material/check_circle:")
else:
    ui.table(firing.drop(columns=["last_event"]))

st.subheader("History")
history = q.history(store, f)
if history.empty:
    st.info("No alert events in this range. Alerts fire from check results by the rules under `alerts:` in the "
            "config (rules and channels; see the README's Alerts section); `monitor alerts test` sends a test "
            "notification.", icon=":material/info:")
else:
    if n["events"] > len(history):
        st.caption(f"the latest {len(history):,} of {n['events']:,} events in the range")
    ui.table(history)

st.subheader("Deliveries")
if "alert_deliveries" in have:
    summary = q.delivery_summary(store, f)
    if summary.empty:
        st.caption("no delivery attempts in this range")
    else:
        ui.table(summary, column_config={"median_ms": st.column_config.NumberColumn("median (ms)", format="%.0f")})

        def channel_log() -> None:  # picking a channel reruns only this part
            channel = st.selectbox("Channel", list(summary["channel"]), key="alerts_channel")
            attempts = int(summary.loc[summary["channel"] == channel, "attempts"].iloc[0])
            log = q.deliveries(store, f, channel)
            if attempts > len(log):
                st.caption(f"the latest {len(log):,} of {attempts:,} attempts")
            ui.table(log, column_config={"duration_ms": st.column_config.NumberColumn("duration (ms)", format="%.0f")})

        ui.fragment(channel_log, "Alerts")
if "alert_outbox" in have:
    box = q.outbox(store)
    if not box.empty:
        st.caption("outbox now (pending notifications are retried; dead ones gave up)")
        ui.table(box)
