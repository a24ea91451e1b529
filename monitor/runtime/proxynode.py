"""The capture proxy as a process of its own: the request path and nothing else.

:class:`ProxyNode` is the ``proxy`` child of ``monitor up`` / ``monitor
sidecar``: :class:`~monitor.sidecar.proxy.fastproxy.FastProxy` on an event
loop (uvloop when installed) in a thread of its own, handing each record to a
:class:`~monitor.sidecar.proxy.channel.RecordSender` towards the pipeline
process. Several of them may share the port (``proxy.workers``, SO_REUSEPORT).
:class:`InProcessProxy` is the same proxy inside the one process of
``monitor up --single-process`` (and the tests), its records handed straight to
the capture intake.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from monitor.config import Settings
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
    """The proxy process: FastProxy, records over the Unix socket to the pipeline."""

    def __init__(self, settings: Settings, metrics: SelfMetrics, index: int = 0):
        super().__init__(settings, metrics, "monitor-proxy")
        from monitor.sidecar.proxy.channel import RecordSender

        if not settings.proxy.capture_socket:
            raise ValueError("the proxy process needs proxy.capture_socket (the supervisor sets it)")
        self.socket_path = settings.proxy.capture_socket
        self.sender = RecordSender(self.socket_path)
        self.index = index

    def start(self) -> None:
        from monitor.sidecar.proxy.fastproxy import FastProxy

        p = self.settings.proxy
        self._loop.start()
        self._loop.call(self.sender.start())
        self.proxy = FastProxy(p, self.sender.send, self.metrics, announce=self.sender.send_start)
        self.port = self._loop.call(self.proxy.start())
        if self.index == 0:
            log.info("%s", self._describe())

    def stop(self) -> None:
        grace = self.settings.proxy.drain_s
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
        self.proxy = FastProxy(self.settings.proxy, self._sink, self.metrics, announce=self._announce)
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
