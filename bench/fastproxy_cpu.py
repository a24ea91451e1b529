#!/usr/bin/env python3
"""CPU the capture proxy's request path (FastProxy) spends per streamed request.

Three processes, so that only the proxy's own CPU is counted:

- an upstream (uvloop, raw protocol) that answers ``POST /v1/chat/completions``
  like an OpenAI-compatible engine: ``--chunks`` SSE events (role, content
  pieces, finish, ``data: [DONE]``), one write each, ``--interval-ms`` apart,
  plus the usage event when the request asks for it (the proxy does: the
  client does not), chunked, keep-alive;
- the proxy: :class:`FastProxy` on uvloop (``--loop asyncio`` for the plain
  loop), its records going to a null sink or, with ``--sink socket``, through
  a :class:`RecordSender` to a :class:`RecordReceiver` in this process (the
  real hand-off: encode, one socket write per loop iteration);
- this process: ``--concurrency`` keep-alive clients sending streaming
  requests back to back (and the record receiver).

The proxy's CPU (user + system, from /proc/<pid>/stat, its threads included)
is read at the start and the end of a ``--duration`` window after
``--warmup``; reported: CPU microseconds per request and per chunk. Every
response is checked (the usage event must not reach the client, the stream
must end with ``[DONE]``).

``--impl native`` measures the native request path instead (``monitor-proxy``,
the binary itself is the measured process; with ``--sink socket`` it sends its
records to the same receiver); ``--compare`` measures the floor, the Python
path and the native path one after the other in one run and prints them side
by side.

    ~/.cache/llm-monitor/venv/bin/python bench/fastproxy_cpu.py
    ~/.cache/llm-monitor/venv/bin/python bench/fastproxy_cpu.py --concurrency 64 --sink socket
    ~/.cache/llm-monitor/venv/bin/python bench/fastproxy_cpu.py --concurrency 16 --sink socket --compare
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procstat import CLK_TCK, cpu_jiffies, free_port  # noqa: E402

CHAT = b"/v1/chat/completions"


def _loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _events(n: int) -> tuple[list[bytes], bytes]:
    """``n`` SSE events of a chat stream (role, n-3 content pieces, finish, [DONE]) and the usage event."""
    pre = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"m",'
    out = [pre + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
    for i in range(n - 3):
        out.append(pre + b'"choices":[{"index":0,"delta":{"content":" token%d"},"finish_reason":null}]}\n\n' % i)
    out.append(pre + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    out.append(b"data: [DONE]\n\n")
    usage = pre + b'"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (
        n - 2, n + 38)
    return out, usage


# ============================================================================ upstream (own process)

def upstream_main(a: argparse.Namespace) -> None:
    events, usage = _events(a.chunks)
    interval = a.interval_ms / 1000
    loop = _loop("uvloop")

    class Conn(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
            self.buf = b""

        def data_received(self, data):
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                i = head.find(b"content-length:")
                n = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
                if len(self.buf) < end + 4 + n:
                    return
                body = self.buf[end + 4:end + 4 + n]
                self.buf = self.buf[end + 4 + n:]
                seq = list(events)
                if b'"include_usage":true' in body or b'"include_usage": true' in body:
                    seq.insert(len(seq) - 1, usage)
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                self._send(seq, 0)

        def _send(self, seq, i):
            if self.t.is_closing():
                return
            e = seq[i]
            last = i == len(seq) - 1
            self.t.write(b"%x\r\n%b\r\n%b" % (len(e), e, b"0\r\n\r\n" if last else b""))
            if not last:
                loop.call_later(interval, self._send, seq, i + 1)

    server = loop.run_until_complete(loop.create_server(Conn, "127.0.0.1", a.port, backlog=1024))
    print("ready", flush=True)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()


# ============================================================================ proxy (own process)

def floor_main(a: argparse.Namespace) -> None:
    """The floor: a TCP relay on the same loop (no HTTP, no copy, no record): byte in, byte out."""
    loop = _loop(a.loop)
    host, port = a.upstream.rsplit("/", 1)[1].split(":")

    class Side(asyncio.Protocol):
        def __init__(self, peer=None):
            self.peer = peer
            self.t = None
            self.pending = []

        def connection_made(self, t):
            self.t = t
            if self.peer is None:  # the client side: open the upstream side
                t.pause_reading()
                loop.create_task(self._connect())

        async def _connect(self):
            _, up = await loop.create_connection(lambda: Side(self), host, int(port))
            self.peer = up
            for data in self.pending:
                up.t.write(data)
            self.pending = []
            self.t.resume_reading()

        def data_received(self, data):
            if self.peer is None or self.peer.t is None:  # before the upstream side is connected
                self.pending.append(data)
            else:
                self.peer.t.write(data)

        def connection_lost(self, exc):
            if self.peer is not None and self.peer.t is not None:
                self.peer.t.close()

    server = loop.run_until_complete(loop.create_server(lambda: Side(), "127.0.0.1", a.port, backlog=1024))
    print("ready", flush=True)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.run_forever()
    server.close()


def proxy_main(a: argparse.Namespace) -> None:
    from monitor.config import ProxySettings
    from monitor.selfmetrics import SelfMetrics
    from monitor.sidecar.proxy.channel import RecordSender
    from monitor.sidecar.proxy.fastproxy import FastProxy

    loop = _loop(a.loop)
    asyncio.set_event_loop(loop)
    settings = ProxySettings(upstream=a.upstream, host="127.0.0.1", port=a.port)
    sender = None
    if a.sink == "socket":
        sender = RecordSender(a.socket)
        loop.run_until_complete(sender.start())
        loop.run_until_complete(sender.wait_connected(10))
        proxy = FastProxy(settings, sender.send, SelfMetrics("bench"), announce=sender.send_start)
    else:
        proxy = FastProxy(settings, lambda r: True, SelfMetrics("bench"))
    loop.run_until_complete(proxy.start())
    print("ready", flush=True)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    if a.profile:  # where the proxy's time goes (slower under the profiler: not for the CPU figure)
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(loop.run_forever)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        loop.run_forever()
    print(json.dumps({**proxy.stats(), **({"sender": sender.stats()} if sender else {})}), flush=True)


# ============================================================================ in-process: the Python work alone

class _FakeTransport:
    """Takes writes and drops them: the proxy's code runs, the kernel's part (syscalls) does not."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data) -> None:
        self.bytes += len(data)

    def writelines(self, parts) -> None:
        for p in parts:
            self.bytes += len(p)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...

    def can_write_eof(self) -> bool:
        return False


def inprocess_main(a: argparse.Namespace) -> None:
    """Drive FastProxy's callbacks with the exact bytes of a streamed request, without sockets:
    what its own code costs per request, apart from the syscalls that move the bytes."""
    from monitor.config import ProxySettings
    from monitor.selfmetrics import SelfMetrics
    from monitor.sidecar.proxy import fastproxy
    from monitor.sidecar.proxy._upstream import UpstreamConn
    from monitor.sidecar.proxy.record import encode

    sink = (lambda r: bool(encode(r))) if a.sink == "socket" else (lambda r: True)
    proxy = fastproxy.FastProxy(ProxySettings(upstream="http://127.0.0.1:9", port=0), sink, SelfMetrics("bench"))
    up = UpstreamConn(proxy.pool)
    up.connection_made(_FakeTransport())
    proxy.pool.put(up)
    client = fastproxy._ClientConn(proxy)
    client.connection_made(_FakeTransport())
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hello " * 40}],
                       "stream": True, "max_tokens": 64}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: OpenAI/Python 1.40\r\n"
               b"Accept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-x\r\n"
               b"X-Stainless-Lang: python\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    events, usage = _events(a.chunks)
    pieces = [b"HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\nserver: uvicorn\r\n"
              b"content-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"]
    for e in events[:-1] + [usage, events[-1]]:
        pieces.append(b"%x\r\n%b\r\n" % (len(e), e))
    pieces[-1] += b"0\r\n\r\n"
    batch = 100
    per_request = []
    for _ in range(max(1, a.requests // batch)):  # batches: on a shared machine the least disturbed one counts
        t = time.process_time()
        for _ in range(batch):
            client.data_received(request)
            for p in pieces:
                up.data_received(p)
        per_request.append((time.process_time() - t) / batch * 1e6)
    assert proxy.n_records == batch * len(per_request) and proxy.pool.idle == [up], proxy.stats()
    per_request.sort()
    best, median = per_request[0], per_request[len(per_request) // 2]
    print(f"in-process (no sockets) sink={a.sink}: {batch * len(per_request)} streamed requests of {a.chunks} "
          f"chunks + the usage event, CPU per request (request, stream and record): best batch {best:.0f} us "
          f"({best / a.chunks:.1f} us per chunk), median batch {median:.0f} us")


# ============================================================================ client (this process)

async def client_loop(port: int, body: bytes, stop_at: float, counts: dict, window: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = b"POST %b HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        CHAT, len(body), body)
    try:
        while time.monotonic() < stop_at:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                counts["errors"] += 1
                return
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readexactly(2)
                    break
                parts.append(await reader.readexactly(size + 2))
            body_in = b"".join(p[:-2] for p in parts)
            ok = body_in.endswith(b"data: [DONE]\n\n") and b'"usage"' not in body_in
            now = time.monotonic()
            if window[0] <= now < window[1]:
                counts["requests" if ok else "errors"] += 1
                counts["chunks"] += len(parts)
    finally:
        writer.close()


def _user_sys(pid: int) -> tuple[int, int]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]), int(f[12])


def _native_binary(a: argparse.Namespace) -> str:
    """--binary, else the installed monitor-proxy, else the crate's release build."""
    from monitor.sidecar.proxy.native import native_binary

    crate = Path(__file__).resolve().parents[1] / "native" / "proxy" / "target" / "release" / "monitor-proxy"
    for p in (a.binary, native_binary(), crate):
        if p and Path(p).is_file():
            return str(p)
    raise SystemExit("no monitor-proxy binary: pip install -e . with cargo on PATH, or "
                     "cargo build --release in native/proxy, or --binary PATH")


def _start_native(a: argparse.Namespace, port: int, up_port: int, sock: str) -> subprocess.Popen:
    """The binary on ``port``, its ready line read; its config as the Python proxy's would be."""
    from monitor.config import ProxySettings
    from monitor.sidecar.proxy.native import native_config

    cfg = native_config(ProxySettings(upstream=f"http://127.0.0.1:{up_port}", host="127.0.0.1", port=port),
                        sock if a.sink == "socket" else None)
    px = subprocess.Popen([_native_binary(a), "--config-json", json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
    line = px.stdout.readline()
    assert line.startswith("{") and json.loads(line)["ready"], "the native proxy did not start"
    px.metrics_port = json.loads(line)["metrics_port"]  # type: ignore[attr-defined]
    return px


def measure(a: argparse.Namespace, what: str) -> dict:
    """One measurement of ``what`` (``python``, ``native`` or ``floor``): its own upstream, proxy and
    clients; returns the CPU per request of the proxy process alone."""
    up_port, proxy_port = free_port(), free_port()
    sock = os.path.join(tempfile.mkdtemp(prefix="fpcpu"), "capture.sock")
    me = [sys.executable, __file__]
    procs = []
    loop = _loop("uvloop")
    asyncio.set_event_loop(loop)
    records = [0]
    receiver = None
    label = {"floor": "TCP relay (floor)", "python": "FastProxy (Python)", "native": "monitor-proxy (native)"}[what]
    try:
        if a.sink == "socket":
            from monitor.sidecar.proxy.channel import RecordReceiver
            receiver = RecordReceiver(sock, lambda r: records.__setitem__(0, records[0] + 1))
            loop.run_until_complete(receiver.start())
        up = subprocess.Popen(me + ["_upstream", "--port", str(up_port), "--chunks", str(a.chunks),
                                    "--interval-ms", str(a.interval_ms)], stdout=subprocess.PIPE, text=True)
        procs.append(up)
        assert up.stdout.readline().strip() == "ready", "the bench upstream did not start"
        if what == "native":
            px = _start_native(a, proxy_port, up_port, sock)
        else:
            px = subprocess.Popen(me + ["_floor" if what == "floor" else "_proxy", "--port", str(proxy_port),
                                        "--upstream", f"http://127.0.0.1:{up_port}",
                                        "--sink", a.sink, "--socket", sock, "--loop", a.loop]
                                  + (["--profile"] if a.profile else []),
                                  stdout=subprocess.PIPE, text=True)
            assert px.stdout.readline().strip() == "ready", "a bench process did not start"
        procs.append(px)
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hello " * 40}],
                           "stream": True, "max_tokens": 64}).encode()
        counts = {"requests": 0, "errors": 0, "chunks": 0}
        t0 = time.monotonic()
        window = [t0 + a.warmup, t0 + a.warmup + a.duration]
        cpu = {}

        async def run():
            async def mark(at, key):
                await asyncio.sleep(at - time.monotonic())
                cpu[key] = (cpu_jiffies([px.pid]), time.monotonic(), _user_sys(px.pid))
            await asyncio.gather(mark(window[0], "start"), mark(window[1], "end"),
                                 *[client_loop(proxy_port, body, window[1] + 0.5, counts, window)
                                   for _ in range(a.concurrency)])

        loop.run_until_complete(run())
        jiffies = cpu["end"][0] - cpu["start"][0]
        secs = cpu["end"][1] - cpu["start"][1]
        n = counts["requests"]
        us = jiffies / CLK_TCK * 1e6 / max(n, 1)
        user = (cpu["end"][2][0] - cpu["start"][2][0]) / CLK_TCK * 1e6 / max(n, 1)
        system = (cpu["end"][2][1] - cpu["start"][2][1]) / CLK_TCK * 1e6 / max(n, 1)
        print(f"{label} loop={a.loop} sink={a.sink} concurrency={a.concurrency} chunks/response={a.chunks} "
              f"interval={a.interval_ms}ms")
        print(f"requests: {n} in {secs:.1f}s ({n / secs:.0f}/s), errors: {counts['errors']}, "
              f"chunks to the client per request: {counts['chunks'] / max(n, 1):.1f}")
        print(f"proxy CPU: {jiffies / CLK_TCK:.2f}s = {us:.0f} us per streamed request "
              f"(user {user:.0f} + system {system:.0f}; {us / max(a.chunks, 1):.1f} us per chunk), "
              f"{100 * jiffies / CLK_TCK / secs:.0f}% of a core")
        if what == "native":
            import urllib.request
            with urllib.request.urlopen(f"http://127.0.0.1:{px.metrics_port}/stats", timeout=2) as r:
                print("proxy stats:", r.read().decode())
        return {"what": label, "requests": n, "rate": n / secs, "errors": counts["errors"], "us": us, "user": user,
                "system": system}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                out, _ = p.communicate(timeout=10)
                if p is procs[-1] and what == "python" and out.strip():
                    print("proxy stats:", out.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                p.kill()
        if receiver is not None:
            loop.run_until_complete(receiver.close())
            print(f"records received: {records[0]}")
        loop.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("role", nargs="?", default="bench", choices=["bench", "_upstream", "_proxy", "_floor"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", default="")
    ap.add_argument("--chunks", type=int, default=34, help="SSE events per response (with [DONE])")
    ap.add_argument("--interval-ms", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--sink", choices=["null", "socket"], default="null")
    ap.add_argument("--socket", default="")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--impl", choices=["python", "native"], default="python",
                    help="the request path to measure: FastProxy, or the monitor-proxy binary")
    ap.add_argument("--binary", default="", help="--impl native: the monitor-proxy to run (default: the built one)")
    ap.add_argument("--compare", action="store_true",
                    help="measure the floor, the Python path and the native path in one run, side by side")
    ap.add_argument("--inprocess", action="store_true",
                    help="drive the proxy's callbacks without sockets: its own code's CPU, no syscalls")
    ap.add_argument("--requests", type=int, default=5000, help="--inprocess: requests to run")
    ap.add_argument("--profile", action="store_true", help="print the proxy's cProfile (its CPU figure is void then)")
    ap.add_argument("--floor", action="store_true",
                    help="measure a plain TCP relay instead of the proxy (the floor: what moving the bytes costs)")
    a = ap.parse_args()
    if a.role == "_upstream":
        upstream_main(a)
        return 0
    if a.role == "_proxy":
        proxy_main(a)
        return 0
    if a.role == "_floor":
        floor_main(a)
        return 0
    if a.inprocess:
        inprocess_main(a)
        return 0
    if not a.compare:
        return 0 if measure(a, "floor" if a.floor else a.impl)["errors"] == 0 else 1
    results = []
    for what in ("floor", "python", "native"):
        results.append(measure(a, what))
        print()
    print(f"CPU per streamed request ({a.chunks} chunks, concurrency {a.concurrency}, sink {a.sink}), same run:")
    for r in results:
        print(f"  {r['what']:<24} {r['us']:6.0f} us  (user {r['user']:4.0f} + system {r['system']:4.0f})  "
              f"{r['rate']:5.0f} req/s  errors {r['errors']}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
