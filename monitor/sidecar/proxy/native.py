"""The native capture proxy: ``monitor-proxy`` (Rust, ``native/proxy``) run as a child process.

It is the same request path as :class:`~monitor.sidecar.proxy.fastproxy.FastProxy`,
behaviour for behaviour, at about a third of its CPU per streamed request. It sends
its :class:`~monitor.sidecar.proxy.record.CaptureRecord` frames (and the
``CaptureStart`` announcements) straight to the pipeline's capture socket, exactly
as :class:`~monitor.sidecar.proxy.channel.RecordSender` does, and serves its
counters (``monitor_proxy_requests_total``, ``..._capture_errors_total``,
``..._capture_dropped_total``) as Prometheus text on a loopback port of its own,
with ``/stats`` (the keys of ``FastProxy.stats()``) beside it.

``pip install`` builds it when ``cargo`` is on PATH (``hatch_build.py``) into
``monitor/_native/monitor-proxy``; without it the Python path serves
(``proxy.implementation: auto``). The binary speaks plain http to the upstream:
an https upstream (``proxy.upstream``, or one of ``proxy.routes``) stays on the Python path, and
so does ``proxy.tls``: ``auto`` then logs one line saying why and runs the Python path; ``native``
refuses to start. ``proxy.routes`` to plain-http upstreams (several model servers chosen by the
requested model, a managed route's key in place of the client's) run natively: the key reaches the
binary on stdin with the rest of its config. Shadow traffic and adapters do not depend on the
request path (the pipeline process sends and labels them) and work with either.

Lifecycle, as :class:`NativeProxy` runs it: the config goes in on stdin (it may
hold ``auth_token``: never on a command line); the binary prints one
``{"ready": true, "port": N, "metrics_port": M}`` line once it listens; SIGTERM
makes it stop accepting, let streams in flight finish for ``drain_s``, send the
records it holds, and exit 0. It gets SIGTERM when the thread that started it
ends (``PR_SET_PDEATHSIG``): start it from a thread that outlives it.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from monitor.auth import secret_value
from monitor.config import ProxySettings
from monitor.errors import ConfigError
from monitor.sidecar.proxy.capture import ROUTES

log = logging.getLogger("monitor.proxy")

__all__ = ["native_binary", "choose_implementation", "native_config", "NativeProxy", "BINARY_PATH"]

BINARY_PATH = Path(__file__).resolve().parents[2] / "_native" / "monitor-proxy"
"""Where the build hook puts the binary (``monitor/_native/``, gitignored, in the wheel)."""
_READY_TIMEOUT_S = 10.0
_EXIT_CONFIG = 2
"""The binary's exit code for a configuration it refuses."""


def native_binary() -> Path | None:
    """The built ``monitor-proxy``, or None when it was not built (no cargo at install time)."""
    return BINARY_PATH if BINARY_PATH.is_file() and os.access(BINARY_PATH, os.X_OK) else None


def choose_implementation(settings: ProxySettings) -> Literal["native", "python"]:
    """``proxy.implementation`` resolved: ``auto`` is native when the binary is built and the upstream
    is plain http. Raises ConfigError when ``native`` is asked for and cannot run."""
    if settings.implementation == "python":
        return "python"
    why = None
    if native_binary() is None:
        why = (f"the native proxy is not built ({BINARY_PATH} is missing: pip install with cargo on PATH "
               "builds it)")
    elif urlsplit(settings.upstream or "").scheme != "http":
        why = f"the native proxy speaks plain http to the upstream, not to {settings.upstream!r}"
    elif settings.tls.enabled:
        why = "proxy.tls is set: the native proxy speaks plain http to its clients"
    elif any(urlsplit(r.upstream).scheme != "http" for r in settings.routes):
        https = next(r for r in settings.routes if urlsplit(r.upstream).scheme != "http")
        why = (f"proxy.routes sends {https.model!r} to {https.upstream!r}: the native proxy speaks plain http "
               "to its upstreams")
    if why is None:
        return "native"
    if settings.implementation == "native":
        raise ConfigError(f"proxy.implementation is native, but {why}")
    if native_binary() is not None:
        log.info("capture proxy: the Python request path serves: %s", why)
    return "python"


def native_config(settings: ProxySettings, capture_socket: str | None, *, metrics_port: int = 0,
                  reuse_port: bool | None = None, client_headers: Iterable[str] = (),
                  digest: Literal["on", "off", "both"] | None = None) -> dict[str, Any]:
    """The binary's config: the fields of ``settings`` its request path uses, the capture socket
    (None: records are built and dropped), its metrics port, :data:`capture.ROUTES`, and the request
    headers it copies into each record for the client's identity (as ``FastProxy``'s
    ``client_headers``: :func:`monitor.otlp.identity.wanted_headers`; never ``authorization`` when
    ``proxy.auth_token`` is set, which then carries the proxy's own token, not a client's key), and
    ``digest``: whether records of OpenAI SSE and Ollama NDJSON streams carry the answer the binary reassembled after
    the response (``on``, what the pipeline reads instead of replaying the stream), the stream (``off``)
    or both (``both``: the parity test); None: ``proxy.digest_streams``."""
    s = settings
    token = secret_value(s.auth_token)
    wanted = [h for h in dict.fromkeys(h.strip().lower() for h in client_headers)
              if h and not (token is not None and h == "authorization")]
    return {
        "upstream": s.upstream, "host": s.host, "port": s.port,
        "reuse_port": s.workers > 1 if reuse_port is None else reuse_port,
        "auth_token": token, "max_request_bytes": s.max_request_bytes,
        "max_capture_bytes": s.max_capture_bytes, "header_timeout_s": s.header_timeout_s,
        "idle_timeout_s": s.idle_timeout_s, "upstream_timeout_s": s.upstream_timeout_s,
        "request_usage": s.request_usage, "drain_s": s.drain_s, "capture_socket": capture_socket,
        "metrics_port": metrics_port, "routes": {path: list(route) for path, route in ROUTES.items()},
        "client_headers": wanted, "model_routes": _model_routes(s),
        "digest": digest or ("on" if s.digest_streams else "off"),
    }


def _model_routes(settings: ProxySettings) -> list[dict[str, Any]]:
    """``proxy.routes`` for the binary: each glob, its upstream, and a managed route's
    ``Authorization`` (read from ``api_key_env`` now; it reaches the binary on stdin only)."""
    out = []
    for i, r in enumerate(settings.routes):
        key = r.start_key(i)
        out.append({"model": r.model, "upstream": r.upstream, "authorization": f"Bearer {key}" if key else None})
    return out


class NativeProxy:
    """One ``monitor-proxy`` process: ``start()`` (returns the port), ``stop()``, ``stats()``.

    Not thread-safe; ``stop()`` is safe to call without ``start()`` and more than once."""

    def __init__(self, settings: ProxySettings, capture_socket: str | None, *, metrics_port: int = 0,
                 reuse_port: bool | None = None, binary: Path | None = None,
                 client_headers: Iterable[str] = (), digest: Literal["on", "off", "both"] | None = None) -> None:
        if not settings.upstream:
            raise ValueError("the native proxy needs proxy.upstream")
        self.settings = settings
        self.config = native_config(settings, capture_socket, metrics_port=metrics_port, reuse_port=reuse_port,
                                    client_headers=client_headers, digest=digest)
        self.binary = binary or native_binary()
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = _READY_TIMEOUT_S) -> int:
        """Start the binary and wait for its ready line; returns the port it listens on. Raises
        ConfigError (it refused the config) or OSError (it could not listen, or did not get ready:
        its own stderr line says why)."""
        if self.binary is None:
            raise ConfigError(f"the native proxy is not built ({BINARY_PATH} is missing)")
        self.proc = subprocess.Popen([str(self.binary), "--config-json", "-"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(self.config).encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        line = self._ready_line(timeout)
        if line is None:
            code = self.proc.poll()
            if code is None:
                self.stop(0.0)
                raise OSError(f"monitor-proxy did not get ready within {timeout:.0f}s")
            if code == _EXIT_CONFIG:
                raise ConfigError(f"monitor-proxy refused its configuration (exit {code}; its line above says why)")
            raise OSError(f"monitor-proxy exited with code {code} while starting (its line above says why)")
        ready = json.loads(line)
        self.port, self.metrics_port = int(ready["port"]), int(ready["metrics_port"])
        return self.port

    def _ready_line(self, timeout: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                buf += chunk
        return buf.split(b"\n", 1)[0]

    def poll(self) -> int | None:
        """The exit code once the process ended, else None."""
        return self.proc.poll() if self.proc is not None else None

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, drain_s: float | None = None) -> int | None:
        """SIGTERM: it stops accepting, lets streams in flight finish for its ``drain_s``, sends what it
        holds, exits. Killed when it has not exited ``drain_s`` + 5 s later. Returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            grace = self.settings.drain_s if drain_s is None else max(drain_s, self.settings.drain_s)
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace + 5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def _get(self, path: str, timeout: float) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=timeout) as r:
            return r.read()

    def stats(self, timeout: float = 2.0) -> dict[str, Any]:
        """``FastProxy.stats()``'s keys (and ``sender``: the record sender's), from the running binary."""
        return json.loads(self._get("/stats", timeout))

    def metrics_text(self, timeout: float = 2.0) -> str:
        """Its counters as Prometheus text."""
        return self._get("/metrics", timeout).decode()

    def collector(self) -> "_Collector":
        """A prometheus_client collector that yields the binary's counters at each scrape."""
        return _Collector(self)


class _Collector:
    def __init__(self, proxy: NativeProxy) -> None:
        self.proxy = proxy

    def describe(self) -> list:
        return []  # the names are the binary's: nothing to check against the registry up front

    def collect(self):
        from prometheus_client.parser import text_string_to_metric_families

        if self.proxy.poll() is not None or not self.proxy.metrics_port:
            return
        try:
            text = self.proxy.metrics_text(timeout=1.0)
        except OSError:
            return
        yield from text_string_to_metric_families(text)
