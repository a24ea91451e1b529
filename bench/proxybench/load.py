"""The load generator, its own process (``bench/proxy.py _loadgen``; uvloop + aiohttp, the cheapest Python
client per request). It reads one JSON command per stdin line (a cell: url, concurrency, warm-up and
measured seconds, stream or not, ...) and answers one JSON line: per cell ``C`` asyncio tasks, each with
its own ``ClientSession`` holding one keep-alive connection, send back-to-back requests for ``warmup``
seconds (discarded) and then ``duration`` seconds (measured: requests started in that window). Per
request it records TTFT (first content chunk) and total latency (``[DONE]``), and checks the answer:
the reassembled content must be the upstream's text for that seed, the stream must end with
``[DONE]`` and ``finish_reason: stop``, carry a usage chunk exactly when asked and leave no bytes after
the last event (any deviation counts as an error)."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from proxybench.conversation import N_VARIANTS, answer_tokens, new_loop, request_body

QUANTILES = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 0.999, 1.0)


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
            except TimeoutError:
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
    loop = new_loop()
    asyncio.set_event_loop(loop)
    print(f"loadgen ready ({type(loop).__module__})", file=sys.stderr, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            res = loop.run_until_complete(_cell(cmd))
        except Exception as exc:  # noqa: BLE001 -- reported, the next command is served
            res = {"fatal": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    return 0
