"""The dashboards' queries: one function per panel, each taking a (read-only) store and a
:class:`~monitor.webui.filters.Filters` and returning a small frame or list.

Every aggregate is computed by ClickHouse; no query loads rows to aggregate them in Python.
Values reach SQL only as ``{name:Type}`` parameters.
"""

from monitor.extras import require

require("dashboards", "the dashboard app")

from monitor.webui.queries import (
    alerts,
    audit,
    clients,
    compare,
    drift,
    latency,
    overview,
    quality,
    requests,
)

__all__ = ["overview", "latency", "drift", "quality", "requests", "clients", "compare", "alerts", "audit"]
