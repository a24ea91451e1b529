"""Audit: who searched prompts, opened requests in full, pinned baselines, exported and erased."""

import streamlit as st

from monitor.webui import ui
from monitor.webui.filters import bucket_seconds
from monitor.webui.queries import audit as q

st.header("Audit")
store = ui.store()
f = ui.filters()

if not q.available(store):
    st.info("This store has no audit log yet: it comes with schema 0013, which `monitor up` / `monitor ingest` "
            "apply at start. Upgrade the monitor and restart it.", icon=":material/info:")
    st.stop()

actors, actions = q.choices(store, f)
c = st.columns(2)
pick_actors = c[0].multiselect("Actor", actors, key="audit_actors", placeholder="every actor")
pick_actions = c[1].multiselect("Action", actions, key="audit_actions", placeholder="every action")

summary = q.summary(store, f, pick_actors, pick_actions)
if summary.empty:
    st.info(f"No audit entries between {f.start:%Y-%m-%d %H:%M} and {f.end:%Y-%m-%d %H:%M} UTC. Entries are "
            "written when someone searches prompts or opens a request on the Requests page, and by `monitor "
            "export`, `monitor erase`, `monitor baseline pin`, `monitor alerts test` and `monitor check` "
            "(README \"Records governance\").", icon=":material/info:")
    st.stop()

m = st.columns(4)
m[0].metric("Entries", ui.fmt_num(summary["entries"].sum()))
m[1].metric("Actors", ui.fmt_num(summary["actor"].nunique()))
m[2].metric("Searches / requests opened",
            f"{ui.fmt_num(summary.loc[summary['action'] == 'search', 'entries'].sum())} / "
            f"{ui.fmt_num(summary.loc[summary['action'] == 'open_request', 'entries'].sum())}")
m[3].metric("Exports / erasures",
            f"{ui.fmt_num(summary.loc[summary['action'] == 'export', 'entries'].sum())} / "
            f"{ui.fmt_num(summary.loc[summary['action'] == 'erase', 'entries'].sum())}")

step = bucket_seconds(f.start, f.end)
series = q.over_time(store, f, step, pick_actors, pick_actions)
if not series.empty:
    ui.bar_chart(series, "Entries per bucket", "audit_ts", 260, x="t", y="entries", color="action")

st.subheader("Per actor and action")
ui.table(summary)

st.subheader("Entries")
rows = q.entries(store, f, pick_actors, pick_actions)
st.caption(f"the latest {len(rows):,} entries (at most {q.LIST_ROWS}); targets and details are shown as stored: "
           "search terms as typed, erased identities as their SHA-256")
ui.table(rows)
