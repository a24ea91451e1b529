"""``monitor demo``: ``monitor up`` in front of the reference model server, with demo traffic
that changes one thing per phase, and the checks showing that each change is caught.

The reference server traces to the embedded receiver like vLLM would, the
capture proxy sits in front of it, and a traffic generator plays the phases of
:mod:`monitor.demo.traffic`. The baseline phase is pinned as the reference;
at the end of every later phase the checks compare that phase with it and the
log says what was caught (or missed), and where to see it. A local webhook
receiver stands in for the team's alert endpoint, so fired alerts show up too.

Two versions of the model answer (README "Comparing models"): ``monitor-demo-tiny`` (labelled
``v1`` by a proxy route) and ``monitor-demo-tiny-v2`` on a second server: the same weights, but
its compute slowed by :data:`V2_SLOWDOWN` and a guardrail that also refuses refund and password
questions (a degraded release). A share (:data:`SHADOW_SHARE`) of the requests to v1 is shadowed
to v2, so the Compare page (and ``monitor compare --a monitor-demo-tiny --b
monitor-demo-tiny-v2``) shows the difference on identical prompts; the log sums it up at the end.
The checks of each phase look at v1 only.

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

from monitor.config import AlertChannel, AlertRule, FeatureOverride, ProxyRoute, Settings, ShadowRule
from monitor.runtime.apps import Embedded

__all__ = ["Demo"]

log = logging.getLogger("monitor.demo")

DEMO_ALPHA = 0.001
DEMO_TIMING_MIN_CHANGE = 0.5
DEMO_ITL_MIN_CHANGE = 2.0
"""Client-seen time per output token of the demo's tiny CPU model (~1.4 ms a token) is below what
the proxy can time: about half of its streams reach the proxy in one read (no value) and the rest
in a few, so the median moves with how reads coalesce under the machine's load (by 84 % in a
control phase once). Only a tripling counts in the demo; its latency phase is caught on TTFT."""
TIMING_FEATURES = ("ttft_ms", "latency_ms", "itl_ms", "queue_ms", "prefill_ms", "decode_ms", "tokens_per_second")
V2 = "monitor-demo-tiny-v2"
"""The demo's candidate version: the served name of the second server."""
V2_SLOWDOWN = 1.6
V2_BLOCKED = ("refund", "password")
"""Topics the v2 guardrail refuses on top of the reference server's (a degraded release)."""
SHADOW_SHARE = 0.2
"""p-value threshold of the demo's drift and quality tests (see the module docstring)."""


class Demo:
    def __init__(self, settings: Settings, server_port: int = 8000, rate: float = 2.0,
                 phase_seconds: float = 60.0, loop: bool = True):
        from monitor.extras import require
        require("demo", "`monitor demo`")
        from monitor.demo.server import DEFAULT_BLOCKED_TOPICS, DemoServer
        from monitor.demo.webhook import WebhookReceiver

        r = settings.receiver
        self.server = DemoServer(host="127.0.0.1", port=server_port,
                                 otlp_endpoint=f"http://{'127.0.0.1' if r.host == '0.0.0.0' else r.host}:{r.grpc_port}")
        settings.proxy.upstream = f"http://127.0.0.1:{server_port}"
        self.v2 = DemoServer(host="127.0.0.1", port=_free_port(), otlp_endpoint=self.server.app_kw["otlp_endpoint"],
                             model_name=V2, slowdown=V2_SLOWDOWN,
                             blocked_topics=(*DEFAULT_BLOCKED_TOPICS, *V2_BLOCKED))
        _demo_versions(settings, settings.proxy.upstream, self.v2.url)
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
        self.model = self.server.worker.model_name
        self.v2.app_kw["model"] = self.server.worker.model  # the same weights, loaded once
        self.v2.start()
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
                    f"phase {phase.name}: FAILED: flagged {'; '.join(_describe(r) for r in failed)} although it "
                    "repeats the baseline")
        else:
            expected = [r for s in report.scopes for r in s.results
                        if any(r.check == c and fnmatch.fnmatchcase(r.metric, m) for c, m in phase.expect)]
            caught = [r for r in expected if r.status == "fail"]  # in report order, as `failed`
            ok = bool(caught)
            if ok:
                line = f"phase {phase.name}: caught {_describe(caught[0])}"
                others = [r for r in failed if r not in caught]
                if others:
                    line += f"; also flagged {_names(others)}"
                line += f" ({phase.shows})"
            else:
                line = (f"phase {phase.name}: MISSED: expected {' or '.join(f'{c}/{m}' for c, m in phase.expect)}"
                        f" to fail; flagged {_names(failed) or 'nothing'}; what they showed: "
                        f"{'; '.join(_outcome(r) for r in expected) or 'no results'}")
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

    def _compare_line(self) -> str:
        """One line: v1 against v2 on the demo's traffic so far (no embeddings: quick)."""
        from monitor.checks.compare.queries import Side
        from monitor.checks.compare.report import compare

        assert self.embedded is not None and self.traffic is not None
        end = datetime.now(tz=self.baseline[0].tzinfo) if self.baseline else None
        if end is None:
            return "no comparison (the baseline phase did not run)"
        r = compare(self.embedded.store, Side(self.model), Side(V2), self.baseline[0], end, semantic=False)
        lat, ref = r["distributions"]["latency_ms"], r["rates"]["refusal_rate"]
        pairs = r["pairs"]
        return (f"{self.model} vs {V2}: median latency x{_fmt(lat.get('median_ratio'))} (Mann-Whitney p="
                f"{_fmt(lat.get('p_value'))}), refusals {_pct(ref['rate_a'])} -> {_pct(ref['rate_b'])} (z-test p="
                f"{_fmt(ref.get('p_value'))}), {pairs['pairs']} shadow pairs ({pairs.get('one_refused', 0)} where "
                "only one refused); Compare page: A monitor-demo-tiny@v1, B monitor-demo-tiny-v2@v2")

    def _summary(self) -> None:
        try:
            log.info("demo: compared: %s", self._compare_line())
        except Exception:
            log.exception("demo: the comparison of the two versions failed")
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
        self.v2.stop()
        if self.embedded is not None:
            self.embedded.stop()
        self.webhook.stop()
        log.debug("demo stopped in %.1fs", time.monotonic() - t0)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo_versions(settings: Settings, v1_url: str, v2_url: str) -> None:
    """v1 and v2 behind the one proxy, a share of v1's requests shadowed to v2."""
    p = settings.proxy
    p.routes = [*p.routes, ProxyRoute(model="monitor-demo-tiny", upstream=v1_url, model_version="v1", name="demo-v1"),
                ProxyRoute(model=V2, upstream=v2_url, model_version="v2", name="demo-v2")]
    p.shadow = [*p.shadow, ShadowRule(model="monitor-demo-tiny", to=V2, share=SHADOW_SHARE, max_per_s=1.0,
                                      max_concurrency=1)]


def _demo_checks(settings: Settings, webhook) -> None:
    """The checks run at the end of each phase (not on a schedule), strictly, and alert a local receiver."""
    c = settings.checks
    c.enabled = False
    c.min_samples = min(c.min_samples, 20)
    c.feature_alpha = DEMO_ALPHA
    c.quality_alpha = DEMO_ALPHA
    c.semantic.alpha = 2 * DEMO_ALPHA
    c.semantic.permutations = max(c.semantic.permutations, 2000)  # p can reach 1/2001 < alpha
    # Timings on a CPU model server move by tens of percent with whatever else runs on the machine;
    # a test on a phase's worth of requests rejects that. The latency phase slows the model 3x: only
    # a median that moved by half or more counts (a real deployment sets its own floor).
    for fname in TIMING_FEATURES:
        ov = c.features.setdefault(fname, FeatureOverride())
        if ov.min_change is None:
            ov.min_change = DEMO_ITL_MIN_CHANGE if fname == "itl_ms" else DEMO_TIMING_MIN_CHANGE
    # The demo's traffic is one client sending prompts made from templates: the abuse check rightly takes
    # it for a harvester in every phase, the control phase included. Its phases are about drift; the
    # clients and abuse signals are shown by bench/abuse.py (many clients, an injected harvester).
    c.abuse.enabled = False
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
    change = (r.details or {}).get("median_change")
    if change is not None:
        what += f", median moved by {change * 100:.0f}%"
    clusters = (r.details or {}).get("clusters") or []
    grew = [cl for cl in clusters if cl.get("change", 0) > 0]
    if grew:
        example = (grew[0].get("examples") or [""])[0][:80]
        what += f"; the cluster that grew most: '{grew[0].get('label', '')}', e.g. \"{example}\""
    return what


def _outcome(r) -> str:
    """Why a result did not fail: its p-value, its samples, and a median move below the floor."""
    d = r.details or {}
    what = f"{r.metric} {r.status} (p={_fmt(r.p_value)}, n={r.current_n} vs {r.reference_n}"
    if d.get("median_change") is not None:
        what += f", median moved by {d['median_change'] * 100:.0f}%"
        if d.get("below_min_change"):
            what += f", below the {d['min_change'] * 100:.0f}% that counts"
    return what + ")"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2g}"


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _names(results) -> str:
    return ", ".join(sorted({f"{r.check}/{r.metric}" for r in results}))
