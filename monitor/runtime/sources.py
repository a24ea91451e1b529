"""What runs beside the model server in ``monitor up`` and ``monitor sidecar``.

The in-process sources (capture proxy, /metrics scraper, NVML sampler) and
the processors every request goes through before it leaves the receiver
(engine-span join, GPU cost stamp, redaction), built from the settings.
Sources hand their OTLP data to a :class:`~monitor.sidecar.emitter.LocalEmitter`,
which feeds the same :class:`~monitor.receiver.ingress.Ingress` as the OTLP
receiver, so they are validated, redacted, spooled and counted the same way.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from monitor.config import Settings
from monitor.receiver.ingress import Ingress, Processor
from monitor.redaction import Redactor, make_processor
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.cost import cost_processor
from monitor.sidecar.emitter import LocalEmitter
from monitor.sidecar.gpu import NvmlSampler
from monitor.sidecar.proxy.join import EngineJoin
from monitor.sidecar.scrape import MetricsScraper

__all__ = ["SidecarSources"]

log = logging.getLogger("monitor")


class SidecarSources:
    def __init__(self, settings: Settings, metrics: SelfMetrics):
        self.settings = settings
        self.metrics = metrics
        self.resource = {"service.name": "llm-monitor-sidecar", "host.name": socket.gethostname()}
        self.join = EngineJoin(settings.proxy.engine_join_window_s, settings.proxy.upstream_traces) \
            if settings.proxy.upstream else None
        self.emitter: LocalEmitter | None = None
        self.proxy = None
        self.scraper: MetricsScraper | None = None
        self.gpu: NvmlSampler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def gpus_per_request(self) -> int:
        """Configured tensor-parallel size, else the GPUs NVML sees, else 1."""
        if self.settings.gpu.gpus_per_request:
            return self.settings.gpu.gpus_per_request
        seen = self.gpu.device_count() if self.gpu is not None else 0
        return seen or 1

    def processors(self) -> list[Processor]:
        """In order: join engine spans (needs them raw), stamp GPU cost inputs, redact content.
        Bad redaction settings raise ConfigError here, at start."""
        out: list[Processor] = []
        if self.join is not None:
            out.append(self.join.process)
        out.append(cost_processor(self.gpus_per_request, self.settings.gpu.price_per_gpu_hour))
        redactor = Redactor(self.settings.redaction)
        if self.settings.redaction.enabled:
            def count(counts: dict[str, int]) -> None:
                for kind, n in counts.items():
                    self.metrics.redactions.labels(kind).inc(n)
            out.append(make_processor(redactor, on_counts=count))
        return out

    def start(self, ingress: Ingress, loop: asyncio.AbstractEventLoop) -> None:
        from monitor.runtime.proxy_service import ProxyService

        self._loop = loop
        self.emitter = LocalEmitter(ingress, loop, max_pending=1000)
        self.emitter.start()
        if self.settings.gpu.enabled:
            self.gpu = NvmlSampler(self.settings.gpu, self.emitter, self.resource)
            self.gpu.start()  # without NVML it says so once and stays off
        if self.settings.scrape.url:
            self.scraper = MetricsScraper(self.settings.scrape, self.emitter, self.resource)
            self.scraper.start()
            log.info("scraping %s every %gs", self.settings.scrape.url, self.settings.scrape.interval_s)
        if self.join is not None:
            self.proxy = ProxyService(self.settings.proxy, self.emitter, self.metrics, self.join)
            self.proxy.start()

    def stop(self) -> None:
        """Stop the sources, then wait (briefly) until what they emitted reached the transport."""
        if self.proxy is not None:
            self.proxy.stop()
        for source in (self.scraper, self.gpu):
            if source is not None:
                source.stop()
        if self.emitter is not None and self._loop is not None and self._loop.is_running():
            try:
                if not asyncio.run_coroutine_threadsafe(self.emitter.aclose(10), self._loop).result(15):
                    log.warning("in-process sources: some data was not exported before the deadline")
            except Exception:
                log.exception("could not flush the in-process sources")
