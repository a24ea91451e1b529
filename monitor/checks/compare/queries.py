"""The SQL of a comparison: every query ``monitor compare``, the Compare page and the ``canary`` check run.

A side is a :class:`Side`: ``MODEL[@VERSION][+ADAPTER]`` over ``inference_events`` in a window
(rows whose served ``model`` or ``requested_model`` is MODEL, narrowed to ``model_version`` and
``adapter`` when given; embeddings requests left out). Aggregates (counts, rates, sums) are
ClickHouse's over the whole window; the distributions the tests need are a deterministic sample
of at most ``limit`` rows per side (by hash of the span id: the same rows every time). Values
reach SQL only as ``{name:Type}`` parameters. Every function takes a store with ``query_rows``
(the read-only view of the dashboards works too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from monitor.errors import ConfigError

__all__ = [
    "RATES",
    "SAMPLE_LIMIT",
    "VALUE_COLUMNS",
    "Side",
    "models",
    "pairs",
    "parse_side",
    "texts",
    "totals",
    "values",
    "versions",
]

SAMPLE_LIMIT = 20_000
"""Rows per side loaded for the distribution tests."""

RATES: dict[str, tuple[str, str]] = {
    "refusal_rate": ("sum(refusal)", "countIf(status_code != 'Error')"),
    "truncation_rate": ("sum(truncated)", "countIf(status_code != 'Error')"),
    "empty_rate": ("sum(empty_output)", "countIf(status_code != 'Error')"),
    "invalid_json_rate": ("countIf(json_valid = 0)", "countIf(json_valid IS NOT NULL)"),
    "language_mismatch_rate": ("sum(language_mismatch)", "countIf(status_code != 'Error')"),
    "error_rate": ("countIf(status_code = 'Error')", "count()"),
}
"""rate -> (numerator, denominator): the quality signals of a successful answer over the answers,
errors over every request."""

_COST = "coalesce(token_cost, gpu_cost)"
VALUE_COLUMNS = ("latency_ms", "ttft_ms", "tokens_per_s", "output_tokens", "output_chars", "cost")
_VALUES = (
    "latency_ms, ttft_ms, "
    "if(output_tokens > 0 AND latency_ms - ifNull(ttft_ms, 0) > 0, "
    "output_tokens / ((latency_ms - ifNull(ttft_ms, 0)) / 1000), NULL) AS tokens_per_s, "
    f"output_tokens, if(status_code = 'Error', NULL, lengthUTF8(completion)) AS output_chars, {_COST} AS cost"
)
"""Per request: client-seen latency and TTFT (ms), decode tokens per second (output tokens over the
time after the first token; the whole latency when not streamed), output tokens and characters
(answers only), cost (``token_cost`` for managed endpoints, else ``gpu_cost``)."""


@dataclass(frozen=True)
class Side:
    """One side of a comparison: ``MODEL[@VERSION][+ADAPTER]``."""

    model: str
    version: str | None = None
    adapter: str | None = None

    def label(self) -> str:
        return self.model + (f"@{self.version}" if self.version is not None else "") + \
            (f"+{self.adapter}" if self.adapter is not None else "")

    def where(self, p: str) -> tuple[str, dict[str, Any]]:
        """The side's condition (columns unqualified) and its parameters, prefixed ``p``."""
        sql = [f"(model = {{{p}m:String}} OR requested_model = {{{p}m:String}})", "operation != 'embeddings'"]
        params: dict[str, Any] = {f"{p}m": self.model}
        if self.version is not None:
            sql.append(f"model_version = {{{p}v:String}}")
            params[f"{p}v"] = self.version
        if self.adapter is not None:
            sql.append(f"adapter = {{{p}ad:String}}")
            params[f"{p}ad"] = self.adapter
        return " AND ".join(sql), params


def parse_side(text: str) -> Side:
    """``llama-3-8b``, ``llama-3-8b@v2``, ``llama-3-8b+sql-lora``, ``llama-3-8b@v2+sql-lora``
    (``@`` with nothing after it: the rows without a version)."""
    s = (text or "").strip()
    if not s:
        raise ConfigError("a side of the comparison is empty: give MODEL[@VERSION][+ADAPTER]")
    adapter = version = None
    if "+" in s:
        s, adapter = s.rsplit("+", 1)
    if "@" in s:
        s, version = s.rsplit("@", 1)
    if not s:
        raise ConfigError(f"no model in {text!r}: give MODEL[@VERSION][+ADAPTER]")
    return Side(s, version, adapter)


def _window(start: datetime, end: datetime) -> tuple[str, dict[str, Any]]:
    return ("timestamp >= {ws:DateTime64(9, 'UTC')} AND timestamp < {we:DateTime64(9, 'UTC')}",
            {"ws": start, "we": end})


def totals(store: Any, side: Side, start: datetime, end: datetime) -> dict[str, Any]:
    """Counts over the whole window: requests, shadow requests among them, each rate's numerator and
    denominator, tokens, and cost (sum and how many requests had one)."""
    cond, params = side.where("s_")
    wsql, wp = _window(start, end)
    rates = ", ".join(f"{num}, {den}" for num, den in RATES.values())
    row = store.query_rows(
        f"SELECT count(), countIf(shadow_of != ''), {rates}, sum(ifNull(input_tokens, 0)), "
        f"sum(ifNull(output_tokens, 0)), sum(ifNull(cached_tokens, 0)), sum({_COST}), countIf({_COST} IS NOT NULL), "
        "groupUniqArray(4)(endpoint_kind), groupUniqArray(4)(endpoint), min(timestamp), max(timestamp) "
        f"FROM inference_events WHERE {cond} AND {wsql}", {**params, **wp})[0]
    out: dict[str, Any] = {"requests": int(row[0]), "shadow_requests": int(row[1]), "rates": {}}
    for i, name in enumerate(RATES):
        out["rates"][name] = (int(row[2 + 2 * i]), int(row[3 + 2 * i]))
    k = 2 + 2 * len(RATES)
    out.update(input_tokens=int(row[k]), output_tokens=int(row[k + 1]), cached_tokens=int(row[k + 2]),
               cost=float(row[k + 3] or 0.0), costed=int(row[k + 4]),
               endpoint_kinds=sorted(x for x in row[k + 5] if x), endpoints=sorted(x for x in row[k + 6] if x),
               first=row[k + 7] if row[0] else None, last=row[k + 8] if row[0] else None)
    return out


def values(store: Any, side: Side, start: datetime, end: datetime, limit: int = SAMPLE_LIMIT
           ) -> dict[str, list[float]]:
    """A deterministic sample (by span id) of at most ``limit`` requests: :data:`VALUE_COLUMNS`, each
    a list without its NULLs."""
    cond, params = side.where("s_")
    wsql, wp = _window(start, end)
    rows = store.query_rows(
        f"SELECT {_VALUES} FROM inference_events WHERE {cond} AND {wsql} "
        "ORDER BY cityHash64(span_id) LIMIT {lim:UInt32}", {**params, **wp, "lim": int(limit)})
    out: dict[str, list[float]] = {c: [] for c in VALUE_COLUMNS}
    for r in rows:
        for c, v in zip(VALUE_COLUMNS, r):
            if v is not None:
                out[c].append(float(v))
    return out


def texts(store: Any, side: Side, start: datetime, end: datetime, limit: int) -> list[str]:
    """A deterministic sample of at most ``limit`` non-empty answers (for the semantic comparison)."""
    cond, params = side.where("s_")
    wsql, wp = _window(start, end)
    return [r[0] for r in store.query_rows(
        f"SELECT completion FROM inference_events WHERE {cond} AND {wsql} AND status_code != 'Error' "
        "AND completion != '' ORDER BY cityHash64(span_id) LIMIT {lim:UInt32}", {**params, **wp, "lim": int(limit)})]


_PAIR_COLUMNS = ("trace_id", "prompt", "completion_a", "completion_b", "refusal_a", "refusal_b", "error_a", "error_b",
                 "latency_a", "latency_b", "output_tokens_a", "output_tokens_b", "timestamp")


def pairs(store: Any, a: Side, b: Side, start: datetime, end: datetime, limit: int = 2000
          ) -> tuple[int, list[dict[str, Any]]]:
    """Shadow pairs: requests of one side whose shadow copy was answered by the other (linked by
    ``shadow_of`` = the primary's span id, same trace). ``(how many in the window, up to ``limit`` of
    them, newest first)``, each with A's and B's answer whichever of the two was the primary."""
    ca, pa = a.where("a_")
    cb, pb = b.where("b_")
    wsql, wp = _window(start, end)
    total = 0
    found: list[dict[str, Any]] = []
    for primary, shadow, swapped in ((ca, cb, False), (cb, ca, True)):
        sql = (
            "WITH p AS (SELECT trace_id, span_id, prompt, completion, refusal, status_code, latency_ms, output_tokens, "
            f"timestamp FROM inference_events WHERE {primary} AND {wsql} AND shadow_of = ''), "
            "s AS (SELECT trace_id, shadow_of, completion, refusal, status_code, latency_ms, output_tokens "
            f"FROM inference_events WHERE {shadow} AND {wsql.replace('{we:', '{we2:')} AND shadow_of != '') "
            "SELECT p.trace_id, p.prompt, p.completion, s.completion, p.refusal, s.refusal, p.status_code = 'Error', "
            "s.status_code = 'Error', p.latency_ms, s.latency_ms, p.output_tokens, s.output_tokens, p.timestamp, "
            "count() OVER () AS n FROM p INNER JOIN s ON s.trace_id = p.trace_id AND s.shadow_of = p.span_id "
            "ORDER BY p.timestamp DESC LIMIT {lim:UInt32}")
        # a shadow answer may end after the window does: give it a few minutes
        params = {**pa, **pb, **wp, "we2": end + timedelta(minutes=15),
                  "lim": int(limit)}
        rows = store.query_rows(sql, params)
        if not rows:
            continue
        total += int(rows[0][-1])
        for r in rows:
            d = dict(zip(_PAIR_COLUMNS, r[:-1]))
            if swapped:
                for k in ("completion", "refusal", "error", "latency", "output_tokens"):
                    d[f"{k}_a"], d[f"{k}_b"] = d[f"{k}_b"], d[f"{k}_a"]
            d["primary"] = "b" if swapped else "a"
            found.append(d)
    found.sort(key=lambda d: d["timestamp"], reverse=True)
    return total, found[:limit]


def versions(store: Any, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every (model, version, adapter, endpoint) recorded in ``model_versions``, newest first seen
    first; ``since``: only those first seen from then on."""
    rows = store.query_rows(
        "SELECT model, model_version, adapter, endpoint, any(endpoint_kind), min(first_seen) AS fs, max(last_seen) "
        "FROM model_versions GROUP BY model, model_version, adapter, endpoint "
        + ("HAVING fs >= {since:DateTime64(9, 'UTC')} " if since is not None else "")
        + "ORDER BY fs DESC LIMIT 500", {"since": since} if since is not None else {})
    return [dict(zip(("model", "model_version", "adapter", "endpoint", "endpoint_kind", "first_seen", "last_seen"), r))
            for r in rows]


def models(store: Any, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """What answered in the window, per (model, version, adapter, endpoint): requests, shadow requests."""
    wsql, wp = _window(start, end)
    rows = store.query_rows(
        "SELECT model, model_version, adapter, endpoint, any(endpoint_kind), count(), countIf(shadow_of != '') "
        f"FROM inference_events WHERE {wsql} AND operation != 'embeddings' "
        "GROUP BY model, model_version, adapter, endpoint ORDER BY count() DESC LIMIT 200", wp)
    return [dict(zip(("model", "model_version", "adapter", "endpoint", "endpoint_kind", "requests", "shadow_requests"),
                     r)) for r in rows]
