"""``monitor demo``: ``monitor up`` in front of the reference model server, with demo traffic.

The reference server traces to the embedded receiver like vLLM would, the
capture proxy sits in front of it, and a traffic generator plays phases
(see :mod:`monitor.demo.traffic`) so a newcomer sees data, and drift, at once.
"""

from __future__ import annotations

import logging
import time

from monitor.config import Settings
from monitor.runtime.apps import Embedded

__all__ = ["Demo"]

log = logging.getLogger("monitor.demo")


class Demo:
    def __init__(self, settings: Settings, server_port: int = 8000, rate: float = 2.0,
                 phase_seconds: float = 60.0, loop: bool = True):
        from monitor.demo.server import DemoServer

        r = settings.receiver
        self.server = DemoServer(host="127.0.0.1", port=server_port,
                                 otlp_endpoint=f"http://{'127.0.0.1' if r.host == '0.0.0.0' else r.host}:{r.grpc_port}")
        settings.proxy.upstream = f"http://127.0.0.1:{server_port}"
        self.settings = settings
        self.rate, self.phase_seconds, self.loop = rate, phase_seconds, loop
        self.embedded: Embedded | None = None
        self.traffic = None

    def start(self) -> None:
        from monitor.demo.traffic import TrafficGenerator

        t0 = time.monotonic()
        self.embedded = Embedded(self.settings)
        self.embedded.start()
        self.server.start()  # trains the tiny model on first use, then loads it from the cache
        model = self.server.engine.model_name
        proxy = f"http://{self.settings.proxy.host}:{self.embedded.sources.proxy.port}"
        self.traffic = TrafficGenerator(proxy, self.server.url, model, rate=self.rate,
                                        phase_seconds=self.phase_seconds, loop=self.loop)
        self.traffic.start()
        log.info("demo ready in %.0fs: reference server %s, capture proxy %s (try: curl %s/v1/models); "
                 "data in %s; `monitor status` shows progress", time.monotonic() - t0, self.server.url, proxy,
                 proxy, self.settings.store.chdb_path())
        if self.embedded.dashboard is not None:
            log.info("demo dashboards: open %s", self.embedded.dashboard.url)

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
            log.info("demo traffic: %d requests sent, %d failed", self.traffic.sent, self.traffic.errors)
        if self.embedded is not None:
            self.embedded.stop()
        self.server.stop()
