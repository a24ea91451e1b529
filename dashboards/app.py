"""llm-monitor dashboards: a Streamlit multipage app.

Served in-process by ``monitor up`` (sharing its chdb handle) and by ``monitor dashboard
--clickhouse URL``; ``streamlit run dashboards/app.py --server.enableStaticServing true`` also works
(the store then comes from the ``MONITOR_*`` settings; the charts' library is served from
``dashboards/static``). Pages only render: queries live in :mod:`monitor.webui.queries`, the
shared sidebar filters in :mod:`monitor.webui.ui`. Every run is timed
(:mod:`monitor.webui.timing`).
"""

import streamlit as st

from monitor.webui import timing, ui

with timing.page_run() as run:
    # the icon is a file of the package, served by this server: a page makes no request elsewhere
    st.set_page_config(page_title="llm-monitor", page_icon=str(ui.FAVICON), layout="wide")

    PAGES = [
        st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page("views/latency_gpu.py", title="Latency & GPU", icon=":material/speed:"),
        st.Page("views/drift.py", title="Drift", icon=":material/query_stats:"),
        st.Page("views/quality.py", title="Quality", icon=":material/fact_check:"),
        st.Page("views/requests.py", title="Requests", icon=":material/list:"),
        st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("views/clients.py", title="Clients", icon=":material/group:"),
        st.Page("views/alerts.py", title="Alerts", icon=":material/notifications:"),
        st.Page("views/audit.py", title="Audit", icon=":material/policy:"),
    ]

    page = st.navigation(PAGES)
    run.page = page.title
    ui.sidebar()
    page.run()
