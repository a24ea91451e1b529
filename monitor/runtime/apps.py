"""The three ways to run, each a start()/stop() pair over the same components.

- :class:`Embedded` (``monitor up``): receiver -> in-process queue -> ingest -> chdb.
- :class:`Sidecar` (``monitor sidecar``): receiver -> SQLite spool -> Kafka.
- :class:`Ingest` (``monitor ingest``): Kafka consumer group -> ClickHouse.

Start order is sink first, source last; stop order is the reverse, so what a
source accepted is always drained into its sink before the sink stops.
"""

from __future__ import annotations

import logging
import signal
import threading

from monitor.config import Settings
from monitor.ingest.consumer import KafkaIngest
from monitor.ingest.embedded import EmbeddedIngest
from monitor.receiver.ingress import Ingress
from monitor.runtime.receiver_service import ReceiverService
from monitor.runtime.sources import SidecarSources
from monitor.selfmetrics import SelfMetrics
from monitor.store.client import Store
from monitor.store.migrate import check_schema, migrate
from monitor.store.writer import Writer
from monitor.transport.inprocess import InProcessTransport
from monitor.transport.kafka import KafkaTransport
from monitor.transport.spool import Spool

__all__ = ["App", "Embedded", "Sidecar", "Ingest", "run_until_signal"]

log = logging.getLogger("monitor")


class App:
    default_metrics_port = 9464
    role = ""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = SelfMetrics(self.role)
        self.metrics_port: int | None = None

    def _serve_metrics(self) -> None:
        t = self.settings.telemetry
        port = t.metrics_port if t.metrics_port is not None else self.default_metrics_port
        self.metrics_port = self.metrics.serve(t.metrics_host, port)
        log.info("self-metrics on http://%s:%d/metrics", t.metrics_host, self.metrics_port)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def open_store(settings: Settings) -> Store:
    """The store, with its schema applied (or checked, with ``store.apply_schema: false``)."""
    return _open_store(settings)


def _open_store(settings: Settings) -> Store:
    store = Store(settings.store)
    if settings.store.apply_schema:
        migrate(store, settings.store.retention_days)
    else:
        check_schema(store)
    log.info("store: %s, retention %d days", store.describe(), settings.store.retention_days)
    return store


class Embedded(App):
    """Everything in one process, nothing to install: ``monitor up``."""

    role = "up"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        s = settings
        self.store = _open_store(s)
        self.writer = Writer(self.store, self.metrics)
        self.transport = InProcessTransport(s.ingest.queue_max_requests, s.ingest.queue_max_bytes, self.metrics,
                                            s.receiver.retry_after_s)
        self.ingest = EmbeddedIngest(self.transport, self.writer, s.ingest)
        self.sources = SidecarSources(s, self.metrics)
        self.ingress = Ingress(self.transport, self.metrics, self.sources.processors())
        self.receiver = ReceiverService(s.receiver, self.ingress, grace=s.shutdown_grace_s)
        from monitor.checks.admin import AdminServer
        from monitor.checks.runner import CheckRunner, CheckScheduler
        self.check_runner = CheckRunner(self.store, s)
        checks_on = s.checks.enabled and _extra_or_say("checks", "the scheduled checks")
        self.scheduler = CheckScheduler(self.check_runner, s.checks.interval_s,
                                        first_delay_s=min(30.0, s.checks.interval_s)) if checks_on else None
        self.alerts = _alerts(self.store, s, self.metrics, self.scheduler)
        self.admin = AdminServer(self.check_runner, s.checks.admin_host, s.checks.admin_port, self.alerts)
        self.dashboard = None
        if s.dashboard.enabled and _extra_or_say("dashboards", "the dashboards"):
            # Streamlit in a thread of this process, over this store (one chdb handle)
            from monitor.dashboard.server import DashboardServer
            self.dashboard = DashboardServer(s.dashboard.host, s.dashboard.port, self.store, s.dashboard.refresh_s)

    def start(self) -> None:
        import asyncio
        self._serve_metrics()
        if self.settings.proxy.upstream:
            self._warm_up()
        self.ingest.start()
        self.receiver.start()
        if self.dashboard is not None:
            log.info("dashboard on %s", self.dashboard.start())
        self.sources.start(self.ingress, self.receiver.loop)
        port = asyncio.run_coroutine_threadsafe(self.admin.start(), self.receiver.loop).result(30)
        log.info("admin endpoint for `monitor check` / `monitor baseline` on http://%s:%d",
                 self.settings.checks.admin_host, port)
        if self.alerts is not None:
            self.alerts.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def _warm_up(self) -> None:
        """Before the capture proxy serves: load what the checks and pages import later.

        The proxy shares this process's interpreter. Importing torch holds the GIL for up to ~0.75 s
        in one stretch (sentence-transformers ~0.45 s, evidently ~0.2 s, measured here), which would
        land on the proxied requests in flight at the first check run or page view. Loaded now,
        later runs only compete for CPU in slices of the interpreter's switch interval."""
        import importlib
        import time
        t0 = time.monotonic()
        what = []
        if self.scheduler is not None:
            log.info("loading the checks' libraries and models before the proxy serves (torch, "
                     "sentence-transformers: a few seconds)")
            self.check_runner.warm_up()
            what.append("checks")
        if self.dashboard is not None:
            for module in ("pandas", "plotly.express"):
                importlib.import_module(module)
            what.append("dashboard")
        if what:
            log.info("warmed up %s in %.1fs", " and ".join(what), time.monotonic() - t0)

    def stop(self) -> None:
        import asyncio
        log.info("stopping: finishing requests in flight and flushing %d queued", self.transport.pending())
        if self.dashboard is not None:  # first: no page queries while the store closes
            self.dashboard.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.alerts is not None:
            self.alerts.stop(timeout=self.settings.shutdown_grace_s)
        if self.receiver.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.admin.stop(), self.receiver.loop).result(30)
        self.sources.stop()
        self.receiver.stop()
        if not self.ingest.stop():
            log.error("the store did not take the last batch; its senders were answered 503 and will retry")
        self.store.close()
        self.metrics.close()
        log.info("stopped; everything accepted was written")


class Sidecar(App):
    """Receiver -> durable spool -> Kafka: ``monitor sidecar --kafka HOST:PORT``."""

    role = "sidecar"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        s = settings
        self.spool = Spool(s.spool.path, s.spool.max_bytes, self.metrics, s.spool.synchronous,
                           s.receiver.retry_after_s)
        self.transport = KafkaTransport(s.kafka, self.spool, self.metrics)
        self.sources = SidecarSources(s, self.metrics)
        self.ingress = Ingress(self.transport, self.metrics, self.sources.processors())
        self.receiver = ReceiverService(s.receiver, self.ingress, grace=s.shutdown_grace_s)
        log.info("spool: %s (limit %d MiB)", self.spool.path.resolve(), s.spool.max_bytes // (1024 * 1024))

    def start(self) -> None:
        self._serve_metrics()
        self.transport.start()
        self.receiver.start()
        self.sources.start(self.ingress, self.receiver.loop)
        log.info("forwarding to Kafka at %s (topics %s, %s, %s)", ",".join(self.settings.kafka.bootstrap_servers),
                 self.settings.kafka.spans_topic, self.settings.kafka.metrics_topic, self.settings.kafka.logs_topic)

    def stop(self) -> None:
        self.sources.stop()
        self.receiver.stop()
        # What the spool holds is durable: forward for a moment more, the rest goes at the next start.
        self.transport.close(timeout=self.settings.shutdown_grace_s)
        self.metrics.close()


class Ingest(App):
    """Kafka consumer group member -> ClickHouse: ``monitor ingest --kafka ... --clickhouse URL``."""

    default_metrics_port = 9465
    role = "ingest"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        s = settings
        self.store = _open_store(s)
        self.writer = Writer(self.store, self.metrics)
        self.consumer = KafkaIngest(s.kafka, s.ingest, self.writer, self.metrics)

    def start(self) -> None:
        self._serve_metrics()
        self.consumer.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.store.close()
        self.metrics.close()


class ChecksService(App):
    """The check scheduler as a service of its own: ``monitor checks --clickhouse URL``."""

    default_metrics_port = 9467
    role = "checks"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from monitor.checks.runner import CheckRunner, CheckScheduler
        self.store = _open_store(settings)
        self.scheduler = CheckScheduler(CheckRunner(self.store, settings), settings.checks.interval_s,
                                        first_delay_s=1.0)
        self.alerts = _alerts(self.store, settings, self.metrics, self.scheduler)

    def start(self) -> None:
        self._serve_metrics()
        if self.alerts is not None:
            self.alerts.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        if self.alerts is not None:
            self.alerts.stop()
        self.store.close()
        self.metrics.close()


def _extra_or_say(extra: str, what: str) -> bool:
    """True when ``extra`` is installed; else one warning line that says how to get ``what``."""
    from monitor.extras import install_line, installed

    if installed(extra):
        return True
    log.warning("%s are off: they need the %s extra (%s)", what, extra, install_line(extra))
    return False


def _alerts(store: Store, settings: Settings, metrics: SelfMetrics, scheduler):
    """The alert service when rules or channels are configured, fed by the scheduler's runs."""
    from monitor.alerts.service import AlertService

    if not AlertService.wanted(settings):
        return None
    service = AlertService(store, settings, metrics)
    if scheduler is not None:
        scheduler.add_listener(service.on_report)
    return service


def run_until_signal(app) -> None:
    """Start ``app``, wait for SIGINT/SIGTERM, stop it. A second Ctrl-C exits at once.

    A signal that arrives while ``app.start()`` still runs (a first-use model training, a warm-up)
    interrupts it: what already started is stopped the same way, so Ctrl-C is answered within
    seconds whatever the process is doing, and what was accepted is still written.
    """
    stop = threading.Event()
    hits: list[int] = []
    starting = [True]

    def _handler(signum, _frame):
        hits.append(signum)
        if len(hits) > 1:
            log.error("second interrupt: exiting without flushing")
            raise SystemExit(130)
        log.info("received %s; shutting down (Ctrl-C again to force)", signal.Signals(signum).name)
        stop.set()
        if starting[0]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    try:
        app.start()
    except KeyboardInterrupt:
        starting[0] = False
        log.info("interrupted while starting; stopping what had started")
        app.stop()
        return
    except BaseException:
        starting[0] = False
        app.stop()
        raise
    starting[0] = False
    if stop.is_set():  # the signal came between start() returning and the flag above
        app.stop()
        return
    log.info("ready; Ctrl-C to stop")
    while not stop.wait(1.0):
        pass
    app.stop()
