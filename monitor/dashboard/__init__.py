"""Dashboards: the Streamlit app in ``dashboards/`` and what it reads through.

- :mod:`monitor.dashboard.filters`: the shared filters (time range, models, status, search).
- :mod:`monitor.dashboard.queries`: one parameterised ClickHouse query per panel.
- :mod:`monitor.dashboard.store`: :func:`get_store`, the pages' one read-only way to the data.
- :mod:`monitor.dashboard.server`: Streamlit served in-process (``monitor up``, ``monitor dashboard``).
"""

from monitor.dashboard.filters import Filters
from monitor.dashboard.store import ReadOnlyStore, get_store, register

__all__ = ["Filters", "ReadOnlyStore", "get_store", "register"]
