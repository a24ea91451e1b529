#!/usr/bin/env python3
"""Does shadow traffic slow the primary? A's TTFT and latency with and without shadowing, in one run.

``python -m monitor up`` (processes as in production: proxy, pipeline, store) in front of two
streaming upstreams (bench/proxy.py's ``_upstream``: a role chunk, ``--chunks`` content chunks
``--interval-ms`` apart, usage, ``[DONE]``), each its own process:

- A (``proxy.upstream``) answers ``bench-a`` and ``bench-x``;
- B (route ``bench-b``) is the candidate: ``proxy.shadow`` sends every ``bench-a`` request
  (share 1.0) to it once A's answer ended.

The load generator (this process, asyncio + aiohttp) runs ``--rounds`` rounds per concurrency
level, each round one cell of ``bench-a`` (shadowed) and one of ``bench-x`` (not shadowed, same
upstream, same bodies), ``--duration`` seconds each after ``--warmup``: slow drifts of the machine
hit both alike. Reported: medians over the rounds of each cell's p50 / p99 TTFT and total
latency, and the ratio shadowed / plain of the medians, plus the shadow counters of the pipeline
(``monitor_shadow_requests_total``) against the requests sent.

    ~/.cache/llm-monitor/venv/bin/python bench/shadow.py
    ~/.cache/llm-monitor/venv/bin/python bench/shadow.py --concurrency 1,8 --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("monitor_shadow_requests_total") or line.startswith("monitor_proxy_requests_total"):
            name, value = line.rsplit(" ", 1)
            out[name] = out.get(name, 0.0) + float(value)
    return out


def body(model: str, i: int) -> bytes:
    return json.dumps({"model": model, "stream": True, "max_tokens": 64, "seed": i % 64, "messages": [
        {"role": "user", "content": f"Explain item {i} of the runbook in two sentences."}]}).encode()


async def _one(session, url: str, data: bytes) -> tuple[float | None, float]:
    t0 = time.perf_counter()
    ttft = None
    async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            if ttft is None and b'"content":"' in chunk.replace(b'"content": "', b'"content":"') \
                    and b'"content":""' not in chunk:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def cell(url: str, model: str, concurrency: int, warmup: float, duration: float) -> dict:
    import aiohttp

    ttfts: list[float] = []
    totals: list[float] = []
    errors = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration

    async def worker(k: int) -> None:
        nonlocal errors
        async with aiohttp.ClientSession() as s:
            i = k
            while time.perf_counter() < t_end:
                started = time.perf_counter()
                try:
                    ttft, total = await _one(s, url, body(model, i))
                except Exception:
                    errors += 1
                    continue
                if started >= t_measure:
                    totals.append(total)
                    if ttft is not None:
                        ttfts.append(ttft)
                i += concurrency
    await asyncio.gather(*(worker(k) for k in range(concurrency)))

    def q(xs: list[float], p: float) -> float | None:
        return statistics.quantiles(xs, n=100)[int(p * 100) - 1] if len(xs) >= 2 else None
    return {"model": model, "requests": len(totals), "errors": errors,
            "ttft_p50": statistics.median(ttfts) if ttfts else None, "ttft_p99": q(ttfts, 0.99),
            "total_p50": statistics.median(totals) if totals else None, "total_p99": q(totals, 0.99)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], name: str) -> subprocess.Popen:
        p = subprocess.Popen(cmd, stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=ROOT)
        procs.append(p)
        return p

    try:
        pa, pb = free_port(), free_port()
        for port, name in ((pa, "upstream-a"), (pb, "upstream-b")):
            start([PY, str(ROOT / "bench" / "proxy.py"), "_upstream", "--port", str(port), "--chunks",
                   str(args.chunks), "--interval-ms", str(args.interval_ms)], name)
        for port in (pa, pb):
            wait_http(f"http://127.0.0.1:{port}/health")
        cfg = work / "monitor.yaml"
        cfg.write_text(json.dumps({
            "proxy": {"routes": [{"model": "bench-b", "upstream": f"http://127.0.0.1:{pb}", "model_version": "b"}],
                      "shadow": [{"model": "bench-a", "to": "bench-b", "share": 1.0, "max_per_s": 10000,
                                  "max_concurrency": 256}]},
            "checks": {"enabled": False}, "dashboard": {"enabled": False}}))
        proxy_port, mport = free_port(), free_port()
        start([PY, "-m", "monitor", "--config", str(cfg), "up", "--data-dir", str(work / "data"), "--upstream",
               f"http://127.0.0.1:{pa}", "--proxy-port", str(proxy_port), "--grpc-port", str(free_port()),
               "--http-port", str(free_port()), "--metrics-port", str(mport), "--admin-port", str(free_port()),
               "--no-dashboard"], "monitor")
        wait_http(f"http://127.0.0.1:{mport}/metrics")
        wait_http(f"http://127.0.0.1:{proxy_port}/health")  # /metrics answers before the proxy process is up
        url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        deadline = time.monotonic() + 120
        while True:
            try:
                asyncio.run(cell(url, "bench-x", 1, 0, 0.2))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        results: dict[int, dict[str, list[dict]]] = {}
        sent_a = 0
        for c in [int(x) for x in args.concurrency.split(",")]:
            results[c] = {"bench-a": [], "bench-x": []}
            for r in range(args.rounds):
                for model in ("bench-a", "bench-x") if r % 2 == 0 else ("bench-x", "bench-a"):
                    res = asyncio.run(cell(url, model, c, args.warmup, args.duration))
                    results[c][model].append(res)
                    print(f"c={c} round {r + 1} {model}: {res}", flush=True)
        time.sleep(3)
        m = metrics(mport)
        print("\n| streams | shadowed (bench-a): TTFT p50 / p99 ms | total p50 / p99 ms | plain (bench-x): TTFT p50 "
              "/ p99 ms | total p50 / p99 ms | ratio TTFT p50 | ratio total p50 |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for c, by in results.items():
            med = {mdl: {k: statistics.median([x[k] for x in cells if x[k] is not None])
                         for k in ("ttft_p50", "ttft_p99", "total_p50", "total_p99")} for mdl, cells in by.items()}
            sent_a += sum(x["requests"] for x in by["bench-a"])
            a, x = med["bench-a"], med["bench-x"]
            print(f"| {c} | {a['ttft_p50'] * 1e3:.1f} / {a['ttft_p99'] * 1e3:.1f} | {a['total_p50'] * 1e3:.1f} / "
                  f"{a['total_p99'] * 1e3:.1f} | {x['ttft_p50'] * 1e3:.1f} / {x['ttft_p99'] * 1e3:.1f} | "
                  f"{x['total_p50'] * 1e3:.1f} / {x['total_p99'] * 1e3:.1f} | {a['ttft_p50'] / x['ttft_p50']:.3f} | "
                  f"{a['total_p50'] / x['total_p50']:.3f} |")
        shadow = {k.split('outcome="')[1].split('"')[0]: int(v) for k, v in m.items()
                  if k.startswith("monitor_shadow_requests_total")}
        print(f"\nshadow copies by outcome: {shadow} (measured bench-a requests: {sent_a}; warm-up requests are "
              "shadowed too)")
        print(f"logs: {work}")
        return 0
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGINT if p is procs[-1] else signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
