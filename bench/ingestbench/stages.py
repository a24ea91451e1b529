"""Where the time goes, per stage, in µs per span: the sidecar's and ingest's steps run one after
another on the bench's spans in one thread of one process (run as a child of bench/ingest.py, so
chdb opens its own directory in a process of its own)::

    sidecar:  decode (HTTP body -> protobuf) | validate | redaction | serialize (for the spool/Kafka; only
              when redaction changed something: otherwise its screen's encoding is what is spooled)
    ingest:   decode (message -> protobuf) | normalisation (OTLP -> otel_traces rows + InferenceEvents)
              | quality (the signals on each event) | row building (events -> inference_events rows)
              | encode (rows -> ClickHouse Native blocks, one per chunk of the batch: what ingest's worker
              processes do beside the store process) | insert (both tables into chdb, one insert per table)

The steps are the ones the processes run (monitor.receiver.ingress, monitor.redaction,
monitor.ingest.stage), called directly with the default settings (redaction on, quality on), on
batches of ``--messages`` requests (``monitor ingest`` batches up to 512 messages / 16 MiB).
``--repeat`` passes over the same spans (fresh chdb tables each pass is not needed: every insert has
its own dedup token and new span ids are not required by ClickHouse); the median pass is reported.

    python bench/ingestbench/stages.py --spans 20000 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ (procstat, ingestbench)

from ingestbench.load import build_requests

STAGES = ("sidecar decode", "validate", "redaction", "serialize",
          "ingest decode", "normalisation", "quality", "row building", "encode", "insert")


def profile(spans: int, batch: int, messages: int, repeat: int, seed: int, data_dir: Path) -> dict:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from monitor.config import Settings, StoreSettings
    from monitor.ingest.enrich import enrich, warm_up
    from monitor.ingest.normalize import normalize
    from monitor.ingest.prepare import Message, chunk_ids, encode_batch
    from monitor.otlp.codec import decode_message
    from monitor.otlp.validate import reject_invalid
    from monitor.redaction import Redactor, make_processor
    from monitor.selfmetrics import SelfMetrics
    from monitor.store.client import Store
    from monitor.store.migrate import migrate
    from monitor.store.native import column_types
    from monitor.store.tables import TABLE_COLUMNS
    from monitor.store.writer import Writer

    settings = Settings()
    if not settings.redaction.enabled or not settings.ingest.quality:
        raise SystemExit("the defaults must have redaction and quality on")
    redact = make_processor(Redactor(settings.redaction))
    store = Store(StoreSettings(url=f"chdb://{data_dir}"))
    migrate(store, 30)
    writer = Writer(store, SelfMetrics())
    types = {t: column_types(store, t, c) for t, c in TABLE_COLUMNS.items() if t in ("otel_traces", "inference_events")}
    warm_up()
    from monitor.runtime.heap import settle_heap

    settle_heap()  # as the store and ingest processes do once started
    bodies = build_requests(spans, batch, seed)
    groups = [bodies[i:i + messages] for i in range(0, len(bodies), messages)]
    passes = []
    for rep in range(repeat + 1):  # pass 0 warms caches and is not counted
        t = dict.fromkeys(STAGES, 0.0)
        n = 0
        for g, group in enumerate(groups):
            wire = []
            for body, count in group:
                n += count
                t0 = time.perf_counter()
                msg = ExportTraceServiceRequest.FromString(body)
                t1 = time.perf_counter()
                reject_invalid("traces", msg)
                t2 = time.perf_counter()
                encoded = redact("traces", msg)  # the wire form when nothing was redacted (as the sidecar keeps it)
                t3 = time.perf_counter()
                wire.append(encoded if isinstance(encoded, bytes) else msg.SerializeToString())
                t4 = time.perf_counter()
                t["sidecar decode"] += t1 - t0
                t["validate"] += t2 - t1
                t["redaction"] += t3 - t2
                t["serialize"] += t4 - t3
            t0 = time.perf_counter()
            decoded = [("traces", decode_message("traces", w)) for w in wire]
            t1 = time.perf_counter()
            b = normalize(decoded)
            t2 = time.perf_counter()
            enrich(b.events)
            t3 = time.perf_counter()
            b.finish_events()
            t4 = time.perf_counter()
            b.messages = messages = [Message("traces", w, "") for w in wire]
            blocks = encode_batch(b, chunk_ids(messages), types)
            t5 = time.perf_counter()
            refused = writer.write_native(blocks.blocks, blocks.counts, f"stages:{rep}:{g}")
            t6 = time.perf_counter()
            if refused or blocks.refused:
                raise SystemExit(f"the store refused rows: {refused or blocks.refused}")
            if len(b.rows.get("inference_events", ())) != len(b.rows["otel_traces"]):
                raise SystemExit("not every span became a model request")
            t["ingest decode"] += t1 - t0
            t["normalisation"] += t2 - t1
            t["quality"] += t3 - t2
            t["row building"] += t4 - t3
            t["encode"] += t5 - t4
            t["insert"] += t6 - t5
        if rep:
            passes.append({k: 1e6 * v / n for k, v in t.items()})
    med = {k: round(statistics.median(p[k] for p in passes), 1) for k in STAGES}
    sidecar = round(sum(med[k] for k in STAGES[:4]), 1)
    ingest = round(sum(med[k] for k in STAGES[4:]), 1)
    return {"spans": spans, "messages_per_batch": messages, "repeat": repeat, "us_per_span": med,
            "sidecar_us_per_span": sidecar, "ingest_us_per_span": ingest,
            "ingest_spans_per_s_one_thread": round(1e6 / ingest) if ingest else None,
            "passes": passes}


def render(res: dict) -> str:
    m = res["us_per_span"]
    lines = ["stage (one thread)         µs per span", "-------------------------  -----------"]
    for k in STAGES:
        lines.append(f"{('sidecar: ' if k in STAGES[:4] else 'ingest:  ') + k:<25}  {m[k]:>11.1f}")
    lines.append(f"{'sidecar total':<25}  {res['sidecar_us_per_span']:>11.1f}")
    lines.append(f"{'ingest total':<25}  {res['ingest_us_per_span']:>11.1f}  "
                 f"(= {res['ingest_spans_per_s_one_thread']:,} spans/s on one core)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256, help="spans per request [256]")
    ap.add_argument("--messages", type=int, default=16, help="requests per ingest batch [16]")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ingest-stages-") as d:
        res = profile(args.spans, args.batch, args.messages, args.repeat, args.seed, Path(d) / "chdb")
    print(render(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
