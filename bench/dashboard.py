#!/usr/bin/env python
"""Dashboard query speed on 10 million inference_events rows in chdb.

Generates (once, in a fresh chdb directory, ``INSERT ... SELECT FROM numbers()``) a month of
traffic: ``--rows`` requests (default 10M) over 30 days for four models with different weights,
latencies, token counts, error and quality-flag rates; prompts and completions of a few hundred
characters drawn from a vocabulary; engine timings and GPU cost on most rows; one span per request
in ``otel_traces``; GPU and scraped server gauges every 15 s; check results every 5 minutes with
their distributions; a few thousand alert events and deliveries.

Then, per range (last 24 hours, last 7 days) and page, runs exactly the queries that page runs by
default (plus the sidebar's model list): the first run in a fresh process (a new chdb engine: no
mark or uncompressed cache; the OS page cache stays warm, this is not a cold-disk figure; opening
the engine is timed apart, and the first run starts ``--settle`` seconds after it) and the median
of ``--repeat`` warm runs. The Requests page is measured without and with a text search, with a
new search term on every run (:func:`search_term`), so that no run is answered from ClickHouse's
query condition cache. Reused data (``--dir``) is first brought to this checkout's schema. Prints a
table and writes JSON (``--out``).

    ~/.cache/llm-monitor/venv/bin/python bench/dashboard.py                 # generate + measure
    ~/.cache/llm-monitor/venv/bin/python bench/dashboard.py --dir /tmp/dash-bench --keep   # reuse data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATABASE = "bench"
DAYS = 30
MODELS = ("llama-3-8b", "qwen2.5-7b", "mistral-7b", "llama-3-70b")
WORDS = ("the refund order account password invoice shipping delivery weather python error install "
         "configure database server kubernetes deploy latency token model prompt question answer "
         "customer support billing plan upgrade cancel subscription email address phone contract "
         "translate summary report meeting schedule calendar travel flight hotel booking price "
         "discount warranty return policy product feature bug crash update version release notes").split()


def _u(k: int) -> str:
    return f"((bitShiftRight(cityHash64(number, {k}), 11) + 0.5) / 9007199254740992.0)"


def _n(k: int) -> str:
    return f"(sqrt(-2 * log({_u(k)})) * cos(2 * pi() * {_u(k + 1000)}))"


def _text(k: int, words: str) -> str:
    vocab = "[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    return (f"arrayStringConcat(arrayMap(i -> {vocab}[(cityHash64(number, {k}, i) % {len(WORDS)}) + 1], "
            f"range(toUInt32({words}))), ' ')")


def generate(directory: str, n: int, end: datetime) -> dict:
    from monitor.config import StoreSettings
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    store = Store(StoreSettings(url=f"chdb://{directory}", database=DATABASE))
    migrate(store, 60)
    start_ns = int((end - timedelta(days=DAYS)).timestamp()) * 10**9
    step_ns = DAYS * 86400 * 10**9 // n
    model = f"multiIf({_u(1)} < 0.5, '{MODELS[0]}', {_u(1)} < 0.8, '{MODELS[1]}', {_u(1)} < 0.95, '{MODELS[2]}', '{MODELS[3]}')"
    big = f"({_u(1)} >= 0.95)"
    cols = {
        "timestamp": f"fromUnixTimestamp64Nano(toInt64({start_ns} + number * {step_ns}))",
        "trace_id": "concat(lower(hex(cityHash64(number, 1))), lower(hex(cityHash64(number, 2))))",
        "span_id": "lower(hex(cityHash64(number, 3)))",
        "service_name": "'bench'", "model": model, "provider": "'vllm'", "operation": "'chat'",
        "source": "'proxy'",
        "prompt": _text(4, f"8 + 60 * {_u(5)}"),
        "completion": f"if({_u(6)} < 0.01, '', {_text(7, f'20 + 120 * {_u(8)}')})",
        "input_tokens": f"toUInt32(20 + 120 * {_u(5)})",
        "output_tokens": f"toUInt32(30 + 160 * {_u(8)})",
        "queue_ms": f"if({_u(9)} < 0.1, NULL, 30 * exp(0.8 * {_n(10)}))",
        "prefill_ms": f"if({_u(9)} < 0.1, NULL, (40 + 0.5 * (20 + 120 * {_u(5)})) * if({big}, 4, 1))",
        "decode_ms": f"if({_u(9)} < 0.1, NULL, (30 + 160 * {_u(8)}) * 18 * if({big}, 3, 1) * exp(0.1 * {_n(11)}))",
        "engine_ttft_ms": "queue_ms + prefill_ms",
        "engine_latency_ms": "queue_ms + prefill_ms + decode_ms",
        "ttft_ms": f"if(engine_ttft_ms IS NULL, 120 + 30 * {_n(12)}, engine_ttft_ms + 3 + abs(2 * {_n(13)}))",
        "latency_ms": f"if(engine_latency_ms IS NULL, 2500 + 400 * {_n(14)}, engine_latency_ms + 4 + abs(3 * {_n(15)}))",
        "inference_ms": "prefill_ms + decode_ms",
        "itl_ms": f"18 * if({big}, 3, 1)",
        "gpu_seconds": "inference_ms / 1000 * if(" + big + ", 4, 1)",
        "gpu_cost": "gpu_seconds * 2.5 / 3600",
        "finish_reason": f"multiIf({_u(16)} < 0.9, 'stop', 'length')",
        "status_code": f"if({_u(17)} < 0.012, 'Error', 'Ok')",
        "error_type": f"if({_u(17)} < 0.012, '503', '')",
        "prompt_language": f"multiIf({_u(18)} < 0.8, 'en', {_u(18)} < 0.9, 'de', 'fr')",
        "completion_language": f"multiIf({_u(19)} < 0.78, 'en', {_u(19)} < 0.9, 'de', 'fr')",
        "refusal": f"{_u(20)} < 0.03", "empty_output": f"{_u(6)} < 0.01", "truncated": "finish_reason = 'length'",
        "json_valid": f"if({_u(21)} < 0.8, NULL, toUInt8({_u(22)} > 0.05))",
        "pii_in_output": f"toUInt16({_u(23)} < 0.004)", "repetition": f"toFloat32(0.1 * {_u(24)})",
        "degenerate": f"{_u(24)} > 0.995", "language_mismatch": "prompt_language != completion_language",
    }
    t = time.monotonic()
    names = list(cols)
    chunk = 2_000_000
    for off in range(0, n, chunk):
        m = min(chunk, n - off)
        store.command(f"INSERT INTO inference_events ({', '.join(names)}) SELECT {', '.join(f'{cols[c]} AS {c}' for c in names)} "
                      f"FROM (SELECT number + {off} AS number FROM numbers({m}))",
                      settings={"max_insert_threads": 2, "max_block_size": 65536})
        print(f"  inference_events: {off + m:,} rows ({time.monotonic() - t:.0f} s)", file=sys.stderr)
    t_events = time.monotonic() - t
    # One span per request (the request detail's trace lookup); the companion table fills by its MV.
    for off in range(0, n, chunk):
        m = min(chunk, n - off)
        store.command(
            "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, SpanName, SpanKind, ServiceName, Duration, StatusCode, "
            "SpanAttributes) SELECT fromUnixTimestamp64Nano(toInt64(" + str(start_ns) + f" + number * {step_ns})), "
            "concat(lower(hex(cityHash64(number, 1))), lower(hex(cityHash64(number, 2)))), "
            "lower(hex(cityHash64(number, 3))), concat('chat ', " + model + "), 'Client', 'bench', "
            "toUInt64(2e9), 'Ok', map('gen_ai.request.model', " + model + ") "
            f"FROM (SELECT number + {off} AS number FROM numbers({m}))",
            settings={"max_insert_threads": 2})
    # Gauges every 15 s: 2 GPUs x 4 metrics, 3 server metrics per model.
    samples = DAYS * 86400 // 15
    g0 = int((end - timedelta(days=DAYS)).timestamp())
    store.command(
        "INSERT INTO otel_metrics_gauge (ServiceName, MetricName, Attributes, TimeUnix, Value) "
        "SELECT 'bench', m.1, map('hw.gpu.index', toString(g), 'hw.id', concat('GPU-', toString(g))), "
        f"toDateTime64({g0} + number * 15, 9), multiIf(m.1 = 'hw.gpu.utilization', 0.5 + 0.4 * {_u(30)}, "
        f"m.1 = 'hw.gpu.memory.usage', 6e10 + 1e10 * {_u(31)}, m.1 = 'hw.gpu.memory.limit', 8.0e10, 250 + 150 * {_u(32)}) "
        f"FROM numbers({samples}) ARRAY JOIN [('hw.gpu.utilization', 0), ('hw.gpu.memory.usage', 0), "
        "('hw.gpu.memory.limit', 0), ('hw.power', 0)] AS m ARRAY JOIN [0, 1] AS g")
    store.command(
        "INSERT INTO otel_metrics_gauge (ServiceName, MetricName, Attributes, TimeUnix, Value) "
        "SELECT 'bench', m, map('gen_ai.request.model', md, 'engine', 'vllm'), "
        f"toDateTime64({g0} + number * 15, 9), multiIf(m = 'monitor.server.kv_cache.usage', 0.3 + 0.6 * {_u(33)}, "
        f"m = 'monitor.server.requests.waiting', floor(5 * {_u(34)}), floor(20 * {_u(35)})) "
        f"FROM numbers({samples}) ARRAY JOIN ['monitor.server.kv_cache.usage', 'monitor.server.requests.waiting', "
        "'monitor.server.requests.running'] AS m ARRAY JOIN " + "[" + ",".join(f"'{x}'" for x in MODELS) + "] AS md")
    # Check results every 5 minutes per model: 16 feature-drift metrics, 8 quality, 2 semantic.
    runs = DAYS * 288
    feats = ["input_tokens", "output_tokens", "prompt_chars", "completion_chars", "ttft_ms", "latency_ms",
             "itl_ms", "queue_ms", "prefill_ms", "decode_ms", "tokens_per_second", "finish_reason", "status_code",
             "prompt_language", "completion_language", "response_model"]
    quality = ["refusal_rate", "empty_rate", "truncation_rate", "invalid_json_rate", "pii_output_rate",
               "repetition_rate", "language_mismatch_rate", "error_rate"]
    details = json.dumps({"clusters": [{"cluster": i, "label": f"topic {i}", "reference_share": 0.1,
                                        "current_share": 0.1 + 0.02 * (i - 2), "change": 0.02 * (i - 2),
                                        "examples": ["how do I get a refund for my order", "reset my password"]}
                                       for i in range(5)]})
    metrics = ([("feature_drift", m) for m in feats] + [("quality", m) for m in quality]
               + [("semantic_drift", "prompt"), ("semantic_drift", "completion")])
    arr = "[" + ",".join(f"('{c}', '{m}')" for c, m in metrics) + "]"
    mods = "[" + ",".join(f"'{x}'" for x in MODELS) + "]"
    store.command(
        "INSERT INTO check_results (run_id, timestamp, check, model, group, metric, method, window_start, window_end, "
        "reference_start, reference_end, reference_kind, value, reference_value, threshold, p_value, status, "
        "current_n, reference_n, details) "
        f"SELECT toString(number), toDateTime64({g0} + number * 300, 3) AS ts, cm.1, md, '', cm.2, 'wasserstein', "
        "ts - INTERVAL 1 HOUR, ts, ts - INTERVAL 25 HOUR, ts - INTERVAL 24 HOUR, 'day', "
        f"0.2 * {_u(40)}, 0.01, 0.1, {_u(41)}, if({_u(40)} > 0.5, 'fail', 'ok'), 5000, 5000, "
        f"if(cm.1 = 'semantic_drift', '{details}', '{{}}') FROM numbers({runs}) ARRAY JOIN {arr} AS cm "
        f"ARRAY JOIN {mods} AS md")
    store.command(
        "INSERT INTO check_distributions (run_id, timestamp, check, model, group, metric, bucket, bucket_order, "
        "reference_share, current_share) "
        f"SELECT toString(number), toDateTime64({g0} + number * 300, 3), 'feature_drift', md, '', f, "
        f"concat('bin ', toString(b)), b, 0.1, 0.1 + 0.02 * (b - 5) * {_u(42)} "
        f"FROM numbers({runs}) ARRAY JOIN [" + ",".join(f"'{f}'" for f in feats) + "] AS f "
        f"ARRAY JOIN {mods} AS md ARRAY JOIN range(10) AS b")
    # Alerts: an event every ~10 minutes, two deliveries each.
    for ddl in _alert_ddl():
        store.command(ddl)
    store.command(
        "INSERT INTO alert_events (timestamp, alert_id, rule, severity, model, group, event, notification_id, summary, "
        f"details) SELECT toDateTime64({g0} + number * 600, 3), concat('a', toString(number % 40)), "
        f"concat('rule-', toString(number % 5)), 'warning', {mods}[number % 4 + 1], '', "
        "if(number % 2 = 0, 'fire', 'resolve'), concat('n', toString(number)), 'latency p95 over 2000 ms', '{}' "
        f"FROM numbers({DAYS * 144})")
    store.command(
        "INSERT INTO alert_deliveries (timestamp, notification_id, channel, attempt, outcome, http_status, error, "
        f"duration_ms) SELECT toDateTime64({g0} + number * 300, 3), concat('n', toString(intDiv(number, 2))), "
        "['ops-webhook', 'slack'][number % 2 + 1], 1, if(number % 97 = 0, 'retry', 'delivered'), "
        f"if(number % 97 = 0, 503, 200), if(number % 97 = 0, 'HTTP 503', ''), 40 + 30 * {_u(43)} "
        f"FROM numbers({DAYS * 288})")
    store.command(
        "INSERT INTO alert_outbox (notification_id, channel, alert_id, event, created_at, updated_at, status, attempts, "
        f"next_attempt_at, last_error, payload) SELECT concat('n', toString(number)), ['ops-webhook', 'slack'][number % 2 + 1], "
        f"concat('a', toString(number % 40)), 'fire', toDateTime64({g0} + number * 600, 3), "
        f"toDateTime64({g0} + number * 600 + 1, 3), 'delivered', 1, toDateTime64({g0} + number * 600, 3), '', '{{}}' "
        f"FROM numbers({DAYS * 144})")
    rows = store.query_rows("SELECT count() FROM inference_events")[0][0]
    size = store.query_rows("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {d:String} AND active",
                            {"d": DATABASE})[0][0]
    store.close()
    return {"seconds_events": t_events, "seconds_total": time.monotonic() - t, "rows": rows, "bytes_on_disk": size}


def _alert_ddl() -> list[str]:
    """The alert tables, when the schema in this checkout does not have them yet (0009)."""
    from monitor.store.migrate import migration_files

    if any(name.startswith("alert") for _, name, _ in migration_files()):
        return []
    return [f"CREATE TABLE IF NOT EXISTS {DATABASE}.alert_events (timestamp DateTime64(3), alert_id String, "
            "rule LowCardinality(String), severity LowCardinality(String), model LowCardinality(String), group String, "
            "event LowCardinality(String), notification_id String, summary String, details String) "
            "ENGINE = MergeTree ORDER BY (rule, model, group, timestamp)",
            f"CREATE TABLE IF NOT EXISTS {DATABASE}.alert_outbox (notification_id String, channel LowCardinality(String), "
            "alert_id String, event LowCardinality(String), created_at DateTime64(3), updated_at DateTime64(3), "
            "status LowCardinality(String), attempts UInt32, next_attempt_at DateTime64(3), last_error String, "
            "payload String) ENGINE = ReplacingMergeTree(updated_at) ORDER BY (notification_id, channel)",
            f"CREATE TABLE IF NOT EXISTS {DATABASE}.alert_deliveries (timestamp DateTime64(3), notification_id String, "
            "channel LowCardinality(String), attempt UInt32, outcome LowCardinality(String), "
            "http_status Nullable(UInt16), error String, duration_ms Float64) ENGINE = MergeTree "
            "ORDER BY (channel, timestamp)"]


def upgrade(directory: str) -> None:
    """Data generated by an older checkout: apply the schema files added since (e.g. 0010's text
    indexes) and wait for their mutations (index materialisation), so what is measured is the
    schema of this checkout."""
    from monitor.config import StoreSettings
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    store = Store(StoreSettings(url=f"chdb://{directory}", database=DATABASE))
    t = time.monotonic()
    applied = migrate(store, 60)
    while store.query_rows("SELECT count() FROM system.mutations WHERE database = {d:String} AND NOT is_done",
                           {"d": DATABASE})[0][0]:
        time.sleep(1)
    if applied:
        print(f"applied schema {applied} and its mutations in {time.monotonic() - t:.0f} s", file=sys.stderr)
    store.close()


# --- what each page runs ------------------------------------------------------------------------

def page_queries(store, f, page: str, run: int = 0) -> None:
    """The queries ``page`` runs with its default selections (the dashboards call the same functions).
    ``run``: which timed run this is; the text searches use a new term on every run (:func:`search_term`)."""
    from dataclasses import replace

    from monitor.webui.queries import (
        alerts,
        drift,
        latency,
        overview,
        quality,
        requests,
    )

    overview.models(store, f)  # the sidebar, on every page
    overview.first_event(store)  # the sidebar's default range (Auto), once per session
    if page == "overview":
        overview.has_events(store)
        overview.traffic(store, f)
    elif page == "latency_gpu":
        overview.has_events(store)
        latency.timings(store, f)
        latency.all_gauges(store, f)
    elif page == "drift":
        latest = drift.latest_results(store, f, ("feature_drift", "semantic_drift"))
        if len(latest):
            r = latest.iloc[0]
            drift.scores_over_time(store, f, "feature_drift", r["model"], r["group"])
            drift.distribution(store, f, r["model"], "feature_drift", "latency_ms", r["group"])
        drift.semantic(store, f)
    elif page == "quality":
        overview.has_events(store)
        quality.all_rates(store, f)
        quality.examples(store, f, "refusal")
    elif page in ("requests", "requests_search", "requests_search_rare", "requests_search_worst",
                  "requests_search_worst_whole"):
        if page != "requests":
            f = replace(f, search=search_term(page.removesuffix("_whole"), run))
        # as the page runs it: a text search stops at its time budget; "_whole" is its "Search the
        # whole range" button
        budget = None if page.endswith("_whole") else SEARCH_BUDGET_S
        rows = requests.listing(store, f, budget_s=budget).rows
        if len(rows):
            requests.detail(store, rows.iloc[0]["trace_id"], rows.iloc[0]["span_id"], near=rows.iloc[0]["timestamp"])
            requests.spans(store, rows.iloc[0]["trace_id"])
    elif page == "alerts":
        alerts.available(store)
        alerts.firing(store, f)
        alerts.counts(store, f)
        alerts.history(store, f)
        summary = alerts.delivery_summary(store, f)
        if len(summary):
            alerts.deliveries(store, f, summary.iloc[0]["channel"])
        alerts.outbox(store)
    else:
        raise ValueError(page)


COMMON_SEARCHES = ("refund order", "billing plan", "cancel subscription", "server error", "python install",
                   "flight hotel", "return policy", "release notes", "email address", "product feature",
                   "customer support", "travel booking")
"""Requests page search, common case: two common words in a row (each phrase is in ~3 % of requests,
so the listing stops in the last hour and the capped count after ~300k rows)."""


SEARCH_BUDGET_S = 1.0
"""The Requests page's time budget for a text search (dashboards/views/requests.py)."""


def search_term(page: str, run: int) -> str:
    """A different term on every timed run, so that no run is answered from ClickHouse's query
    condition cache (it remembers, per condition, the granules where it matched nothing):

    - ``requests_search``: the next phrase of :data:`COMMON_SEARCHES`;
    - ``requests_search_rare``: a phrase no request has, with a random suffix (``no such phrase
      3f9a1c``): its n-grams are not in the data, the case the text index is for;
    - ``requests_search_worst``: a phrase no request has made of common words (``order order order
      order``): every n-gram of it is in every granule, so no index can skip anything and every prompt
      and completion of the range is read (the floor of substring search without an inverted index).
    """
    import secrets

    if page == "requests_search":
        return COMMON_SEARCHES[run % len(COMMON_SEARCHES)]
    if page == "requests_search_rare":
        return f"no such phrase {secrets.token_hex(3)}"
    if page == "requests_search_worst":
        w = WORDS[(run * 7 + 3) % len(WORDS)]
        return " ".join([w] * 4)
    raise ValueError(page)


PAGES = ("overview", "latency_gpu", "drift", "quality", "requests", "requests_search", "requests_search_rare",
         "requests_search_worst", "requests_search_worst_whole", "alerts")
RANGES = {"24h": timedelta(days=1), "7d": timedelta(days=7)}


def measure(directory: str, page: str, rng: str, end_iso: str, repeat: int, settle: float = 2.0) -> dict:
    import importlib

    from monitor.config import StoreSettings
    from monitor.store.client import Store
    from monitor.webui.filters import Filters
    from monitor.webui.store import ReadOnlyStore
    for name in ("alerts", "drift", "latency", "overview", "quality", "requests"):  # imports are not page time
        importlib.import_module(f"monitor.webui.queries.{name}")
    try:  # what the queries cost: the dashboards' result cache would answer every warm run
        from monitor.webui import cache
        cache.disable()
    except ImportError:  # a checkout from before the cache
        pass

    t = time.perf_counter()
    store = ReadOnlyStore(Store(StoreSettings(url=f"chdb://{directory}", database=DATABASE), readonly=True))
    store.query_rows("SELECT 1")
    # Opening the engine is not part of a page view: `monitor up` opens it at start (and ingests, runs
    # checks) long before anyone opens a page; `monitor dashboard` talks to a server. Reported apart.
    # The engine also finishes some startup work in the background in its first second or two; a
    # query racing it took ~100 ms longer, so the first run starts `settle` seconds after the open.
    engine_open = time.perf_counter() - t
    time.sleep(settle)
    end = datetime.fromisoformat(end_iso)
    f = Filters(start=end - RANGES[rng], end=end)
    t = time.perf_counter()
    page_queries(store, f, page, 0)
    first = time.perf_counter() - t
    warm = []
    for i in range(repeat):
        t = time.perf_counter()
        page_queries(store, f, page, i + 1)
        warm.append(time.perf_counter() - t)
    return {"page": page, "range": rng, "first_s": first, "warm_median_s": statistics.median(warm),
            "warm_max_s": max(warm), "engine_open_s": engine_open, "settle_s": settle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", default=",".join(PAGES), help="comma-separated subset of: " + ", ".join(PAGES))
    ap.add_argument("--ranges", default=",".join(RANGES), help="comma-separated subset of: " + ", ".join(RANGES))
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None, help="chdb directory (reused when it holds data: see --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the directory (and reuse its data next time)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between opening the engine and the first run (0: race its startup work)")
    ap.add_argument("--out", default="/tmp/bench-dashboard.json")
    ap.add_argument("--measure", nargs=4, metavar=("DIR", "PAGE", "RANGE", "END"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print("@@" + json.dumps(measure(*args.measure, repeat=args.repeat, settle=args.settle)))
        return
    directory = args.dir or tempfile.mkdtemp(prefix="dash-bench-")
    meta_path = Path(directory) / "bench-meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        print(f"reusing {meta['rows']:,} rows in {directory}", file=sys.stderr)
        upgrade(directory)
    else:
        end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        print(f"generating {args.rows:,} inference_events rows in {directory}", file=sys.stderr)
        meta = {"end": end.isoformat(), **generate(directory, args.rows, end)}
        meta_path.write_text(json.dumps(meta))
        print(f"generated in {meta['seconds_total']:.0f} s, {meta['bytes_on_disk'] / 1e9:.2f} GB on disk",
              file=sys.stderr)
    results = []
    for rng in args.ranges.split(","):
        for page in args.pages.split(","):
            out = subprocess.run([sys.executable, __file__, "--repeat", str(args.repeat), "--settle", str(args.settle),
                                  "--measure", directory, page, rng, meta["end"]], capture_output=True, text=True,
                                  timeout=900)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")]
            if out.returncode != 0 or not line:
                raise SystemExit(f"{page} {rng} failed:\n{out.stderr[-3000:]}")
            r = json.loads(line[-1][2:])
            results.append(r)
            print(f"{rng:>4} {page:<21} first {r['first_s'] * 1000:7.0f} ms   warm median {r['warm_median_s'] * 1000:7.0f} ms"
                  f"   warm max {r['warm_max_s'] * 1000:7.0f} ms   (engine open {r['engine_open_s'] * 1000:.0f} ms)",
                  file=sys.stderr)
    print("\n| page | range | first run (new process) | warm median | warm max |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['page']} | last {r['range']} | {r['first_s'] * 1000:.0f} ms | {r['warm_median_s'] * 1000:.0f} ms | "
              f"{r['warm_max_s'] * 1000:.0f} ms |")
    Path(args.out).write_text(json.dumps({"data": meta, "results": results, "cpus": os.cpu_count()}, indent=2))
    print(f"\nwritten to {args.out}", file=sys.stderr)
    if not args.keep and not args.dir:
        import shutil
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
