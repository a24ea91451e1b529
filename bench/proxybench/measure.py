"""One run of the bench over the started paths (bench/proxybench/paths.py), through the load generator
(its own process, :mod:`proxybench.load`):

- a cell: one path at one concurrency for warm-up + duration seconds, with the CPU every process of
  the bench used in it (from /proc: the path's own processes, the capture proxy's process apart, the
  threads of `monitor up`, the whole machine and what other processes used);
- the smoke check: 3 streamed and 3 whole requests per path, all checked, before anything is timed;
- the timed rounds: per concurrency level, ``--rounds`` rounds of every path in turn (interleaved, so
  slow drifts of the machine hit every path alike);
- the monitor check: its ``monitor_proxy_requests_total`` against the requests sent through it;
- the optional profile: one more (untimed) monitor cell under ``py-spy record --gil``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from procs import BenchError, Proc, log, wait_until
from procstat import (
    CLK_TCK,
    cpu_jiffies,
    cpu_jiffies_own,
    descendants,
    http_get,
    loadavg,
    machine_busy,
    parse_metrics,
    rss_kib,
    thread_jiffies,
)

from proxybench.conversation import CHAT
from proxybench.paths import (
    MONITORS,
    POLL_S,
    PROXY_PY,
    ROOT,
    monitor_proxy_pids,
    proxy_counter,
    start_paths,
)
from proxybench.report import summarize_profile


def python_thread_names(py_spy: str | None, pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from ``py-spy dump`` (empty without py-spy)."""
    if not py_spy or not Path(py_spy).exists():
        return {}
    try:
        out = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.MULTILINE)}


def role_jiffies(supervisor: int) -> dict[str, int]:
    """CPU jiffies of each process of a `monitor up` (its children by role, each with its own children:
    the native proxy binary counts as the proxy's), and of the supervisor itself."""
    out = {"supervisor": cpu_jiffies_own(supervisor)}
    for pid in descendants(supervisor):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"monitor.runtime.child" in argv:
            i = argv.index(b"monitor.runtime.child")
            role = argv[i + 1].decode() if i + 1 < len(argv) else "child"
            out[role] = out.get(role, 0) + cpu_jiffies([pid])
    return out


class Bench:
    """The started paths and the load generator; runs cells on them and keeps what each path was sent."""

    def __init__(self, args: argparse.Namespace, paths: list[str], workdir: Path, procs: dict[str, Proc],
                 urls: dict[str, str], metrics_urls: dict[str, str]):
        self.args, self.paths, self.workdir = args, paths, workdir
        self.procs, self.urls, self.metrics_urls = procs, urls, metrics_urls
        procs["loadgen"] = Proc("loadgen", [sys.executable, str(PROXY_PY), "_loadgen"],
                                workdir / "logs" / "loadgen.log", cwd=ROOT, pipe=True)
        self.sent_through: dict[str, int] = {p: 0 for p in paths}

    def cell(self, path: str, conc: int, warmup: float, duration: float, stream: bool,
             max_requests: int | None = None) -> dict[str, Any]:
        args, procs = self.args, self.procs
        cmd = {"url": self.urls[path] + CHAT, "concurrency": conc, "warmup": warmup, "duration": duration,
               "stream": stream, "include_usage": args.include_usage, "chunks": args.chunks,
               "request_timeout": args.request_timeout, "max_requests": max_requests}
        busy0, tot0 = machine_busy()
        ours0 = {k: cpu_jiffies([p.pid]) for k, p in procs.items()}
        proxy_pids = monitor_proxy_pids(self.metrics_urls[path]) if path in MONITORS else []
        px0 = sum(cpu_jiffies([q]) for q in proxy_pids)
        thr0 = thread_jiffies(procs[path].pid) if path in MONITORS else {}
        roles0 = role_jiffies(procs[path].pid) if path in MONITORS else {}
        t0 = time.monotonic()
        res = procs["loadgen"].ask(cmd, warmup + duration + args.request_timeout + 60)
        wall = time.monotonic() - t0
        if "fatal" in res:
            raise BenchError(f"load generator failed on {path} c={conc}: {res['fatal']}")
        busy1, tot1 = machine_busy()
        ours_end = {k: cpu_jiffies([p.pid]) for k, p in procs.items()}
        # a monitor defers its analysis (spans, redaction, ingest, quality) and catches up after the
        # load: that CPU is its cost too, and left running it would load the next cell (another path's)
        drain = self._drain(procs[path].pid) if path in MONITORS else 0.0
        ours1 = {k: cpu_jiffies([p.pid]) for k, p in procs.items()} if drain else ours_end
        px1 = sum(cpu_jiffies([q]) for q in proxy_pids)
        if path in MONITORS:
            thr1 = thread_jiffies(procs[path].pid)
            res["monitor_threads"] = {tid: [comm, (j - thr0.get(tid, ("", 0))[1]) / CLK_TCK]
                                      for tid, (comm, j) in thr1.items() if j - thr0.get(tid, ("", 0))[1] > 0}
        self.sent_through[path] += res["sent"]
        used = {k: (ours1[k] - ours0.get(k, 0)) / CLK_TCK for k in ours1}
        machine_s = (busy1 - busy0) / CLK_TCK                # busy CPU-seconds of the machine
        span = max(1e-9, (tot1 - tot0) / CLK_TCK)            # CPU-seconds available (all cores)
        other = max(0.0, machine_s - sum((ours_end[k] - ours0.get(k, 0)) / CLK_TCK for k in ours_end))
        proxy_s = used.get(path) if path != "direct" else None
        res["cpu"] = {"seconds": {k: round(v, 2) for k, v in used.items()},
                      "machine_busy_pct": 100 * machine_s / span, "other_pct": 100 * other / span,
                      "proxy_ms_per_req": (1000 * proxy_s / res["sent"]) if proxy_s is not None and res["sent"]
                      else None, "wall_s": round(wall, 2), "drain_s": round(drain, 1)}
        if roles0 and res["sent"]:  # each process of `monitor up`, its deferred work included
            roles1 = role_jiffies(procs[path].pid)
            res["cpu"]["by_process_ms_per_req"] = {
                role: 1000 * (j - roles0.get(role, 0)) / CLK_TCK / res["sent"] for role, j in roles1.items()}
        if proxy_pids and res["sent"]:  # the capture proxy's own process(es), apart from the rest of the monitor
            res["cpu"]["proxy_process_ms_per_req"] = 1000 * (px1 - px0) / CLK_TCK / res["sent"]
            res["proxy_rss_mib"] = sum(rss_kib(x) for q in proxy_pids for x in [q, *descendants(q)]) / 1024
        return res

    @staticmethod
    def _drain(pid: int, idle_share: float = 0.05, limit_s: float = 90.0) -> float:
        """Seconds until ``pid`` and its children went idle (under ``idle_share`` of one core over half
        a second) after a cell; at most ``limit_s``."""
        t0 = time.monotonic()
        last = cpu_jiffies([pid])
        while time.monotonic() - t0 < limit_s:
            time.sleep(0.5)
            now = cpu_jiffies([pid])
            if (now - last) / CLK_TCK < 0.5 * idle_share:
                break
            last = now
        return time.monotonic() - t0

    def smoke(self, result: dict[str, Any]) -> None:
        """A few requests per path, streamed and not, checked like every other."""
        for p in self.paths:
            for stream in (True, False):
                r = self.cell(p, 1, 0.0, 60.0, stream, max_requests=3)
                result["smoke"][f"{p}/{'stream' if stream else 'whole'}"] = {
                    "ok": r["ok"], "errors": r["error_kinds"], "samples": r["error_samples"]}
                if r["errors"] or r["ok"] != 3:
                    raise BenchError(f"smoke check failed on {p} (stream={stream}): {r['error_kinds']} "
                                     f"{r['error_samples']}")
        log("smoke check passed: same content on every path, streamed and whole")

    def rounds(self, levels: list[int], cells: list[dict[str, Any]]) -> None:
        """The timed run: per level, ``--rounds`` rounds of every path in turn; each cell appended to ``cells``."""
        args, paths = self.args, self.paths
        n_cells = len(levels) * args.rounds * len(paths)
        k = 0
        for c in levels:
            for rnd in range(1, args.rounds + 1):
                for p in paths:
                    k += 1
                    r = self.cell(p, c, args.warmup, args.duration, not args.no_stream)
                    r.update({"path": p, "concurrency": c, "round": rnd, "loadavg": loadavg()})
                    cells.append(r)
                    log(f"[{k}/{n_cells}] c={c:<4} round {rnd} {p:<14} {r['rps']:7.1f} req/s  "
                        f"ttft p50 {r['ttft_ms'].get('p50', float('nan')):7.2f} p99 "
                        f"{r['ttft_ms'].get('p99', float('nan')):7.2f}  total p50 "
                        f"{r['total_ms'].get('p50', float('nan')):7.2f} p99 "
                        f"{r['total_ms'].get('p99', float('nan')):7.2f} ms  errors {r['errors']}"
                        + (f" {r['error_kinds']}" if r["error_kinds"] else "")
                        + f"  cpu {r['cpu']['seconds']}"
                        + (f" (monitor idle again {r['cpu']['drain_s']:.1f} s after the load)"
                           if r["cpu"]["drain_s"] else ""))

    def check_monitors(self, result: dict[str, Any]) -> None:
        """Did each monitor record every request sent through its proxy (and store its span)?"""
        result["monitor_check"] = {}
        for mp in [p for p in self.paths if p in MONITORS]:
            if mp == "monitor":
                result["monitor_thread_names"] = python_thread_names(self.args.py_spy, self.procs[mp].pid)
            expect = self.sent_through[mp]
            got = {"n": 0}

            def counted(mp: str = mp, expect: int = expect, got: dict = got) -> bool:
                st, text = http_get(self.metrics_urls[mp])
                if st == 200:
                    got["n"], got["by_status"] = proxy_counter(parse_metrics(text))
                    got["metrics"] = parse_metrics(text)
                return got["n"] >= expect

            try:
                wait_until(f"{mp}: monitor_proxy_requests_total to reach {expect}", counted, [self.procs[mp]], 15,
                           POLL_S)
            except BenchError as exc:
                log(str(exc))
            time.sleep(1.0)  # let the span exporter (200 ms batches) and ingest catch up
            counted()
            m = got.get("metrics", {})
            rows = sum(v for k, v in m.items()
                       if k.startswith("monitor_store_rows_written_total{") and 'table="otel_traces"' in k)
            result["monitor_check"][mp] = {
                "requests_sent_through_proxy": expect, "monitor_proxy_requests_total": got["n"],
                "by_status": got.get("by_status", {}),
                "capture_errors": m.get("monitor_proxy_capture_errors_total"),
                "otel_traces_rows_written": rows, "metrics": m}

    def profile(self, result: dict[str, Any], path: str) -> None:
        """One more cell of the monitor ``path`` at ``--profile`` concurrency under py-spy (not timed),
        summarised: the supervisor and its children (``--subprocesses``: the proxy, pipeline and store
        processes)."""
        args = self.args
        raw = self.workdir / "monitor-pyspy.txt"
        spy = Proc("py-spy", [args.py_spy, "record", "-p", str(self.procs[path].pid), "-d",
                              str(int(args.profile_seconds)), "-r", "200", "-f", "raw", "--threads", "--gil", "--subprocesses", "-o",
                              str(raw)], self.workdir / "logs" / "py-spy.log", cwd=ROOT)
        time.sleep(1.0)
        r = self.cell(path, args.profile, 0.5, args.profile_seconds + 1, not args.no_stream)
        try:
            spy.popen.wait(30)
        except subprocess.TimeoutExpired:
            pass
        spy.kill()
        if raw.exists():
            prof = summarize_profile(raw)
            prof.update({"concurrency": args.profile, "raw": str(raw), "rps_under_profiler": r["rps"]})
            result["profile"] = prof
        else:
            log(f"py-spy wrote nothing; its log:\n{spy.log_tail()}")


def run(args: argparse.Namespace, levels: list[int], paths: list[str], workdir: Path, nginx_bin: str | None,
        result: dict[str, Any]) -> int:
    """Starts the paths, smoke-checks them, runs the rounds into ``result["cells"]``, checks the monitors and
    profiles when asked; kills everything it started whatever happens. Returns the exit code (0, 1 on a
    BenchError, 130 on Ctrl-C / SIGTERM)."""
    rc = 0
    procs: dict[str, Proc] = {}
    try:
        urls, metrics_urls = start_paths(args, paths, workdir, nginx_bin, procs, result)
        bench = Bench(args, paths, workdir, procs, urls, metrics_urls)
        bench.smoke(result)
        bench.rounds(levels, result["cells"])
        bench.check_monitors(result)
        profiled = [p for p in paths if p in MONITORS]
        if args.profile is not None and profiled:  # the first monitor path asked for
            bench.profile(result, profiled[0])
    except KeyboardInterrupt:
        log("interrupted; killing everything started")
        rc = 130
    except BenchError as exc:
        log(f"ERROR: {exc}")
        result["error"] = str(exc)
        rc = 1
    finally:
        Proc.kill_all()
        if not args.keep:
            for mp in MONITORS:
                shutil.rmtree(workdir / f"{mp}-data", ignore_errors=True)
    return rc
