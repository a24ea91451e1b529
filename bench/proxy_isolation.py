#!/usr/bin/env python3
"""The capture proxy under analysis load: TTFT at 16 streams through ``monitor up``'s proxy, without
and with the store process busy (issue 9's "under analysis load" cell).

One ``monitor up`` (proxy, pipeline and store processes) in front of bench/proxy.py's streaming
upstream (32 SSE chunks 5 ms apart), on a store of ``--rows`` generated requests over 30 days ending
now (bench/dashboard.py's generator: prompts and completions, engine timings, GPU gauges, ...). The
load generator is bench/proxy.py's (uvloop + aiohttp, one keep-alive connection per stream; TTFT is
the first content chunk). Cells of ``--duration`` seconds at ``--streams`` streams, in this order:

1. ``idle``: no analysis load (``--idle-cells``);
2. ``analysis``: while the store process runs a semantic-drift check (``monitor check --only
   semantic_drift --window 1h --reference day``; ``checks.semantic.sample`` texts per field and
   window: 2,500 x prompt and completion x 2 windows = 10,000 texts embedded, from the store, with
   the bundled all-MiniLM-L6-v2 on CPU, HF_HUB_OFFLINE=1) and, at the same time, 7-day dashboard
   page views one after another (Overview, Latency & GPU, Quality, Drift, Requests; each a new
   Streamlit session, tests/streamlit_client.py), cells back to back while the check still runs
   (at most ``--analysis-cells``);
3. ``idle after``: no analysis load again (the check finished).

Each cell measures the same load twice, back to back: ``direct`` (client -> upstream) and through the
proxy, so the machine's own state (two cores: the client and the upstream feel the analysis load
too) is measured beside what the proxy adds. Reported per cell: TTFT p50 / p99 of both, the added
TTFT (proxy - direct), total p50, requests/s, errors, the CPU the proxy process(es) and the store
process used (the store's proves the load was there), the page views done; then the goal line: the
analysis cells' added p99 minus the idle cells' (goal: within 2 ms), and the raw p99s beside it. The
first idle cell starts after a warm-up cell (not reported).

    ~/.cache/llm-monitor/venv/bin/python bench/proxy_isolation.py              # 2M rows (~2-3 min to generate)
    ~/.cache/llm-monitor/venv/bin/python bench/proxy_isolation.py --rows 10000000 --duration 15

Every process it starts runs in its own process group and is killed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from procs import BenchError, Proc, log, wait_until
from procstat import (
    CLK_TCK,
    cpu_jiffies,
    free_port,
    http_get,
    loadavg,
    parse_metrics,
    rss_kib,
)
from proxybench.conversation import CHAT
from proxybench.paths import POLL_S, PROXY_PY, start_upstream

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("", "latency_gpu", "quality", "drift", "requests")
"""URL paths of the pages viewed under load ("" is Overview)."""


def process_pids(metrics_url: str) -> dict[str, list[int]]:
    """``monitor_process_pid{process=...}`` of ``monitor up``'s merged /metrics: role -> pids."""
    st, text = http_get(metrics_url)
    out: dict[str, list[int]] = {}
    if st != 200:
        return out
    for key, v in parse_metrics(text).items():
        if key.startswith("monitor_process_pid{") and v > 0:
            role = key.split('process="', 1)[1].split('"', 1)[0]
            out.setdefault(role.split("-")[0].rstrip("0123456789"), []).append(int(v))
    return out


class PageViews(threading.Thread):
    """7-day page views, one after another, until stopped: a new Streamlit session each."""

    def __init__(self, base_url: str):
        super().__init__(name="page-views", daemon=True)
        self.base_url = base_url
        self.stop_event = threading.Event()
        self.views: list[dict[str, Any]] = []

    def run(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from streamlit_client import view

        k = 0
        while not self.stop_event.is_set():
            page = PAGES[k % len(PAGES)]
            k += 1
            try:
                r = view(self.base_url, page, "range=7d", timeout=120)
                self.views.append({"page": page or "overview", "seconds": round(r["seconds"], 3),
                                   "status": r["status"], "exceptions": len(r["exceptions"])})
            except Exception as exc:  # a failed view is reported, the load goes on
                self.views.append({"page": page or "overview", "error": f"{type(exc).__name__}: {exc}"[:300]})
                time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0,
                    help="measured seconds per cell and path (direct, then through the proxy) [10]")
    ap.add_argument("--idle-cells", type=int, default=2, help="cells without load before the analysis load [2]")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds at the start of each cell [2]")
    ap.add_argument("--analysis-cells", type=int, default=3, help="cells under load, while the check runs [3]")
    ap.add_argument("--rows", type=int, default=2_000_000, help="requests in the generated store [2M]")
    ap.add_argument("--sample", type=int, default=2500,
                    help="checks.semantic.sample: texts per field and window (x2 fields x2 windows) [2500]")
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--start-timeout", type=float, default=300.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="proxy-isolation-"))).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    out_path = args.out or workdir / f"proxy-isolation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    cmdline = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["proxy_isolation.py", *argv])

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)

    print(f"command: {cmdline}\ncpus: {os.cpu_count()}; load average at start: {loadavg()}; workdir {workdir}",
          flush=True)
    result: dict[str, Any] = {"command": cmdline, "loadavg_start": loadavg(), "cells": [], "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    py = sys.executable
    procs: dict[str, Proc] = {}
    rc = 0
    try:
        # -- the store: a month of requests ending now (bench/dashboard.py), database "bench"
        store_dir = workdir / "store"
        if not (store_dir / "bench-meta.json").is_file():
            end = datetime.now(UTC).replace(second=0, microsecond=0)
            log(f"generating {args.rows:,} requests over 30 days ending {end:%H:%M} in {store_dir}")
            code = ("import json, sys; from datetime import datetime; sys.path.insert(0, sys.argv[1]); "
                    "import dashboard; m = dashboard.generate(sys.argv[2], int(sys.argv[3]), "
                    "datetime.fromisoformat(sys.argv[4])); print(json.dumps(m))")
            g = subprocess.run([py, "-c", code, str(ROOT / "bench"), str(store_dir), str(args.rows), end.isoformat()],
                               capture_output=True, text=True, check=False)
            if g.returncode != 0:
                raise BenchError(f"generating the store failed:\n{g.stderr[-3000:]}")
            meta = {"end": end.isoformat(), **json.loads(g.stdout.strip().splitlines()[-1])}
            (store_dir / "bench-meta.json").write_text(json.dumps(meta))
        # a reused store remembers the embeddings of the last run (embedding_cache): the check must embed
        code = ("import sys, clickhouse_connect; c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1]); "
                "c.command('TRUNCATE TABLE IF EXISTS bench.embedding_cache')")
        t = subprocess.run([py, "-c", code, str(store_dir)], capture_output=True, text=True, check=False)
        if t.returncode != 0:
            raise BenchError(f"emptying the embedding cache failed:\n{t.stderr[-2000:]}")
        result["store"] = json.loads((store_dir / "bench-meta.json").read_text())
        log(f"store: {result['store']['rows']:,} requests, ending {result['store']['end']}")

        # -- upstream and monitor up
        up_port = free_port()
        procs["upstream"] = start_upstream(up_port, args.chunks, args.interval_ms, args.interval_ms,
                                           workdir / "logs" / "upstream.log")
        upstream = f"http://127.0.0.1:{up_port}"
        wait_until("the upstream", lambda: http_get(upstream + "/health")[0] == 200, [procs["upstream"]],
                   args.start_timeout, POLL_S)
        ports = {k: free_port() for k in ("proxy", "grpc", "http", "metrics", "admin", "dashboard")}
        env = {k: v for k, v in os.environ.items() if k != "MONITOR_CONFIG"}
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "MONITOR_STORE__DATABASE": "bench",
                    "MONITOR_CHECKS__ENABLED": "false",  # the check runs when the bench asks, not on a timer
                    "MONITOR_CHECKS__SEMANTIC__SAMPLE": str(args.sample), "MONITOR_CHECKS__SEMANTIC__DEVICE": "cpu",
                    "MONITOR_CHECKS__ADMIN_PORT": str(ports["admin"])})
        procs["monitor"] = Proc("monitor up", [
            py, "-m", "monitor", "up", "--upstream", upstream, "--proxy-port", str(ports["proxy"]),
            "--data-dir", str(store_dir), "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
            "--metrics-port", str(ports["metrics"]), "--admin-port", str(ports["admin"]),
            "--dashboard-port", str(ports["dashboard"])], workdir / "logs" / "monitor-up.log", env=env, cwd=ROOT)
        proxy_url = f"http://127.0.0.1:{ports['proxy']}"
        metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
        dash_url = f"http://127.0.0.1:{ports['dashboard']}"
        monitor_log = workdir / "logs" / "monitor-up.log"
        wait_until("monitor up ready", lambda: "ready; Ctrl-C to stop" in monitor_log.read_text(errors="replace"),
                   [procs["monitor"]], args.start_timeout, POLL_S)
        wait_until("the proxy, /metrics and the dashboards", lambda: http_get(proxy_url + "/health")[0] == 200
                   and http_get(metrics_url)[0] == 200 and http_get(dash_url + "/_stcore/health")[0] == 200,
                   [procs["monitor"]], args.start_timeout, POLL_S)
        roles = process_pids(metrics_url)
        result["processes"] = roles
        log(f"monitor up: processes {roles}")
        if not roles.get("proxy") or not roles.get("store"):
            raise BenchError(f"no proxy or store process in monitor_process_pid: {roles}")

        procs["loadgen"] = Proc("loadgen", [py, str(PROXY_PY), "_loadgen"], workdir / "logs" / "loadgen.log",
                                cwd=ROOT, pipe=True)

        def measure(url: str) -> dict[str, Any]:
            cmd = {"url": url + CHAT, "concurrency": args.streams, "warmup": args.warmup,
                   "duration": args.duration, "stream": True, "include_usage": False, "chunks": args.chunks,
                   "request_timeout": 60.0, "max_requests": None}
            res = procs["loadgen"].ask(cmd, args.warmup + args.duration + 120)
            if "fatal" in res:
                raise BenchError(f"load generator failed on {url}: {res['fatal']}")
            return res

        def cell(name: str, views: PageViews | None = None) -> dict[str, Any]:
            """Direct, then through the proxy, back to back under the same conditions."""
            px, st = roles["proxy"], roles["store"]
            st0, n0 = cpu_jiffies(st), len(views.views) if views else 0
            direct = measure(upstream)
            px0 = cpu_jiffies(px)
            res = measure(proxy_url)
            px1, st1 = cpu_jiffies(px), cpu_jiffies(st)
            row = {"cell": name, "ttft_p50_ms": res["ttft_ms"].get("p50"), "ttft_p99_ms": res["ttft_ms"].get("p99"),
                   "direct_ttft_p50_ms": direct["ttft_ms"].get("p50"), "direct_ttft_p99_ms": direct["ttft_ms"].get("p99"),
                   "total_p50_ms": res["total_ms"].get("p50"), "rps": round(res["rps"], 1),
                   "direct_rps": round(direct["rps"], 1), "ok": res["ok"], "errors": res["errors"] + direct["errors"],
                   "error_kinds": [direct["error_kinds"], res["error_kinds"]],
                   "proxy_cpu_ms_per_req": round(1000 * (px1 - px0) / CLK_TCK / max(1, res["sent"]), 3),
                   "store_cpu_s": round((st1 - st0) / CLK_TCK, 2),
                   "proxy_rss_mib": round(sum(rss_kib(p) for p in px) / 1024, 1),
                   "page_views": views.views[n0:] if views else [], "loadavg": loadavg()}
            row["added_p50_ms"] = row["ttft_p50_ms"] - row["direct_ttft_p50_ms"]
            row["added_p99_ms"] = row["ttft_p99_ms"] - row["direct_ttft_p99_ms"]
            log(f"{name}: TTFT p50 {row['ttft_p50_ms']:.2f} ms (direct {row['direct_ttft_p50_ms']:.2f}), p99 "
                f"{row['ttft_p99_ms']:.2f} ms (direct {row['direct_ttft_p99_ms']:.2f}), {row['rps']} req/s, errors "
                f"{row['errors']}; store CPU {row['store_cpu_s']} s, proxy {row['proxy_cpu_ms_per_req']} ms/req; "
                f"page views {len(row['page_views'])}")
            result["cells"].append(row)
            return row

        cell("warm-up")
        result["cells"].clear()
        for k in range(args.idle_cells):
            cell(f"idle {k + 1}")
        # -- analysis load: the check (in the store process, through the admin endpoint) + 7-day pages
        log_mark = len(monitor_log.read_text(errors="replace"))
        check_log = open(workdir / "logs" / "check.log", "wb")
        t_check = time.monotonic()
        check = subprocess.Popen([py, "-m", "monitor", "check", "--only", "semantic_drift", "--window", "1h",
                                  "--reference", "day"], env=env, stdout=check_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        views = PageViews(dash_url)
        views.start()
        wait_until("the check's embedding model to load",
                   lambda: "embedding model" in monitor_log.read_text(errors="replace")[log_mark:]
                   or check.poll() is not None, [procs["monitor"]], args.start_timeout, POLL_S)
        time.sleep(1.0)
        for k in range(args.analysis_cells):
            if check.poll() is not None:
                break
            row = cell(f"analysis {k + 1}", views)
            row["check_still_running"] = check.poll() is None
        views.stop_event.set()
        try:
            check.wait(900)
        except subprocess.TimeoutExpired:
            check.kill()
        check_log.close()
        result["check"] = {"exit": check.returncode, "seconds": round(time.monotonic() - t_check, 1),
                           "output_tail": (workdir / "logs" / "check.log").read_text(errors="replace")[-2000:]}
        log(f"check finished in {result['check']['seconds']} s (exit {check.returncode})")
        views.join(130)
        cell("idle after")
    except (BenchError, KeyboardInterrupt) as exc:
        log(f"FAILED: {exc}")
        result["failure"] = str(exc)
        rc = 1
    finally:
        for name in ("loadgen", "monitor", "upstream"):
            if name in procs:
                procs[name].kill()
        Proc.kill_all()
        result["loadavg_end"] = loadavg()
        summary = summarize(result["cells"])
        result["summary"] = summary
        out_path.write_text(json.dumps(result, indent=2, default=str))
        print(render(result["cells"], summary))
        print(f"load average at start {result['loadavg_start']}, at the end {result['loadavg_end']}")
        print(f"results: {out_path}\nlogs: {workdir / 'logs'}")
        if not args.keep and not args.workdir:
            import shutil
            shutil.rmtree(workdir / "store", ignore_errors=True)
    return rc


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    idle = [c for c in cells if c["cell"].startswith("idle") and c.get("ttft_p99_ms") is not None]
    busy = [c for c in cells if c["cell"].startswith("analysis") and c.get("ttft_p99_ms") is not None]
    if not idle or not busy:
        return {}
    med = statistics.median
    out = {k: med(c[key] for c in group) for k, key, group in (
        ("idle_p50_ms", "ttft_p50_ms", idle), ("idle_p99_ms", "ttft_p99_ms", idle),
        ("idle_added_p50_ms", "added_p50_ms", idle), ("idle_added_p99_ms", "added_p99_ms", idle),
        ("analysis_p50_ms", "ttft_p50_ms", busy), ("analysis_p99_ms", "ttft_p99_ms", busy),
        ("analysis_added_p50_ms", "added_p50_ms", busy), ("analysis_added_p99_ms", "added_p99_ms", busy),
        ("analysis_direct_p99_ms", "direct_ttft_p99_ms", busy), ("idle_direct_p99_ms", "direct_ttft_p99_ms", idle))}
    out["added_p99_delta_ms"] = out["analysis_added_p99_ms"] - out["idle_added_p99_ms"]
    out["added_p50_delta_ms"] = out["analysis_added_p50_ms"] - out["idle_added_p50_ms"]
    out["p99_delta_ms"] = out["analysis_p99_ms"] - out["idle_p99_ms"]
    # the idle cells measure the same thing: how far apart they are is the noise of this machine now
    out["idle_added_p99_spread_ms"] = max(c["added_p99_ms"] for c in idle) - min(c["added_p99_ms"] for c in idle)
    out["conclusive"] = out["idle_added_p99_spread_ms"] <= 2.0
    out["goal_met"] = out["added_p99_delta_ms"] <= 2.0 if out["conclusive"] else None
    return out


def render(cells: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["cell          TTFT p50 / p99 ms  direct p50 / p99 ms  added p50 / p99 ms  req/s  errors  "
             "proxy CPU ms/req  store CPU s  7-day page views (s)"]
    for c in cells:
        views = [v.get("seconds") for v in c["page_views"] if "seconds" in v]
        lines.append(f"{c['cell']:<12}  {c['ttft_p50_ms'] or 0:>7.2f} / {c['ttft_p99_ms'] or 0:>6.2f}  "
                     f"{c['direct_ttft_p50_ms'] or 0:>9.2f} / {c['direct_ttft_p99_ms'] or 0:>6.2f}  "
                     f"{c['added_p50_ms']:>+8.2f} / {c['added_p99_ms']:>+6.2f}  {c['rps']:>5}  {c['errors']:>6}  "
                     f"{c['proxy_cpu_ms_per_req']:>16.3f}  {c['store_cpu_s']:>11.1f}  "
                     f"{len(views)} ({', '.join(f'{v:.1f}' for v in views[:6])})")
    if summary:
        verdict = {True: "met", False: "NOT met", None: f"INCONCLUSIVE: the idle cells alone differ by "
                   f"{summary['idle_added_p99_spread_ms']:.1f} ms, the machine is not quiet"}[summary["goal_met"]]
        lines.append(f"added TTFT p99 (proxy - direct, same cell): {summary['analysis_added_p99_ms']:+.2f} ms under "
                     f"analysis load vs {summary['idle_added_p99_ms']:+.2f} ms idle: {summary['added_p99_delta_ms']:+.2f} "
                     f"ms (goal: within 2 ms: {verdict}); added p50 {summary['analysis_added_p50_ms']:+.2f} vs "
                     f"{summary['idle_added_p50_ms']:+.2f} ms; TTFT p99 through the "
                     f"proxy {summary['analysis_p99_ms']:.2f} vs {summary['idle_p99_ms']:.2f} ms, direct "
                     f"{summary['analysis_direct_p99_ms']:.2f} vs {summary['idle_direct_p99_ms']:.2f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
