"""Compare: two models, versions, adapters or endpoints on the selected range, and the versions seen.

The SQL is :mod:`monitor.checks.compare.queries` (the one query module of comparisons, shared with
``monitor compare`` and the ``canary`` check); this module shapes its answers for the page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from monitor.checks.compare import queries as cq
from monitor.checks.compare.report import compare
from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable

if TYPE_CHECKING:
    from monitor.config import SemanticSettings

__all__ = ["sides", "versions", "comparison", "label_of"]


def label_of(model: str, version: str, adapter: str) -> str:
    """The ``MODEL[@VERSION][+ADAPTER]`` a row of :func:`sides` selects."""
    return model + (f"@{version}" if version else "") + (f"+{adapter}" if adapter else "")


@prefetchable
def sides(store: Any, f: Filters) -> pd.DataFrame:
    """What answered in the range, per (model, version, adapter, endpoint), most requests first,
    with ``label``: what to compare it as."""
    df = pd.DataFrame(cq.models(store, f.start, f.end),
                      columns=["model", "model_version", "adapter", "endpoint", "endpoint_kind", "requests",
                               "shadow_requests"])
    df["label"] = [label_of(m, v, a) for m, v, a in zip(df["model"], df["model_version"], df["adapter"])]
    return df


@prefetchable
def versions(store: Any, f: Filters) -> pd.DataFrame:
    """Every version recorded (``model_versions``), newest first seen first; ``new``: first seen in the range."""
    df = pd.DataFrame(cq.versions(store), columns=["model", "model_version", "adapter", "endpoint", "endpoint_kind",
                                                   "first_seen", "last_seen"])
    if not df.empty:
        first = pd.to_datetime(df["first_seen"], utc=True)
        df["new"] = (first >= pd.Timestamp(f.start)) & (first < pd.Timestamp(f.end))
    else:
        df["new"] = pd.Series(dtype=bool)
    return df


def comparison(store: Any, f: Filters, a: str, b: str, semantic: bool = False,
               semantic_settings: SemanticSettings | None = None) -> dict[str, Any]:
    """:func:`monitor.checks.compare.report.compare` of ``a`` and ``b`` over the range."""
    return compare(store, cq.parse_side(a), cq.parse_side(b), f.start, f.end, semantic=semantic,
                   semantic_settings=semantic_settings, embed_cache=False)
