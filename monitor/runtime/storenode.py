"""The analysis plane of ``monitor up``: the process that owns the chdb directory.

chdb allows one process per data directory, so this one process does
everything that reads or writes the store: ingest (draining the data plane's
spool), the check scheduler, alerts, the admin endpoint ``monitor check`` /
``monitor baseline`` talk to, and the dashboards. None of it shares an
interpreter with the receiver or the capture proxy.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from monitor.auth import secret_value
from monitor.config import IngestSettings, Settings
from monitor.ingest.prepare import PrepareWorkers
from monitor.ingest.spool_source import SpoolIngest
from monitor.ingest.stage import IngestStage
from monitor.selfmetrics import SelfMetrics
from monitor.store.client import Store
from monitor.store.writer import Writer
from monitor.transport.spool import Spool

__all__ = ["StoreNode", "extra_or_say"]

log = logging.getLogger("monitor")


def extra_or_say(extra: str, what: str) -> bool:
    """True when ``extra`` is installed; else one warning line that says how to get ``what``."""
    from monitor.extras import install_line, installed

    if installed(extra):
        return True
    log.warning("%s are off: they need the %s extra (%s)", what, extra, install_line(extra))
    return False


class StoreNode:
    def __init__(self, settings: Settings, metrics: SelfMetrics, store: Store):
        from monitor.checks.runner import CheckRunner, CheckScheduler
        from monitor.runtime.admin import AdminServer, server_token

        s = settings
        self.settings = settings
        self.metrics = metrics
        self.store = store
        # the spool's figures are the pipeline's to report (it writes it); this process only drains it
        self.spool = Spool(s.embedded_spool_path(), s.spool.max_bytes, SelfMetrics(), s.spool.synchronous,
                           s.receiver.retry_after_s)
        self.stage = IngestStage(Writer(store, metrics), metrics, quality=s.ingest.quality,
                                 retry_max_s=s.ingest.retry_backoff_max_s, workers=ingest_workers(s.ingest))
        self.ingest = SpoolIngest(self.spool, self.stage, s.ingest, s.kafka.signal_of)
        self.check_runner = CheckRunner(store, s.checks)
        checks_on = s.checks.enabled and extra_or_say("checks", "the scheduled checks")
        self.scheduler = CheckScheduler(self.check_runner, s.checks.interval_s,
                                        first_delay_s=min(30.0, s.checks.interval_s)) if checks_on else None
        self.alerts = alerts_service(store, s, metrics, self.scheduler)
        self._admin_token = server_token(s)
        self._token_file = None
        self.admin = AdminServer(self.check_runner, s.checks.admin_host, s.checks.admin_port, self.alerts,
                                 token=self._admin_token, metrics=metrics)
        self.admin.pending = self.ingest.pending  # an erasure says what was not stored yet (records governance)
        self.dashboard = None
        if s.dashboard.enabled and extra_or_say("dashboards", "the dashboards"):
            # Streamlit in a thread of this process, over this store (one chdb handle)
            from monitor.webui.server import DashboardServer
            self.dashboard = DashboardServer(s.dashboard.host, s.dashboard.port, store, s.dashboard.refresh_s,
                                             token=secret_value(s.dashboard.auth_token), metrics=metrics,
                                             prefetch_s=s.dashboard.prefetch_s)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="monitor-admin", daemon=True)

    def start(self) -> None:
        self.ingest.start()
        self._loop_thread.start()
        from monitor.runtime.admin import publish_token

        def publish(bound: int) -> None:  # before the endpoint answers anyone: the CLI finds the token with the port
            self._token_file = publish_token(self.settings, bound, self._admin_token)

        port = asyncio.run_coroutine_threadsafe(self.admin.start(on_bound=publish), self._loop).result(30)
        log.info("admin endpoint for `monitor check` / `monitor baseline` on http://%s:%d (token %s)",
                 self.settings.checks.admin_host, port,
                 f"in {self._token_file}" if self._token_file else "from checks.admin_token")
        if self.dashboard is not None:
            log.info("dashboard on %s", self.dashboard.start())
        if self.alerts is not None:
            self.alerts.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def warm_up(self) -> None:
        """Load what the checks and pages import later (torch, evidently, pandas...) now."""
        import importlib
        import time

        t0 = time.monotonic()
        what = []
        if self.scheduler is not None:
            log.info("loading the checks' libraries and models (torch, sentence-transformers: a few seconds)")
            self.check_runner.warm_up()
            what.append("checks")
        if self.dashboard is not None:
            for module in ("pandas", "monitor.webui.charts"):
                importlib.import_module(module)
            what.append("dashboard")
        if what:
            log.info("warmed up %s in %.1fs", " and ".join(what), time.monotonic() - t0)

    def stop(self) -> None:
        """Pages and checks first (no reads while the store closes), then drain the spool briefly."""
        grace = self.settings.shutdown_grace_s
        if self.dashboard is not None:
            self.dashboard.stop(timeout=grace)
        if self.scheduler is not None:
            self.scheduler.stop(timeout=grace)
        else:
            self.check_runner.stop()
        if self.alerts is not None:
            self.alerts.stop(timeout=grace)
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.admin.stop(), self._loop).result(10)
            except Exception:
                log.exception("the admin endpoint did not stop cleanly")
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._token_file is not None:
            from monitor.runtime.admin import unpublish_token
            unpublish_token(self._token_file, self._admin_token)
        left = self.ingest.pending()
        if not self.ingest.stop(drain_s=grace):
            log.warning("ingest did not finish its batch; it is redone at the next start")
        self.stage.close()
        after = self.ingest.pending()
        if after:
            log.info("stopping with %d requests in the spool (of %d when asked to stop); they are stored at the "
                     "next start", after, left)
        else:
            log.info("stopped; everything accepted was written")
        self.spool.close()


def ingest_workers(settings: IngestSettings) -> PrepareWorkers | None:
    """The processes that prepare ingest's batches beside the one writing them (``ingest.workers``)."""
    from monitor.runtime.heap import settle_heap

    count = settings.worker_count()
    if not count:
        return None
    log.info("ingest prepares batches in %d worker process%s (ingest.workers)", count, "es" if count > 1 else "")
    return PrepareWorkers(count, settings.quality, on_start=settle_heap)


def alerts_service(store: Store, settings: Settings, metrics: SelfMetrics, scheduler):
    """The alert service when rules or channels are configured, fed by the scheduler's runs."""
    from monitor.alerts.service import AlertService

    if not AlertService.wanted(settings.alerts):
        return None
    service = AlertService(store, settings.alerts, settings.checks.min_samples, metrics)
    if scheduler is not None:
        scheduler.add_listener(service.on_report)
    return service
