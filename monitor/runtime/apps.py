"""The ways to run, each a start()/stop() pair over the same components.

- :class:`Up` (``monitor up``): a supervisor over the store process (chdb, ingest from the
  spool, checks, alerts, admin, dashboards), the pipeline process (receiver, capture intake,
  processors, the spool) and the capture proxy's process(es). See :mod:`monitor.runtime.supervisor`.
- :class:`Embedded`: the same components in one process (``monitor up --single-process``, tests).
- :class:`Sidecar` (``monitor sidecar``): the pipeline producing to Kafka (and the proxy's
  process(es) when ``--upstream`` is set).
- :class:`Ingest` (``monitor ingest``): Kafka consumer group member -> ClickHouse.
- :class:`ChecksService` (``monitor checks``) and :class:`DashboardApp` (``monitor dashboard``).

Start order is sink first, source last; stop order is the reverse, so what a
source accepted is always drained into its sink before the sink stops.
"""

from __future__ import annotations

import logging
import signal
import time

from monitor.auth import check_exposure, listeners, secret_value
from monitor.config import Settings
from monitor.selfmetrics import SelfMetrics
from monitor.store.client import Store
from monitor.store.migrate import check_schema, migrate

__all__ = ["App", "Up", "Embedded", "Sidecar", "Ingest", "ChecksService", "DashboardApp", "run_until_signal",
           "open_store"]

log = logging.getLogger("monitor")


class App:
    default_metrics_port = 9464
    role = ""
    serves: tuple[str, ...] = ()
    """Listeners besides /metrics (``receiver``, ``proxy``, ``dashboard``), checked at start: one
    bound off loopback without authentication stops the command (:func:`monitor.auth.check_exposure`)."""

    def __init__(self, settings: Settings):
        check_exposure(listeners(settings, receiver="receiver" in self.serves, proxy="proxy" in self.serves,
                                 dashboard="dashboard" in self.serves and settings.dashboard.enabled))
        self.settings = settings
        self.metrics = SelfMetrics(self.role)
        self.metrics_port: int | None = None

    def _serve_metrics(self) -> None:
        t = self.settings.telemetry
        port = t.metrics_port if t.metrics_port is not None else self.default_metrics_port
        token = secret_value(t.auth_token)
        self.metrics_port = self.metrics.serve(t.metrics_host, port, token)
        log.info("self-metrics on http://%s:%d/metrics%s", t.metrics_host, self.metrics_port,
                 " (bearer token)" if token else "")

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


def open_store(settings: Settings, readonly: bool = False) -> Store:
    """The store, with its schema applied (or checked, with ``store.apply_schema: false``)."""
    store = Store(settings.store, readonly=readonly)
    if readonly:
        return store
    try:
        if settings.store.apply_schema:
            migrate(store, settings.store.retention_days, settings.retention)
        else:
            check_schema(store)
    except BaseException:  # a start that stops here must not leave the engine open (chdb: one path per process)
        store.close()
        raise
    from monitor.store.retention import describe as _retention
    log.info("store: %s, retention %s", store.describe(), _retention(settings.store.retention_days, settings.retention))
    return store


def _proxy_specs(settings: Settings, spool_path):
    """The proxy children; fixes what they must agree on with the pipeline before the settings are
    handed out: the capture socket, and one port for every worker."""
    from monitor.runtime.pipeline import capture_socket_path
    from monitor.runtime.supervisor import ChildSpec

    p = settings.proxy
    if not p.upstream:
        return []
    p.capture_socket = str(capture_socket_path(settings, spool_path))
    if p.workers > 1:  # they share one port (SO_REUSEPORT): pick it now when any would do
        if p.port == 0:
            import socket
            with socket.socket() as s:
                s.bind((p.host, 0))
                p.port = s.getsockname()[1]
    return [ChildSpec("proxy", i, ready_timeout_s=60) for i in range(p.workers)]


class Up(App):
    """``monitor up``: the store, pipeline and proxy processes under one command."""

    role = "up"
    serves = ("receiver", "proxy", "dashboard")

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from monitor.runtime.supervisor import ChildSpec, Supervisor

        proxies = _proxy_specs(settings, settings.embedded_spool_path())
        self.supervisor = Supervisor(settings, [ChildSpec("store"), ChildSpec("pipeline", ready_timeout_s=120),
                                                *proxies])
        self.metrics.registry.register(self.supervisor.collector())

    def start(self) -> None:
        self._serve_metrics()
        self.supervisor.start()
        proxy = self.supervisor.info("proxy")
        if proxy:
            log.info("capture proxy: http://%s:%d -> %s (%d worker process%s)", self.settings.proxy.host,
                     proxy.get("port", 0), self.settings.proxy.upstream, self.settings.proxy.workers,
                     "es" if self.settings.proxy.workers > 1 else "")

    def stop(self) -> None:
        log.info("stopping: the proxy, then the pipeline, then the store (everything accepted is written)")
        self.supervisor.stop()
        self.metrics.close()
        log.info("stopped")


class Embedded(App):
    """The store node, the pipeline and the proxy in one process (``monitor up --single-process``; tests).

    Same components and data path as :class:`Up` (receiver -> spool -> ingest -> chdb), but one
    interpreter: a heavy check or page competes with the proxy for it."""

    role = "up"
    serves = ("receiver", "proxy", "dashboard")

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from monitor.runtime.pipeline import Pipeline
        from monitor.runtime.storenode import StoreNode

        self.store = open_store(settings)
        self.node = StoreNode(settings, self.metrics, self.store)
        self.pipeline = Pipeline(settings, self.metrics, embedded=True)
        self.proxy = None
        if settings.proxy.upstream:
            from monitor.runtime.proxynode import InProcessProxy
            assert self.pipeline.capture is not None
            self.proxy = InProcessProxy(settings, self.metrics, self.pipeline.capture.on_frame)
        # the names tests and the demo reach for
        self.check_runner = self.node.check_runner
        self.scheduler = self.node.scheduler
        self.alerts = self.node.alerts
        self.dashboard = self.node.dashboard
        self.receiver = self.pipeline.receiver
        self.sources = self.pipeline.sources

    def start(self) -> None:
        self._serve_metrics()
        self.node.start()
        self.pipeline.start()
        if self.proxy is not None:
            self.proxy.start()

    def pending(self) -> int:
        """Requests accepted and not yet stored."""
        return self.node.ingest.pending()

    def stop(self) -> None:
        log.info("stopping: finishing requests in flight and storing %d spooled", self.pending())
        if self.proxy is not None:
            self.proxy.stop()
        self.pipeline.stop()
        self.node.stop()
        self.store.close()
        self.metrics.close()
        log.info("stopped; everything accepted was written")


class Sidecar(App):
    """Receiver -> durable spool -> Kafka: ``monitor sidecar --kafka HOST:PORT`` (plus the proxy)."""

    role = "sidecar"
    serves = ("receiver", "proxy")

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.supervisor = None
        self.pipeline = None
        if settings.proxy.upstream:
            from monitor.runtime.supervisor import ChildSpec, Supervisor
            proxies = _proxy_specs(settings, settings.spool.path)
            self.supervisor = Supervisor(settings, [ChildSpec("sidecar", ready_timeout_s=120), *proxies],
                                         role="sidecar")
            self.metrics.registry.register(self.supervisor.collector())
        else:
            from monitor.runtime.pipeline import Pipeline
            self.pipeline = Pipeline(settings, self.metrics, embedded=False)
        self.spool = self.pipeline.spool if self.pipeline is not None else None
        """The spool, when the pipeline runs in this process (no proxy)."""

    def start(self) -> None:
        self._serve_metrics()
        if self.supervisor is not None:
            self.supervisor.start()
        else:
            assert self.pipeline is not None
            self.pipeline.start()

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        elif self.pipeline is not None:
            self.pipeline.stop()
        self.metrics.close()


class Ingest(App):
    """Kafka consumer group member -> ClickHouse: ``monitor ingest --kafka ... --clickhouse URL``."""

    default_metrics_port = 9465
    role = "ingest"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from monitor.ingest.consumer import KafkaIngest
        from monitor.runtime.storenode import ingest_workers
        from monitor.store.writer import Writer

        self.store = open_store(settings)
        self.writer = Writer(self.store, self.metrics)
        self.consumer = KafkaIngest(settings.kafka, settings.ingest, self.writer, self.metrics,
                                    workers=ingest_workers(settings.ingest))

    def start(self) -> None:
        self._serve_metrics()
        self.consumer.start()

    def stop(self) -> None:
        self.consumer.stop(timeout=self.settings.shutdown_grace_s + 5)
        self.store.close()
        self.metrics.close()


class ChecksService(App):
    """The check scheduler as a service of its own: ``monitor checks --clickhouse URL``."""

    default_metrics_port = 9467
    role = "checks"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from monitor.checks.runner import CheckRunner, CheckScheduler
        from monitor.runtime.storenode import alerts_service

        self.store = open_store(settings)
        self.scheduler = CheckScheduler(CheckRunner(self.store, settings.checks), settings.checks.interval_s,
                                        first_delay_s=1.0)
        self.alerts = alerts_service(self.store, settings, self.metrics, self.scheduler)

    def start(self) -> None:
        self._serve_metrics()
        if self.alerts is not None:
            self.alerts.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop(timeout=self.settings.shutdown_grace_s)
        if self.alerts is not None:
            self.alerts.stop(timeout=self.settings.shutdown_grace_s)
        self.store.close()
        self.metrics.close()


class DashboardApp(App):
    """``monitor dashboard --clickhouse URL``: the dashboards over a read-only store of their own."""

    default_metrics_port = 9468
    role = "dashboard"
    serves = ("dashboard",)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        from monitor.webui.server import DashboardServer

        self.store = open_store(settings, readonly=True)
        d = settings.dashboard
        self.server = DashboardServer(d.host, d.port, self.store, d.refresh_s, token=secret_value(d.auth_token),
                                      metrics=self.metrics, prefetch_s=d.prefetch_s)
        self.audit_store = None
        if d.audit_url:  # a user that may INSERT into audit_log (records governance); no CREATE DATABASE
            from monitor.config import StoreSettings
            from monitor.governance.audit import AuditLog
            self.audit_store = Store(StoreSettings(**{**settings.store.model_dump(), "url": d.audit_url}),
                                     readonly=True)
            self.server.audit_store = AuditLog(self.audit_store)

    def start(self) -> None:
        self._serve_metrics()
        log.info("store: %s (read-only)", self.store.describe())
        log.info("dashboard on %s", self.server.start())

    def stop(self) -> None:
        self.server.stop(timeout=self.settings.shutdown_grace_s)
        self.store.close()
        if self.audit_store is not None:
            self.audit_store.close()
        self.metrics.close()


def run_until_signal(app) -> None:
    """Start ``app``, wait for SIGINT/SIGTERM, stop it. A second Ctrl-C exits at once.

    A signal that arrives while ``app.start()`` still runs (a first-use model training, a warm-up)
    interrupts it: what already started is stopped the same way, so Ctrl-C is answered within
    seconds whatever the process is doing, and what was accepted is still written.
    """
    hits: list[int] = []
    starting = [True]

    def _handler(signum, _frame):
        # no threading primitive here: the handler runs in the main thread, which may hold that
        # primitive's lock at that moment (an Event's wait() waking up), and would wait for itself
        hits.append(signum)
        if len(hits) > 1:
            log.error("second interrupt: exiting without flushing")
            raise SystemExit(130)
        log.info("received %s; shutting down (Ctrl-C again to force)", signal.Signals(signum).name)
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
    if hits:  # the signal came between start() returning and the flag above
        app.stop()
        return
    log.info("ready; Ctrl-C to stop")
    from monitor.runtime.heap import settle_heap

    settle_heap()  # the children of `monitor up` do this themselves (monitor/runtime/child.py)
    while not hits:
        time.sleep(0.2)
    app.stop()

