"""What the abuse signals read from ``inference_events``: aggregates per client, never whole windows.

Three queries per scope and window: the counts of every client (:func:`client_stats`), the
earlier windows' requests and tokens of the clients being judged (:func:`history`), and the latest
``checks.abuse.sample`` prompts of each of them (:func:`prompt_samples`, ``LIMIT n BY client``).
Anonymous requests (``client_id = ''``) are counted apart and never judged.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from monitor.checks.abuse.signals import ClientStats
from monitor.checks.base import CheckContext

__all__ = ["client_stats", "anonymous_requests", "history", "prompt_samples", "examples", "scope_where",
           "EXAMPLE_CONDITIONS"]

_TS = "DateTime64(9, 'UTC')"
_SHORT = "(lengthUTF8(prompt) <= {short:UInt32} AND attributes['monitor.content.captured'] != 'false')"
_EXTRACTION = f"(logprobs = 1 AND max_tokens <= 1 AND (logit_bias > 0 OR {_SHORT}))"

EXAMPLE_CONDITIONS = {
    "volume": "1",
    "templated_prompts": "prompt != ''",
    "topic_coverage": "prompt != ''",
    "logprob_extraction": _EXTRACTION,
    "jailbreak": "(injection = 1 OR refusal = 1)",
}
"""metric -> which of the client's requests its examples are drawn from (constants only)."""


def scope_where(ctx: CheckContext, start: datetime, end: datetime, p: str = "a_") -> tuple[str, dict[str, Any]]:
    """``ctx``'s model (and group) between ``start`` and ``end``: a WHERE body and its parameters."""
    params: dict[str, Any] = {f"{p}model": ctx.scope.model, f"{p}start": start, f"{p}end": end}
    sql = [f"model = {{{p}model:String}}", f"timestamp >= {{{p}start:{_TS}}}", f"timestamp < {{{p}end:{_TS}}}"]
    for i, (k, v) in enumerate(ctx.scope.group):
        params[f"{p}gk{i}"], params[f"{p}gv{i}"] = k, v
        sql.append(f"attributes[{{{p}gk{i}:String}}] = {{{p}gv{i}:String}}")
    return " AND ".join(sql), params


def client_stats(ctx: CheckContext, short_chars: int) -> dict[str, ClientStats]:
    """Every identified client's counts in the current window."""
    where, params = ctx.where("current")
    rows = ctx.store.query_rows(
        "SELECT client_id, count(), sum(ifNull(input_tokens, 0)), sum(ifNull(output_tokens, 0)), uniqExact(prompt), "
        "countIf(status_code = 'Error'), sum(refusal), sum(injection), countIf(injection = 1 OR refusal = 1), "
        f"countIf(logprobs = 1), max(top_logprobs), countIf(logit_bias > 0), countIf(max_tokens <= 1), "
        f"countIf({_SHORT}), countIf({_EXTRACTION}) "
        f"FROM {ctx.table} WHERE {where} AND client_id != '' GROUP BY client_id", {**params, "short": short_chars})
    out = {}
    for r in rows:
        out[r[0]] = ClientStats(r[0], *(int(v or 0) for v in r[1:]))
    return out


def anonymous_requests(ctx: CheckContext) -> int:
    where, params = ctx.where("current")
    return int(ctx.store.query_rows(f"SELECT count() FROM {ctx.table} WHERE {where} AND client_id = ''",
                                    params)[0][0])


def history(ctx: CheckContext, clients: list[str], span: timedelta) -> dict[str, list[tuple[int, int]]]:
    """Per client, ``(requests, tokens)`` in each earlier window of the current window's length over
    ``span`` before it, oldest first, from the client's first active window on (zeros filled in)."""
    if not clients:
        return {}
    w = ctx.current.end - ctx.current.start
    n = int(span / w)
    if n < 1:
        return {}
    start = ctx.current.start - n * w
    where, params = scope_where(ctx, start, ctx.current.start, "h_")
    w_ns = int(w.total_seconds() * 1e9)
    rows = ctx.store.query_rows(
        f"SELECT client_id, intDiv(toUnixTimestamp64Nano(timestamp) - {{h0:Int64}}, {{w:Int64}}) AS b, count(), "
        f"sum(ifNull(input_tokens, 0) + ifNull(output_tokens, 0)) FROM {ctx.table} "
        f"WHERE {where} AND client_id IN {{clients:Array(String)}} GROUP BY client_id, b",
        {**params, "h0": int(start.timestamp() * 1e9), "w": w_ns, "clients": clients})
    per: dict[str, dict[int, tuple[int, int]]] = {}
    for c, b, req, tok in rows:
        if 0 <= int(b) < n:
            per.setdefault(c, {})[int(b)] = (int(req), int(tok))
    out = {}
    for c, buckets in per.items():
        first = min(buckets)
        out[c] = [buckets.get(b, (0, 0)) for b in range(first, n)]
    return out


def prompt_samples(ctx: CheckContext, clients: list[str], n: int) -> dict[str, list[str]]:
    """The latest ``n`` prompts of each client, newest first."""
    if not clients:
        return {}
    where, params = ctx.where("current")
    rows = ctx.store.query_rows(
        f"SELECT client_id, prompt FROM {ctx.table} WHERE {where} AND client_id IN {{clients:Array(String)}} "
        "AND prompt != '' ORDER BY client_id, timestamp DESC LIMIT {n:UInt32} BY client_id",
        {**params, "clients": clients, "n": int(n)})
    out: dict[str, list[str]] = {}
    for c, p in rows:
        out.setdefault(c, []).append(p)
    return out


def examples(ctx: CheckContext, client: str, metric: str, n: int, short_chars: int) -> list[dict[str, str]]:
    """Up to ``n`` of the client's latest requests behind a verdict (prompts as stored: redacted)."""
    if n <= 0:
        return []
    where, params = ctx.where("current")
    rows = ctx.store.query_rows(
        f"SELECT trace_id, leftUTF8(prompt, 300), leftUTF8(completion, 200) FROM {ctx.table} WHERE {where} "
        f"AND client_id = {{client:String}} AND {EXAMPLE_CONDITIONS[metric]} ORDER BY timestamp DESC "
        "LIMIT {n:UInt32}", {**params, "client": client, "n": int(n), "short": short_chars})
    return [{"trace_id": t, "prompt": p, "completion": c} for t, p, c in rows]
