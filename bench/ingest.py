#!/usr/bin/env python3
"""Sustained ingest benchmark: spans/s until every span is stored and countable, and where the time goes.

Compares, in one invocation and one after another (never concurrently):

- ``monitor-embedded``: ``monitor up`` (pipeline process: receiver, redaction -> spool; store
  process: ingest -> chdb);
- ``monitor-kafka``: a real Kafka broker (``deploy/kafka/broker.py``, topics of 2 partitions) +
  ``monitor sidecar`` (receiver, redaction -> SQLite spool -> Kafka) + ``monitor ingest`` (Kafka -> chdb);
- ``monitor-kafka-2ingest``: the same with two ``monitor ingest`` processes in one group;
- ``otelcol-kafka``: the stock OpenTelemetry Collector (v0.165, built by tests/partners.py;
  deploy/otelcol/otlp-to-kafka.yaml: otlp receiver -> batch -> kafka exporter, otlp_proto) in the
  sidecar's place, + Kafka + ``monitor ingest``: the sidecar's CPU per span against the Collector's;
- ``phoenix``: Arize Phoenix (``phoenix serve``, OTLP/HTTP, SQLite) from its own virtualenv
  (``~/.cache/llm-monitor/phoenix-venv``; skipped with a line saying so when it is not installed
  there, installed by ``--install-phoenix``);
- ``ingest-scaling``: the spans produced straight into a topic of 2 partitions, then drained by one
  and by two ``monitor ingest`` processes (ingestbench/scaling.py);
- ``stages``: the sidecar's and ingest's steps one after another in one thread, in µs per span
  (ingestbench/stages.py).

The load (ingestbench/load.py): ``--spans`` realistic GenAI chat spans (~1.4 KB each), pre-built
into OTLP/HTTP protobuf requests of ``--batch`` spans, posted by ``--concurrency`` client threads;
503/429 retried after ``Retry-After`` and counted. Redaction and the quality signals are on (the
defaults). Every system first stores one warm-up request before the clock starts. Measured per run
(ingestbench/systems.py): acceptance rate, end-to-end rate (until every acknowledged span is
countable with its model request: the smaller of ``monitor_store_rows_written_total`` for
otel_traces and inference_events on the storing process's /metrics, or Phoenix's SQLite ``spans``), CPU per process and per span, and after a graceful stop
the rows in the data directory itself (otel_traces and inference_events). Reporting:
ingestbench/report.py.

Run with the project's virtualenv::

    ~/.cache/llm-monitor/venv/bin/python bench/ingest.py --spans 20000

Every process it starts runs in its own process group and is killed on exit,
including on Ctrl-C and errors. Logs stay in the work directory (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ingestbench.load import WARMUP_SERVICE, build_requests
from ingestbench.report import render, summarize, summarize_scaling
from ingestbench.scaling import run_scaling
from ingestbench.systems import (
    DEFAULT_PHOENIX_VENV,
    MonitorEmbedded,
    MonitorKafka,
    MonitorKafka2,
    OtelcolKafka,
    Phoenix,
    ensure_phoenix,
    run_system,
)
from procs import Proc, log

SYSTEMS = ("monitor-embedded", "monitor-kafka", "monitor-kafka-2ingest", "otelcol-kafka", "phoenix")
CELLS = ("ingest-scaling", "stages")
CLASSES = {"monitor-embedded": MonitorEmbedded, "monitor-kafka": MonitorKafka, "monitor-kafka-2ingest": MonitorKafka2,
           "otelcol-kafka": OtelcolKafka, "phoenix": Phoenix}
HERE = Path(__file__).resolve().parent


def run_stages(args: argparse.Namespace, workdir: Path) -> dict[str, Any] | None:
    """ingestbench/stages.py in a process of its own (its chdb directory is its own)."""
    out = workdir / "stages.json"
    cmd = [args.python, str(HERE / "ingestbench" / "stages.py"), "--spans", str(args.spans), "--batch",
           str(args.batch), "--seed", str(args.seed), "--repeat", str(args.stage_repeat), "--json", str(out)]
    log(f"=== stages: {shlex.join(cmd)} ===")
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        log(f"stages: FAILED (exit {p.returncode}):\n{p.stderr[-3000:]}")
        return {"failure": p.stderr[-3000:]}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sustained end-to-end ingest benchmark: monitor (embedded, Kafka) "
                                             "vs the OpenTelemetry Collector and Arize Phoenix; ingest scaling; "
                                             "µs per span per stage.")
    ap.add_argument("--spans", type=int, default=20000, help="spans per run [20000]")
    ap.add_argument("--batch", type=int, default=256, help="spans per OTLP request [256]")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client threads [8]")
    ap.add_argument("--repeat", type=int, default=1, help="runs per system; medians are reported [1]")
    ap.add_argument("--systems", default=",".join(SYSTEMS + CELLS),
                    help=f"comma-separated subset of {','.join(SYSTEMS + CELLS)} [all]")
    ap.add_argument("--stage-repeat", type=int, default=3, help="passes of the stages cell; median [3]")
    ap.add_argument("--timeout", type=float, default=300, help="per run: seconds to send and store everything [300]")
    ap.add_argument("--start-timeout", type=float, default=180, help="seconds for a system to come up [180]")
    ap.add_argument("--stop-timeout", type=float, default=60, help="seconds for a graceful stop [60]")
    ap.add_argument("--poll-interval", type=float, default=0.1, help="seconds between stored-count polls [0.1]")
    ap.add_argument("--seed", type=int, default=42, help="seed of the text generator [42]")
    ap.add_argument("--phoenix-venv", type=Path, default=DEFAULT_PHOENIX_VENV,
                    help=f"virtualenv of arize-phoenix (created by --install-phoenix) [{DEFAULT_PHOENIX_VENV}]")
    ap.add_argument("--install-phoenix", action="store_true",
                    help="pip install arize-phoenix into --phoenix-venv when it is not there (else Phoenix is skipped)")
    ap.add_argument("--no-install-phoenix", action="store_true", help="(the default) skip Phoenix unless installed")
    ap.add_argument("--workdir", type=Path, default=None, help="data and logs [a new /tmp/llm-monitor-bench-* dir]")
    ap.add_argument("--keep", action="store_true", help="keep the data directories (logs are always kept)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON [<workdir>/ingest-<timestamp>.json under /tmp]")
    args = ap.parse_args(argv)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS + CELLS)
    if unknown:
        ap.error(f"unknown systems: {', '.join(sorted(unknown))}")
    args.python = sys.executable
    probe = subprocess.run([sys.executable, "-c", "import monitor, chdb, clickhouse_connect, requests"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"run this with the project's virtualenv (import failed):\n{probe.stderr}", file=sys.stderr)
        return 2
    args.monitor_cmd = [sys.executable, "-m", "monitor"]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="llm-monitor-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.out or workdir / f"ingest-{stamp}.json"

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)

    cmdline = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["ingest.py", *argv])
    print(f"command: {cmdline}")
    print(f"cpus: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}), "
          f"python {sys.version.split()[0]}, workdir {workdir}")

    phoenix_skip = None
    if "phoenix" in systems:
        phoenix_skip = ensure_phoenix(args.phoenix_venv.expanduser(),
                                      args.install_phoenix and not args.no_install_phoenix)
        if phoenix_skip:
            print(f"SKIPPING phoenix: {phoenix_skip}")
            systems.remove("phoenix")
        args.phoenix_venv = args.phoenix_venv.expanduser()

    t = time.perf_counter()
    bodies = build_requests(args.spans, args.batch, args.seed)
    warmup = build_requests(args.batch, args.batch, args.seed + 1, service_override=WARMUP_SERVICE)
    size = sum(len(b) for b, _ in bodies)
    print(f"load: {args.spans} spans in {len(bodies)} requests of <= {args.batch} "
          f"({size / 1e6:.1f} MB protobuf, {size / max(1, args.spans):.0f} B/span), built in "
          f"{time.perf_counter() - t:.1f}s; concurrency {args.concurrency}; + 1 warm-up request per run", flush=True)

    runs: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    stages = None
    result: dict[str, Any] = {
        "command": cmdline, "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "started": stamp, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "payload_bytes": size, "phoenix_skipped": phoenix_skip, "runs": runs, "workdir": str(workdir),
        "scaling_runs": scaling, "loadavg_start": os.getloadavg(),
    }
    rc = 0
    try:
        for rep in range(args.repeat):
            for name in systems:
                log(f"=== {name} (run {rep + 1}/{args.repeat}) ===")
                if name == "ingest-scaling":
                    scaling.append(run_scaling(args, workdir, f"r{rep + 1}", bodies))
                elif name == "stages":
                    if rep == 0:
                        stages = run_stages(args, workdir)
                else:
                    runs.append(run_system(CLASSES[name], args, workdir, f"r{rep + 1}", bodies, warmup))
    except KeyboardInterrupt:
        log("interrupted; killing everything started")
        rc = 130
    finally:
        Proc.kill_all()
        summary = summarize(runs, SYSTEMS)
        result["summary"] = summary
        result["scaling"] = scaling_summary = summarize_scaling(scaling)
        result["stages"] = stages if stages and "failure" not in stages else None
        result["stages_failure"] = stages.get("failure") if stages else None
        result["loadavg_end"] = os.getloadavg()
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2, default=str))
        except OSError as exc:
            log(f"could not write {out_path}: {exc}")
        print()
        print(render(summary, scaling_summary, result["stages"]))
        print(f"load average at start {result['loadavg_start'][0]:.2f}, at the end {result['loadavg_end'][0]:.2f}")
        print(f"\nresults: {out_path}\nlogs: {workdir / 'logs'}")
    if rc == 0 and (any(r.get("failure") for r in runs + scaling) or result["stages_failure"]):
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
