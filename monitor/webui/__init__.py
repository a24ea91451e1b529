"""Dashboards: the Streamlit app in ``dashboards/`` and what it reads through.

- :mod:`monitor.webui.filters`: the shared filters (time range, models, status, search).
- :mod:`monitor.webui.queries`: one parameterised ClickHouse query per panel.
- :mod:`monitor.webui.store`: :func:`get_store`, the pages' one read-only way to the data.
- :mod:`monitor.webui.server`: Streamlit served in-process (``monitor up``, ``monitor dashboard``).
"""

from monitor.webui.filters import Filters
from monitor.webui.store import ReadOnlyStore, get_store, register

__all__ = ["Filters", "ReadOnlyStore", "get_store", "register"]
