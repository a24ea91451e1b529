"""Run every check for every scope, write the results, and (as a service) do it on a schedule."""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from monitor.checks.base import Check, CheckContext, Result, Scope, Window, worst
from monitor.checks.results import write_results
from monitor.checks.windows import current_window, reference_window, scopes
from monitor.errors import Cancelled

if TYPE_CHECKING:
    from monitor.config import ChecksSettings

__all__ = ["CheckRunner", "RunReport", "CheckScheduler", "default_checks"]

log = logging.getLogger("monitor.checks")


def default_checks(settings: ChecksSettings) -> list[Check]:
    """Feature drift, quality and SLO always; semantic drift and abuse when enabled (they load torch);
    the canary when ``checks.canary`` names a candidate. ``settings``: the ``checks`` section.
    Raises :class:`~monitor.extras.MissingExtra` without the ``checks`` extra."""
    from monitor.extras import require
    require("checks", "the check runner")
    from monitor.checks.quality_rates import QualityCheck
    from monitor.checks.slo import SloCheck
    from monitor.checks.feature_drift import FeatureDriftCheck

    checks: list[Check] = [FeatureDriftCheck(settings), QualityCheck(), SloCheck()]
    if settings.semantic.enabled:
        from monitor.checks.semantic import SemanticDriftCheck
        checks.append(SemanticDriftCheck(settings))
    if settings.abuse.enabled:
        from monitor.checks.abuse import AbuseCheck
        checks.append(AbuseCheck(settings))
    if settings.canary.candidate:
        from monitor.checks.canary import CanaryCheck
        checks.append(CanaryCheck(settings.canary))
    return checks


@dataclass
class ScopeReport:
    scope: Scope
    current: Window
    reference: Window
    results: list[Result] = field(default_factory=list)


@dataclass
class RunReport:
    run_id: str
    at: datetime
    scopes: list[ScopeReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return worst([r.status for s in self.scopes for r in s.results])

    def failed(self) -> list[tuple[Scope, Result]]:
        return [(s.scope, r) for s in self.scopes for r in s.results if r.status == "fail"]

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "at": self.at.isoformat(), "status": self.status, "seconds": self.seconds,
            "scopes": [{
                "model": s.scope.model, "group": s.scope.label(), "current": s.current.iso(),
                "reference": s.reference.iso(), "reference_kind": s.reference.label,
                "results": [{k: getattr(r, k) for k in ("check", "metric", "status", "value", "reference_value",
                                                       "threshold", "p_value", "method", "current_n",
                                                       "reference_n", "details")} for r in s.results],
            } for s in self.scopes],
        }


class CheckRunner:
    def __init__(self, store, settings: ChecksSettings, checks: list[Check] | None = None):
        self.store = store
        self.settings = settings
        """The ``checks`` section of the settings (the only one a run reads)."""
        self._checks = checks
        self._lock = threading.Lock()
        self.cancel = threading.Event()
        """Set by :meth:`stop`: a run in progress ends at its next unit of work (within about a second)."""

    def stop(self) -> None:
        """Make a run in progress (and any later one) end early; what it finished stays written."""
        self.cancel.set()

    @property
    def checks(self) -> list[Check]:
        if self._checks is None:
            self._checks = default_checks(self.settings)
        return self._checks

    def warm_up(self) -> float:
        """Load every check's imports and models now (see :class:`Check`); returns the seconds spent."""
        t0 = time.monotonic()
        for check in self.checks:
            warm = getattr(check, "warm_up", None)
            if warm is not None:
                try:
                    warm()
                except Exception:  # the check reports its own failure when it runs
                    log.exception("warming up the %s check failed", check.name)
        return time.monotonic() - t0

    def run(self, model: str | None = None, window: str | None = None, reference: str | None = None,
            now: datetime | None = None, only: list[str] | None = None, write: bool = True) -> RunReport:
        """One pass over every scope with events in the current window. Thread-safe (serialised)."""
        with self._lock:
            return self._run(model, window, reference, now, only, write)

    def _run(self, model, window, reference, now, only, write) -> RunReport:
        c = self.settings
        t0 = time.monotonic()
        at = now or datetime.now(timezone.utc)
        report = RunReport(uuid.uuid4().hex[:16], at)
        cur = current_window(window or c.window, at)
        for scope in scopes(self.store, cur, c.group_by, model):
            ref, _kind = reference_window(self.store, scope, cur, reference or c.reference)
            ctx = CheckContext(self.store, scope, cur, ref, c, cancel=self.cancel)
            sr = ScopeReport(scope, cur, ref)
            for check in self.checks:
                if only and check.name not in only:
                    continue
                try:
                    ctx.check_cancelled()
                    results = check.run(ctx)
                except Cancelled:
                    log.info("checks run %s stopped early (shutting down); %d results written", report.run_id,
                             sum(len(s.results) for s in report.scopes) + len(sr.results))
                    report.scopes.append(sr)
                    report.seconds = time.monotonic() - t0
                    raise
                except Exception as exc:  # one broken check must not hide the others
                    log.exception("check %s failed on %s", check.name, scope)
                    results = [Result(check=check.name, metric="error", status="warn",
                                      details={"error": f"{type(exc).__name__}: {exc}",
                                               "traceback": traceback.format_exc(limit=5)})]
                sr.results.extend(results)
                if write and results:
                    write_results(self.store, report.run_id, at, ctx, results)
            report.scopes.append(sr)
        report.seconds = time.monotonic() - t0
        fails = report.failed()
        log.info("checks run %s: %d scopes, %d results, %d failing (%.1fs)%s", report.run_id, len(report.scopes),
                 sum(len(s.results) for s in report.scopes), len(fails), report.seconds,
                 "".join(f"\n  FAIL {s.model}{'/' + s.label() if s.group else ''} {r.check}:{r.metric}"
                         for s, r in fails[:20]))
        return report


class CheckScheduler:
    """Runs :meth:`CheckRunner.run` every ``checks.interval_s`` in a daemon thread.

    Listeners (:meth:`add_listener`, e.g. the alert manager) get each scheduled run's report, in
    the scheduler's thread; one that raises is logged and does not stop the others or the schedule.
    """

    def __init__(self, runner: CheckRunner, interval_s: float, first_delay_s: float = 30.0):
        self.runner = runner
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: RunReport | None = None
        self._listeners: list[Callable[[RunReport], None]] = []

    def add_listener(self, listener: Callable[[RunReport], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="monitor-checks", daemon=True)
        self._thread.start()
        log.info("checks every %gs (window %s, reference %s)", self.interval_s, self.runner.settings.window,
                 self.runner.settings.reference)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop scheduling and end a run in progress early (its finished results stay written)."""
        self._stop.set()
        self.runner.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("a check run did not stop within %gs; leaving it behind", timeout)

    def _loop(self) -> None:
        if self._stop.wait(self.first_delay_s):
            return
        while not self._stop.is_set():
            try:
                self.last = self.runner.run()
            except Cancelled:
                return
            except Exception:
                log.exception("scheduled checks failed; next try in %gs", self.interval_s)
            else:
                for listener in self._listeners:
                    try:
                        listener(self.last)
                    except Exception:
                        log.exception("check run listener %r failed", listener)
            if self._stop.wait(self.interval_s):
                return
