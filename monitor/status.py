"""``monitor status``: read a running instance's /metrics and summarise it for a person."""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["fetch", "render", "Snapshot"]

Snapshot = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name to ``(labels, value)`` pairs."""


def fetch(url: str, timeout: float = 5.0, token: str | None = None) -> Snapshot:
    """``token``: the endpoint's ``telemetry.auth_token``, sent as a bearer token."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (operator-given URL)
        text = resp.read().decode()
    out: Snapshot = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), s.value))
    return dict(out)


def _sum(snap: Snapshot, name: str, **match: str) -> float:
    return sum(v for labels, v in snap.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def _by(snap: Snapshot, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, v in snap.get(name, []):
        out[labels.get(label, "")] += v
    return dict(out)


def _quantile(snap: Snapshot, name: str, q: float) -> float | None:
    buckets: dict[float, float] = defaultdict(float)
    for labels, v in snap.get(name + "_bucket", []):
        buckets[float(labels["le"])] += v
    if not buckets:
        return None
    total = buckets.get(float("inf"), 0)
    if total == 0:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return None


def summary(snap: Snapshot) -> dict[str, Any]:
    return {
        "receiver": {
            "accepted": _by(snap, "monitor_receiver_items_accepted_total", "signal"),
            "rejected": _by(snap, "monitor_receiver_items_rejected_total", "reason"),
            "requests": _by(snap, "monitor_receiver_requests_total", "outcome"),
        },
        "queue": {"depth": _sum(snap, "monitor_queue_depth"), "bytes": _sum(snap, "monitor_queue_bytes")},
        "spool": {
            "messages": _sum(snap, "monitor_spool_messages"), "bytes": _sum(snap, "monitor_spool_bytes"),
            "capacity_bytes": _sum(snap, "monitor_spool_capacity_bytes"),
            "oldest_age_s": _sum(snap, "monitor_spool_oldest_age_seconds"),
            "full": bool(_sum(snap, "monitor_spool_full")),
        },
        "kafka": {
            "produced": _sum(snap, "monitor_kafka_produced_messages_total"),
            "produce_errors": _sum(snap, "monitor_kafka_produce_errors_total"),
            "broker_up": _sum(snap, "monitor_kafka_broker_up") if "monitor_kafka_broker_up" in snap else None,
            "consumer_lag": _sum(snap, "monitor_ingest_consumer_lag"),
            "dead_lettered": _sum(snap, "monitor_ingest_dead_lettered_messages_total"),
        },
        "store": {
            "rows_written": _by(snap, "monitor_store_rows_written_total", "table"),
            "insert_p50_s": _quantile(snap, "monitor_store_insert_seconds", 0.5),
            "insert_p95_s": _quantile(snap, "monitor_store_insert_seconds", 0.95),
            "insert_errors": _sum(snap, "monitor_store_errors_total"),
            "rows_refused": _sum(snap, "monitor_store_rows_refused_total"),
            "dead_letters": _by(snap, "monitor_ingest_dead_letters_total", "why"),
            "values_fixed": _sum(snap, "monitor_ingest_values_fixed_total"),
        },
        "proxy": {
            "requests": _sum(snap, "monitor_proxy_requests_total"),
            "capture_errors": _sum(snap, "monitor_proxy_capture_errors_total"),
            "capture_dropped": _sum(snap, "monitor_proxy_capture_dropped_total")
            + _sum(snap, "monitor_capture_dropped_total"),
        },
        "processes": {labels.get("process", ""): {
            "up": bool(v), "pid": int(_sum(snap, "monitor_process_pid", process=labels.get("process", ""))),
            "restarts": int(_sum(snap, "monitor_process_restarts_total", process=labels.get("process", "")))}
            for labels, v in snap.get("monitor_process_up", [])},
    }


def render(snap: Snapshot, as_json: bool = False) -> str:
    s = summary(snap)
    role = next((labels.get("role", "") for labels, _ in snap.get("monitor_info", [])), "")
    s["role"] = role
    if as_json:
        return json.dumps(s, indent=2, sort_keys=True)

    def kv(d: dict[str, float]) -> str:
        return ", ".join(f"{k or '-'}={v:g}" for k, v in sorted(d.items())) or "0"

    r, sp, k, st, px = s["receiver"], s["spool"], s["kafka"], s["store"], s["proxy"]
    lines = [f"monitor {role or '?'}"]
    if s["processes"]:
        lines.append("processes  " + ", ".join(
            f"{name} {'up' if p['up'] else 'DOWN'} (pid {p['pid']}{', restarted ' + str(p['restarts']) + 'x' if p['restarts'] else ''})"
            for name, p in sorted(s["processes"].items())))
    if role in ("up", "sidecar", ""):
        lines += [
            f"receiver   accepted: {kv(r['accepted'])}",
            f"           rejected: {kv(r['rejected'])}",
            f"           requests: {kv(r['requests'])}",
        ]
        if px["requests"]:
            lines.append(f"proxy      requests {px['requests']:g}, capture errors {px['capture_errors']:g}, "
                         f"captures dropped {px['capture_dropped']:g}")
        lines.append(
            f"spool      {sp['messages']:g} messages, {sp['bytes'] / 1e6:.1f} of {sp['capacity_bytes'] / 1e6:.0f} MB, "
            f"oldest {sp['oldest_age_s']:.0f}s{'  FULL (answering 503)' if sp['full'] else ''}")
    if role in ("sidecar", ""):
        lines.append(f"kafka      produced {k['produced']:g}, errors {k['produce_errors']:g}, "
                     f"broker {'up' if k['broker_up'] else 'down'}")
    if role in ("ingest", ""):
        lines.append(f"kafka      consumer lag {k['consumer_lag']:g}, dead-lettered {k['dead_lettered']:g}")
    if role in ("up", "ingest", ""):
        lines += [
            f"store      rows: {kv(st['rows_written'])}",
            f"           insert p50 {_fmt_s(st['insert_p50_s'])}, p95 {_fmt_s(st['insert_p95_s'])}, "
            f"errors {st['insert_errors']:g}",
        ]
        if st["dead_letters"] or st["values_fixed"]:
            lines.append(f"           set aside in dead_letters: {kv(st['dead_letters'])}; values fixed "
                         f"{st['values_fixed']:g}")
    return "\n".join(lines)


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    if v == float("inf"):
        return ">30s"
    return f"<={v * 1000:.0f}ms"
