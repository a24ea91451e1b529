"""What bench/proxy.py prints and stores at the end of a run: per concurrency level and path the medians
over the rounds of each round's p50 / p99 (TTFT and total), requests/s, errors, the proxy's CPU per
request and the added latency vs direct (the median over rounds of (path - direct) in the same round);
the CPU of `monitor up` by thread; whether each monitor recorded every request; the py-spy profile
summarised by thread, activity and function."""

from __future__ import annotations

import argparse
import os
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procstat import loadavg

from proxybench.conversation import CHAT
from proxybench.paths import MONITORS


def summarize(cells: list[dict[str, Any]], levels: list[int], paths: list[str]) -> dict[str, Any]:
    """Per concurrency level and path: medians over rounds; added latency = median of paired differences."""
    out: dict[str, Any] = {}
    metrics = [("ttft_ms", "p50"), ("ttft_ms", "p99"), ("total_ms", "p50"), ("total_ms", "p99")]
    for c in levels:
        level: dict[str, Any] = {}
        by = {(x["path"], x["round"]): x for x in cells if x["concurrency"] == c}
        rounds = sorted({x["round"] for x in cells if x["concurrency"] == c})
        for p in paths:
            rs = [by[(p, r)] for r in rounds if (p, r) in by]
            if not rs:
                continue
            row: dict[str, Any] = {"rounds": len(rs)}
            for m, q in metrics:
                vals = [x[m][q] for x in rs if x[m].get(q) is not None]
                row[f"{m[:-3]}_{q}"] = statistics.median(vals) if vals else None
                if p != "direct":
                    diffs = [by[(p, r)][m][q] - by[("direct", r)][m][q] for r in rounds
                             if (p, r) in by and ("direct", r) in by
                             and by[(p, r)][m].get(q) is not None and by[("direct", r)][m].get(q) is not None]
                    row[f"added_{m[:-3]}_{q}"] = statistics.median(diffs) if diffs else None
                    row[f"added_{m[:-3]}_{q}_rounds"] = diffs
            row["rps"] = statistics.median(x["rps"] for x in rs)
            row["requests"] = sum(x["ok"] for x in rs)
            row["errors"] = sum(x["errors"] for x in rs)
            row["warmup_errors"] = sum(v for x in rs for k, v in x["error_kinds"].items() if k.startswith("warmup_"))
            cpu = [x["cpu"]["proxy_ms_per_req"] for x in rs if x["cpu"].get("proxy_ms_per_req") is not None]
            row["proxy_cpu_ms_per_req"] = statistics.median(cpu) if cpu else None
            own = [x["cpu"]["proxy_process_ms_per_req"] for x in rs if x["cpu"].get("proxy_process_ms_per_req")]
            row["proxy_process_cpu_ms_per_req"] = statistics.median(own) if own else None
            split = [x["cpu"]["by_process_ms_per_req"] for x in rs if x["cpu"].get("by_process_ms_per_req")]
            row["by_process_ms_per_req"] = {k: statistics.median(d.get(k, 0.0) for d in split)
                                            for k in sorted({k for d in split for k in d})} if split else None
            rss = [x["proxy_rss_mib"] for x in rs if x.get("proxy_rss_mib")]
            row["proxy_rss_mib"] = max(rss) if rss else None
            row["machine_busy_pct"] = statistics.median(x["cpu"]["machine_busy_pct"] for x in rs)
            row["other_cpu_pct"] = statistics.median(x["cpu"]["other_pct"] for x in rs)
            level[p] = row
        out[str(c)] = level
    return out


def _f(v: float | None, width: int = 8, signed: bool = False) -> str:
    if v is None:
        return "-".rjust(width)
    return (f"{v:+.2f}" if signed else f"{v:.2f}").rjust(width)


def render(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = []
    hdr = (f"{'path':<14} {'req/s':>7} {'TTFT50':>8} {'TTFT99':>8} {'tot50':>8} {'tot99':>8} | "
           f"{'+TTFT50':>8} {'+TTFT99':>8} {'+tot50':>8} {'+tot99':>8} | {'errors':>6} {'cpu/req':>7} "
           f"{'busy%':>5} {'other%':>6}")
    for c, level in summary.items():
        lines.append(f"\nconcurrency {c}  ({args.rounds} rounds x {args.duration:g} s, medians over rounds; "
                     "ms; + = added vs direct, median of per-round differences)")
        lines.append(hdr)
        lines.append("-" * len(hdr))
        for p, r in level.items():
            added = [r.get(f"added_{k}") for k in ("ttft_p50", "ttft_p99", "total_p50", "total_p99")]
            lines.append(
                f"{p:<14} {r['rps']:7.1f} {_f(r['ttft_p50'])} {_f(r['ttft_p99'])} {_f(r['total_p50'])} "
                f"{_f(r['total_p99'])} | " + " ".join(_f(a, 8, True) for a in added) +
                f" | {r['errors']:>6} {_f(r['proxy_cpu_ms_per_req'], 7)} {r['machine_busy_pct']:5.0f} "
                f"{r['other_cpu_pct']:6.1f}")
    for c, level in summary.items():
        for mp in MONITORS:
            m = level.get(mp) or {}
            if m.get("proxy_process_cpu_ms_per_req") is not None:
                lines.append(f"{mp} at concurrency {c}: the proxy process {m['proxy_process_cpu_ms_per_req']:.3f} ms "
                             f"CPU per request (RSS {m['proxy_rss_mib']:.0f} MiB); the whole monitor "
                             f"{m['proxy_cpu_ms_per_req']:.3f} ms (proxy, pipeline: spans, join, redaction, spool; "
                             "store: ingest, quality signals, chdb)")
            if m.get("by_process_ms_per_req"):
                lines.append("  by process, ms CPU per request: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in m["by_process_ms_per_req"].items()))
    lines.append("\ncpu/req: CPU ms per request of the path's processes (monitor: every process of `monitor up`: "
                 "proxy, pipeline, store, supervisor, counted until it is idle again after the cell, so its deferred "
                 "analysis is included and never runs during the next cell; nginx: master+workers; direct: -). "
                 "busy%: whole machine during the cell "
                 "(100% = all cores); other%: CPU of processes not started by this bench, in % of the machine.")
    return "\n".join(lines)


def monitor_threads(cells: list[dict[str, Any]], names: dict[int, str]) -> dict[str, dict[str, float]]:
    """Per concurrency level: CPU ms per request of each thread (group) of ``monitor up``, median over rounds.
    Python threads by name (from py-spy dump), native ones (chdb, gRPC, libuv) by their OS name."""
    out: dict[str, dict[str, float]] = {}
    for c in dict.fromkeys(x["concurrency"] for x in cells):
        per_round: list[dict[str, float]] = []
        for x in cells:
            if x["concurrency"] != c or x["path"] != "monitor" or not x.get("monitor_threads") or not x["sent"]:
                continue
            groups: dict[str, float] = {}
            for tid, (comm, secs) in x["monitor_threads"].items():
                name = names.get(int(tid))
                label = re.sub(r"_\d+$", "_N", name) if name else "[native] " + re.sub(r"[-_:]?\d+$", "", comm)
                groups[label] = groups.get(label, 0.0) + 1000 * secs / x["sent"]
            groups["(whole process)"] = sum(groups.values())
            per_round.append(groups)
        if per_round:
            keys = {k for g in per_round for k in g}
            med = {k: statistics.median(g.get(k, 0.0) for g in per_round) for k in keys}
            out[str(c)] = dict(sorted(med.items(), key=lambda kv: -kv[1]))
    return out


def summarize_profile(raw: Path, top: int = 25) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> share of samples per function (self and inclusive), monitor code first."""
    total = 0
    self_count: dict[str, int] = {}
    incl: dict[str, int] = {}
    thread_count: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        try:
            cnt = int(n)
        except ValueError:
            continue
        frames = stack.split(";")
        total += cnt
        if frames and frames[0].startswith("thread ") or (frames and "(0x" in frames[0]):
            thread_count[frames[0]] = thread_count.get(frames[0], 0) + cnt
        seen = set()
        for f in frames:
            if f in seen:
                continue
            seen.add(f)
            incl[f] = incl.get(f, 0) + cnt
        if frames:
            self_count[frames[-1]] = self_count.get(frames[-1], 0) + cnt

    def pct(d: dict[str, int], pred: Callable[[str], bool]) -> list[tuple[str, float]]:
        items = sorted(((k, v) for k, v in d.items() if pred(k)), key=lambda kv: -kv[1])[:top]
        return [(k, round(100 * v / max(1, total), 1)) for k, v in items]

    # the proxy's event-loop thread, split by what it was doing
    proxy_total = 0
    where: dict[str, int] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or "monitor-proxy" not in stack.split(";", 1)[0] or "monitor-proxy-join" in stack:
            continue
        cnt = int(n)
        proxy_total += cnt
        if "Capture.feed" in stack or "Capture.flush" in stack:
            k = "Capture.feed/flush (capture.py: SSE split + json.loads per event)"
        elif "CaptureProxy._finish" in stack:
            k = "CaptureProxy._finish (server.py: attributes, content JSON, span end)"
        elif any(f in stack for f in ("CaptureProxy._start_span", "upstream_body", "CaptureProxy._inject")):
            k = "CaptureProxy._start_span/upstream_body/_inject (server.py, capture.py)"
        elif "CaptureProxy._capture" in stack and "ClientSession._request" in stack:
            k = "aiohttp client request to the upstream (session.post)"
        elif "CaptureProxy._capture" in stack and ("StreamResponse.write" in stack or "StreamWriter" in stack
                                                   or "StreamResponse.prepare" in stack):
            k = "aiohttp writes to the client (resp.prepare/write/write_eof)"
        elif "CaptureProxy._capture" in stack:
            k = "rest of CaptureProxy._capture (reads, metrics, awaits)"
        elif "CaptureProxy" in stack:
            k = "other CaptureProxy code"
        else:
            k = "event loop + aiohttp protocol callbacks outside the handler"
        where[k] = where.get(k, 0) + cnt
    proxy_split = sorted(((k, round(100 * v / max(1, proxy_total), 1)) for k, v in where.items()),
                         key=lambda kv: -kv[1])

    def mon(f: str) -> bool:
        return "monitor/" in f and "site-packages" not in f

    return {"samples": total, "proxy_thread_samples": proxy_total, "proxy_thread_split": proxy_split,
            "threads": pct(thread_count, lambda _f: True),
            "self_top": pct(self_count, lambda _f: True),
            "inclusive_monitor_code": pct(incl, mon),
            "inclusive_all": pct(incl, lambda f: not f.startswith(("thread ", "process "))),
            "self_monitor_code": pct(self_count, mon)}


def report(result: dict[str, Any], levels: list[int], paths: list[str], args: argparse.Namespace) -> None:
    """Prints the tables and checks of a finished (or stopped) run and adds its summaries to ``result``."""
    cells: list[dict[str, Any]] = result["cells"]
    result["loadavg_end"] = loadavg()
    if cells:
        summary = summarize(cells, sorted({x["concurrency"] for x in cells}, key=levels.index), paths)
        result["summary"] = summary
        print(f"\ncommand: {result['command']}")
        print(f"load average: start {result['loadavg_start']}, end {result['loadavg_end']}  ({os.cpu_count()} cpus)")
        print(render(summary, args))
        errs = [x for x in cells if x["error_kinds"]]
        for x in errs:
            print(f"  errors c={x['concurrency']} round {x['round']} {x['path']}: {x['error_kinds']} "
                  f"{x['error_samples'][:2]}")
    if cells and "monitor" in paths:
        mt = monitor_threads(cells, result.get("monitor_thread_names") or {})
        result["monitor_threads_ms_per_req"] = mt
        if mt:
            print("\nCPU of `monitor up` by thread, ms per request (median over rounds; from /proc/<pid>/task):")
            for c, groups in mt.items():
                print(f"  c={c}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(groups.items())[:8]))
    for mp, mc in (result.get("monitor_check") or {}).items():
        ok = mc["monitor_proxy_requests_total"] == mc["requests_sent_through_proxy"]
        print(f"\n{mp} recorded: monitor_proxy_requests_total{{route=\"{CHAT}\"}} = "
              f"{mc['monitor_proxy_requests_total']} (by status {mc['by_status']}) vs "
              f"{mc['requests_sent_through_proxy']} requests sent through the proxy (warm-up and smoke included) "
              f"-> {'OK' if ok else 'MISMATCH'}; capture errors {mc['capture_errors']}; "
              f"otel_traces rows written {mc['otel_traces_rows_written']:.0f}")
    prof = result.get("profile")
    if prof:
        print(f"\npy-spy --gil of `monitor up` at concurrency {prof['concurrency']} ({prof['samples']} samples, "
              f"{prof['rps_under_profiler']:.0f} req/s under the profiler); raw: {prof['raw']}")
        print("  samples with the GIL held, by thread:", ", ".join(f"{k} {v}%" for k, v in prof["threads"][:7]))
        print(f"  the proxy's event-loop thread ({prof['proxy_thread_samples']} samples), by activity:")
        for k2, v in prof["proxy_thread_split"]:
            print(f"    {v:5.1f}%  {k2}")
        print("  inclusive, monitor code:")
        for k2, v in prof["inclusive_monitor_code"][:15]:
            print(f"    {v:5.1f}%  {k2}")
        print("  self (leaf) top:")
        for k2, v in prof["self_top"][:15]:
            print(f"    {v:5.1f}%  {k2}")
    print(f"\nload average at end: {result['loadavg_end']}")
