"""The capture proxy as a process of its own: the request path and nothing else.

:class:`ProxyNode` is the ``proxy`` child of ``monitor up`` / ``monitor
sidecar``. With ``proxy.implementation`` native (``auto`` when it is built) it
runs the ``monitor-proxy`` binary (:mod:`monitor.sidecar.proxy.native`), which
sends its records to the pipeline's socket itself; this process re-exposes the
binary's counters on its own ``/metrics`` and ends with the binary's exit code
when the binary ends on its own, so the supervisor restarts both. Otherwise it
runs :class:`~monitor.sidecar.proxy.fastproxy.FastProxy` on an event loop
(uvloop when installed) in a thread of its own, handing each record to a
:class:`~monitor.sidecar.proxy.channel.RecordSender` towards the pipeline
process. Several of them may share the port (``proxy.workers``, SO_REUSEPORT).
:class:`InProcessProxy` is the same proxy inside the one process of
``monitor up --single-process`` (and the tests), its records handed straight to
the capture intake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from monitor.config import Settings
from monitor.otlp.identity import wanted_headers
from monitor.selfmetrics import SelfMetrics

__all__ = ["ProxyNode", "InProcessProxy"]

log = logging.getLogger("monitor.proxy")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class _LoopThread:
    def __init__(self, name: str):
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def call(self, coro, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


class _ProxyBase:
    def __init__(self, settings: Settings, metrics: SelfMetrics, name: str):
        self.settings = settings
        self.metrics = metrics
        self.port = settings.proxy.port
        self._loop = _LoopThread(name)
        self.proxy = None

    def ports(self) -> dict[str, int]:
        return {"port": self.port}

    def _describe(self) -> str:
        p = self.settings.proxy
        return (f"capture proxy listening on http://{p.host}:{self.port} -> {p.upstream} "
                "(OpenAI API and Ollama captured; other paths pass through)")


class ProxyNode(_ProxyBase):
    """The proxy process: the native binary or FastProxy, records over the Unix socket to the pipeline."""

    def __init__(self, settings: Settings, metrics: SelfMetrics, index: int = 0):
        super().__init__(settings, metrics, "monitor-proxy")
        from monitor.sidecar.proxy.channel import RecordSender
        from monitor.sidecar.proxy.native import choose_implementation

        if not settings.proxy.capture_socket:
            raise ValueError("the proxy process needs proxy.capture_socket (the supervisor sets it)")
        self.socket_path = settings.proxy.capture_socket
        self.index = index
        self.implementation = choose_implementation(settings.proxy)
        self.sender = RecordSender(self.socket_path) if self.implementation == "python" else None
        self.native = None
        self._stopping = threading.Event()

    def ports(self) -> dict[str, int]:
        if self.native is None:
            return {"port": self.port}
        return {"port": self.port, "native_pid": self.native.pid, "native_metrics_port": self.native.metrics_port}

    def start(self) -> None:
        if self.implementation == "native":
            self._start_native()
        else:
            from monitor.sidecar.proxy.fastproxy import FastProxy

            p = self.settings.proxy
            self._loop.start()
            self._loop.call(self.sender.start())
            self.proxy = FastProxy(p, self.sender.send, self.metrics, announce=self.sender.send_start,
                                   client_headers=wanted_headers(self.settings.clients))
            self.port = self._loop.call(self.proxy.start())
        if self.index == 0:
            log.info("%s", self._describe())

    def _start_native(self) -> None:
        from monitor.sidecar.proxy.native import NativeProxy

        self.native = NativeProxy(self.settings.proxy, self.socket_path,
                                  client_headers=wanted_headers(self.settings.clients))
        self.port = self.native.start()
        registry = self.metrics.registry
        for counter in (self.metrics.proxy_requests, self.metrics.proxy_capture_errors,
                        self.metrics.proxy_capture_dropped):
            registry.unregister(counter)  # the binary's own counters take their names
        registry.register(self.native.collector())
        threading.Thread(target=self._watch_native, name="monitor-proxy-native", daemon=True).start()

    def _watch_native(self) -> None:
        """The binary ended on its own: so does this process, with its exit code (the supervisor
        restarts the proxy; a proxy process without its request path would only look alive)."""
        code = self.native.wait()
        if self._stopping.is_set():
            return
        why = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        log.error("the native proxy (monitor-proxy) %s; the proxy process ends with it", why)
        logging.shutdown()
        os._exit(code if code > 0 else (128 - code if code < 0 else 1))

    def _describe(self) -> str:
        return super()._describe() + (" [native request path]" if self.native is not None else "")

    def stop(self) -> None:
        grace = self.settings.proxy.drain_s
        self._stopping.set()
        if self.native is not None:
            code = self.native.stop(grace)
            if code not in (0, None):
                log.warning("the native proxy exited with code %s when stopped", code)
            return
        try:
            if self.proxy is not None:
                self._loop.call(self.proxy.stop(grace), timeout=grace + 10)
            self._loop.call(self.sender.close(2.0), timeout=10)
        except Exception:
            log.exception("the proxy did not stop cleanly")
        self._loop.stop()


class InProcessProxy(_ProxyBase):
    """The proxy in this process: records go straight to ``on_frame`` (the capture intake)."""

    def __init__(self, settings: Settings, metrics: SelfMetrics, on_frame: Callable[[Any], None]):
        super().__init__(settings, metrics, "monitor-proxy")
        self.on_frame = on_frame

    def _sink(self, record) -> bool:
        self.on_frame(record)
        return True

    def _announce(self, trace_id: bytes, span_id: bytes) -> None:
        from monitor.sidecar.proxy.record import CaptureStart
        self.on_frame(CaptureStart(trace_id, span_id))

    def start(self) -> None:
        from monitor.sidecar.proxy.fastproxy import FastProxy

        self._loop.start()
        self.proxy = FastProxy(self.settings.proxy, self._sink, self.metrics, announce=self._announce,
                               client_headers=wanted_headers(self.settings.clients))
        self.port = self._loop.call(self.proxy.start())
        log.info("%s", self._describe())

    def stop(self) -> None:
        grace = self.settings.proxy.drain_s
        try:
            if self.proxy is not None:
                self._loop.call(self.proxy.stop(grace), timeout=grace + 10)
        except Exception:
            log.exception("the proxy did not stop cleanly")
        self._loop.stop()
