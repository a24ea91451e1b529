#!/usr/bin/env python3
"""Added latency of the capture proxy: direct vs ``monitor up``'s proxy vs nginx, in one interleaved run.

Three ways to reach the same streaming upstream:

- ``direct``:  client -> upstream;
- ``monitor``: client -> capture proxy of ``python -m monitor up`` (own data
  directory, free loopback ports) -> upstream;
- ``nginx``:   client -> nginx (plain reverse proxy: ``proxy_buffering off``,
  HTTP/1.1 keep-alive pool to the upstream) -> upstream: the floor.
- ``monitor-python`` / ``monitor-native`` (opt-in with ``--paths``): ``monitor``
  with ``proxy.implementation`` python (FastProxy) or native (``monitor-proxy``,
  the Rust binary), each its own ``monitor up``, to compare the request paths
  in one run: ``--paths direct,monitor-python,monitor-native,nginx``.

The upstream is an aiohttp server in its own process that answers
``POST /v1/chat/completions`` like an OpenAI-compatible engine: with
``"stream": true`` a role chunk, ``--chunks`` content chunks ``--interval-ms``
apart (the first one ``--prefill-ms`` after the role chunk), a finish chunk, a
usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``;
without it the same text as one JSON answer after the same total time. The
text is a deterministic function of the request's ``seed`` (64 variants with
quotes, backslashes, newlines, tabs and non-ASCII), so every answer can be
checked: the content reassembled by the client must be exactly the one the
direct path returns (mismatches count as errors).

The load generator is another process (uvloop + aiohttp: the cheapest Python
client per request): per cell, ``C`` asyncio tasks, each with its own
``ClientSession`` holding one keep-alive connection, send back-to-back
streaming requests for ``--warmup`` seconds (discarded) and then
``--duration`` seconds (measured: requests started in that window). Per
request it records TTFT (first content chunk) and total latency (``[DONE]``).

Interleaving: for each concurrency level, ``--rounds`` rounds of
direct, monitor, nginx, so slow drifts of the machine (other jobs) hit every
path alike. Reported per path: medians over the rounds of each round's p50 and
p99 (TTFT and total), requests/s, errors, the proxy's CPU per request, and the
added latency vs direct: the median over rounds of (path - direct) in the same
round. At the end the monitor's ``monitor_proxy_requests_total`` (chat route)
is compared with the number of requests the load generator sent through it.

Run with the project's virtualenv::

    ~/.cache/llm-monitor/venv/bin/python bench/proxy.py
    ~/.cache/llm-monitor/venv/bin/python bench/proxy.py --concurrency 1,16 --duration 5 --rounds 5
    ~/.cache/llm-monitor/venv/bin/python bench/proxy.py --profile 16   # + py-spy of the monitor (not timed)
    ~/.cache/llm-monitor/venv/bin/python bench/proxy.py --paths direct,monitor-python,monitor-native,nginx

nginx must be installed (``apt-get install -y nginx``); it is started with its
own config on a loopback port (``-g 'daemon off;'``) and never as a service.
Every process started runs in its own process group and is killed on exit,
Ctrl-C and errors included.

This file is the command line and the entry of the child processes (``_upstream``,
``_passthrough``, ``_loadgen``); the bench is in ``bench/proxybench/`` along its jobs:
conversation.py (the requests and their answers), servers.py (the upstream and the
pass-through), load.py (the load generator), paths.py (starting monitor up, nginx, ...),
measure.py (cells, CPU accounting, smoke, rounds, monitor check, profile), report.py.
Processes: bench/procs.py; /proc accounting: bench/procstat.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procstat import loadavg
from proxybench.load import load_main
from proxybench.measure import run
from proxybench.paths import EXTRA_PATHS, PATHS, add_variant
from proxybench.report import report
from proxybench.servers import passthrough_main, upstream_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Added latency of the capture proxy vs direct and nginx "
                                             "(interleaved, one run).")
    ap.add_argument("--concurrency", default="1,16,128", help="comma-separated concurrency levels [1,16,128]")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of direct,monitor,nginx per level [3]")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell [10]")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell, not measured [2]")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help="comma-separated, in this order within each round: direct (always run), monitor, nginx, "
                         "and opt-in: aiohttp (a plain aiohttp+uvloop pass-through, no capture), monitor-python, "
                         "monitor-native (`monitor up` with proxy.implementation python / native) "
                         "[direct,monitor,nginx]")
    ap.add_argument("--chunks", type=int, default=32, help="content chunks per answer [32]")
    ap.add_argument("--interval-ms", type=float, default=5.0, help="ms between content chunks [5]")
    ap.add_argument("--prefill-ms", type=float, default=None,
                    help="ms from the role chunk to the first content chunk [= --interval-ms]")
    ap.add_argument("--include-usage", action="store_true",
                    help="clients ask for stream_options.include_usage (default: they do not, as most SDKs; "
                         "the capture proxy then asks for it and strips the usage chunk)")
    ap.add_argument("--no-stream", action="store_true", help="measure non-streaming requests instead")
    ap.add_argument("--monitor-config", type=Path, default=None,
                    help="YAML config for `monitor up` (--config), e.g. to try other ingest settings "
                         "[none: defaults; $MONITOR_CONFIG is ignored]")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CONFIG",
                    help="one more path, native@NAME: `monitor up` (native proxy) with this YAML config; "
                         "repeatable, run in every round after the other paths (A/B of settings in one run)")
    ap.add_argument("--nginx-workers", default="1", help="nginx worker_processes [1, like the one proxy loop]")
    ap.add_argument("--request-timeout", type=float, default=60.0, help="per request [60]")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a process to come up [120]")
    ap.add_argument("--profile", type=int, default=None, metavar="C",
                    help="after the timed run: one more (untimed) monitor cell at concurrency C under "
                         "py-spy, summarised by function")
    ap.add_argument("--profile-seconds", type=float, default=8.0, help="py-spy duration [8]")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/spyvenv/bin/py-spy", help="py-spy binary")
    ap.add_argument("--workdir", type=Path, default=None, help="logs and data [a new /tmp/proxy-bench-* dir]")
    ap.add_argument("--keep", action="store_true", help="keep the monitor's data directory")
    ap.add_argument("--out", type=Path, default=None, help="results JSON [<workdir>/proxy-<timestamp>.json]")
    args = ap.parse_args(argv)
    if args.prefill_ms is None:
        args.prefill_ms = args.interval_ms
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    paths = ["direct"] + [p for p in (s.strip() for s in args.paths.split(",")) if p and p != "direct"]
    bad = set(paths) - set(PATHS) - set(EXTRA_PATHS)
    if bad:
        ap.error(f"unknown paths: {', '.join(sorted(bad))}")
    try:
        paths += [add_variant(v) for v in args.variant]
    except ValueError as exc:
        ap.error(str(exc))
    nginx_bin = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if "nginx" in paths and not nginx_bin:
        ap.error("nginx not found: apt-get install -y nginx (or --paths direct,monitor)")

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="proxy-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.out or workdir / f"proxy-{stamp}.json"

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)

    cmdline = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["proxy.py", *argv])
    load_start = loadavg()
    print(f"command: {cmdline}")
    print(f"cpus: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}); python {sys.version.split()[0]}; "
          f"load average at start: {load_start}; workdir {workdir}")
    est = len(levels) * args.rounds * len(paths) * (args.warmup + args.duration + 0.5)
    print(f"plan: concurrency {levels} x {args.rounds} rounds x {paths}, {args.warmup:g}+{args.duration:g} s "
          f"per cell (~{est / 60:.1f} min); upstream: {args.chunks} chunks, {args.interval_ms:g} ms apart, first "
          f"after {args.prefill_ms:g} ms; stream={not args.no_stream}, client include_usage={args.include_usage}",
          flush=True)

    result: dict[str, Any] = {"command": cmdline, "started": stamp, "cpus": os.cpu_count(),
                              "loadavg_start": load_start, "workdir": str(workdir),
                              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "cells": [], "smoke": {}}
    rc = run(args, levels, paths, workdir, nginx_bin, result)
    report(result, levels, paths, args)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, default=str))
    print(f"results: {out_path}\nlogs: {workdir / 'logs'}")
    return rc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_upstream":
        sys.exit(upstream_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_passthrough":
        sys.exit(passthrough_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        sys.exit(load_main(sys.argv[2:]))
    sys.exit(main())
