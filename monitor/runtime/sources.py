"""What the pipeline (the data plane) runs besides the receiver, built from the settings.

The processors every request goes through before it leaves the receiver, as
``pipeline.processors`` names them (default: the engine-span join, which needs
the engine's span as sent; the GPU cost stamp; redaction, last, so nothing
unredacted is spooled), built from :data:`PROCESSORS`, and the
in-process sources (the /metrics scraper, the NVML sampler, the capture
proxy's intake) feeding the same :class:`~monitor.receiver.ingress.Ingress`
through a :class:`~monitor.sidecar.emitter.LocalEmitter`, so their data is
validated, redacted, spooled and counted like any OTLP request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from monitor.config import Settings
from monitor.otlp.identity import resolve_secret
from monitor.receiver.ingress import Ingress, Processor
from monitor.redaction import Redactor, make_processor
from monitor.selfmetrics import SelfMetrics
from monitor.sidecar.cost import cost_processor
from monitor.sidecar.emitter import LocalEmitter
from monitor.sidecar.gpu import NvmlSampler
from monitor.sidecar.proxy.intake import CaptureIntake
from monitor.sidecar.scrape import MetricsScraper

__all__ = ["PipelineSources", "PROCESSORS"]

log = logging.getLogger("monitor")


class PipelineSources:
    def __init__(self, settings: Settings, metrics: SelfMetrics):
        self.settings = settings
        self.metrics = metrics
        self.resource = {"service.name": "llm-monitor-sidecar", "host.name": socket.gethostname()}
        self.emitter: LocalEmitter | None = None
        self.capture: CaptureIntake | None = None
        self.scraper: MetricsScraper | None = None
        self.gpu: NvmlSampler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redactor = Redactor(settings.redaction)  # bad redaction settings: ConfigError now, at start

    def gpus_per_request(self) -> int:
        """Configured tensor-parallel size, else the GPUs NVML sees, else 1."""
        if self.settings.gpu.gpus_per_request:
            return self.settings.gpu.gpus_per_request
        seen = self.gpu.device_count() if self.gpu is not None else 0
        return seen or 1

    def processors(self, capture: CaptureIntake | None) -> list[Processor]:
        """The processors of ``pipeline.processors``, in order (one that does not apply, such as the
        engine join without a proxy or redaction when it is disabled, is left out)."""
        built = (PROCESSORS[name](self, capture) for name in self.settings.pipeline.processors)
        return [p for p in built if p is not None]

    def _redaction(self) -> Processor | None:
        if not self.settings.redaction.enabled:
            return None

        def count(counts: dict[str, int]) -> None:
            for kind, n in counts.items():
                self.metrics.redactions.labels(kind).inc(n)
        return make_processor(self._redactor, on_counts=count)

    def bind(self, ingress: Ingress, loop: asyncio.AbstractEventLoop) -> None:
        """The emitter in-process sources hand their data to (created before they start)."""
        self._loop = loop
        self.emitter = LocalEmitter(ingress, loop, max_pending=1000)
        self.emitter.start()
        if self.capture is not None:
            self.capture.emitter = self.emitter

    def make_capture(self) -> CaptureIntake | None:
        if not self.settings.proxy.upstream:
            return None
        self.capture = CaptureIntake(self.settings.proxy, _Unbound(), self.metrics, clients=self.settings.clients,
                                     secret=resolve_secret(self.settings))
        return self.capture

    def start(self) -> None:
        assert self.emitter is not None, "bind() first"
        if self.capture is not None:
            self.capture.start()
        if self.settings.gpu.enabled:
            self.gpu = NvmlSampler(self.settings.gpu, self.emitter, self.resource)
            self.gpu.start()  # without NVML it says so once and stays off
        if self.settings.scrape.url:
            self.scraper = MetricsScraper(self.settings.scrape, self.emitter, self.resource)
            self.scraper.start()
            log.info("scraping %s every %gs", self.settings.scrape.url, self.settings.scrape.interval_s)

    def stop(self) -> None:
        """Stop the sources, then wait (briefly) until what they emitted reached the transport."""
        for source in (self.scraper, self.gpu):
            if source is not None:
                source.stop()
        if self.capture is not None:
            self.capture.stop()
        if self.emitter is not None and self._loop is not None and self._loop.is_running():
            try:
                if not asyncio.run_coroutine_threadsafe(self.emitter.aclose(10), self._loop).result(15):
                    log.warning("in-process sources: some data was not exported before the deadline")
            except Exception:
                log.exception("could not flush the in-process sources")


ProcessorFactory = Callable[[PipelineSources, "CaptureIntake | None"], "Processor | None"]

PROCESSORS: dict[str, ProcessorFactory] = {
    "engine_join": lambda src, capture: capture.processor() if capture is not None else None,
    "cost": lambda src, capture: cost_processor(src.gpus_per_request, src.settings.gpu.price_per_gpu_hour,
                                                src.settings.cost.token_prices),
    "redaction": lambda src, capture: src._redaction(),
}
"""Every processor ``pipeline.processors`` can name (``monitor.config.ProcessorName``), by name: a
factory from the pipeline's sources (and the capture intake, when a proxy runs) to an Ingress
:data:`~monitor.receiver.ingress.Processor`, or None when it does not apply."""


class _Unbound:
    """Stands in for the emitter until :meth:`PipelineSources.bind`."""

    def emit(self, signal, msg) -> bool:  # pragma: no cover - only before start
        return False
