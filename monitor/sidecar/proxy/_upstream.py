"""Keep-alive connections from the capture proxy to the model server.

One :class:`UpstreamPool` per upstream URL: idle connections are reused last
in, first out; a connection the server marked ``Connection: close``, one that
broke, and one idle longer than :data:`POOL_IDLE_S` are never handed out. An
:class:`UpstreamConn` serves one exchange at a time; while it does, the
exchange is its response parser's protocol, so every response callback goes
straight to the exchange.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httptools

if TYPE_CHECKING:
    from monitor.sidecar.proxy._exchange import Exchange

__all__ = ["UpstreamPool", "UpstreamConn", "POOL_IDLE_S", "CONNECT_TIMEOUT_S"]

POOL_IDLE_S = 4.0
"""An idle connection older than this is closed, not reused: below the 5 s keep-alive timeout of
uvicorn (vLLM, SGLang) and llama.cpp, so the proxy never writes a request into a connection the
server is closing at that moment."""
CONNECT_TIMEOUT_S = 10.0
MAX_IDLE = 256
"""Idle connections kept per upstream; more are closed when they come back."""


class UpstreamConn(asyncio.Protocol):
    __slots__ = ("pool", "transport", "ex", "parser", "idle", "idle_since", "reused", "lost", "read_paused")

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.ex: Exchange | None = None
        """The exchange this connection serves now; None while idle or given up."""
        self.parser: httptools.HttpResponseParser | None = None
        self.idle = False
        self.idle_since = 0
        self.reused = False
        """Taken from the pool (not fresh): a close before any response byte may be the server's
        keep-alive timeout racing the request, and the request may be sent again once."""
        self.lost = False
        self.read_paused = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.open += 1

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes on an idle connection: the server is out of step, drop it
            self.abort()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            # A callback that let go of this connection stops its parser by raising; only an
            # error of the parser in charge is the server's fault.
            if self.parser is parser and self.ex is not None:
                self.ex.upstream_broken()
            elif self.ex is None and not self.idle:
                self.abort()

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.open -= 1
        self._gone()

    def pause_writing(self) -> None:  # the request body is faster than the server reads it
        if self.ex is not None:
            self.ex.conn.pause(2)

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.conn.resume(2)

    # -- used by the exchange -------------------------------------------------------------------
    def pause_reading(self) -> None:
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close at once (RST): the server stops generating for a client that is gone."""
        self.ex = None
        self.parser = None
        if not self.lost:
            self.lost = True
            self.pool.forget(self)
            self.transport.abort()

    def _gone(self) -> None:
        if self.lost:
            return
        self.lost = True
        self.pool.forget(self)
        ex, self.ex = self.ex, None
        if ex is not None:
            ex.upstream_closed(self.reused)
        if not self.transport.is_closing():
            self.transport.close()


class UpstreamPool:
    """Connections to one upstream base URL (``http(s)://host[:port][/prefix]``)."""

    def __init__(self, url: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        u = urlsplit(url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"proxy.upstream must be http(s)://host[:port] (got {url!r})")
        self.base = url.rstrip("/")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.encode("latin-1")
        """Path prefix of the upstream URL, put before every request target."""
        default = (u.scheme == "https" and self.port == 443) or (u.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default else f"{host}:{self.port}").encode("latin-1")
        self.ssl = ssl.create_default_context() if u.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[UpstreamConn] = []
        self.open = 0
        self.usage_rejected = False
        """The server refused ``stream_options.include_usage`` once: the proxy no longer adds it."""

    def get(self, now_ns: int) -> UpstreamConn | None:
        """An idle connection to reuse, or None (then :meth:`connect`)."""
        idle = self.idle
        while idle:
            c = idle.pop()
            c.idle = False
            if c.lost or c.transport.is_closing():
                continue
            if now_ns - c.idle_since > POOL_IDLE_S * 1e9:
                c.abort()
                continue
            c.reused = True
            return c
        return None

    async def connect(self) -> UpstreamConn:
        """A new connection; raises OSError (refused, unreachable) or TimeoutError."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConn(self), self.host, self.port, ssl=self.ssl,
                                   server_hostname=self.host if self.ssl else None),
            self.connect_timeout_s)
        return conn

    def put(self, c: UpstreamConn) -> None:
        """Take back a connection whose last response ended cleanly and may be kept alive."""
        c.ex = None
        c.parser = None
        if c.lost:
            return
        if len(self.idle) >= MAX_IDLE:
            c.transport.close()
            return
        c.resume_reading()  # an idle connection must see the server's close
        c.reused = False
        c.idle = True
        c.idle_since = time.monotonic_ns()
        self.idle.append(c)

    def forget(self, c: UpstreamConn) -> None:
        if c.idle:
            c.idle = False
            try:
                self.idle.remove(c)
            except ValueError:
                pass

    def expire(self, now_ns: int) -> None:
        """Close idle connections past :data:`POOL_IDLE_S` (called about once a second)."""
        limit = now_ns - POOL_IDLE_S * 1e9
        for c in [c for c in self.idle if c.idle_since < limit]:
            c.abort()

    def close(self) -> None:
        for c in list(self.idle):
            c.abort()
        self.idle.clear()
