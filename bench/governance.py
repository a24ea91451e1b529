#!/usr/bin/env python
"""Records governance at scale: erasure of one user, exports, and a retention change, in chdb.

For each size N (``--rows``, default 100k requests) a fresh chdb directory gets N requests written
with ``INSERT ... SELECT FROM numbers()`` (deterministic): N ``inference_events`` rows, 2N spans
(the client-facing span with ``enduser.id`` and the engine's span without it, one trace per
request), N log lines in those traces. Requests belong to ``--users`` users round-robin, so one
user holds N / users requests. Then, timed (wall clock, this process):

- ``erase --dry-run`` of one user (counts only), then the erasure itself (lightweight DELETEs);
- ``export`` of the whole range, Parquet and JSON lines (the engine writes the file);
- a retention change at start (``apply_retention``: MODIFY TTL with per-model days, whose
  materialisation recomputes TTL bounds in the background) and the ``OPTIMIZE ... FINAL`` that
  applies it at once.

    ~/.cache/llm-monitor/venv/bin/python bench/governance.py
    ~/.cache/llm-monitor/venv/bin/python bench/governance.py --rows 100000 1000000 --users 100
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def populate(store, n: int, users: int) -> None:
    cols = {c for (c,) in store.query_rows("SELECT name FROM system.columns WHERE database = {d:String} "
                                           "AND table = 'inference_events'", {"d": store.database})}
    user_col = ", user_id" if "user_id" in cols else ""
    user_val = ", concat('user-', toString(number % {u}))".format(u=users) if user_col else ""
    store.command(
        "INSERT INTO inference_events (timestamp, trace_id, span_id, service_name, model, source, prompt, completion, "
        f"input_tokens, output_tokens, latency_ms, status_code, attributes{user_col}) "
        "SELECT now64(9) - toIntervalMillisecond(number * 500), lower(hex(toUInt128(number + 1))), "
        "lower(hex(toUInt64(2 * number + 2))), 'app', concat('model-', toString(number % 3)), 'genai', "
        "concat('prompt ', toString(number), ': ', repeat('lorem ipsum dolor ', 20)), "
        "concat('answer ', toString(number), ': ', repeat('sit amet ', 30)), 40, 60, 800 + number % 500, 'Unset', "
        f"map('enduser.id', concat('user-', toString(number % {users})), 'gen_ai.conversation.id', "
        f"concat('conv-', toString(number % ({users} * 7)))){user_val} FROM numbers({n})")
    store.command(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, "
        "SpanAttributes, Duration) "
        "SELECT now64(9) - toIntervalMillisecond(intDiv(number, 2) * 500), "
        "lower(hex(toUInt128(intDiv(number, 2) + 1))), "
        "lower(hex(toUInt64(number + 2))), if(number % 2 = 1, lower(hex(toUInt64(number + 1))), ''), "
        "if(number % 2 = 0, 'chat m', 'llm_request'), 'Client', 'app', "
        f"if(number % 2 = 0, map('enduser.id', concat('user-', toString(intDiv(number, 2) % {users})), "
        "'gen_ai.request.model', 'm', 'gen_ai.input.messages', concat('[{\"role\":\"user\",\"content\":\"prompt ', "
        "toString(intDiv(number, 2)), '\"}]')), map('gen_ai.request.model', 'm')), 900000000 "
        f"FROM numbers({2 * n})")
    store.command(
        "INSERT INTO otel_logs (Timestamp, TraceId, SpanId, ServiceName, Body) "
        "SELECT now64(9) - toIntervalMillisecond(number * 500), lower(hex(toUInt128(number + 1))), '', 'app', "
        f"concat('tool output ', toString(number)) FROM numbers({n})")


def run(n: int, users: int) -> dict:
    from monitor.config import RetentionSettings, load
    from monitor.governance.erase import erase
    from monitor.store.client import Store
    from monitor.store.export import export_to_file
    from monitor.store.migrate import migrate
    from monitor.store.retention import apply_retention

    tmp = Path(tempfile.mkdtemp(prefix="gov-bench-"))
    out: dict = {"requests": n, "users": users, "requests_per_user": n // users}
    try:
        settings = load(overrides={"store": {"url": f"chdb://{tmp / 'data'}", "database": f"b{n}"}})
        store = Store(settings.store)
        migrate(store, 30)
        t = time.monotonic()
        populate(store, n, users)
        out["populate_s"] = round(time.monotonic() - t, 2)

        t = time.monotonic()
        dry = erase(store, "user", "user-7", dry_run=True)
        out["erase_dry_run_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        done = erase(store, "user", "user-7")
        out["erase_s"] = round(time.monotonic() - t, 2)
        out["erased_rows"] = {k: v for k, v in done.counts().items() if v}
        assert dry.counts() == done.counts() and all(x.left == 0 for x in done.tables)

        end = datetime.now(timezone.utc) + timedelta(minutes=1)
        start = end - timedelta(days=30)
        for fmt in ("parquet", "jsonl"):
            t = time.monotonic()
            res = export_to_file(store, tmp / f"events.{fmt}", "inference_events", start, end, None, fmt)
            out[f"export_{fmt}_s"] = round(time.monotonic() - t, 2)
            out[f"export_{fmt}_mb"] = round(res.bytes / 1e6, 1)
            out["exported_rows"] = res.rows

        t = time.monotonic()
        apply_retention(store, 30, RetentionSettings(tables={"otel_traces": 7}, models={"model-1": 90, "model-2": 1}))
        out["retention_change_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        store.command("OPTIMIZE TABLE inference_events FINAL")
        out["optimize_final_s"] = round(time.monotonic() - t, 2)
        out["events_after_ttl"] = int(store.query_rows("SELECT count() FROM inference_events")[0][0])
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--out", default="/tmp/bench-governance.json")
    args = ap.parse_args()
    results = []
    for n in args.rows:
        r = run(n, args.users)
        results.append(r)
        print(json.dumps(r), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
