"""``monitor demo``: ``monitor up`` in front of the reference model server, with demo traffic
that changes one thing per phase, and the checks showing that each change is caught.

The reference server traces to the embedded receiver like vLLM would, the
capture proxy sits in front of it, and a traffic generator plays the phases of
:mod:`monitor.demo.traffic`. The baseline phase is pinned as the reference;
at the end of every later phase the checks compare that phase with it and the
log says what was caught (or missed), and where to see it. A local webhook
receiver stands in for the team's alert endpoint, so fired alerts show up too.

The demo runs the checks with strict thresholds (p < 0.001 for the drift and
quality tests instead of 0.05 / 0.01), because its phases are short: a
handful of requests per phase, where the default would flag noise in the
control phase now and then. The injected changes are far larger than that.
"""

from __future__ import annotations

import fnmatch
import logging
import secrets
import threading
import time
from datetime import datetime

from monitor.config import AlertChannel, AlertRule, Settings
from monitor.runtime.apps import Embedded

__all__ = ["Demo"]

log = logging.getLogger("monitor.demo")

DEMO_ALPHA = 0.001
"""p-value threshold of the demo's drift and quality tests (see the module docstring)."""


class Demo:
    def __init__(self, settings: Settings, server_port: int = 8000, rate: float = 2.0,
                 phase_seconds: float = 60.0, loop: bool = True):
        from monitor.extras import require
        require("demo", "`monitor demo`")
        from monitor.demo.server import DemoServer
        from monitor.demo.webhook import WebhookReceiver

        r = settings.receiver
        self.server = DemoServer(host="127.0.0.1", port=server_port,
                                 otlp_endpoint=f"http://{'127.0.0.1' if r.host == '0.0.0.0' else r.host}:{r.grpc_port}")
        settings.proxy.upstream = f"http://127.0.0.1:{server_port}"
        self.webhook = WebhookReceiver(secrets.token_hex(16))
        _demo_checks(settings, self.webhook)
        self.settings = settings
        self.rate, self.phase_seconds, self.loop = rate, phase_seconds, loop
        self.embedded: Embedded | None = None
        self.traffic = None
        self.model = ""
        self.baseline: tuple[datetime, datetime] | None = None
        self.verdicts: dict[str, tuple[bool, str]] = {}
        """Phase name -> (as expected?, one line saying what the checks found)."""
        self.done = threading.Event()

    def start(self) -> None:
        from monitor.demo.traffic import TrafficGenerator

        t0 = time.monotonic()
        self.webhook.start()
        self.embedded = Embedded(self.settings)
        self.embedded.start()
        self.server.start()  # trains the tiny model on first use (Ctrl-C stops it), then loads it from the cache
        self.model = self.server.engine.model_name
        log.info("demo: loading the checks' models before the first phase")
        self.embedded.check_runner.warm_up()
        assert self.embedded.proxy is not None
        proxy = f"http://{self.settings.proxy.host}:{self.embedded.proxy.port}"
        self.traffic = TrafficGenerator(proxy, self.server.url, self.model, rate=self.rate,
                                        phase_seconds=self.phase_seconds, loop=self.loop,
                                        on_phase_end=self._phase_ended, on_done=self._summary)
        self.traffic.start()
        log.info("demo ready in %.0fs: reference server %s, capture proxy %s (try: curl %s/v1/models); "
                 "data in %s; alerts go to the local webhook receiver %s", time.monotonic() - t0, self.server.url,
                 proxy, proxy, self.settings.store.chdb_path(), self.webhook.url)
        if self.embedded.dashboard is not None:
            log.info("demo dashboards: open %s", self.embedded.dashboard.url)

    # -- the end of each phase ----------------------------------------------------------------

    def _phase_ended(self, phase, start: datetime, end: datetime) -> None:
        from monitor.checks.windows import pin_baseline

        assert self.embedded is not None
        if phase.name == "baseline":
            pin_baseline(self.embedded.store, self.model, start, end, note="monitor demo: the baseline phase")
            self.baseline = (start, end)
            log.info("demo: pinned the baseline phase (%s .. %s) as the reference of %s; every later phase is "
                     "checked against it", start.strftime("%H:%M:%S"), end.strftime("%H:%M:%S"), self.model)
            return
        self._settle(end)
        report = self.embedded.check_runner.run(model=self.model, window=f"{(end - start).total_seconds():.3f}s",
                                                reference="baseline", now=end)
        if self.embedded.alerts is not None:
            self.embedded.alerts.on_report(report)
        failed = [r for _, r in report.failed()]
        checked = sum(1 for s in report.scopes for r in s.results if r.status in ("ok", "fail", "warn"))
        if not phase.expect:
            ok = not failed
            line = (f"phase {phase.name}: nothing flagged ({checked} checks ok) - as it should be" if ok else
                    f"phase {phase.name}: FAILED: flagged {_names(failed)} although it repeats the baseline")
        else:
            caught = [r for r in failed if any(r.check == c and fnmatch.fnmatchcase(r.metric, m)
                                               for c, m in phase.expect)]
            ok = bool(caught)
            if ok:
                line = f"phase {phase.name}: caught {_describe(caught[0])}"
                others = [r for r in failed if r not in caught]
                if others:
                    line += f"; also flagged {_names(others)}"
                line += f" ({phase.shows})"
            else:
                line = (f"phase {phase.name}: MISSED: expected {' or '.join(f'{c}/{m}' for c, m in phase.expect)}"
                        f" to fail; flagged {_names(failed) or 'nothing'}")
        self.verdicts[phase.name] = (ok, line)
        (log.info if ok else log.warning)("demo: %s", line)

    def _settle(self, end: datetime, timeout: float = 10.0) -> None:
        """Wait until the phase's last requests are stored (the proxy waits for the engine's span)."""
        assert self.embedded is not None
        deadline = time.monotonic() + timeout
        capture = self.embedded.pipeline.capture
        while time.monotonic() < deadline:
            if (capture is None or capture.waiting() == 0) and self.embedded.pending() == 0:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the last batch's inserts

    def _summary(self) -> None:
        expected = [n for n, (_, line) in self.verdicts.items() if "caught" in line or "MISSED" in line]
        missed = [n for n, (ok, _) in self.verdicts.items() if not ok and n != "control"]
        control_ok = self.verdicts.get("control", (False, ""))[0]
        if not missed and control_ok:
            log.info("demo: every injected change was caught (%d of %d) and the control phase stayed clean; "
                     "`monitor check --window 2m` runs them again, the Drift page shows them", len(expected),
                     len(expected))
        elif missed:
            log.warning("demo: MISSED %s; see the lines above", ", ".join(missed))
        else:
            log.warning("demo: control phase FAILED: %s", self.verdicts.get("control", (False, "not run"))[1])
        self.done.set()

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
            log.info("demo traffic: %d requests sent, %d failed", self.traffic.sent, self.traffic.errors)
        t0 = time.monotonic()
        self.server.stop()  # first: its last spans reach the receiver while it still listens
        if self.embedded is not None:
            self.embedded.stop()
        self.webhook.stop()
        log.debug("demo stopped in %.1fs", time.monotonic() - t0)


def _demo_checks(settings: Settings, webhook) -> None:
    """The checks run at the end of each phase (not on a schedule), strictly, and alert a local receiver."""
    c = settings.checks
    c.enabled = False
    c.min_samples = min(c.min_samples, 20)
    c.feature_alpha = DEMO_ALPHA
    c.quality_alpha = DEMO_ALPHA
    c.semantic.alpha = 2 * DEMO_ALPHA
    c.semantic.permutations = max(c.semantic.permutations, 2000)  # p can reach 1/2001 < alpha
    a = settings.alerts
    a.channels["demo-webhook"] = AlertChannel(type="webhook", url=webhook.url, secret=webhook.secret, timeout_s=5)
    a.retry.initial_s = 1.0
    for name, check, metric in (("demo-semantic-drift", "semantic_drift", "prompt"),
                                ("demo-prompt-drift", "feature_drift", "prompt_*"),
                                ("demo-latency-drift", "feature_drift", "*_ms"),
                                ("demo-refusals", "quality", "refusal_rate")):
        a.rules.append(AlertRule(name=name, check=check, metric=metric, severity="warning", cooldown_s=0,
                                 channels=["demo-webhook"]))


def _describe(r) -> str:
    what = f"{r.check}/{r.metric}"
    if r.p_value is not None:
        what += f" (p={r.p_value:.2g})"
    clusters = (r.details or {}).get("clusters") or []
    grew = [cl for cl in clusters if cl.get("change", 0) > 0]
    if grew:
        example = (grew[0].get("examples") or [""])[0][:80]
        what += f"; the cluster that grew most: '{grew[0].get('label', '')}', e.g. \"{example}\""
    return what


def _names(results) -> str:
    return ", ".join(sorted({f"{r.check}/{r.metric}" for r in results}))
