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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from procstat import CLK_TCK, cpu_jiffies, descendants, free_port, http_get, machine_busy, pid_alive, rss_kib

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("direct", "monitor", "nginx")
EXTRA_PATHS = ("aiohttp", "monitor-python", "monitor-native")  # opt-in with --paths
MONITORS = {"monitor": None, "monitor-python": "python", "monitor-native": "native"}
"""The `monitor up` paths and the proxy.implementation each runs (None: the config's, ``auto``)."""
CHAT = "/v1/chat/completions"
MODEL = "bench-model-8b"
N_VARIANTS = 64
QUANTILES = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 0.999, 1.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """Something could not be started or measured; the message says why."""


# ============================================================================ shared: the conversation

_VOCAB = [" the", " model", " answers", " a", " question", " about", " streaming", " tokens", ",", ".",
          " latency", " proxy", " naïve", " café", " 日本語", " тест", " emoji 🙂", ' "quoted"', " back\\slash",
          "\n", "\t", " {json}", " </s>", " data:", " 42", " 3.14", " é", " ü", " and", " of", " to", " in"]
_PROMPTS = [
    "Summarise the attached incident report in three bullet points for the on-call engineer.",
    "Translate the following paragraph into French, keeping the technical terms in English.",
    "Write a SQL query that returns the ten slowest requests of the last hour per model.",
    "Explain the difference between time to first token and inter-token latency to a manager.",
    "Draft a polite reply to a customer who asks why the chatbot answered slowly yesterday.",
]


def answer_tokens(variant: int, n: int) -> list[str]:
    """The ``n`` content pieces the upstream streams for ``seed`` ``variant`` (deterministic)."""
    rng = random.Random(1000 + variant)
    return [rng.choice(_VOCAB) for _ in range(n)]


def request_body(variant: int, stream: bool, include_usage: bool, max_tokens: int) -> bytes:
    rng = random.Random(variant)
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer concisely and cite sources."},
            {"role": "user", "content": f"{rng.choice(_PROMPTS)} (ticket #{variant}) " + " ".join(
                rng.choice(["context", "line", "log", "trace", "metric", "span", "user", "café"])
                for _ in range(40))},
        ],
        "temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens, "seed": variant, "stream": stream,
    }
    if stream and include_usage:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, ensure_ascii=False).encode()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


# ============================================================================ upstream (own process)

def upstream_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="proxy.py _upstream")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--prefill-ms", type=float, default=5.0)
    a = ap.parse_args(argv)
    from aiohttp import web

    interval, prefill, n = a.interval_ms / 1000, a.prefill_ms / 1000, a.chunks
    created = int(time.time())
    pre = b'data: {"id":"chatcmpl-'

    def tail(choices: list, usage: Any = None, with_usage_key: bool = True) -> bytes:
        obj: dict[str, Any] = {"object": "chat.completion.chunk", "created": created, "model": MODEL,
                               "choices": choices}
        if with_usage_key:
            obj["usage"] = usage
        return ('",' + json.dumps(obj, ensure_ascii=False, separators=(",", ":"))[1:] + "\n\n").encode()

    role_tail = tail([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None}])
    finish_tail = tail([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    variants = []
    for v in range(N_VARIANTS):
        toks = answer_tokens(v, n)
        variants.append(([tail([{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}])
                          for t in toks], "".join(toks)))
    counter = iter(range(1, 1 << 62))

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            req = json.loads(await request.read())
            variant = int(req.get("seed") or 0) % N_VARIANTS
        except (ValueError, TypeError, AttributeError):
            return web.json_response({"error": {"message": "bad request body"}}, status=400)
        rid = f"{next(counter):012x}".encode()
        chunks, text = variants[variant]
        prompt_tokens = len(req.get("messages") and json.dumps(req["messages"]) or "") // 4
        loop = asyncio.get_running_loop()
        if not req.get("stream"):
            await asyncio.sleep(prefill + (n - 1) * interval)
            return web.json_response({
                "id": f"chatcmpl-{rid.decode()}", "object": "chat.completion", "created": created, "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                          "total_tokens": prompt_tokens + n}})
        opts = req.get("stream_options")
        usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        head = pre + rid
        t0 = loop.time()
        await resp.write(head + role_tail)
        for k, ch in enumerate(chunks):
            delay = t0 + prefill + k * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(head + ch)
        await resp.write(head + finish_tail)
        if usage:
            await resp.write(head + tail([], {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                              "total_tokens": prompt_tokens + n}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post(CHAT, chat)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", a.port, reuse_address=True, backlog=4096).start()
        print(f"upstream listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve())
    except KeyboardInterrupt:
        pass
    return 0


# ============================================================================ plain aiohttp pass-through (optional path)

def passthrough_main(argv: list[str]) -> int:
    """``--paths ...,aiohttp``: the same aiohttp + uvloop stack as the capture proxy, forwarding bytes and
    nothing else (no parsing, no span, no ingest) -- separates what Python/aiohttp costs from what capture does."""
    ap = argparse.ArgumentParser(prog="proxy.py _passthrough")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    a = ap.parse_args(argv)
    import aiohttp
    from aiohttp import web

    hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
    state: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        async with state["session"].request(request.method, a.upstream + request.rel_url.raw_path_qs,
                                            data=body, headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items()
                                                                 if k.lower() not in hop})
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def serve() -> None:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                 timeout=aiohttp.ClientTimeout(total=600), auto_decompress=False)
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", a.port, reuse_address=True, backlog=4096).start()
        await asyncio.Event().wait()

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve())
    except KeyboardInterrupt:
        pass
    return 0


# ============================================================================ load generator (own process)

def _quantiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    out = {}
    for q in QUANTILES:
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        out[f"p{q * 100:g}"] = (s[lo] + (s[hi] - s[lo]) * (pos - lo)) * 1000  # ms
    out["mean"] = statistics.fmean(s) * 1000
    return out


class _Stats:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.errors: dict[str, int] = {}
        self.samples: list[str] = []
        self.sent = 0        # every request started, warm-up included
        self.measured = 0    # requests started in the measured window

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(f"{kind}: {detail}"[:300])


async def _one(session: Any, url: str, body: bytes, expected: str, stream: bool, include_usage: bool
               ) -> tuple[float | None, float, str | None, str]:
    """One request: (ttft s, total s, error kind or None, detail)."""
    t0 = time.perf_counter()
    ttft = None
    async with session.post(url, data=body) as resp:
        if resp.status != 200:
            text = await resp.text(errors="replace")
            return None, time.perf_counter() - t0, f"http_{resp.status}", text[:200]
        if not stream:
            data = json.loads(await resp.read())
            total = time.perf_counter() - t0
            content = data["choices"][0]["message"]["content"]
            if content != expected:
                return None, total, "content_mismatch", f"{content[:60]!r} != {expected[:60]!r}"
            return total, total, None, ""
        buf = b""
        parts: list[str] = []
        done = None
        finish = None
        usage_seen = False
        async for chunk in resp.content.iter_any():
            buf += chunk
            while True:
                i = buf.find(b"\n\n")
                if i < 0:
                    break
                ev, buf = buf[:i], buf[i + 2:]
                if not ev.startswith(b"data:"):
                    continue
                payload = ev[5:].strip()
                if payload == b"[DONE]":
                    done = time.perf_counter()
                    continue
                obj = json.loads(payload)
                choices = obj.get("choices")
                if choices:
                    c = choices[0]
                    text = (c.get("delta") or {}).get("content")
                    if text:
                        if ttft is None:
                            ttft = time.perf_counter()
                        parts.append(text)
                    if c.get("finish_reason"):
                        finish = c["finish_reason"]
                elif obj.get("usage"):
                    usage_seen = True
    end = time.perf_counter()
    if done is None:
        return None, end - t0, "no_done", f"stream ended without [DONE] after {len(parts)} content chunks"
    content = "".join(parts)
    if content != expected:
        return None, done - t0, "content_mismatch", f"{content[:60]!r} != {expected[:60]!r}"
    if finish != "stop":
        return None, done - t0, "no_finish", f"finish_reason {finish!r}"
    if usage_seen != include_usage:
        return None, done - t0, "usage_chunk", f"usage chunk seen={usage_seen}, asked={include_usage}"
    if buf.strip():
        return None, done - t0, "trailing_bytes", repr(buf[:80])
    return (ttft - t0) if ttft is not None else None, done - t0, None, ""


async def _cell(cmd: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url, conc = cmd["url"], int(cmd["concurrency"])
    stream, usage, n = bool(cmd["stream"]), bool(cmd["include_usage"]), int(cmd["chunks"])
    bodies = [request_body(v, stream, usage, n) for v in range(N_VARIANTS)]
    expected = ["".join(answer_tokens(v, n)) for v in range(N_VARIANTS)]
    st = _Stats()
    timeout = aiohttp.ClientTimeout(total=float(cmd["request_timeout"]))
    sessions = [aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1, ttl_dns_cache=None), timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(), headers={"Content-Type": "application/json"})
        for _ in range(conc)]
    t_start = time.perf_counter()
    t_measure = t_start + float(cmd["warmup"])
    t_end = t_measure + float(cmd["duration"])
    max_requests = cmd.get("max_requests")

    async def worker(k: int) -> None:
        session = sessions[k]
        i = k * 7
        while True:
            now = time.perf_counter()
            if now >= t_end or (max_requests is not None and st.sent >= max_requests):
                return
            measured = now >= t_measure
            v = i % N_VARIANTS
            i += 1
            st.sent += 1
            if measured:
                st.measured += 1
            try:
                ttft, total, err, detail = await _one(session, url, bodies[v], expected[v], stream, usage)
            except asyncio.TimeoutError:
                ttft, total, err, detail = None, 0.0, "timeout", f"no answer in {cmd['request_timeout']}s"
            except aiohttp.ClientError as exc:
                ttft, total, err, detail = None, 0.0, type(exc).__name__, str(exc)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                ttft, total, err, detail = None, 0.0, "bad_response", f"{type(exc).__name__}: {exc}"
            if not measured:
                if err:  # warm-up errors are reported too, but apart
                    st.error(f"warmup_{err}", detail)
                continue
            if err:
                st.error(err, detail)
                if err in ("timeout",) or total == 0.0:
                    await asyncio.sleep(0.01)  # do not spin on a dead endpoint
                continue
            st.total.append(total)
            if ttft is not None:
                st.ttft.append(ttft)

    try:
        await asyncio.gather(*(worker(k) for k in range(conc)))
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    wall = time.perf_counter() - t_measure
    measured_errors = sum(v for k, v in st.errors.items() if not k.startswith("warmup_"))
    return {"sent": st.sent, "measured": st.measured, "ok": len(st.total), "errors": measured_errors,
            "error_kinds": st.errors, "error_samples": st.samples,
            "rps": len(st.total) / float(cmd["duration"]) if cmd["duration"] else 0.0,
            "window_s": wall, "ttft_ms": _quantiles(st.ttft), "total_ms": _quantiles(st.total)}


def load_main(argv: list[str]) -> int:
    """Reads one JSON command per stdin line, answers one JSON line on stdout; exits at EOF."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    print(f"loadgen ready ({type(loop).__module__})", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            res = loop.run_until_complete(_cell(cmd))
        except Exception as exc:  # report, keep serving
            res = {"fatal": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    return 0


# ============================================================================ processes

def thread_jiffies(pid: int) -> dict[int, tuple[str, int]]:
    """Per thread of ``pid``: (comm, utime+stime)."""
    out: dict[int, tuple[str, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{t}/stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        f = raw.rsplit(")", 1)[1].split()
        out[int(t)] = (comm, int(f[11]) + int(f[12]))
    return out


def python_thread_names(py_spy: str | None, pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from ``py-spy dump`` (empty without py-spy)."""
    if not py_spy or not Path(py_spy).exists():
        return {}
    try:
        out = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M)}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Proc:
    """A child in its own session / process group; stderr (and stdout unless piped) to ``log_path``."""

    registry: list["Proc"] = []

    def __init__(self, name: str, cmd: list[str], log_path: Path, pipe: bool = False, env: dict | None = None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        log(f"start {name}: {shlex.join(cmd)}  (log {log_path})")
        with open(log_path, "ab") as err:
            self.popen = subprocess.Popen(
                cmd, stdout=subprocess.PIPE if pipe else err, stderr=err,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL, start_new_session=True, cwd=ROOT, env=env)
        self.pid = self.popen.pid
        self.known: set[int] = set()
        self._rbuf = b""
        Proc.registry.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join("    " + s for s in self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}; last lines of {self.log_path}:\n"
                             + self.log_tail())

    def ask(self, obj: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One JSON line to its stdin, one JSON line back from its stdout."""
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write((json.dumps(obj) + "\n").encode())
        self.popen.stdin.flush()
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._rbuf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} did not answer within {timeout:.0f}s")
            r, _, _ = select.select([fd], [], [], min(left, 1.0))
            if r:
                data = os.read(fd, 1 << 20)
                if not data:
                    self.popen.wait(5)
                    self.check()
                    raise BenchError(f"{self.name} closed its stdout")
                self._rbuf += data
            else:
                self.check()
        line, self._rbuf = self._rbuf.split(b"\n", 1)
        return json.loads(line)

    def kill(self, grace: float = 5.0) -> None:
        if self.alive():
            self.known.update(descendants(self.pid))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [p for p in self.known if pid_alive(p)]
            if self.alive():
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for p in live:
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (self.alive() or any(pid_alive(p) for p in live)):
                time.sleep(0.05)
            if not self.alive() and not any(pid_alive(p) for p in live):
                break
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.popen.stdin, self.popen.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def kill_all(cls) -> None:
        for p in list(reversed(cls.registry)):
            try:
                p.kill()
            except Exception as exc:  # keep killing the others
                log(f"could not kill {p.name} ({p.pid}): {exc}")


def wait_until(what: str, pred: Callable[[], Any], procs: list[Proc], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    for p in procs:
        log(f"{p.name} log tail:\n{p.log_tail()}")
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def parse_metrics(text: str) -> dict[str, float]:
    """Every non-histogram ``monitor_*`` sample."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("monitor_") and "_bucket{" not in line and not line.startswith("monitor_info"):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def proxy_counter(metrics: dict[str, float], route: str = CHAT) -> tuple[int, dict[str, int]]:
    """Sum of ``monitor_proxy_requests_total`` for ``route`` and its split by status."""
    by_status: dict[str, int] = {}
    for key, val in metrics.items():
        if key.startswith("monitor_proxy_requests_total{") and f'route="{route}"' in key:
            m = re.search(r'status="([^"]*)"', key)
            by_status[m.group(1) if m else "?"] = int(val)
    return sum(by_status.values()), by_status


NGINX_CONF = """\
{user}worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream model {{
        server 127.0.0.1:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


# ============================================================================ orchestration

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
    lines.append("\ncpu/req: CPU ms per request of the path's processes (monitor: every process of `monitor up`: "
                 "proxy, pipeline, store, supervisor; nginx: master+workers; direct: -). busy%: whole machine "
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

    mon = lambda f: "monitor/" in f and "site-packages" not in f  # noqa: E731
    return {"samples": total, "proxy_thread_samples": proxy_total, "proxy_thread_split": proxy_split,
            "threads": pct(thread_count, lambda _f: True),
            "self_top": pct(self_count, lambda _f: True),
            "inclusive_monitor_code": pct(incl, mon),
            "inclusive_all": pct(incl, lambda f: not f.startswith(("thread ", "process "))),
            "self_monitor_code": pct(self_count, mon)}


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

    py = sys.executable
    me = str(Path(__file__).resolve())
    result: dict[str, Any] = {"command": cmdline, "started": stamp, "cpus": os.cpu_count(),
                              "loadavg_start": load_start, "workdir": str(workdir),
                              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "cells": [], "smoke": {}}
    cells: list[dict[str, Any]] = result["cells"]
    rc = 0
    procs: dict[str, Proc] = {}
    try:
        # -- upstream
        up_port = free_port()
        procs["upstream"] = Proc("upstream", [py, me, "_upstream", "--port", str(up_port), "--chunks",
                                              str(args.chunks), "--interval-ms", str(args.interval_ms),
                                              "--prefill-ms", str(args.prefill_ms)], workdir / "logs" / "upstream.log")
        urls = {"direct": f"http://127.0.0.1:{up_port}"}
        wait_until("the upstream", lambda: http_get(urls["direct"] + "/health")[0] == 200,
                   [procs["upstream"]], args.start_timeout)

        # -- monitor (one `monitor up` per monitor path)
        metrics_urls: dict[str, str] = {}
        result["monitor_ports"] = {}
        for mp in [p for p in paths if p in MONITORS]:
            ports = {k: free_port() for k in ("proxy", "grpc", "http", "metrics", "admin")}
            data_dir = workdir / f"{mp}-data"
            env = {k: v for k, v in os.environ.items() if k != "MONITOR_CONFIG"}
            env["PYTHONUNBUFFERED"] = "1"
            env["MONITOR_CHECKS__ADMIN_PORT"] = str(ports["admin"])  # two of them side by side
            if MONITORS[mp]:
                env["MONITOR_PROXY__IMPLEMENTATION"] = MONITORS[mp]
            conf_args = ["--config", str(args.monitor_config.resolve())] if args.monitor_config else []
            procs[mp] = Proc(mp, [py, "-m", "monitor", *conf_args, "up", "--upstream", urls["direct"],
                                  "--proxy-port", str(ports["proxy"]), "--data-dir", str(data_dir),
                                  "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
                                  "--metrics-port", str(ports["metrics"]), "--no-dashboard"],
                             workdir / "logs" / f"{mp}.log", env=env)
            urls[mp] = f"http://127.0.0.1:{ports['proxy']}"
            metrics_urls[mp] = murl = f"http://127.0.0.1:{ports['metrics']}/metrics"
            t = time.monotonic()
            wait_until(f"{mp}'s proxy and /metrics",
                       lambda u=urls[mp], m=murl: http_get(u + "/health")[0] == 200 and http_get(m)[0] == 200,
                       [procs[mp]], args.start_timeout)
            log(f"{mp} up in {time.monotonic() - t:.1f}s (proxy {urls[mp]}, metrics {murl})")
            result["monitor_ports"][mp] = ports

        # -- nginx
        if "nginx" in paths:
            nd = workdir / "nginx"
            nd.mkdir(exist_ok=True)
            ng_port = free_port()
            user = "user root root;\n" if os.geteuid() == 0 else ""
            conf = NGINX_CONF.format(user=user, workers=args.nginx_workers, d=nd, upstream_port=up_port,
                                     port=ng_port)
            (nd / "nginx.conf").write_text(conf)
            procs["nginx"] = Proc("nginx", [nginx_bin, "-p", str(nd), "-c", str(nd / "nginx.conf"),
                                            "-e", str(nd / "error.log"), "-g", "daemon off;"],
                                  workdir / "logs" / "nginx.log")
            urls["nginx"] = f"http://127.0.0.1:{ng_port}"
            wait_until("nginx", lambda: http_get(urls["nginx"] + "/health")[0] == 200, [procs["nginx"]],
                       args.start_timeout)
            result["nginx_conf"] = conf

        # -- plain aiohttp pass-through (opt-in)
        if "aiohttp" in paths:
            pt_port = free_port()
            procs["aiohttp"] = Proc("aiohttp", [py, me, "_passthrough", "--port", str(pt_port), "--upstream",
                                                urls["direct"]], workdir / "logs" / "aiohttp.log")
            urls["aiohttp"] = f"http://127.0.0.1:{pt_port}"
            wait_until("the aiohttp pass-through", lambda: http_get(urls["aiohttp"] + "/health")[0] == 200,
                       [procs["aiohttp"]], args.start_timeout)

        def monitor_proxy_pids(mp: str) -> list[int]:
            """The pids of `monitor up`'s proxy process(es), from its /metrics (monitor_process_pid); the
            native binary is a child of its proxy process and counted with it."""
            st, text = http_get(metrics_urls[mp])
            if st != 200:
                return []
            return [int(v) for k2, v in parse_metrics(text).items()
                    if k2.startswith("monitor_process_pid{") and 'process="proxy' in k2 and v > 0]

        # -- load generator
        procs["loadgen"] = Proc("loadgen", [py, me, "_loadgen"], workdir / "logs" / "loadgen.log", pipe=True)
        sent_through: dict[str, int] = {p: 0 for p in paths}

        def cell(path: str, conc: int, warmup: float, duration: float, stream: bool,
                 max_requests: int | None = None) -> dict[str, Any]:
            cmd = {"url": urls[path] + CHAT, "concurrency": conc, "warmup": warmup, "duration": duration,
                   "stream": stream, "include_usage": args.include_usage, "chunks": args.chunks,
                   "request_timeout": args.request_timeout, "max_requests": max_requests}
            busy0, tot0 = machine_busy()
            ours0 = {k: cpu_jiffies([p.pid]) for k, p in procs.items()}
            proxy_pids = monitor_proxy_pids(path) if path in MONITORS else []
            px0 = sum(cpu_jiffies([q]) for q in proxy_pids)
            thr0 = thread_jiffies(procs[path].pid) if path in MONITORS else {}
            t0 = time.monotonic()
            res = procs["loadgen"].ask(cmd, warmup + duration + args.request_timeout + 60)
            wall = time.monotonic() - t0
            if "fatal" in res:
                raise BenchError(f"load generator failed on {path} c={conc}: {res['fatal']}")
            busy1, tot1 = machine_busy()
            ours1 = {k: cpu_jiffies([p.pid]) for k, p in procs.items()}
            px1 = sum(cpu_jiffies([q]) for q in proxy_pids)
            if path in MONITORS:
                thr1 = thread_jiffies(procs[path].pid)
                res["monitor_threads"] = {tid: [comm, (j - thr0.get(tid, ("", 0))[1]) / CLK_TCK]
                                          for tid, (comm, j) in thr1.items() if j - thr0.get(tid, ("", 0))[1] > 0}
            sent_through[path] += res["sent"]
            used = {k: (ours1[k] - ours0.get(k, 0)) / CLK_TCK for k in ours1}
            machine_s = (busy1 - busy0) / CLK_TCK                # busy CPU-seconds of the machine
            span = max(1e-9, (tot1 - tot0) / CLK_TCK)            # CPU-seconds available (all cores)
            other = max(0.0, machine_s - sum(used.values()))
            proxy_s = used.get(path) if path != "direct" else None
            res["cpu"] = {"seconds": {k: round(v, 2) for k, v in used.items()},
                          "machine_busy_pct": 100 * machine_s / span, "other_pct": 100 * other / span,
                          "proxy_ms_per_req": (1000 * proxy_s / res["sent"]) if proxy_s is not None and res["sent"]
                          else None, "wall_s": round(wall, 2)}
            if proxy_pids and res["sent"]:  # the capture proxy's own process(es), apart from the rest of the monitor
                res["cpu"]["proxy_process_ms_per_req"] = 1000 * (px1 - px0) / CLK_TCK / res["sent"]
                res["proxy_rss_mib"] = sum(rss_kib(x) for q in proxy_pids for x in [q, *descendants(q)]) / 1024
            return res

        # -- smoke: a few requests per path, streamed and not, checked like every other
        for p in paths:
            for stream in (True, False):
                r = cell(p, 1, 0.0, 60.0, stream, max_requests=3)
                result["smoke"][f"{p}/{'stream' if stream else 'whole'}"] = {
                    "ok": r["ok"], "errors": r["error_kinds"], "samples": r["error_samples"]}
                if r["errors"] or r["ok"] != 3:
                    raise BenchError(f"smoke check failed on {p} (stream={stream}): {r['error_kinds']} "
                                     f"{r['error_samples']}")
        log("smoke check passed: same content on every path, streamed and whole")

        # -- the timed run
        n_cells = len(levels) * args.rounds * len(paths)
        k = 0
        for c in levels:
            for rnd in range(1, args.rounds + 1):
                for p in paths:
                    k += 1
                    r = cell(p, c, args.warmup, args.duration, not args.no_stream)
                    r.update({"path": p, "concurrency": c, "round": rnd, "loadavg": loadavg()})
                    cells.append(r)
                    log(f"[{k}/{n_cells}] c={c:<4} round {rnd} {p:<14} {r['rps']:7.1f} req/s  "
                        f"ttft p50 {r['ttft_ms'].get('p50', float('nan')):7.2f} p99 "
                        f"{r['ttft_ms'].get('p99', float('nan')):7.2f}  total p50 "
                        f"{r['total_ms'].get('p50', float('nan')):7.2f} p99 "
                        f"{r['total_ms'].get('p99', float('nan')):7.2f} ms  errors {r['errors']}"
                        + (f" {r['error_kinds']}" if r["error_kinds"] else "")
                        + f"  cpu {r['cpu']['seconds']}")

        # -- did the monitor record them?
        result["monitor_check"] = {}
        for mp in [p for p in paths if p in MONITORS]:
            if mp == "monitor":
                result["monitor_thread_names"] = python_thread_names(args.py_spy, procs[mp].pid)
            expect = sent_through[mp]
            got = {"n": 0}

            def counted(mp: str = mp, expect: int = expect, got: dict = got) -> bool:
                st, text = http_get(metrics_urls[mp])
                if st == 200:
                    got["n"], got["by_status"] = proxy_counter(parse_metrics(text))
                    got["metrics"] = parse_metrics(text)
                return got["n"] >= expect

            try:
                wait_until(f"{mp}: monitor_proxy_requests_total to reach {expect}", counted, [procs[mp]], 15)
            except BenchError as exc:
                log(str(exc))
            time.sleep(1.0)  # let the span exporter (200 ms batches) and ingest catch up
            counted()
            m = got.get("metrics", {})
            rows = sum(v for k2, v in m.items()
                       if k2.startswith("monitor_store_rows_written_total{") and 'table="otel_traces"' in k2)
            result["monitor_check"][mp] = {
                "requests_sent_through_proxy": expect, "monitor_proxy_requests_total": got["n"],
                "by_status": got.get("by_status", {}),
                "capture_errors": m.get("monitor_proxy_capture_errors_total"),
                "otel_traces_rows_written": rows, "metrics": m}

        # -- optional profile (not timed)
        if args.profile is not None and "monitor" in paths:
            raw = workdir / "monitor-pyspy.txt"
            spy = Proc("py-spy", [args.py_spy, "record", "-p", str(procs["monitor"].pid), "-d",
                                  str(int(args.profile_seconds)), "-r", "200", "-f", "raw", "--threads", "--gil", "-o",
                                  str(raw)], workdir / "logs" / "py-spy.log")
            time.sleep(1.0)
            r = cell("monitor", args.profile, 0.5, args.profile_seconds + 1, not args.no_stream)
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

    result["loadavg_end"] = loadavg()
    if cells:
        summary = summarize(cells, sorted({x["concurrency"] for x in cells}, key=levels.index), paths)
        result["summary"] = summary
        print(f"\ncommand: {cmdline}")
        print(f"load average: start {load_start}, end {result['loadavg_end']}  ({os.cpu_count()} cpus)")
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
