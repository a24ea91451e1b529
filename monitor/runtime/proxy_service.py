"""The capture proxy in a thread and event loop of its own, so the request path shares nothing
with the OTLP receiver's loop (a burst of telemetry cannot delay a proxied token)."""

from __future__ import annotations

import asyncio
import logging
import threading

from monitor.config import ProxySettings
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.emitter import Emitter
from monitor.sidecar.proxy.join import EngineJoin
from monitor.sidecar.proxy.server import CaptureProxy
from monitor.sidecar.proxy.spans import tracer_provider

__all__ = ["ProxyService"]

log = logging.getLogger("monitor.proxy")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class ProxyService:
    def __init__(self, settings: ProxySettings, emitter: Emitter, metrics: SelfMetrics, join: EngineJoin,
                 span_attributes: dict | None = None):
        self.settings = settings
        self.join = join
        self.provider = tracer_provider(settings.service_name, emitter, settings.queue_max_spans)
        self.proxy = CaptureProxy(settings, self.provider, self.join, metrics, span_attributes)
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name="monitor-proxy", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def port(self) -> int:
        return self.proxy.port

    def start(self) -> None:
        self.join.start()
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(30)
        log.info("capture proxy listening on http://%s:%d -> %s (OpenAI API and Ollama; other paths pass through)",
                 self.settings.host, port, self.settings.upstream)

    def stop(self) -> None:
        """Finish requests in flight, end waiting spans, export them."""
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(60)
            except Exception:
                log.exception("proxy did not stop cleanly")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.join.stop()
        self.provider.shutdown()  # flushes the span queue into the emitter
