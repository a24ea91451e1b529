"""The capture proxy's request path against scripted upstreams that misbehave byte by byte.

Each test of the request path runs twice (the ``impl`` fixture): against the
Python path (FastProxy, in-process, records handed to a sink) and against the
native binary (``monitor-proxy``, a child process whose records cross the Unix
socket to a :class:`RecordReceiver`). The native runs are skipped, with the
reason in the summary, when the binary is not built. Upstreams are raw asyncio
servers (they write exactly the bytes a test gives, split where it says, and
close when it says); clients are raw sockets, ``http.client`` and the official
``openai`` SDK. Most tests compare what a client receives from the upstream
directly with what it receives through the proxy. Everything (upstreams,
Python proxy, record receiver) runs on one event loop in a background thread;
clients block in the test's thread.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pytest

from monitor.config import ClientsSettings, ProxySettings
from monitor.otlp.identity import wanted_headers
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.proxy.channel import RecordReceiver
from monitor.sidecar.proxy.fastproxy import FastProxy, new_event_loop
from monitor.sidecar.proxy.native import NativeProxy, native_binary, native_config
from monitor.sidecar.proxy.record import CaptureRecord, CaptureStart

CHAT = "/v1/chat/completions"


def _native_under_test():
    """The binary the native runs use: $MONITOR_PROXY_BINARY, else the installed one, else the crate's
    own release build (``cargo build --release`` in native/proxy)."""
    from pathlib import Path

    for p in (os.environ.get("MONITOR_PROXY_BINARY"), native_binary(),
              Path(__file__).resolve().parents[1] / "native/proxy/target/release/monitor-proxy"):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return Path(p)
    return None


NATIVE = _native_under_test()
NATIVE_MISSING = ("NATIVE PROXY NOT BUILT: monitor/_native/monitor-proxy is missing, so its half of the matrix did "
                  "not run (pip install -e . with cargo on PATH builds it)")

# ============================================================================ the scripted upstream


@dataclass
class Req:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes

    def header(self, name: str) -> bytes | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower().encode()]
        return vals[0] if vals else None

    def names(self) -> set[str]:
        return {k.decode().lower() for k, _ in self.headers}

    @property
    def json(self) -> dict:
        return json.loads(self.body) if self.body else {}


async def read_request(reader: asyncio.StreamReader) -> Req | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = [tuple(x.strip() for x in line.split(b":", 1)) for line in lines[1:]]
    req = Req(method, target, headers, b"", head)  # type: ignore[arg-type]
    if req.header("content-length") is not None:
        req.body = await reader.readexactly(int(req.header("content-length")))
    elif (req.header("transfer-encoding") or b"").lower() == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        req.body = b"".join(parts)
    return req


Script = Callable[[Req, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Upstream:
    script: Script
    port: int = 0
    requests: list[Req] = field(default_factory=list)
    connections: int = 0
    closed_at: list[float] = field(default_factory=list)
    """time.monotonic() when the script saw the proxy close the connection (disconnect tests)."""
    server: Any = None

    async def start(self) -> "Upstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    break
                self.requests.append(req)
                if not await self.script(req, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, RuntimeError):  # uvloop: write after close
            pass
        finally:
            writer.close()


def head(status: int = 200, headers: list[tuple[str, str]] | None = None, reason: str = "OK") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def write_chunked(w: asyncio.StreamWriter, pieces: list[bytes], pause: float = 0.0, end: bool = True) -> None:
    for p in pieces:
        w.write(b"%x\r\n%b\r\n" % (len(p), p))
        await w.drain()
        if pause:
            await asyncio.sleep(pause)
    if end:
        w.write(b"0\r\n\r\n")
        await w.drain()


def fixed(data: bytes, keep: bool = True) -> Script:
    """Answer every request with these exact bytes."""
    async def script(req, reader, w):
        w.write(data)
        await w.drain()
        return keep
    return script


# ============================================================================ the environment


class NativeUnderTest:
    """The native binary with FastProxy's face for these tests: ``port``, ``stats()``, ``async stop()``."""

    def __init__(self, env: "Env", settings: ProxySettings, client_headers: tuple[str, ...] = ()) -> None:
        self.env = env
        # digest "both": the records keep the stream beside the binary's reassembly of it, so these tests
        # check the bytes as before (test_the_native_digest_reads_every_stream_as_the_replay_does: the two agree)
        self.runner = NativeProxy(settings, env.socket_path(), binary=NATIVE, client_headers=client_headers,
                                  digest="both")

    def start(self) -> int:
        self.port = self.runner.start()
        return self.port

    def stats(self) -> dict:
        return self.runner.stats()

    async def stop(self, drain_s: float) -> None:
        # it drains for its configured drain_s; the loop goes on meanwhile (its last records arrive)
        await asyncio.get_running_loop().run_in_executor(None, self.runner.stop, drain_s)


class Env:
    """One event loop in a thread with the upstreams and proxies of a test; ``impl`` says which
    request path ``proxy()`` starts."""

    def __init__(self, kind: str = "uvloop", impl: str = "python") -> None:
        self.impl = impl
        self.loop = new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.records: list[CaptureRecord] = []
        self.proxies: list[Any] = []
        self.upstreams: list[Upstream] = []
        self.announce: Callable[[bytes, bytes], object] | None = None
        self.receiver: RecordReceiver | None = None
        self._socket_dir: str | None = None

    def run(self, coro, timeout: float = 15.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        async def go():
            return fn(*args)
        return self.run(go())

    def upstream(self, script: Script) -> Upstream:
        up = self.run(Upstream(script).start())
        self.upstreams.append(up)
        return up

    def proxy(self, upstream: Upstream | str, sink=None, metrics: SelfMetrics | None = None, announce=None,
              client_headers: tuple[str, ...] = (), **kw) -> Any:
        url = upstream if isinstance(upstream, str) else upstream.url
        settings = ProxySettings(**{"upstream": url, "host": "127.0.0.1", "port": 0, **kw})
        if self.impl == "native":
            assert sink is None and metrics is None, "a sink or metrics of its own: a Python-only test"
            self.announce = announce
            p: Any = NativeUnderTest(self, settings, client_headers)
            p.start()
        else:
            p = FastProxy(settings, sink or self._sink, metrics or SelfMetrics("test"), announce=announce,
                          client_headers=client_headers)
            self.run(p.start())
        self.proxies.append(p)
        return p

    def socket_path(self) -> str:
        """The capture socket the native proxies send to; its receiver feeds ``records``/``announce``."""
        if self.receiver is None:
            import tempfile
            self._socket_dir = tempfile.mkdtemp(prefix="fpt")
            self.receiver = RecordReceiver(os.path.join(self._socket_dir, "capture.sock"), self._on_frame)
            self.run(self.receiver.start())
        return self.receiver.path

    def _on_frame(self, item) -> None:
        if isinstance(item, CaptureStart):
            if self.announce is not None:
                self.announce(item.trace_id, item.span_id)
        else:
            self.records.append(item)

    def _sink(self, r: CaptureRecord) -> bool:
        self.records.append(r)
        return True

    def wait_records(self, n: int, timeout: float = 5.0) -> list[CaptureRecord]:
        deadline = time.monotonic() + timeout
        while len(self.records) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.records) >= n, f"expected {n} records, got {len(self.records)}"
        return self.records

    def close(self) -> None:
        for p in self.proxies:
            self.run(p.stop(0.2))
        for u in self.upstreams:
            self.call(u.server.close)
        if self.receiver is not None:
            self.run(self.receiver.close())
            os.rmdir(self._socket_dir)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            # closed here, in order: a stopped loop left to the garbage collector is freed at an
            # arbitrary later point, and a uvloop freed then closes descriptor numbers that later
            # tests' loops may have been given since (libuv then aborts in epoll_wait)
            self.loop.close()


@pytest.fixture(params=["python", "native"])
def impl(request):
    """Which request path the test's proxies run."""
    if request.param == "native" and NATIVE is None:
        pytest.skip(NATIVE_MISSING)
    return request.param


@pytest.fixture(params=["uvloop"])
def env(request, impl):
    e = Env(request.param, impl)  # native: the loop kind is the upstreams' and the receiver's
    yield e
    e.close()


python_only = pytest.mark.parametrize("impl", ["python"], indirect=True)
"""A test of the Python side itself (its sink contract, RecordSender/RecordReceiver)."""
both_loops = pytest.mark.parametrize("env", ["uvloop", "asyncio"], indirect=True)


# ============================================================================ clients


def req_http(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         conn: http.client.HTTPConnection | None = None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def http_error(port: int, method: str, path: str, body: bytes | None = None) -> tuple[type, float]:
    """The exception class a client gets reading the response, and how long it took."""
    t = time.monotonic()
    with pytest.raises(Exception) as err:
        req_http(port, method, path, body)
    return type(err.value), time.monotonic() - t


def raw(port: int, data: bytes, timeout: float = 3.0, shut: bool = False) -> bytes:
    """Send bytes, read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except socket.timeout:
            pass
        return out


def chat_body(stream: bool = True, usage: bool | None = None, **extra) -> bytes:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if usage is not None:
        body["stream_options"] = {"include_usage": usage}
    body.update(extra)
    return json.dumps(body).encode()


# ============================================================================ SSE streams

EVENTS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n',
    b': keep-alive comment\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hi \\u00e9"}}],"usage":null}\n\n',
    b'event: message\nid: 7\nretry: 100\ndata: {"id":"c1","choices":[{"index":0,"delta":{},'
    b'"finish_reason":"stop"}]}\n\n',
]
USAGE_EVENT = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
               b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n')
DONE = b"data: [DONE]\n\n"


def stream_of(req: Req, events=EVENTS, usage_event=USAGE_EVENT, done=DONE) -> bytes:
    """What an OpenAI-compatible server streams for ``req``: the usage event only when asked for."""
    opts = req.json.get("stream_options") or {}
    return b"".join(events) + (usage_event if opts.get("include_usage") else b"") + done


def sse_upstream(pieces: Callable[[bytes], list[bytes]] = lambda s: [s], pause: float = 0.0,
                 stream: Callable[[Req], bytes] = stream_of, chunked: bool = True) -> Script:
    async def script(req, reader, w):
        s = stream(req)
        if chunked:
            w.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
            await write_chunked(w, pieces(s), pause)
            return True
        w.write(head(200, [("Content-Type", "text/event-stream"), ("Connection", "close")]))
        for p in pieces(s):
            w.write(p)
            await w.drain()
            if pause:
                await asyncio.sleep(pause)
        return False
    return script


# ============================================================================ streams, byte for byte


@both_loops
def test_sse_split_at_every_offset_is_forwarded_byte_identical(env):
    split = [0]
    up = env.upstream(sse_upstream(lambda s: [s[:split[0]], s[split[0]:]] if 0 < split[0] < len(s) else [s],
                                   pause=0.0))  # chunked: each piece reaches on_body apart
    proxy = env.proxy(up)
    asked = req_http(up.port, "POST", CHAT, chat_body(usage=True))[2]
    plain = req_http(up.port, "POST", CHAT, chat_body(usage=False))[2]
    assert USAGE_EVENT in asked and USAGE_EVENT not in plain
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for k in range(1, len(asked)):
        split[0] = k
        assert req_http(proxy.port, "POST", CHAT, chat_body(usage=True), conn=conn)[2] == asked, k
        # the client did not ask: the proxy asked, and takes out exactly the usage event
        assert req_http(proxy.port, "POST", CHAT, chat_body(usage=False), conn=conn)[2] == plain, k
    conn.close()
    assert up.connections == 3  # direct x2, then one kept-alive pooled connection for every request
    recs = env.wait_records(2 * (len(asked) - 1))
    for r in recs:
        assert len(r.chunks) == 2  # the proxy saw the two pieces apart
        assert r.response_body == asked  # the record keeps what the upstream sent, usage event included
        assert r.chunks[-1][1] == len(asked)
        assert [o for _, o in r.chunks] == sorted(o for _, o in r.chunks)
    assert [r.usage_requested for r in recs[:2]] == [False, True]


@pytest.mark.parametrize("variant", ["crlf", "cr", "invalid_json", "index_x", "not_usage_only", "unterminated"])
def test_odd_streams_are_identical_and_only_the_usage_event_goes(env, variant):
    usage, done = USAGE_EVENT, DONE
    events = list(EVENTS)
    if variant == "crlf":
        events = [e.replace(b"\n", b"\r\n") for e in events]
        usage, done = usage.replace(b"\n", b"\r\n"), done.replace(b"\n", b"\r\n")
    elif variant == "cr":
        events = [e.replace(b"\n", b"\r") for e in events]
        usage, done = usage.replace(b"\n", b"\r"), done.replace(b"\n", b"\r")
    elif variant == "invalid_json":
        events += [b'data: {"choices":[],"usage":{"prompt_tokens":1\n\n', b"data: {not json\n\n"]
    elif variant == "index_x":
        events += [b'data: {"choices":[{"index":"x","delta":{"content":1}}]}\n\n']
    elif variant == "not_usage_only":  # "usage" and empty choices, but not the usage object
        events += [b'data: {"choices":[],"usage":null}\n\n', b'data: {"choices":[{"index":0}],"usage":{"a":1}}\n\n',
                   b'data: {"choices":[],"prompt_filter_results":[]}\n\n']
    elif variant == "unterminated":
        done = b"data: [DONE]\n"

    def stream(req):
        return stream_of(req, events, usage, done)

    rng = random.Random(variant)

    def pieces(s):  # random splits, some one byte long
        cuts = sorted(rng.sample(range(1, len(s)), 12))
        return [s[a:b] for a, b in zip([0] + cuts, cuts + [len(s)])]

    up = env.upstream(sse_upstream(pieces, pause=0.001, stream=stream))
    proxy = env.proxy(up)
    for asked in (True, False):
        direct = req_http(up.port, "POST", CHAT, chat_body(usage=asked))
        via = req_http(proxy.port, "POST", CHAT, chat_body(usage=asked))
        assert via[0] == direct[0] == 200
        assert via[2] == direct[2], variant
        assert via[1]["content-type"] == "text/event-stream"


@pytest.mark.parametrize("path", [CHAT, "/other/thing"])
@both_loops
def test_non_sse_bodies_are_identical(env, path):
    blob = os.urandom(300_000)
    answers = {
        "json": head(200, [("Content-Type", "application/json"), ("Content-Length", "14")]) + b'{"ok": "\xc3\xa9 x"}',
        "binary": head(200, [("Content-Type", "application/octet-stream"),
                             ("Content-Length", str(len(blob)))]) + blob,
        "empty": head(200, [("Content-Length", "0")]),
        "no_content": head(204, [("X-A", "1")], "No Content"),
        "chunked": head(200, [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
        "until_close": head(200, [("Content-Type", "text/plain")]) + b"read until the server closes",
    }
    which = [""]

    async def script(req, reader, w):
        data = answers[which[0]]
        if req.method == b"HEAD":
            data = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        w.write(data)
        await w.drain()
        return which[0] != "until_close"

    up = env.upstream(script)
    proxy = env.proxy(up)
    for name in answers:
        which[0] = name
        for method, body in (("POST", chat_body(stream=False)), ("HEAD", None)):
            if method == "HEAD" and name in ("chunked", "until_close"):
                continue
            direct = req_http(up.port, method, path, body)
            via = req_http(proxy.port, method, path, body)
            assert (via[0], via[2]) == (direct[0], direct[2]), (name, method)
            assert via[1].get("content-length") == direct[1].get("content-length"), (name, method)
    if path == CHAT:
        recs = env.wait_records(len(answers))
        assert {r.response_body for r in recs[:len(answers)]} >= {blob, b"", b"hello world",
                                                                  b"read until the server closes"}
        assert all(r.error_type == "" for r in recs)
    else:
        time.sleep(0.1)
        assert env.records == []  # pass-through: no record


def test_large_bodies_stream_both_ways_through_a_pass_through(env):
    blob = os.urandom(20 * 1024 * 1024)
    got = []

    async def script(req, reader, w):
        got.append(req.body)
        w.write(head(200, [("Content-Length", str(len(blob)))]))
        for i in range(0, len(blob), 1 << 20):
            w.write(blob[i:i + (1 << 20)])
            await w.drain()
        return True

    up = env.upstream(script)
    proxy = env.proxy(up)
    status, _, body = req_http(proxy.port, "PUT", "/files/x", blob[::-1])
    assert status == 200 and body == blob and got == [blob[::-1]]
    # chunked upload
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    c.request("POST", "/files/y", body=iter([blob[:5000], blob[5000:70000]]), encode_chunked=True)
    assert c.getresponse().read() == blob
    assert got[1] == blob[:70000]


# ============================================================================ failures as the client sees them


@both_loops
def test_content_length_mismatch_gives_the_same_error_fast(env):
    async def script(req, reader, w):
        w.write(head(200, [("Content-Type", "application/json"), ("Content-Length", "1000")]) + b"x" * 500)
        await w.drain()
        return False

    up = env.upstream(script)
    proxy = env.proxy(up)
    direct, _ = http_error(up.port, "POST", CHAT, chat_body(stream=False))
    via, took = http_error(proxy.port, "POST", CHAT, chat_body(stream=False))
    assert via is direct is http.client.IncompleteRead
    assert took < 2
    rec = env.wait_records(1)[0]
    assert rec.error_type == "upstream_disconnected" and rec.status == 200 and len(rec.response_body) == 500


@pytest.mark.parametrize("asked", [True, False])
def test_chunked_stream_cut_midway_is_an_error_for_the_client(env, asked):
    async def script(req, reader, w):
        w.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
        await write_chunked(w, EVENTS[:2], pause=0.01, end=False)
        return False

    up = env.upstream(script)
    proxy = env.proxy(up)
    direct, _ = http_error(up.port, "POST", CHAT, chat_body(usage=asked))
    via, took = http_error(proxy.port, "POST", CHAT, chat_body(usage=asked))
    assert via is direct is http.client.IncompleteRead and took < 2
    rec = env.wait_records(1)[0]
    assert rec.error_type == "upstream_disconnected"
    assert rec.response_body == b"".join(EVENTS[:2])
    assert rec.usage_requested is (not asked)


@pytest.mark.parametrize("status", [400, 401, 404, 422, 429, 500, 503])
def test_upstream_error_bodies_pass_unchanged(env, status):
    body = json.dumps({"error": {"message": f"nope {status}", "type": "x"}}).encode()

    async def script(req, reader, w):
        w.write(head(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("Retry-After", "7")], "Whatever") + body)
        await w.drain()
        return True

    up = env.upstream(script)
    proxy = env.proxy(up)
    for payload in (chat_body(stream=False), chat_body(usage=True)):  # no body change: nothing to retry
        direct = req_http(up.port, "POST", CHAT, payload)
        via = req_http(proxy.port, "POST", CHAT, payload)
        assert (via[0], via[2], via[1]["retry-after"]) == (direct[0], direct[2], "7")
    assert len(up.requests) == 4
    rec = env.wait_records(2)[1]
    assert rec.status == status and rec.response_body == body and rec.error_type == ""


def test_usage_event_is_asked_for_and_kept_from_a_client_that_did_not_ask(env):
    up = env.upstream(sse_upstream())
    proxy = env.proxy(up)
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body(usage=None))
    assert status == 200 and body == b"".join(EVENTS) + DONE
    assert up.requests[0].json["stream_options"] == {"include_usage": True}
    rec = env.wait_records(1)[0]
    assert rec.usage_requested and rec.response_body == b"".join(EVENTS) + USAGE_EVENT + DONE
    assert json.loads(rec.request_body) == json.loads(chat_body(usage=None))  # the client's own body
    # other stream_options are kept (merged)
    req_http(proxy.port, "POST", CHAT, chat_body(stream_options={"continuous_usage_stats": False}))
    assert up.requests[1].json["stream_options"] == {"continuous_usage_stats": False, "include_usage": True}
    # a client that asked gets the event; non-streaming and embeddings are never changed
    assert req_http(proxy.port, "POST", CHAT, chat_body(usage=True))[2] == b"".join(EVENTS) + USAGE_EVENT + DONE
    assert up.requests[2].body == chat_body(usage=True)
    req_http(proxy.port, "POST", CHAT, chat_body(stream=False))
    assert up.requests[3].body == chat_body(stream=False)
    recs = env.wait_records(4)
    assert [r.usage_requested for r in recs] == [True, True, False, False]


def test_request_usage_no_leaves_the_body_alone(env):
    up = env.upstream(sse_upstream())
    proxy = env.proxy(up, request_usage="no")
    assert req_http(proxy.port, "POST", CHAT, chat_body())[2] == b"".join(EVENTS) + DONE
    assert up.requests[0].body == chat_body()


def test_upstream_rejecting_stream_options_gets_the_original_and_is_not_asked_again(env):
    async def script(req, reader, w):
        if b"stream_options" in req.body:
            body = b'{"error":{"message":"unknown field stream_options"}}'
            w.write(head(400, [("Content-Length", str(len(body)))], "Bad Request") + body)
            await w.drain()
            return True
        return await sse_upstream()(req, reader, w)

    up = env.upstream(script)
    proxy = env.proxy(up)
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body())
    assert status == 200 and body == b"".join(EVENTS) + DONE
    assert [b"stream_options" in r.body for r in up.requests] == [True, False]
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body())
    assert status == 200 and len(up.requests) == 3 and b"stream_options" not in up.requests[2].body
    assert env.call(proxy.stats)["request_usage"] is False
    assert [r.usage_requested for r in env.wait_records(2)] == [False, False]


def test_a_400_for_another_reason_is_retried_once_and_does_not_turn_usage_off(env):
    async def script(req, reader, w):
        body = b'{"error":{"message":"max_tokens too large"}}'
        w.write(head(400, [("Content-Length", str(len(body)))], "Bad Request") + body)
        await w.drain()
        return True

    up = env.upstream(script)
    proxy = env.proxy(up)
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body())
    assert status == 400 and b"max_tokens" in body and len(up.requests) == 2
    assert env.call(proxy.stats)["request_usage"] is True


@both_loops
def test_client_disconnect_closes_the_upstream_at_once(env):
    async def script(req, reader, w):
        w.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
        try:
            while not reader.at_eof() and reader.exception() is None:
                await write_chunked(w, [EVENTS[2]], end=False)
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        up.closed_at.append(time.monotonic())
        return False

    up = env.upstream(script)
    proxy = env.proxy(up)
    s = socket.create_connection(("127.0.0.1", proxy.port))
    body = chat_body()
    s.sendall(b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (CHAT.encode(), len(body), body))
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    time.sleep(0.1)
    s.close()
    gone = time.monotonic()
    deadline = gone + 2
    while not up.closed_at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert up.closed_at and up.closed_at[0] - gone < 1.0
    rec = env.wait_records(1)[0]
    assert rec.error_type == "client_disconnected" and rec.status == 200 and rec.response_body


@both_loops
def test_a_client_that_closes_after_done_had_the_whole_answer(env):
    """The openai SDK closes the response at ``data: [DONE]``; an upstream whose closing chunk comes
    later must not turn that into a client_disconnected error (found: 45 of 300 demo requests)."""
    async def script(req, reader, w):
        w.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
        await write_chunked(w, [*EVENTS, DONE], end=False)
        try:
            await asyncio.wait_for(reader.read(1), 1.0)  # the closing chunk only after the client left
        except (ConnectionError, asyncio.TimeoutError):
            pass
        return False

    up = env.upstream(script)
    proxy = env.proxy(up)
    s = socket.create_connection(("127.0.0.1", proxy.port))
    body = chat_body(usage=True)
    s.sendall(b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (CHAT.encode(), len(body), body))
    got = b""
    while b"data: [DONE]" not in got:
        got += s.recv(65536)
    s.close()
    rec = env.wait_records(1)[0]
    assert rec.error_type == "" and rec.status == 200 and rec.response_body.endswith(DONE)


def test_hung_upstream_is_closed_when_the_client_gives_up(env):
    async def script(req, reader, w):
        try:
            await reader.read(1)  # never answers; returns when the proxy closes
        except ConnectionError:
            pass
        up.closed_at.append(time.monotonic())
        return False

    up = env.upstream(script)
    proxy = env.proxy(up)
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=0.3)
    with pytest.raises(socket.timeout):
        c.request("POST", CHAT, body=chat_body())
        c.getresponse()
    c.close()
    gone = time.monotonic()
    while not up.closed_at and time.monotonic() < gone + 2:
        time.sleep(0.01)
    assert up.closed_at and up.closed_at[0] - gone < 1.0
    assert env.wait_records(1)[0].error_type == "client_disconnected"


def test_upstream_unreachable_and_timeouts(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    proxy = env.proxy(f"http://127.0.0.1:{dead}")
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body())
    err = json.loads(body)["error"]
    assert status == 502 and err["type"] == "upstream_error" and err["code"] == "upstream_unreachable"
    assert err["message"]
    rec = env.wait_records(1)[0]
    assert rec.error_type == "upstream_unreachable" and rec.status == 0
    assert rec.attributes["http.response.status_code"] == 502

    silent_after_head = []

    async def script(req, reader, w):
        if req.target == b"/v1/completions":
            w.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
            await write_chunked(w, [EVENTS[0]], end=False)
            silent_after_head.append(1)
        await reader.read(1)
        return False

    up = env.upstream(script)
    proxy = env.proxy(up, upstream_timeout_s=0.3)
    t = time.monotonic()
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body())
    assert status == 504 and json.loads(body)["error"]["code"] == "timeout" and time.monotonic() - t < 2
    via, took = http_error(proxy.port, "POST", "/v1/completions", chat_body())
    assert via is http.client.IncompleteRead and took < 2
    recs = env.wait_records(3)
    assert [r.error_type for r in recs[1:]] == ["timeout", "timeout"]
    assert recs[2].status == 200 and recs[2].response_body == EVENTS[0]


def test_request_body_over_the_limit_is_413(env):
    up = env.upstream(sse_upstream())
    proxy = env.proxy(up)
    big = b'{"x":"' + b"a" * (33 * 1024 * 1024) + b'"}'
    status, headers, body = req_http(proxy.port, "POST", CHAT, big)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert headers["connection"] == "close"
    # chunked: no Content-Length to refuse up front; refused once past the limit
    c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    c.request("POST", CHAT, body=iter([big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20)]),
              encode_chunked=True)
    assert c.getresponse().status == 413
    assert up.requests == []
    recs = env.wait_records(2)
    assert {r.error_type for r in recs} == {"request_too_large"}
    assert recs[0].request_size == len(big) and recs[0].request_body == b""  # refused before reading it
    assert recs[1].request_size > 32 * 1024 * 1024 and recs[1].request_body == big[:4 * 1024 * 1024]
    # not captured: streamed, no limit here
    assert req_http(proxy.port, "POST", "/other/upload", big[:100_000] + b'"}')[0] == 200


# ============================================================================ hostile and odd clients


def test_header_and_idle_timeouts_close_the_connection(env):
    up = env.upstream(sse_upstream())
    proxy = env.proxy(up, header_timeout_s=0.3, idle_timeout_s=0.4)
    t = time.monotonic()
    assert raw(proxy.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", timeout=3) == b""
    assert 0.25 < time.monotonic() - t < 1.5
    t = time.monotonic()
    assert raw(proxy.port, b"", timeout=3) == b""  # nothing at all
    assert time.monotonic() - t < 1.5
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=3)
    s.sendall(b"GET /other/x HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.05)
    t = time.monotonic()
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    assert data.startswith(b"HTTP/1.1 200") and 0.2 < time.monotonic() - t < 1.8  # idle keep-alive closed
    s.close()


@both_loops
def test_hostile_requests(env):
    up = env.upstream(fixed(head(200, [("Content-Length", "2")]) + b"ok"))
    proxy = env.proxy(up)
    big = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 1000) for i in range(80))
    assert raw(proxy.port, big + b"\r\n").startswith(b"HTTP/1.1 431")
    assert raw(proxy.port, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert raw(proxy.port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
               ).startswith(b"HTTP/1.1 400")
    out = raw(proxy.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501")
    out = raw(proxy.port, b"GET /h2 HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 501")
    assert raw(proxy.port, b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 501")
    assert up.requests == []
    # pipelined: answered in order, then an error for the broken third one, then closed
    body = chat_body(stream=False)
    pipelined = (b"GET /other/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                 b"GET /other/3 HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n" % (len(body), body))
    out = raw(proxy.port, pipelined)
    assert out.count(b"HTTP/1.1 200 OK") == 3 and out.endswith(b'"}}') and b"HTTP/1.1 400" in out
    assert [r.target for r in up.requests] == [b"/other/1", b"/v1/chat/completions", b"/other/3"]
    assert up.requests[1].body == body


def test_expect_100_continue_is_answered_by_the_proxy(env):
    up = env.upstream(fixed(head(200, [("Content-Length", "2")]) + b"ok"))
    proxy = env.proxy(up)
    body = chat_body(stream=False)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as s:
        s.sendall(b"POST %b HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                  % (CHAT.encode(), len(body)))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
    assert "expect" not in up.requests[0].names() and up.requests[0].body == body


def test_hop_by_hop_headers_are_not_forwarded(env):
    async def script(req, reader, w):
        w.write(head(200, [("Content-Length", "2"), ("Connection", "X-Resp-Hop, keep-alive"), ("X-Resp-Hop", "1"),
                           ("Keep-Alive", "timeout=5"), ("Proxy-Authenticate", "Basic"), ("X-Keep", "1"),
                           ("Trailer", "X-T")]) + b"ok")
        await w.drain()
        return True

    up = env.upstream(script)
    proxy = env.proxy(up)
    for path in (CHAT, "/other/x"):
        status, headers, _ = req_http(proxy.port, "POST", path, chat_body(stream=False), {
            "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=5", "TE": "trailers",
            "Proxy-Authorization": "Basic eA==", "Trailer": "X-T", "X-Normal": "yes", "Accept-Encoding": "gzip"})
        req = up.requests[-1]
        assert not req.names() & {"connection", "x-hop", "keep-alive", "te", "proxy-authorization", "trailer"}
        assert req.header("x-normal") == b"yes" and req.header("host") == f"127.0.0.1:{up.port}".encode()
        assert req.header("accept-encoding") == (b"identity" if path == CHAT else b"gzip")
        assert not set(headers) & {"x-resp-hop", "keep-alive", "proxy-authenticate", "trailer"}
        assert headers["x-keep"] == "1" and status == 200


def test_raw_target_reaches_the_upstream_byte_identical(env):
    up = env.upstream(fixed(head(200, [("Content-Length", "0")])))
    proxy = env.proxy(up)
    targets = [b"/v1/%2e%2e/%2e%2e/etc/passwd", b"/a/../b/./c?x=%2F&y=../z", b"/v1/chat/completions/?q=1",
               b"//double//slash", b"/%E2%82%AC?"]
    for t in targets:
        assert raw(proxy.port, b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % t).startswith(
            b"HTTP/1.1 200")
    assert [r.target for r in up.requests] == targets
    # a trailing slash and a query string still make a captured route
    raw(proxy.port, b"POST /v1/chat/completions/?api-version=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\n{}")
    rec = env.wait_records(1)[0]
    assert rec.path == "/v1/chat/completions/" and rec.operation == "chat" and rec.api == "openai"


def test_traceparent_carries_the_clients_trace(env):
    up = env.upstream(sse_upstream())
    proxy = env.proxy(up)
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    req_http(proxy.port, "POST", CHAT, chat_body(), {"traceparent": f"00-{trace}-{parent}-01", "tracestate": "k=v"})
    req_http(proxy.port, "POST", CHAT, chat_body(), {"traceparent": "00-zz-bad-01", "tracestate": "k=v"})
    req_http(proxy.port, "POST", "/other/x", None, {"traceparent": f"00-{trace}-{parent}-01"})
    sent = [r.header("traceparent").decode() for r in up.requests]
    _, t0, s0, f0 = sent[0].split("-")
    assert t0 == trace and s0 != parent and f0 == "01" and up.requests[0].header("tracestate") == b"k=v"
    assert sent[1].split("-")[1] != trace and up.requests[1].header("tracestate") is None
    assert sum(1 for k, _ in up.requests[1].headers if k.lower() == b"traceparent") == 1
    assert sent[2] == f"00-{trace}-{parent}-01"  # pass-through: untouched
    r0, r1 = env.wait_records(2)
    assert (r0.trace_id.hex(), r0.span_id.hex(), r0.parent_span_id.hex(), r0.trace_state) == (trace, s0, parent, "k=v")
    assert r1.trace_id.hex() == sent[1].split("-")[1] and r1.parent_span_id == b"" and len(r1.span_id) == 8


def test_records_carry_bodies_status_and_chunk_timings(env):
    up = env.upstream(sse_upstream(lambda s: [s[i:i + 40] for i in range(0, len(s), 40)], pause=0.01))
    proxy = env.proxy(up, max_capture_bytes=200)
    body = chat_body(usage=True)
    t = time.time_ns()
    status, _, got = req_http(proxy.port, "POST", CHAT, body)
    rec = env.wait_records(1)[0]
    assert status == rec.status == 200 and rec.content_type == "text/event-stream"
    assert rec.request_body == body and rec.request_size == len(body)
    assert rec.response_size == len(got) and rec.response_body == got[:200] and rec.truncated
    offsets = [o for _, o in rec.chunks]
    times = [ts for ts, _ in rec.chunks]
    assert offsets == sorted(offsets) and times == sorted(times) and offsets[-1] == len(got)
    assert len(rec.chunks) == len(range(0, len(got), 40))
    assert 0 < rec.headers_ns <= times[0] and times[-1] - times[0] > 0.01e9 * (len(offsets) - 2)
    assert t <= rec.start_ns <= rec.end_ns <= time.time_ns()
    assert rec.upstream == up.url and rec.attributes["server.port"] == up.port
    # through the wire format, unchanged
    from monitor.sidecar.proxy.record import decode, encode
    assert decode(encode(rec)) == rec


@python_only
def test_sink_refusing_or_raising_never_reaches_the_client(env):
    up = env.upstream(sse_upstream())
    metrics = SelfMetrics("test")
    calls = []

    def refusing(r):
        calls.append(r)
        return False

    proxy = env.proxy(up, sink=refusing, metrics=metrics)
    assert req_http(proxy.port, "POST", CHAT, chat_body())[2] == b"".join(EVENTS) + DONE

    def raising(r):
        calls.append(r)
        raise RuntimeError("sink broke")

    proxy2 = env.proxy(up, sink=raising, metrics=metrics)
    for _ in range(3):
        assert req_http(proxy2.port, "POST", CHAT, chat_body())[2] == b"".join(EVENTS) + DONE
    time.sleep(0.1)
    assert len(calls) == 4
    assert metrics.registry.get_sample_value("monitor_proxy_capture_dropped_total") == 1
    assert metrics.registry.get_sample_value("monitor_proxy_capture_errors_total") == 3
    assert metrics.registry.get_sample_value("monitor_proxy_requests_total",
                                             {"route": CHAT, "status": "200"}) == 4


def test_auth_token(env):
    up = env.upstream(fixed(head(200, [("Content-Length", "2")]) + b"ok"))
    proxy = env.proxy(up, auth_token="s3cret")
    assert req_http(proxy.port, "POST", CHAT, chat_body())[0] == 401
    status, _, body = req_http(proxy.port, "POST", CHAT, chat_body(), {"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    assert req_http(proxy.port, "POST", CHAT, chat_body(), {"Authorization": "Bearer s3cret"})[0] == 200
    assert len(up.requests) == 1 and "authorization" not in up.requests[0].names()


def test_upstream_connections_are_pooled_and_closed_when_the_upstream_says_so(env):
    close = [False]

    async def script(req, reader, w):
        hdrs = [("Content-Length", "2")] + ([("Connection", "close")] if close[0] else [])
        w.write(head(200, hdrs) + b"ok")
        await w.drain()
        return not close[0]

    up = env.upstream(script)
    proxy = env.proxy(up)
    for _ in range(5):
        req_http(proxy.port, "POST", CHAT, chat_body(stream=False))
    assert up.connections == 1
    close[0] = True
    for _ in range(3):
        req_http(proxy.port, "GET", "/other/x")
    assert up.connections == 3  # the pooled one answered "close", then one new connection each
    stats = env.call(proxy.stats)
    assert stats["records"] == 5 and stats["requests"] == 8


def test_a_pooled_connection_closed_by_the_upstream_is_not_an_error(env):
    async def script(req, reader, w):  # answers, then closes without saying so (keep-alive timeout)
        w.write(head(200, [("Content-Length", "2")]) + b"ok")
        await w.drain()
        await asyncio.sleep(0.05)
        return False

    up = env.upstream(script)
    proxy = env.proxy(up)
    for _ in range(3):
        assert req_http(proxy.port, "POST", CHAT, chat_body(stream=False))[0] == 200
        time.sleep(0.1)
    assert up.connections == 3


def test_stop_lets_streams_finish(env):
    up = env.upstream(sse_upstream(lambda s: [s[i:i + 30] for i in range(0, len(s), 30)], pause=0.03))
    proxy = env.proxy(up)
    result = {}

    def client():
        result["body"] = req_http(proxy.port, "POST", CHAT, chat_body(usage=True))[2]

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.1)
    env.run(proxy.stop(3.0))
    t.join(5)
    assert result["body"] == b"".join(EVENTS) + USAGE_EVENT + DONE
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_http10_client_gets_a_close_delimited_body(env):
    up = env.upstream(sse_upstream())
    proxy = env.proxy(up)
    body = chat_body()
    out = raw(proxy.port, b"POST %b HTTP/1.0\r\nContent-Length: %d\r\n\r\n%b" % (CHAT.encode(), len(body), body))
    head_, _, got = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head_ and b"Connection: close" in head_
    assert got == b"".join(EVENTS) + DONE


def test_openai_sdk_sees_the_same_through_the_proxy(env):
    openai = pytest.importorskip("openai")
    created = 1700000000
    pieces = ["Hel", "lo", " wor", "ld"]

    def chunk(delta, finish=None, choices=True, usage=None):
        obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": created, "model": "m",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
        if usage:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    async def script(req, reader, w):
        r = req.json
        usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
        if not r.get("stream"):
            body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": created, "model": "m",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                                            "finish_reason": "stop"}], "usage": usage}).encode()
            w.write(head(200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]) + body)
            await w.drain()
            return True
        events = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces] + \
            [chunk({}, "stop")]
        if (r.get("stream_options") or {}).get("include_usage"):
            events.append(chunk(None, choices=False, usage=usage))
        events.append(DONE)
        w.write(head(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")]))
        await write_chunked(w, events, pause=0.005)
        return True

    up = env.upstream(script)
    proxy = env.proxy(up)

    def run(port, **kw):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=5)
        msgs = [{"role": "user", "content": "hi"}]
        if kw.get("stream"):
            return [c.model_dump() for c in client.chat.completions.create(model="m", messages=msgs, **kw)]
        return client.chat.completions.create(model="m", messages=msgs, **kw).model_dump()

    assert run(proxy.port) == run(up.port)
    direct, via = run(up.port, stream=True), run(proxy.port, stream=True)
    assert via == direct and all(c["usage"] is None and c["choices"] for c in via)
    direct = run(up.port, stream=True, stream_options={"include_usage": True})
    via = run(proxy.port, stream=True, stream_options={"include_usage": True})
    assert via == direct and via[-1]["usage"]["total_tokens"] == 7
    recs = env.wait_records(3)
    assert [r.usage_requested for r in recs] == [False, True, False]
    assert b'"total_tokens": 7' in recs[1].response_body


def test_a_pooled_connection_the_upstream_drops_as_the_request_arrives_is_retried_once(env):
    served: dict[asyncio.StreamWriter, int] = {}  # the writers themselves: an id() could be reused

    async def script(req, reader, w):  # the keep-alive race: the second request on a connection is dropped
        served[w] = served.get(w, 0) + 1
        if served[w] > 1:
            return False
        w.write(head(200, [("Content-Length", "2")]) + b"ok")
        await w.drain()
        return True

    up = env.upstream(script)
    proxy = env.proxy(up)
    for _ in range(3):
        assert req_http(proxy.port, "POST", CHAT, chat_body(stream=False))[:3:2] == (200, b"ok")
    assert up.connections == 3 and len(up.requests) == 5
    assert [r.error_type for r in env.wait_records(3)] == ["", "", ""]


def test_announce_comes_before_the_request_goes_upstream(env):
    announced = []
    seen_at_upstream = []

    async def script(req, reader, w):
        seen_at_upstream.append(len(announced))
        return await sse_upstream()(req, reader, w)

    up = env.upstream(script)
    proxy = env.proxy(up, announce=lambda t, s: announced.append((t, s)))
    req_http(proxy.port, "POST", CHAT, chat_body())
    req_http(proxy.port, "GET", "/other/x")
    rec = env.wait_records(1)[0]
    assert announced == [(rec.trace_id, rec.span_id)] and seen_at_upstream == [1, 1]
    assert up.requests[0].header("traceparent").decode().split("-")[2] == rec.span_id.hex()


# ============================================================================ records out of the proxy process


def _record(i: int, size: int = 100) -> CaptureRecord:
    return CaptureRecord(api="openai", operation="chat", path=CHAT, trace_id=i.to_bytes(16, "big"),
                         span_id=(i + 1).to_bytes(8, "big"), start_ns=i, request_body=b"q" * size,
                         response_body=os.urandom(size), request_size=size, response_size=size,
                         chunks=[(1, size)], status=200, attributes={"i": i})


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@python_only
def test_records_cross_a_unix_socket_in_order_and_survive_a_receiver_restart(env, tmp_path):
    from monitor.sidecar.proxy.channel import RecordReceiver, RecordSender
    from monitor.sidecar.proxy.record import CaptureStart

    path = str(tmp_path / "capture.sock")
    got: list = []
    receiver = RecordReceiver(path, got.append)
    env.run(receiver.start())
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    senders = [RecordSender(path, backoff_initial_s=0.01, backoff_max_s=0.05) for _ in range(3)]
    for s in senders:
        env.run(s.start())
        assert env.run(s.wait_connected(5))
    sent = [_record(i, size=(1 << 20) if i % 100 == 7 else 200) for i in range(1500)]
    for i, r in enumerate(sent):
        assert env.call(senders[i % 3].send, r)
    assert env.call(senders[0].send_start, b"t" * 16, b"s" * 8)
    _wait(lambda: len(got) == 1501)
    for k in range(3):  # in order per sender
        assert [g for g in got if isinstance(g, CaptureRecord) and g.attributes["i"] % 3 == k] == sent[k::3]
    assert CaptureStart(b"t" * 16, b"s" * 8) in got

    env.run(receiver.close())
    _wait(lambda: not any(s.connected for s in senders))
    assert env.call(senders[0].send, sent[0]) is False
    assert senders[0].dropped == 1
    receiver2 = RecordReceiver(path, got.append)
    env.run(receiver2.start())
    assert env.run(senders[0].wait_connected(5))
    assert env.call(senders[0].send, sent[1])
    _wait(lambda: len(got) == 1502)
    assert got[-1] == sent[1] and senders[0].disconnects == 1
    # close() sends what is buffered
    assert env.run(senders[1].wait_connected(5))

    async def send_then_close():
        ok = [senders[1].send(r) for r in sent[:300]]
        await senders[1].close(5)
        return ok

    assert all(env.run(send_then_close()))
    _wait(lambda: len(got) == 1502 + 300)
    assert got[-300:] == sent[:300]
    assert env.call(senders[1].send, sent[0]) is False
    for s in senders:
        env.run(s.close(1))
    env.run(receiver2.close())


@python_only
def test_a_full_buffer_drops_and_counts_never_blocks(env, tmp_path):
    from monitor.sidecar.proxy.channel import RecordSender

    path = str(tmp_path / "stuck.sock")

    async def never_reads(reader, writer):
        writer.transport.pause_reading()
        await asyncio.sleep(30)

    server = env.run(asyncio.start_unix_server(never_reads, path))
    sender = RecordSender(path, max_buffer_bytes=2 * 1024 * 1024)
    env.run(sender.start())
    assert env.run(sender.wait_connected(5))

    async def flood():
        results = []
        t = time.monotonic()
        for i in range(400):
            results.append(sender.send(_record(i, size=20_000)))
            if i % 20 == 0:
                await asyncio.sleep(0)  # let the flushes happen
        return results, time.monotonic() - t

    results, took = env.run(flood())
    assert results[0] and not results[-1] and took < 2
    assert sender.dropped == results.count(False) > 0
    assert sender.stats()["buffered_bytes"] <= 2 * 1024 * 1024
    env.run(sender.close(0.1))
    env.call(server.close)


@python_only
def test_receiver_closes_a_sender_that_sends_garbage_and_keeps_serving(env, tmp_path):
    import struct

    from monitor.sidecar.proxy.channel import RecordReceiver

    path = str(tmp_path / "capture.sock")
    got: list = []
    receiver = RecordReceiver(path, got.append)
    env.run(receiver.start())

    def send_raw(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(3)
            s.connect(path)
            s.sendall(data)
            return s.recv(10)

    from monitor.sidecar.proxy.record import decode, encode
    good = encode(_record(1))
    assert send_raw(struct.pack("<I", 300 * 1024 * 1024)) == b""  # over 256 MiB: closed
    assert send_raw(struct.pack("<I", 5) + b"abcde") == b""  # undecodable: closed
    # a good frame, then a bad one: the first is delivered, then the connection closes
    assert send_raw(struct.pack("<I", len(good)) + good + struct.pack("<I", 3) + b"xyz") == b""
    assert receiver.bad_frames == 3 and len(got) == 1
    with socket.socket(socket.AF_UNIX) as s:  # another sender still gets through
        s.connect(path)
        s.sendall(struct.pack("<I", len(good)) + good)
        _wait(lambda: len(got) == 2)
    assert got == [decode(good), decode(good)]
    env.run(receiver.close())


def test_proxy_records_reach_a_receiver_through_the_socket(env, tmp_path):
    from monitor.sidecar.proxy.channel import RecordReceiver, RecordSender

    up = env.upstream(sse_upstream())
    sender = receiver = None
    if env.impl == "native":  # its records always cross the socket: the env's receiver gets them
        starts_seen: list = []
        proxy = env.proxy(up, announce=lambda t, s: starts_seen.append(CaptureStart(t, s)))

        def got():
            return starts_seen + env.records
    else:
        path = str(tmp_path / "capture.sock")
        frames: list = []
        receiver = RecordReceiver(path, frames.append)
        env.run(receiver.start())
        sender = RecordSender(path)
        env.run(sender.start())
        assert env.run(sender.wait_connected(5))
        proxy = env.proxy(up, sink=sender.send, announce=sender.send_start)

        def got():
            return frames
    for _ in range(20):
        assert req_http(proxy.port, "POST", CHAT, chat_body())[2] == b"".join(EVENTS) + DONE
    _wait(lambda: len(got()) == 40)
    starts = [g for g in got() if isinstance(g, CaptureStart)]
    records = [g for g in got() if isinstance(g, CaptureRecord)]
    assert [(s.trace_id, s.span_id) for s in starts] == [(r.trace_id, r.span_id) for r in records]
    assert all(r.response_body == b"".join(EVENTS) + USAGE_EVENT + DONE and r.usage_requested for r in records)
    if sender is not None:
        env.run(sender.close(1))
        env.run(receiver.close())


def _raw_frames(env: Env, path: str) -> list[bytes]:
    """A capture socket that keeps each length-prefixed frame as it came (no decoding)."""
    import struct

    frames: list[bytes] = []

    async def keep(reader, writer):
        try:
            while True:
                (n,) = struct.unpack("<I", await reader.readexactly(4))
                frames.append(await reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    env.run(asyncio.start_unix_server(keep, path))
    return frames


def struct_head(frame: bytes) -> tuple[int, int, int, int]:
    """(version, header length, request body length, response body length) of a record frame."""
    import struct
    return struct.unpack_from("<BIII", frame)


def test_native_record_frames_match_the_python_proxys(tmp_path):
    """The same exchanges through both request paths: the native binary's raw frames decode (with
    ``record.decode``) to the records the Python proxy builds, field for field (the client's identity
    headers and address included); only the ids, the times and where the stream was split differ."""
    if NATIVE is None:
        pytest.skip(NATIVE_MISSING)
    from monitor.sidecar.proxy import record as record_mod

    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    exchanges = [
        (CHAT, chat_body(), {"traceparent": f"00-{trace}-{parent}-01", "tracestate": "a=1"}),  # usage asked for us
        (CHAT, chat_body(usage=True), {}),
        ("/v1/completions/", chat_body(stream=False), {}),
        ("/api/generate", b'{"model":"m","prompt":"\\u00e9"}', {}),
        (CHAT, b'{"x":"' + b"a" * 5000 + b'"}', {}),  # over max_capture_bytes: both bodies cut
        # the identity headers (clients.*_headers): the key, the user (latin-1), the conversation
        (CHAT, chat_body(), {"Authorization": "Bearer sk-\"live\"-1", "X-User-Id": "caf\xe9",
                             "X-Session-Id": "s1", "X-Other": "not copied"}),
        # raw: a repeated header (the first one wins), names in any case, api-key
        (CHAT, chat_body(), [("API-Key", "k-1"), ("x-user-id", "u-first"), ("X-USER-ID", "u-second")]),
    ]
    wanted = wanted_headers(ClientsSettings())
    assert {"authorization", "api-key", "x-user-id", "x-session-id"} <= set(wanted)
    by_impl = {}
    for impl in ("python", "native"):
        env = Env("uvloop", impl)
        try:
            up = env.upstream(sse_upstream(lambda s: [s[:50], s[50:]], pause=0.01))
            kw = {"max_capture_bytes": 1000}
            if impl == "native":
                path = str(tmp_path / "raw.sock")
                frames = _raw_frames(env, path)
                settings = ProxySettings(upstream=up.url, host="127.0.0.1", port=0, **kw)
                p = NativeProxy(settings, path, binary=NATIVE, client_headers=wanted, digest="off")
                port = p.start()
            else:
                port = env.proxy(up, client_headers=wanted, **kw).port
            for target, body, headers in exchanges:
                if isinstance(headers, dict):
                    assert req_http(port, "POST", target, body, headers)[0] == 200
                else:
                    head = "".join(f"{k}: {v}\r\n" for k, v in headers)
                    answer = raw(port, f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                                       f"Connection: close\r\n{head}\r\n".encode() + body)
                    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
            dead = socket.socket()
            dead.bind(("127.0.0.1", 0))  # nothing listens there: 502
            if impl == "native":
                _wait(lambda: len(frames) == 2 * len(exchanges))
                p.stop()
                raw_records = [f for f in frames if f[0] == record_mod.FORMAT_VERSION]
                raw_starts = [f for f in frames if f[0] != record_mod.FORMAT_VERSION]
                starts = [record_mod.decode(f) for f in raw_starts]
                assert all(len(f) == 25 and isinstance(x, CaptureStart) for f, x in zip(raw_starts, starts))
                for f, (_, _, headers) in zip(raw_records, exchanges):  # exactly record.py's keys, in its order
                    _, n_head, _, _ = struct_head(f)
                    identity = ["client_headers", "client_address"] if headers and "traceparent" not in headers \
                        else ["client_address"]
                    assert list(json.loads(f[13:13 + n_head])) == [*record_mod._FIELDS, *identity, "ids"]
                recs = [record_mod.decode(f) for f in raw_records]
                # byte for byte what record.py's encoder writes for the same record
                assert [record_mod.encode(r) for r in recs] == [bytes(f) for f in raw_records]
                assert [(s.trace_id, s.span_id) for s in starts] == [(r.trace_id, r.span_id) for r in recs]
                settings = ProxySettings(upstream=f"http://127.0.0.1:{dead.getsockname()[1]}", host="127.0.0.1",
                                         port=0)
                p = NativeProxy(settings, path, binary=NATIVE)
                assert req_http(p.start(), "POST", CHAT, chat_body())[0] == 502
                _wait(lambda: len(frames) == 2 * len(exchanges) + 2)
                p.stop()
                recs.append(record_mod.decode(frames[-1]))
            else:
                recs = list(env.wait_records(len(exchanges)))
                port = env.proxy(f"http://127.0.0.1:{dead.getsockname()[1]}").port
                assert req_http(port, "POST", CHAT, chat_body())[0] == 502
                recs.append(env.wait_records(len(exchanges) + 1)[-1])
            dead.close()
            by_impl[impl] = (recs, up.port)
        finally:
            env.close()

    (py, py_port), (na, na_port) = by_impl["python"], by_impl["native"]
    assert len(py) == len(na) == len(exchanges) + 1

    def comparable(r: CaptureRecord, port: int) -> dict:
        d = {k: getattr(r, k) for k in record_mod._FIELDS}
        for k in ("start_ns", "end_ns", "headers_ns"):
            d[k] = d[k] is not None and d[k] > 0
        d["chunks"] = d["chunks"][-1][1] if d["chunks"] else None  # split points differ with the reads
        d["upstream"] = d["upstream"].replace(str(port), "PORT")
        d["attributes"] = {k: ("PORT" if v == port else v) for k, v in d["attributes"].items()}
        if d["error_type"] == "upstream_unreachable":
            d["upstream"] = d["attributes"] = None  # another upstream
        d["ids"] = (len(r.trace_id), len(r.span_id), r.parent_span_id.hex())
        d["bodies"] = (r.request_body, r.response_body, r.truncated)
        return d

    for a, b in zip(py, na):
        assert comparable(a, py_port) == comparable(b, na_port)
        assert (a.client_headers, a.client_address) == (b.client_headers, b.client_address)
        assert a.client_address == "127.0.0.1"
    assert [r.client_headers for r in na] == [{}] * 5 + [
        {"authorization": 'Bearer sk-"live"-1', "x-user-id": "caf\xe9", "x-session-id": "s1"},
        {"api-key": "k-1", "x-user-id": "u-first"}, {}]
    assert na[0].trace_id.hex() == trace and na[0].parent_span_id.hex() == parent and na[0].trace_state == "a=1"
    assert na[0].usage_requested and not na[1].usage_requested
    assert na[4].truncated and len(na[4].request_body) == 1000
    assert na[-1].error_type == "upstream_unreachable" and na[-1].attributes["http.response.status_code"] == 502


def test_native_config_never_copies_authorization_when_it_holds_the_proxys_token():
    """``proxy.auth_token`` set: Authorization carries the proxy's own token, the same for every
    client, so neither path copies it; the other identity headers still go (lower case, once)."""
    wanted = (*wanted_headers(ClientsSettings()), "X-User-Id")
    cfg = native_config(ProxySettings(upstream="http://127.0.0.1:9"), None, client_headers=wanted)
    assert cfg["client_headers"] == ["authorization", "x-api-key", "api-key", "x-user-id", "x-conversation-id",
                                     "x-session-id"]
    cfg = native_config(ProxySettings(upstream="http://127.0.0.1:9", auth_token="t"), None, client_headers=wanted)
    assert cfg["client_headers"] == ["x-api-key", "api-key", "x-user-id", "x-conversation-id", "x-session-id"]
    assert "client_headers" in native_config(ProxySettings(upstream="http://127.0.0.1:9"), None)
    py = FastProxy(ProxySettings(upstream="http://127.0.0.1:9", auth_token="t"), lambda r: True, SelfMetrics("t"),
                   client_headers=wanted)
    assert sorted(py.client_headers) == sorted(h.encode() for h in cfg["client_headers"])


def test_native_counts_requests_and_dropped_records(tmp_path):
    """Its counters, as the Python parent reads them (Prometheus text): a record it cannot hand off
    (nobody listens on the capture socket) is dropped and counted, and the request is served."""
    if NATIVE is None:
        pytest.skip(NATIVE_MISSING)
    from prometheus_client.parser import text_string_to_metric_families

    env = Env("uvloop", "native")
    try:
        up = env.upstream(sse_upstream())
        settings = ProxySettings(upstream=up.url, host="127.0.0.1", port=0)
        p = NativeProxy(settings, str(tmp_path / "nobody.sock"), binary=NATIVE)
        port = p.start()
        for _ in range(2):
            assert req_http(port, "POST", CHAT, chat_body())[2] == b"".join(EVENTS) + DONE
        assert req_http(port, "GET", "/other/x")[0] == 200
        assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
        def samples() -> dict:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for fam in text_string_to_metric_families(p.metrics_text()) for s in fam.samples}
        # a streamed record is counted when the digest thread has handed it back to the loop: moments later
        _wait(lambda: samples()[("monitor_proxy_capture_dropped_total", ())] >= 2)
        samples = samples()
        assert samples[("monitor_proxy_requests_total", (("route", CHAT), ("status", "200")))] == 2
        assert samples[("monitor_proxy_requests_total", (("route", "other"), ("status", "200")))] == 1
        assert samples[("monitor_proxy_requests_total", (("route", "-"), ("status", "400")))] == 1
        assert samples[("monitor_proxy_capture_dropped_total", ())] == 2
        assert samples[("monitor_proxy_capture_errors_total", ())] == 0
        assert samples[("monitor_proxy_records_undigested_total", ())] == 0  # the two streams were digested
        stats = p.stats()
        assert (stats["records"], stats["records_dropped"], stats["requests"]) == (0, 2, 4)
        assert stats["sender"]["connected"] is False
        assert p.stop() == 0
    finally:
        env.close()


def test_reuse_port_lets_two_proxies_share_a_port(env):
    up = env.upstream(fixed(head(200, [("Content-Length", "2")]) + b"ok"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = env.proxy(up, port=port, workers=2)  # several workers: SO_REUSEPORT
    b = env.proxy(up, port=port, workers=2)
    assert a.port == b.port == port
    for _ in range(10):
        assert req_http(port, "GET", "/other/x")[2] == b"ok"
    assert env.call(a.stats)["requests"] + env.call(b.stats)["requests"] == 10


@both_loops
def test_concurrent_streams_with_clients_leaving_leave_nothing_behind(env):
    errors: list = []
    env.loop.call_soon_threadsafe(env.loop.set_exception_handler, lambda loop, ctx: errors.append(ctx))
    up = env.upstream(sse_upstream(lambda s: [s[i:i + 17] for i in range(0, len(s), 17)], pause=0.002))
    proxy = env.proxy(up)
    outcome = {"ok": 0, "left": 0}
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(8):
            asked = rng.choice([True, False, None])
            body = chat_body(usage=asked)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                s.sendall(b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                          % (CHAT.encode(), len(body), body))
                if rng.random() < 0.3:
                    s.recv(rng.randint(1, 300))
                    with lock:
                        outcome["left"] += 1
                    continue
                data = b""
                while not data.endswith(b"\r\n0\r\n\r\n"):
                    data += s.recv(65536)
            got = data.split(b"\r\n\r\n", 1)[1]
            expected = b"".join(EVENTS) + (USAGE_EVENT if asked else b"") + DONE
            body_out, rest = b"", got
            while True:
                size, rest = rest.split(b"\r\n", 1)
                if int(size, 16) == 0:
                    break
                body_out, rest = body_out + rest[:int(size, 16)], rest[int(size, 16) + 2:]
            assert body_out == expected
            with lock:
                outcome["ok"] += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    total = outcome["ok"] + outcome["left"]
    assert total == 128
    recs = env.wait_records(total)
    assert sorted(r.error_type for r in recs) == [""] * outcome["ok"] + ["client_disconnected"] * outcome["left"]
    _wait(lambda: env.call(proxy.stats)["connections"] == 0)
    stats = env.call(proxy.stats)
    assert stats["in_flight"] == 0 and stats["upstream_connections"] == stats["upstream_idle"]
    assert errors == []


# ============================================================================ the native digest

def _ev(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _chunk(i: int = 0, **delta) -> dict:
    return {"id": "c9", "model": "m-1", "object": "chat.completion.chunk", "choices": [{"index": i, "delta": delta}]}


DIGEST_STREAMS: dict[str, tuple[bytes, bool]] = {
    # name: (the stream, whether the binary reassembles it; False: left to the Python replay)
    "openai": (b"".join(EVENTS) + USAGE_EVENT + DONE, True),
    "crlf": (b"".join(e.replace(b"\n", b"\r\n") for e in EVENTS + [USAGE_EVENT, DONE]), True),
    "unterminated": (b"".join(EVENTS) + b'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}', True),
    "two_choices": (b"".join(_ev(_chunk(i % 2, content=f"w{i} ", **({"role": "assistant"} if i < 2 else {})))
                             for i in range(8))
                    + _ev({"choices": [{"index": 1, "delta": {}, "finish_reason": "length"},
                                       {"index": 0, "delta": {}, "finish_reason": "stop"}]}) + DONE, True),
    "completions": (b"".join(_ev({"id": "cmpl-1", "model": "m-2", "choices": [{"index": 0, "text": t}]})
                             for t in ["Once", " upon", " a", " time"])
                    + _ev({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}) + DONE, True),
    # llama-server: the last chunk carries usage and its own timings (prefill / decode)
    "llamacpp": (_ev(_chunk(content="Bonjour")) + _ev(_chunk(content=" à tous 🙂"))
                 + _ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "model": "smollm2",
                        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                                  "prompt_tokens_details": {"cached_tokens": 4}},
                        "timings": {"prompt_n": 12, "prompt_ms": 31.337, "predicted_n": 3,
                                    "predicted_ms": 0.1 + 0.2, "predicted_per_second": 1e-7}}) + DONE, True),
    "multiline_data": (b'data: {"choices":[{"index":0,\ndata: "delta":{"content":"split"}}]}\n\n' + DONE, True),
    "odd_values": (_ev({"id": "", "model": None, "choices": [{"index": None, "delta": {"role": "", "content": 5}}]})
                   + _ev({"choices": None, "usage": [1]}) + _ev([1, 2]) + _ev("text")
                   + _ev({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]}) + DONE, True),
    "not_a_stream_request": (b"".join(EVENTS) + DONE, True),
    "error_event": (_ev({"error": {"message": "overloaded", "code": 503}}) + DONE, False),
    "content_parts": (_ev(_chunk(content=[{"type": "text", "text": "parts"}])) + DONE, False),
    "invalid_json": (b"".join(EVENTS) + b"data: {not json\n\n" + DONE, False),
    "index_x": (b"".join(EVENTS) + b'data: {"choices":[{"index":"x","delta":{"content":1}}]}\n\n' + DONE, False),
    "cr_only": (b"".join(e.replace(b"\n", b"\r") for e in EVENTS + [DONE]), False),
}


def _nd(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


_OLLAMA_DONE = {"done": True, "done_reason": "stop", "total_duration": 5_000_000, "load_duration": 1000,
                "prompt_eval_count": 9, "prompt_eval_duration": 1_200_000, "eval_count": 3,
                "eval_duration": 3_300_000, "context": list(range(300))}
OLLAMA_STREAMS: dict[str, tuple[str, bytes, bool]] = {
    # name: (path, the NDJSON stream, whether the binary reassembles it)
    "ollama_chat": ("/api/chat", b"".join(_nd({"model": "llama3", "message": {"role": "assistant", "content": t},
                                               "done": False}) for t in ["Guten", " Tag", " 🙂"])
                    + _nd({"model": "llama3", "message": {"role": "assistant", "content": ""}, **_OLLAMA_DONE}),
                    True),
    "ollama_generate": ("/api/generate", b"".join(_nd({"model": "qwen", "response": t, "done": False})
                                                  for t in ["a", "b", ""])
                        + _nd({"model": "qwen", "response": "", "done": True, "eval_count": 2}).rstrip(b"\n"),
                        True),  # the last line without its newline
    "ollama_crlf": ("/api/chat", _nd({"model": "m", "message": {"content": "x"}}).replace(b"\n", b"\r\n")
                    + _nd({"done": True, "done_reason": "length", "eval_count": "7"}), True),
    "ollama_odd": ("/api/chat", _nd({"message": "not a dict", "response": "r"}) + _nd([1]) + b"\n  \n"
                   + _nd({"message": {"content": 5}}) + _nd({"done": 1, "eval_count": "x"}), True),
    "ollama_invalid": ("/api/chat", _nd({"message": {"content": "ok"}}) + b"{not json\n", False),
}


def test_the_native_digest_reads_every_stream_as_the_replay_does():
    """The binary reassembles OpenAI SSE and Ollama NDJSON streams after the response, off its event loop
    (native/proxy/src/digest.rs), and the pipeline reads that instead of replaying the stream. Run with
    ``digest: both`` (the stream and its digest in one record), every record's span from the digest equals
    its span from the replay, attribute for attribute (output, roles, finish reasons, usage, llama.cpp
    timings, Ollama's counts and durations, client-seen TTFT and inter-token latency from the same chunk
    times); what it does not model
    (error events, content parts, JSON it cannot read) carries no digest. With ``digest: on`` the stream
    stays out of the record."""
    if NATIVE is None:
        pytest.skip(NATIVE_MISSING)
    from dataclasses import replace

    from monitor.sidecar.proxy.spans import record_to_span

    names = list(DIGEST_STREAMS)
    rng = random.Random(7)

    def stream(req):
        return DIGEST_STREAMS[req.json["messages"][0]["content"]][0]

    def pieces(s):  # random splits (some inside a UTF-8 character), one pause each: the chunk times differ
        cuts = sorted(rng.sample(range(1, len(s)), min(9, len(s) - 1)))
        return [s[a:b] for a, b in zip([0] + cuts, cuts + [len(s)])]

    def body(name: str) -> bytes:  # "openai": the proxy asks for the usage event on the client's behalf
        return chat_body(stream=name != "not_a_stream_request", usage=None if name == "openai" else True,
                         messages=[{"role": "user", "content": name}])

    def seen(name: str) -> bytes:  # what the client gets
        return DIGEST_STREAMS[name][0].replace(USAGE_EVENT, b"") if name == "openai" else DIGEST_STREAMS[name][0]

    ollama = {name: body for name, body in ((n, json.dumps({"model": "m", "stream": True, "messages": [
        {"role": "user", "content": n}], "prompt": n}).encode()) for n in OLLAMA_STREAMS)}

    def ollama_upstream():
        async def script(req, reader, w):
            _, data, _ = OLLAMA_STREAMS[req.json["prompt"]]
            w.write(head(200, [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked")]))
            await write_chunked(w, pieces(data), 0.002)
            return True
        return script

    settings = ProxySettings()
    by_mode = {}
    for mode in ("both", "on"):
        env = Env("uvloop", "native")
        try:
            up = env.upstream(sse_upstream(pieces, pause=0.002, stream=stream))
            oup = env.upstream(ollama_upstream())
            port = {}
            for which, u in (("openai", up), ("ollama", oup)):
                p = NativeProxy(ProxySettings(upstream=u.url, host="127.0.0.1", port=0), env.socket_path(),
                                binary=NATIVE, digest=mode)
                env.proxies.append(NativeUnderTest.__new__(NativeUnderTest))
                env.proxies[-1].runner = p
                port[which] = p.start()
            for name in names:
                assert req_http(port["openai"], "POST", CHAT, body(name))[2] == seen(name), name
            for name, (path, data, _) in OLLAMA_STREAMS.items():
                assert req_http(port["ollama"], "POST", path, ollama[name])[2] == data, name
            by_mode[mode] = {r.request_body: r for r in env.wait_records(len(names) + len(OLLAMA_STREAMS))}
        finally:
            env.close()

    cases = [(n, body(n), DIGEST_STREAMS[n][0], DIGEST_STREAMS[n][1]) for n in names]
    cases += [(n, ollama[n], data, modelled) for n, (_, data, modelled) in OLLAMA_STREAMS.items()]
    for name, request, stream_bytes, modelled in cases:
        rec = by_mode["both"][request]
        assert (rec.digest is not None) == modelled, name
        assert rec.response_body == stream_bytes and rec.usage_requested == (name == "openai")
        replayed = record_to_span(replace(rec, digest=None), settings)
        assert record_to_span(rec, settings) == replayed, name
        slim = by_mode["on"][request]
        assert (slim.digest is not None) == modelled and not slim.truncated, name
        assert slim.response_body == (b"" if modelled else stream_bytes)
        assert (slim.chunks == []) == modelled, name  # no body left for the pairs to point into
        if modelled:  # the same answer (its times and upstream port are another run's)
            attrs = {kv.key: kv.value for kv in record_to_span(slim, settings).attributes}
            for kv in replayed.attributes:
                if not kv.key.startswith("monitor.client.") and kv.key != "server.port":
                    assert attrs[kv.key] == kv.value, (name, kv.key)
    rec = by_mode["both"][body("llamacpp")]
    attrs = {kv.key: kv.value for kv in record_to_span(rec, settings).attributes}
    assert attrs["gen_ai.output.messages"].string_value == (
        '[{"role":"assistant","parts":[{"type":"text","content":"Bonjour à tous 🙂"}],"finish_reason":"stop"}]')
    assert attrs["gen_ai.latency.time_in_model_decode"].double_value == (0.1 + 0.2) / 1e3
    assert attrs["gen_ai.usage.cache_read.input_tokens"].int_value == 4
    assert attrs["monitor.client.time_to_first_token"].double_value > 0
    chat = {kv.key: kv.value for kv in record_to_span(by_mode["on"][ollama["ollama_chat"]], settings).attributes}
    assert chat["gen_ai.output.messages"].string_value == (
        '[{"role":"assistant","parts":[{"type":"text","content":"Guten Tag 🙂"}],"finish_reason":"stop"}]')
    assert (chat["gen_ai.usage.input_tokens"].int_value, chat["gen_ai.usage.output_tokens"].int_value) == (9, 3)
    assert chat["gen_ai.latency.time_in_model_decode"].double_value == 3.3e-3
    two = {kv.key: kv.value for kv in record_to_span(by_mode["both"][body("two_choices")], settings).attributes}
    assert json.loads(two["gen_ai.output.messages"].string_value)[1]["parts"][0]["content"] == "w1 w3 w5 w7 "
