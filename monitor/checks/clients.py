"""Usage per client over a time range: requests, tokens, cost, error and refusal rates, latency, and
the abuse verdicts against it. SQL aggregates only (``monitor clients``, the Clients page)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

__all__ = ["client_usage", "USAGE_COLUMNS", "USAGE_SELECT", "ANONYMOUS", "FLAGS_WHERE", "FLAG_CLIENT",
           "FLAG_SUMMARY"]

ANONYMOUS = "(anonymous)"
"""How requests without a client identity are listed."""

USAGE_COLUMNS = ("client", "requests", "users", "conversations", "input_tokens", "output_tokens", "cost",
                 "error_rate", "refusal_rate", "injection_attempts", "logprob_requests", "latency_ms_p50",
                 "latency_ms_p95", "models", "first_seen", "last_seen")
_TS = "DateTime64(9, 'UTC')"
USAGE_SELECT = (
    "if(client_id = '', {anon:String}, client_id) AS client, count() AS requests, "
    "uniqExactIf(user_id, user_id != '') AS users, uniqExactIf(conversation_id, conversation_id != '') AS conversations, "
    "sum(ifNull(input_tokens, 0)) AS input_tokens, sum(ifNull(output_tokens, 0)) AS output_tokens, "
    "sum(gpu_cost) AS cost, countIf(status_code = 'Error') / count() AS error_rate, "
    "sum(refusal) / count() AS refusal_rate, sum(injection) AS injection_attempts, "
    "countIf(logprobs = 1) AS logprob_requests, quantile(0.5)(latency_ms) AS latency_ms_p50, "
    "quantile(0.95)(latency_ms) AS latency_ms_p95, arraySort(groupUniqArray(5)(model)) AS models, "
    "min(timestamp) AS first_seen, max(timestamp) AS last_seen")
"""The per-client aggregates (:data:`USAGE_COLUMNS`, in order) over ``inference_events``, grouped by
``client``; the parameter ``anon`` names the anonymous client (:data:`ANONYMOUS`)."""
_USAGE = ("SELECT " + USAGE_SELECT.replace("{", "{{").replace("}", "}}") + " FROM inference_events WHERE {where} "
          "GROUP BY client ORDER BY requests DESC, client LIMIT {{limit:UInt32}}")
FLAGS_WHERE = ("check = 'abuse' AND status = 'fail' AND timestamp >= {start:DateTime64(3, 'UTC')} "
               "AND timestamp < {end:DateTime64(3, 'UTC')}")
"""The abuse flags raised in ``[start, end)``: the failing ``abuse`` rows of ``check_results`` (the
parameters at the column's millisecond precision). Each names its client (:data:`FLAG_CLIENT`) and
says why in one line (:data:`FLAG_SUMMARY`)."""
FLAG_CLIENT = "JSONExtractString(details, 'client')"
FLAG_SUMMARY = "JSONExtractString(details, 'summary')"
_FLAGS = (f"SELECT {FLAG_CLIENT} AS c, arraySort(groupUniqArray(metric)), argMax({FLAG_SUMMARY}, timestamp) "
          f"FROM check_results WHERE {FLAGS_WHERE} AND c IN {{clients:Array(String)}} GROUP BY c")


def _where(start: datetime, end: datetime, model: str | None) -> tuple[str, dict[str, Any]]:
    sql = [f"timestamp >= {{start:{_TS}}}", f"timestamp < {{end:{_TS}}}"]
    params: dict[str, Any] = {"start": start, "end": end}
    if model:
        sql.append("model = {model:String}")
        params["model"] = model
    return " AND ".join(sql), params


def _num(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v


def client_usage(store: Any, start: datetime, end: datetime, model: str | None = None, limit: int = 100,
                 flags: bool = True) -> dict[str, Any]:
    """``{"from", "to", "model", "clients": [row per client, busiest first], "total_clients"}``; each
    row has :data:`USAGE_COLUMNS` and ``flags`` (abuse metrics that failed for it in the range) and
    ``flag_summary`` (the latest verdict's line). ``cost`` is None without a GPU price."""
    where, params = _where(start, end, model)
    rows = store.query_rows(_USAGE.format(where=where), {**params, "anon": ANONYMOUS, "limit": int(limit)})
    total = store.query_rows(f"SELECT uniqExact(client_id) FROM inference_events WHERE {where}", params)[0][0]
    clients = [{k: _num(v) for k, v in zip(USAGE_COLUMNS, r)} for r in rows]
    for c in clients:
        c["models"] = list(c["models"])
        c["flags"], c["flag_summary"] = [], ""
    if flags and clients:
        found = store.query_rows(_FLAGS, {"start": start, "end": end, "clients": [c["client"] for c in clients]})
        by = {c: (list(m), s) for c, m, s in found}
        for c in clients:
            c["flags"], c["flag_summary"] = by.get(c["client"], ([], ""))
    return json.loads(json.dumps({"from": start.isoformat(), "to": end.isoformat(), "model": model or "",
                                  "total_clients": int(total), "clients": clients}, default=str))
