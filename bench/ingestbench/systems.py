"""The systems under test: how each is started, where its stored-span count is read, how it is
stopped and counted again from its data directory; and one timed run of one system."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from procs import BenchError, Proc, log, wait_until
from procstat import CLK_TCK, cpu_jiffies, free_port, http_get, machine_busy

from ingestbench.load import WARMUP_SERVICE, send_all
from ingestbench.stored import (
    SqliteCounter,
    chdb_count,
    chdb_span_ids,
    monitor_rows,
    scrape,
    sqlite_count,
)

ROOT = Path(__file__).resolve().parents[2]
BROKER_PY = ROOT / "deploy" / "kafka" / "broker.py"
OTELCOL_CONFIG = ROOT / "deploy" / "otelcol" / "otlp-to-kafka.yaml"
CACHE = Path(os.environ.get("MONITOR_CACHE_DIR", Path.home() / ".cache" / "llm-monitor"))
DEFAULT_PHOENIX_VENV = CACHE / "phoenix-venv"
PARTITIONS = 2
"""Partitions of the OTLP topics in every Kafka cell (the issue's 'topic with two partitions')."""


class System:
    name = ""

    def __init__(self, args: argparse.Namespace, workdir: Path, run_id: str):
        self.args = args
        self.dir = workdir / run_id / self.name
        self.logs = workdir / "logs"
        self.run_id = run_id
        self.procs: list[Proc] = []
        self.notes: list[str] = []

    # to implement
    def start(self) -> None: ...
    def url(self) -> str: ...
    def stored(self) -> int | None: ...
    def stop_and_count(self) -> dict[str, Any]: ...
    def extra(self) -> dict[str, Any]: return {}

    def cpu_groups(self) -> dict[str, list[int]]:
        """Name -> pids whose CPU (with their descendants) is reported apart."""
        return {p.name: [p.pid] for p in self.procs}

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def kill(self) -> None:
        for p in reversed(self.procs):
            p.kill()

    def logfile(self, what: str) -> Path:
        return self.logs / f"{self.run_id}-{self.name}-{what}.log"


    def monitor_env(self) -> dict[str, str]:
        """The monitor's processes: topics created with PARTITIONS partitions (whoever comes first)."""
        return {**os.environ, "MONITOR_KAFKA__PARTITIONS": str(PARTITIONS)}

    def start_broker(self) -> None:
        kport = free_port()
        bootstrap_file = self.logfile("broker-stdout")
        self.broker = Proc("kafka broker", [
            self.args.python, str(BROKER_PY), "run", "--data-dir", str((self.dir / "kafka").resolve()),
            "--port", str(kport)], self.logfile("broker"), stdout_path=bootstrap_file)
        self.procs.append(self.broker)

        def bootstrap() -> str | None:
            try:
                m = re.search(r"^BOOTSTRAP=(\S+)", bootstrap_file.read_text(), re.MULTILINE)
            except OSError:
                return None
            return m.group(1) if m else None

        self.bootstrap = wait_until("the Kafka broker to print BOOTSTRAP=", bootstrap, self.procs,
                                    self.args.start_timeout)
        self.broker.remember_children()  # the JVM runs in a session of its own

    def start_ingest(self, n: int, env: dict[str, str] | None = None) -> None:
        """``n`` `monitor ingest` processes in one consumer group, each on its own chdb directory
        (chdb allows one process per directory; against a ClickHouse server they would share one)."""
        self.ingests: list[tuple[Proc, int, Path]] = []
        for k in range(n):
            port, data = free_port(), (self.dir / f"chdb-{self.name}-{k}").resolve()
            p = Proc(f"monitor ingest{'' if n == 1 else f' {k + 1}'}", [
                *self.args.monitor_cmd, "ingest", "--kafka", self.bootstrap, "--clickhouse", f"chdb://{data}",
                "--group-id", f"bench-{self.name}", "--metrics-port", str(port)],
                self.logfile(f"ingest{k}"), cwd=self.dir, env={**self.monitor_env(), **(env or {})})
            self.procs.append(p)
            self.ingests.append((p, port, data))
        for p, port, _ in self.ingests:
            wait_until(f"{p.name} to answer /metrics", lambda port=port: monitor_rows(port) is not None,
                       self.procs, self.args.start_timeout)

    def ingest_stored(self) -> int | None:
        vals = [monitor_rows(port) for _, port, _ in self.ingests]
        return None if any(v is None for v in vals) else sum(vals)

    def stop_ingest_and_count(self, stops: dict[str, Any], stop_broker: bool = True) -> dict[str, Any]:
        for p, _, _ in self.ingests:
            stops[p.name] = p.stop(signal.SIGINT, self.args.stop_timeout)
        if stop_broker and getattr(self, "broker", None) is not None:
            stops["kafka broker"] = self.broker.stop(signal.SIGTERM, self.args.stop_timeout)
        per = [chdb_count(self.args.python, data) for _, _, data in self.ingests]
        counts = {k: sum(c[k] for c in per) for k in per[0]}
        out: dict[str, Any] = {"stop": stops, "counts": counts, "stored_after_stop": counts["spans"]}
        if len(per) > 1:
            counts["per_process"] = per
            ids = [chdb_span_ids(self.args.python, data) for _, _, data in self.ingests]
            union = set().union(*ids)
            counts["distinct_span_ids"] = len(union)
            out["stored_after_stop"] = len(union)
            out["duplicates_across_processes"] = sum(len(s) for s in ids) - len(union)
        return out


class MonitorEmbedded(System):
    name = "monitor-embedded"

    def start(self) -> None:
        self.grpc, self.http, self.metrics = free_port(), free_port(), free_port()
        self.data = (self.dir / "chdb").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.up = Proc("monitor up", [
            *self.args.monitor_cmd, "up", "--data-dir", str(self.data), "--grpc-port", str(self.grpc),
            "--http-port", str(self.http), "--metrics-port", str(self.metrics), "--no-dashboard",
            "--admin-port", str(free_port())],
            self.logfile("up"), cwd=self.dir)
        self.procs = [self.up]
        wait_until("monitor up to answer /metrics and /health",
                   lambda: monitor_rows(self.metrics) is not None
                   and http_get(f"http://127.0.0.1:{self.http}/health")[0] == 200,
                   self.procs, self.args.start_timeout)
        # the steady state a running monitor is in: the store's warm-up (the checks' libraries and
        # model, ~12 s of one core here) over, and its heap settled (monitor/runtime/heap.py)
        log = self.logfile("up")
        wait_until("the store process's warm-up", lambda: "warmed up" in log.read_text(errors="replace"),
                   self.procs, self.args.start_timeout)

    def cpu_groups(self) -> dict[str, list[int]]:
        """`monitor up` (all of it) and its pipeline and store processes apart (monitor_process_pid)."""
        groups = super().cpu_groups()
        for key, v in scrape(self.metrics).items():
            if key.startswith("monitor_process_pid{") and v > 0:
                role = key.split('process="', 1)[1].split('"', 1)[0]
                groups.setdefault(role, []).append(int(v))
        return groups

    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}/v1/traces"

    def stored(self) -> int | None:
        return monitor_rows(self.metrics)

    def extra(self) -> dict[str, Any]:
        return {"metrics": scrape(self.metrics)}

    def stop_and_count(self) -> dict[str, Any]:
        stop = self.up.stop(signal.SIGINT, self.args.stop_timeout)
        counts = chdb_count(self.args.python, self.data)
        return {"stop": {"monitor up": stop}, "counts": counts, "stored_after_stop": counts["spans"]}


class KafkaSystem(System):
    """A front taking OTLP/HTTP on ``self.http`` that writes to Kafka, and `monitor ingest` storing from it:
    what is stored is what the ingest processes wrote."""

    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}/v1/traces"

    def stored(self) -> int | None:
        return self.ingest_stored()

    def extra(self) -> dict[str, Any]:
        return {"ingest_metrics": [scrape(port) for _, port, _ in self.ingests]}


class MonitorKafka(KafkaSystem):
    """Kafka broker + `monitor sidecar` + ``ingest_processes`` `monitor ingest` (topics of 2 partitions)."""

    name = "monitor-kafka"
    ingest_processes = 1

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        self.start_broker()
        self.grpc, self.http, self.sc_metrics = free_port(), free_port(), free_port()
        self.spool = (self.dir / "spool" / "spool.sqlite").resolve()
        self.sidecar = Proc("monitor sidecar", [
            *self.args.monitor_cmd, "sidecar", "--kafka", self.bootstrap, "--spool", str(self.spool),
            "--grpc-port", str(self.grpc), "--http-port", str(self.http), "--metrics-port", str(self.sc_metrics)],
            self.logfile("sidecar"), cwd=self.dir, env=self.monitor_env())
        self.procs.append(self.sidecar)
        wait_until("monitor sidecar to answer /health", lambda: http_get(
            f"http://127.0.0.1:{self.http}/health")[0] == 200, self.procs, self.args.start_timeout)
        self.start_ingest(self.ingest_processes)
        self.broker.remember_children()

    def extra(self) -> dict[str, Any]:
        return {"sidecar_metrics": scrape(self.sc_metrics), **super().extra()}

    def stop_and_count(self) -> dict[str, Any]:
        stops = {"monitor sidecar": self.sidecar.stop(signal.SIGINT, self.args.stop_timeout)}
        out = self.stop_ingest_and_count(stops)
        spool_left = None
        if self.spool.exists():
            try:
                conn = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True)
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                spool_left = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
                conn.close()
            except sqlite3.Error as exc:
                spool_left = f"unreadable: {exc}"
        out["spool_rows_left"] = spool_left
        return out


class MonitorKafka2(MonitorKafka):
    """The same with two `monitor ingest` processes in one group (one partition each)."""

    name = "monitor-kafka-2ingest"
    ingest_processes = 2


def otelcol_binary() -> Path | None:
    """The stock Collector tests/partners.py built (``$MONITOR_CACHE_DIR/partners/otelcol-<v>/bin/otelcol``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import partners  # tests/partners.py: where it lives and its version
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    p = partners.cache_root() / f"otelcol-{partners.OTELCOL_VERSION}" / "bin" / "otelcol"
    return p if p.exists() else None


class OtelcolKafka(KafkaSystem):
    """The stock OpenTelemetry Collector in the sidecar's place: otlp receiver -> batch -> kafka
    exporter (otlp_proto, lz4, acks=all; deploy/otelcol/otlp-to-kafka.yaml) + Kafka + `monitor ingest`."""

    name = "otelcol-kafka"

    def start(self) -> None:
        binary = otelcol_binary()
        if binary is None:
            raise BenchError("no otelcol binary: build it with `python tests/partners.py build otelcol`")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        self.start_broker()
        self.start_ingest(1)  # first: it creates the topics with PARTITIONS partitions
        self.grpc, self.http = free_port(), free_port()
        env = {**os.environ, "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.grpc}",
               "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{self.http}", "KAFKA_BROKERS": self.bootstrap}
        self.col = Proc("otelcol", [str(binary), "--config", f"file:{OTELCOL_CONFIG}"], self.logfile("otelcol"),
                        env=env, cwd=self.dir)
        self.procs.append(self.col)
        wait_until("otelcol to log 'Everything is ready'",
                   lambda: "Everything is ready" in self.col.log_path.read_text(errors="replace"),
                   self.procs, self.args.start_timeout)
        self.broker.remember_children()

    def stop_and_count(self) -> dict[str, Any]:
        stops = {"otelcol": self.col.stop(signal.SIGTERM, self.args.stop_timeout)}
        return self.stop_ingest_and_count(stops)


class Phoenix(System):
    name = "phoenix"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.work = (self.dir / "phoenix").resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.port, self.grpc = free_port(), free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PHOENIX_", "OTEL_", "VIRTUAL_ENV"))}
        env.update({
            "PHOENIX_WORKING_DIR": str(self.work),
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PATH": f"{self.args.phoenix_venv / 'bin'}:{os.environ.get('PATH', '')}",
        })
        self.db = self.work / "phoenix.db"  # phoenix.config.get_env_database_connection_str()
        self.proc = Proc("phoenix serve", [str(self.args.phoenix_venv / "bin" / "phoenix"), "serve"],
                         self.logfile("phoenix"), env=env, cwd=self.dir)
        self.procs = [self.proc]
        wait_until("phoenix to answer /healthz", lambda: http_get(
            f"http://127.0.0.1:{self.port}/healthz")[0] == 200, self.procs, self.args.start_timeout, 0.5)
        self.counter = SqliteCounter(self.db)
        self.proc.remember_children()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def stored(self) -> int | None:
        return self.counter()

    def stop_and_count(self) -> dict[str, Any]:
        self.counter.close()
        stop = self.proc.stop(signal.SIGINT, self.args.stop_timeout)
        total = sqlite_count(self.db)
        warm = None
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            warm = conn.execute(
                "SELECT count(*) FROM spans s JOIN traces t ON s.trace_rowid = t.id "
                "JOIN projects p ON t.project_rowid = p.id WHERE p.name = ?", (WARMUP_SERVICE,)).fetchone()[0]
            conn.close()
        except sqlite3.Error as exc:
            self.notes.append(f"could not separate warm-up spans: {exc}")
        counts = {"all_rows": total, "warmup_rows": warm}
        stored = None if total is None else total - (warm or 0)
        return {"stop": {"phoenix serve": stop}, "counts": counts, "stored_after_stop": stored}



def run_system(cls: type[System], args: argparse.Namespace, workdir: Path, run_id: str,
               bodies: list[tuple[bytes, int]], warmup: list[tuple[bytes, int]]) -> dict[str, Any]:
    sysm = cls(args, workdir, run_id)
    n = sum(c for _, c in bodies)
    out: dict[str, Any] = {"system": sysm.name, "run": run_id, "spans_sent": n, "requests": len(bodies)}
    try:
        t_start = time.monotonic()
        sysm.start()
        out["startup_s"] = round(time.monotonic() - t_start, 2)
        log(f"{sysm.name}: up after {out['startup_s']}s")

        # warm-up: one request, stored before the clock starts (group joins, first insert, schema caches)
        headers = {"x-project-name": WARMUP_SERVICE} if sysm.name == "phoenix" else None
        wres, wgo, wdone = send_all(sysm.url(), warmup, 1, time.perf_counter() + args.timeout, headers)
        wgo.set()
        wdone.wait()
        if wres.errors or wres.acked_spans != sum(c for _, c in warmup):
            raise BenchError(f"{sysm.name}: warm-up request failed: {wres.errors or wres}")
        base = wait_until(f"{sysm.name} to store the warm-up spans",
                          lambda: (lambda v: v if v is not None and v >= wres.acked_spans else None)(sysm.stored()),
                          sysm.procs, args.timeout, 0.1)
        out["warmup_spans"] = base
        for p in sysm.procs:
            p.remember_children()

        # how busy the machine is without load: other tenants skew every number
        b0 = machine_busy()
        time.sleep(1.0)
        b1 = machine_busy()
        out["background_busy_pct"] = round(100 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1]), 1)
        if out["background_busy_pct"] > 10:
            log(f"{sysm.name}: WARNING: the machine is {out['background_busy_pct']}% busy before the run "
                "(other processes); results will be skewed")

        # timed run
        pids = [p.pid for p in sysm.procs]
        deadline = time.perf_counter() + args.timeout
        res, go, done = send_all(sysm.url(), bodies, args.concurrency, deadline)
        cpu0, mach0, self0 = cpu_jiffies(pids) / CLK_TCK, machine_busy(), os.times()
        groups = sysm.cpu_groups()
        per0 = {k: cpu_jiffies(v) / CLK_TCK for k, v in groups.items()}
        t0 = time.perf_counter()
        res.first_send = t0
        go.set()
        samples: list[tuple[float, int]] = []
        target = n
        while True:
            now = time.perf_counter()
            v = sysm.stored()
            if v is not None:
                samples.append((now - t0, v - base))
            if done.is_set():
                target = res.acked_spans
                if samples and samples[-1][1] >= target:
                    break
            if now > deadline:
                log(f"{sysm.name}: timed out after {args.timeout:.0f}s")
                break
            for p in sysm.procs:
                if not p.alive():
                    raise BenchError(f"{p.name} died during the run (exit {p.popen.returncode}):\n{p.log_tail()}")
            time.sleep(args.poll_interval)
        t_end = time.perf_counter()
        cpu1, mach1, self1 = cpu_jiffies(pids) / CLK_TCK, machine_busy(), os.times()
        per1 = {k: cpu_jiffies(v) / CLK_TCK for k, v in groups.items()}
        # the first poll that saw every acknowledged span (may precede the last 200 being read)
        first_full = next((t for t, c in samples if c >= target), None) if done.is_set() else None
        reached_at = t0 + first_full if first_full is not None else None
        wall = (reached_at or t_end) - t0
        live_stored = samples[-1][1] if samples else None
        accept_s = (res.last_ack - t0) if res.last_ack else None
        out.update({
            "acknowledged": res.acked_spans,
            "rejected_partial": res.rejected_spans,
            "failed_spans": res.failed_spans,
            "stored_live": live_stored,
            "reached_all": reached_at is not None,
            "accept_seconds": round(accept_s, 3) if accept_s else None,
            "accept_spans_per_s": round(res.acked_spans / accept_s, 1) if accept_s else None,
            "e2e_seconds": round(wall, 3) if reached_at else None,
            "e2e_spans_per_s": round(target / wall, 1) if reached_at and wall > 0 else None,
            "e2e_partial_spans_per_s": None if reached_at or not live_stored else round(live_stored / wall, 1),
            "retries_503": res.retries_503,
            "retries_429": res.retries_429,
            "retry_sleep_s": round(res.retry_sleep_s, 1),
            "connection_retries": res.connection_retries,
            "errors": res.errors[:20],
            "error_count": len(res.errors),
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "server_cpu_s_by_process": {k: round(per1[k] - per0[k], 2) for k in per0},
            "cpu_us_per_span_by_process": {k: round(1e6 * (per1[k] - per0[k]) / max(1, res.acked_spans), 1)
                                           for k in per0},
            "client_cpu_s": round((self1.user + self1.system) - (self0.user + self0.system), 2),
            "machine_busy_pct": round(100 * (mach1[0] - mach0[0]) / max(1, mach1[1] - mach0[1]), 1),
            "other_cpu_s": round(max(0.0, (mach1[0] - mach0[0]) / CLK_TCK - (cpu1 - cpu0)
                                     - ((self1.user + self1.system) - (self0.user + self0.system))), 2),
            "window_s": round(t_end - t0, 3),
            "timeline": [(round(t, 2), c) for t, c in samples[:: max(1, len(samples) // 200)]],
        })
        if not done.is_set():
            out["errors"].append("senders still running at the deadline")
        log(f"{sysm.name}: acked {res.acked_spans}/{n} in {out['accept_seconds']}s, stored {live_stored} "
            f"(all: {reached_at is not None}) in {out['e2e_seconds']}s; 503 retries {res.retries_503}, "
            f"errors {len(res.errors)}; server CPU {out['server_cpu_s']}s, machine {out['machine_busy_pct']}% busy")
        out.update(sysm.extra())
        log(f"{sysm.name}: stopping gracefully")
        after = sysm.stop_and_count()
        out.update(after)
        log(f"{sysm.name}: stored after stop: {after.get('stored_after_stop')} (acknowledged {res.acked_spans})")
    except BenchError as exc:
        log(f"{sysm.name}: FAILED: {exc}")
        out["failure"] = str(exc)
    finally:
        sysm.kill()
        out["notes"] = sysm.notes
        out["logs"] = {p.name: str(p.log_path) for p in sysm.procs}
        if not args.keep:
            shutil.rmtree(sysm.dir, ignore_errors=True)
    return out


def ensure_phoenix(venv: Path, install: bool) -> str | None:
    """Create/reuse the Phoenix virtualenv; returns None when usable, else why not."""
    exe = venv / "bin" / "phoenix"
    py = venv / "bin" / "python"
    if exe.exists() and py.exists():
        probe = subprocess.run([str(py), "-c", "import phoenix, importlib.metadata as m; "
                                "print(m.version('arize-phoenix'))"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            log(f"phoenix {probe.stdout.strip()} in {venv}")
            return None
    if not install:
        return (f"arize-phoenix is not installed in {venv} (pass --install-phoenix to pip install it there, "
                "or --phoenix-venv to point at one)")
    log(f"installing arize-phoenix into {venv} (once; may take a few minutes)")
    if not py.exists():
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        p = subprocess.run([base_python, "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            return f"python -m venv {venv} failed:\n{p.stdout}\n{p.stderr}"
    p = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "arize-phoenix"],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return f"pip install arize-phoenix failed (exit {p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    if not exe.exists():
        return f"pip installed arize-phoenix but {exe} does not exist"
    return None

