"""``monitor up`` (and ``monitor sidecar`` with a proxy) as a few processes under one command.

    monitor up (this process: supervises, serves the merged /metrics; nothing else)
     ├── store     owns the chdb directory: ingest from the spool, checks, alerts, admin, dashboards
     ├── pipeline  OTLP receiver, capture intake, engine join, redaction -> the spool
     └── proxy     the capture proxy's request path (``proxy.workers`` processes on one port)

Children start in that order (each once the one before it is ready) and stop in
the reverse order, so what a stage accepted reaches the next one before that
one stops. A child that exits on its own is restarted (after a pause growing
from 1 s to 30 s, jittered by :class:`~monitor.backoff.Backoff`, reset after a
minute of health) and the log says why it ended. Ctrl-C reaches
only this process (children run in their own process group); it stops them in
order, each given ``shutdown_grace_s`` to finish what it holds. A child whose
parent dies gets SIGTERM (``PR_SET_PDEATHSIG``), so none outlives ``monitor up``.

Children get the settings on stdin (pickled: secrets included, never on a
command line or in the environment) and report readiness, their pid and the
ports they bound (``/metrics`` on an ephemeral loopback port) on a pipe.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from monitor.backoff import Backoff
from monitor.config import Settings
from monitor.errors import MonitorError
from monitor.runtime.cpu import remove_idle_cgroup, remove_stale_idle_cgroups

__all__ = ["Supervisor", "ChildSpec"]

log = logging.getLogger("monitor")

_RESTART_INITIAL_S = 1.0
_RESTART_MAX_S = 30.0
_HEALTHY_S = 60.0


class ChildFailed(MonitorError):
    """A child process could not start; its own log lines say why."""


@dataclass
class ChildSpec:
    role: str
    """``store``, ``pipeline`` (to the store's spool), ``sidecar`` (to Kafka) or ``proxy``."""
    index: int = 0
    ready_timeout_s: float = 300.0
    """A first start migrates the schema and may train nothing, but imports a lot: be patient."""

    @property
    def name(self) -> str:
        return self.role if self.role != "proxy" or self.index == 0 else f"{self.role}-{self.index}"


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    info: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff(_RESTART_INITIAL_S, _RESTART_MAX_S))
    stopping: bool = False


class Supervisor:
    def __init__(self, settings: Settings, specs: list[ChildSpec], role: str = "up"):
        self.settings = settings
        self.children = [_Child(s) for s in specs]
        self.role = role
        self._blob = pickle.dumps(settings)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None
        self.restarts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start every child in order, each once the previous one is ready; raise ChildFailed if one
        cannot start (the ones already running are stopped)."""
        if self.settings.processes.idle_cgroup:
            remove_stale_idle_cgroups()
        for child in self.children:
            self._spawn(child)
            self._await_ready(child)
        self._watch = threading.Thread(target=self._watch_loop, name="monitor-supervisor", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        """Stop the children in the reverse order of their start."""
        self._stop.set()
        grace = self.settings.shutdown_grace_s
        for child in reversed(self.children):
            with self._lock:
                child.stopping = True
                proc = child.proc
            if proc is None or proc.poll() is not None:
                continue
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace + 8.0)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.spec.name, grace + 8.0)
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        if self.settings.processes.idle_cgroup:
            remove_idle_cgroup(os.getpid())

    def info(self, role: str) -> dict[str, Any]:
        """What the first child of ``role`` reported when it became ready (pid, ports)."""
        for child in self.children:
            if child.spec.role == role:
                return dict(child.info)
        return {}

    # -- children ----------------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, MONITOR_READY_FD=str(write_fd))
        cmd = [sys.executable, "-m", "monitor.runtime.child", child.spec.role, str(child.spec.index)]
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env,
                                    start_new_session=True)
        finally:
            os.close(write_fd)
        assert proc.stdin is not None
        try:
            proc.stdin.write(self._blob)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        child.proc = proc
        child.started = time.monotonic()
        child.info = {"_ready_fd": read_fd}

    def _await_ready(self, child: _Child) -> None:
        fd = child.info.pop("_ready_fd")
        proc = child.proc
        assert proc is not None
        deadline = time.monotonic() + child.spec.ready_timeout_s
        buf = b""
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise ChildFailed(f"{child.spec.name} exited with code {proc.returncode} while starting; "
                                      "its log lines above say why")
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    chunk = os.read(fd, 65536)
                    buf += chunk
                    if b"\n" in buf:
                        child.info = json.loads(buf.split(b"\n", 1)[0])
                        return
                    if not chunk:
                        continue
            raise ChildFailed(f"{child.spec.name} was not ready within {child.spec.ready_timeout_s:.0f}s")
        finally:
            os.close(fd)

    def _watch_loop(self) -> None:
        while not self._stop.wait(0.2):
            for child in self.children:
                with self._lock:
                    proc = child.proc
                    if child.stopping or proc is None or proc.poll() is None:
                        continue
                code = proc.returncode
                why = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
                if time.monotonic() - child.started > _HEALTHY_S:
                    child.backoff.reset()
                delay = child.backoff.next_delay()
                log.error("%s %s; restarting it in %.0fs (restart %d)", child.spec.name, why, delay,
                          child.restarts + 1)
                if self._stop.wait(delay):
                    return
                child.restarts += 1
                self.restarts += 1
                try:
                    self._spawn(child)
                    self._await_ready(child)
                    log.info("%s is back (pid %d)", child.spec.name, child.info.get("pid", 0))
                except ChildFailed as exc:
                    log.error("%s", exc)

    # -- the merged /metrics -----------------------------------------------------------------

    def collector(self):
        """A Prometheus collector yielding every child's metrics with a ``process`` label."""
        return _ChildrenCollector(self)


SCRAPE_DEADLINE_S = 2.0
"""How long the merged /metrics page waits for the children's own pages, all together."""


def _scrape_all(ports: list[int], deadline_s: float) -> list[str | None]:
    """Each child's /metrics text, fetched side by side; None for one that did not answer within
    ``deadline_s`` in all (one starved child must not hold up the merged page past a scraper's timeout)."""
    out: list[str | None] = [None] * len(ports)

    def one(i: int, port: int) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=deadline_s) as r:
                out[i] = r.read().decode()
        except OSError:
            pass
    threads = [threading.Thread(target=one, args=(i, port), daemon=True) for i, port in enumerate(ports)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return list(out)


class _ChildrenCollector:
    def __init__(self, sup: Supervisor):
        self.sup = sup

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        up = GaugeMetricFamily("monitor_process_up", "1 while the process of this role runs", labels=["process"])
        pid = GaugeMetricFamily("monitor_process_pid", "The process id of each role", labels=["process"])
        restarts = CounterMetricFamily("monitor_process_restarts", "Restarts after a process of this role ended "
                                       "on its own", labels=["process"])
        for child in self.sup.children:
            alive = child.proc is not None and child.proc.poll() is None
            up.add_metric([child.spec.name], 1.0 if alive else 0.0)
            pid.add_metric([child.spec.name], float(child.info.get("pid", 0)) if alive else 0.0)
            restarts.add_metric([child.spec.name], float(child.restarts))
        yield from (up, pid, restarts)
        merged: dict[str, Metric] = {}
        live = [c for c in self.sup.children
                if c.info.get("metrics_port") and c.proc is not None and c.proc.poll() is None]
        texts = _scrape_all([c.info["metrics_port"] for c in live], deadline_s=SCRAPE_DEADLINE_S)
        answered = GaugeMetricFamily("monitor_process_metrics_answered", "1 when the process's own metrics "
                                     f"answered this scrape within {SCRAPE_DEADLINE_S:g} s (a busy machine can "
                                     "starve the store process, which runs at a low priority: its series are "
                                     "then missing from this scrape only)", labels=["process"])
        for child, text in zip(live, texts):
            answered.add_metric([child.spec.name], 0.0 if text is None else 1.0)
        yield answered
        for child, text in zip(live, texts):
            if text is None:
                continue
            for fam in text_string_to_metric_families(text):
                if fam.name == "monitor":  # monitor_info: the supervisor's own says what runs
                    continue
                m = merged.get(fam.name)
                if m is None:
                    m = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    m.samples.append(type(s)(s.name, {**s.labels, "process": child.spec.name}, s.value,
                                             s.timestamp, s.exemplar))
        yield from merged.values()
