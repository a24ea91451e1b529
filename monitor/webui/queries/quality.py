"""Quality: refusal, empty, truncated, invalid-JSON, PII, repetition, language-mismatch rates."""

from __future__ import annotations

import pandas as pd

from monitor.webui import audit as _audit
from monitor.webui.filters import Filters
from monitor.webui.prefetch import prefetchable
from monitor.webui.queries._sql import EVENTS, bucket, events_where, frame, rollup_source

__all__ = ["SIGNALS", "all_rates", "rates", "rates_over_time", "examples"]

SIGNALS: dict[str, tuple[str, str, str]] = {
    "refusal": ("Refusals", "sum(refusal)", "count()"),
    "empty": ("Empty outputs", "sum(empty_output)", "count()"),
    "truncated": ("Truncated", "sum(truncated)", "count()"),
    "invalid_json": ("Invalid JSON (where JSON was requested)", "countIf(json_valid = 0)",
                     "countIf(json_valid IS NOT NULL)"),
    "pii": ("PII in output", "countIf(pii_in_output > 0)", "count()"),
    "repetition": ("Degenerate repetition", "sum(degenerate)", "count()"),
    "language_mismatch": ("Language mismatch", "sum(language_mismatch)", "count()"),
}
"""signal -> (title, numerator, denominator): the same definitions as the quality check's rates."""

_CONDITION = {
    "refusal": "refusal = 1", "empty": "empty_output = 1", "truncated": "truncated = 1",
    "invalid_json": "json_valid = 0", "pii": "pii_in_output > 0", "repetition": "degenerate = 1",
    "language_mismatch": "language_mismatch = 1",
}
_AGG = ", ".join(f"{num} AS {k}_n, {den} AS {k}_d" for k, (_, num, den) in SIGNALS.items())
_OWN_DENOMINATOR = ("invalid_json",)
"""Signals whose denominator is not every request (the rollups keep ``<signal>_d`` for them)."""
_ROLLED_AGG = ", ".join(f"sum({k}_n) AS {k}_n" + (f", sum({k}_d) AS {k}_d" if k in _OWN_DENOMINATOR else "")
                        for k in SIGNALS)
"""The same counts from the rollups' columns (schema 0018); ``<signal>_d`` of the others is ``requests``."""


def _rates(df: pd.DataFrame) -> pd.DataFrame:
    for k in SIGNALS:
        df[k] = df[f"{k}_n"] / df[f"{k}_d"].where(df[f"{k}_d"] > 0)
    return df


@prefetchable
def all_rates(store, f: Filters) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rates, rates_over_time)`` in one pass over the range (``GROUPING SETS ((model), (t))``;
    from 6 hours on, over the rollups' counts: see :func:`~monitor.webui.queries._sql.rollup_source`)."""
    rolled = rollup_source(store, f, needs="language_mismatch_n")
    if rolled is None:
        where, p = events_where(f)
        source, ts, numbers = f"{EVENTS} WHERE {where}", "timestamp", f"count() AS requests, {_AGG}"
    else:
        (source, p), ts, numbers = rolled, "minute", f"sum(requests) AS requests, {_ROLLED_AGG}"
    df = frame(store.query(
        f"SELECT grouping(model) AS per_bucket, model, {bucket(ts)} AS t, {numbers} "
        f"FROM {source} GROUP BY GROUPING SETS ((model), (t)) "
        "ORDER BY per_bucket, requests DESC, model, t", {**p, "step": f.step}))
    if rolled is not None:  # every request is the denominator of these (count() on the rows)
        for k in SIGNALS:
            if k not in _OWN_DENOMINATOR:
                df[f"{k}_d"] = df["requests"]
        df = df[["per_bucket", "model", "t", "requests", *(c for k in SIGNALS for c in (f"{k}_n", f"{k}_d"))]]
    per_model = df[df["per_bucket"] == 0].drop(columns=["per_bucket", "t"]).reset_index(drop=True)
    series = df[df["per_bucket"] == 1].drop(columns=["per_bucket", "model"]).sort_values("t").reset_index(drop=True)
    series["t"] = pd.to_datetime(series["t"], utc=True)
    return _rates(per_model), _rates(series)


@prefetchable
def rates(store, f: Filters) -> pd.DataFrame:
    """Per model over the range: requests, and per signal the count (``<signal>_n``), the
    denominator (``<signal>_d``) and the rate (``<signal>``)."""
    return all_rates(store, f)[0]


@prefetchable
def rates_over_time(store, f: Filters) -> pd.DataFrame:
    """Per bucket over the selected models: each signal's rate."""
    return all_rates(store, f)[1]


@prefetchable
def examples(store, f: Filters, signal: str, limit: int = 20) -> pd.DataFrame:
    """The latest requests flagged with ``signal`` (one of :data:`SIGNALS`), prompts and
    completions cut at 2,000 characters; the sidebar's text search applies."""
    if signal not in _CONDITION:
        raise ValueError(f"unknown quality signal {signal!r}")
    where, p = events_where(f, status=True, search=True)
    _audit.searched(f)  # records governance: who searched prompts and completions for a term (audit_log)
    return frame(store.query(
        f"SELECT timestamp, model, leftUTF8(prompt, 2000) AS prompt_preview, leftUTF8(completion, 2000) AS completion_preview, "
        f"finish_reason, prompt_language, completion_language, trace_id, span_id FROM {EVENTS} "
        f"WHERE {where} AND {_CONDITION[signal]} ORDER BY timestamp DESC LIMIT {{limit:UInt32}}",
        {**p, "limit": int(limit)}))
