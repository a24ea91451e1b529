"""llm-monitor dashboards: a Streamlit multipage app.

Served in-process by ``monitor up`` (sharing its chdb handle) and by ``monitor dashboard
--clickhouse URL``; ``streamlit run dashboards/app.py`` also works (the store then comes from the
``MONITOR_*`` settings). Pages only render: queries live in :mod:`monitor.dashboard.queries`, the
shared sidebar filters in :mod:`monitor.dashboard.ui`.
"""

import streamlit as st

from monitor.dashboard import ui

st.set_page_config(page_title="llm-monitor", page_icon=":material/monitoring:", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/latency_gpu.py", title="Latency & GPU", icon=":material/speed:"),
    st.Page("views/drift.py", title="Drift", icon=":material/query_stats:"),
    st.Page("views/quality.py", title="Quality", icon=":material/fact_check:"),
    st.Page("views/requests.py", title="Requests", icon=":material/list:"),
    st.Page("views/alerts.py", title="Alerts", icon=":material/notifications:"),
]

page = st.navigation(PAGES)
ui.sidebar()
page.run()
