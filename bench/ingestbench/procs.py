"""Processes the bench starts (each in its own process group, killed on exit) and how it reads
what a system stored: the monitor's /metrics, chdb in a fresh process, Phoenix's SQLite."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procstat import descendants, http_get, pid_alive

from ingestbench.load import WARMUP_SERVICE


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A system could not be started or measured; the message says why."""


class Proc:
    """A child in its own session/process group; stdout+stderr go to ``log_path``."""

    registry: list[Proc] = []

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdout_path: Path | None = None):
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.stdout_path = stdout_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        err = open(log_path, "ab")
        out = open(stdout_path, "ab") if stdout_path else err
        log(f"start {name}: {shlex.join(cmd)}  (log {log_path})")
        try:
            self.popen = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                          cwd=cwd, start_new_session=True)
        finally:
            err.close()
            if stdout_path:
                out.close()
        self.pid = self.popen.pid
        self.known: set[int] = set()
        Proc.registry.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_children(self) -> None:
        if self.alive():
            self.known.update(descendants(self.pid))

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in lines[-n:])

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.popen.returncode}; last lines of {self.log_path}:\n"
                             + self.log_tail())

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> dict[str, Any]:
        """Graceful stop: ``sig`` to the process, wait; then kill its group and stray descendants."""
        self.remember_children()
        t0 = time.monotonic()
        graceful = True
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                graceful = False
                log(f"{self.name} did not exit {timeout:.0f}s after {signal.Signals(sig).name}; killing it")
        self.kill()
        return {"graceful": graceful, "exit_code": self.popen.returncode,
                "stop_seconds": round(time.monotonic() - t0, 2)}

    def kill(self) -> None:
        self.remember_children()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [p for p in self.known if pid_alive(p)]
            if self.alive():
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            for p in live:
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (self.alive() or any(pid_alive(p) for p in live)):
                time.sleep(0.1)
            if not self.alive() and not any(pid_alive(p) for p in live):
                break
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self in Proc.registry:
            Proc.registry.remove(self)

    @classmethod
    def kill_all(cls) -> None:
        for p in list(reversed(cls.registry)):
            try:
                p.kill()
            except Exception as exc:  # keep killing the others
                log(f"could not kill {p.name} ({p.pid}): {exc}")


def wait_until(what: str, pred: Callable[[], Any], procs: list[Proc], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check()
        v = pred()
        if v:
            return v
        time.sleep(interval)
    for p in procs:
        log(f"{p.name} log tail:\n{p.log_tail()}")
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


_ROWS_RE = re.compile(r'^monitor_store_rows_written_total\{[^}]*table="(otel_traces|inference_events)"[^}]*\}\s+(\S+)',
                      re.M)


def monitor_rows(metrics_port: int) -> int | None:
    """Spans stored with their model request: min(otel_traces, inference_events rows written). Every
    span of this load is a model request, and a batch writes otel_traces first: counting otel_traces
    alone would call a batch stored before its inference_events rows are."""
    status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    if status != 200:
        return None
    seen = {"otel_traces": 0, "inference_events": 0}
    for table, value in _ROWS_RE.findall(text):
        seen[table] += int(float(value))
    return min(seen.values())


def scrape(metrics_port: int) -> dict[str, float]:
    """Every non-histogram monitor_* sample, for the JSON (diagnosis)."""
    status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in text.splitlines():
        if line.startswith("monitor_") and "_bucket{" not in line and not line.startswith("monitor_info"):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def chdb_count(python: str, data_dir: Path) -> dict[str, Any]:
    """Count rows in a chdb directory from a fresh process (chdb allows one process per directory)."""
    code = (
        "import json, sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1])\n"
        "q = lambda s: int(c.command(s))\n"
        f"w = \"ServiceName != '{WARMUP_SERVICE}'\"\n"
        "print(json.dumps({'spans': q('SELECT count() FROM monitor.otel_traces WHERE ' + w),\n"
        "  'distinct_span_ids': q('SELECT uniqExact(SpanId) FROM monitor.otel_traces WHERE ' + w),\n"
        "  'all_rows': q('SELECT count() FROM monitor.otel_traces'),\n"
        "  'inference_events': q('SELECT count() FROM monitor.inference_events')}))\n"
    )
    proc = subprocess.run([python, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise BenchError(f"counting rows in {data_dir} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sqlite_count(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5, isolation_level=None)
        try:
            return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


class SqliteCounter:
    """Keeps one read-only connection; each SELECT sees the latest committed state."""

    def __init__(self, db: Path):
        self.db = db
        self.conn: sqlite3.Connection | None = None

    def __call__(self) -> int | None:
        try:
            if self.conn is None:
                if not self.db.exists():
                    return None
                self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5,
                                            isolation_level=None, check_same_thread=False)
            return int(self.conn.execute("SELECT count(*) FROM spans").fetchone()[0])
        except sqlite3.Error:
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None




def chdb_span_ids(python: str, data_dir: Path) -> set[str]:
    """Every SpanId of the non-warm-up spans in a chdb directory (from a fresh process)."""
    code = (
        "import sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1])\n"
        f"r = c.query(\"SELECT SpanId FROM monitor.otel_traces WHERE ServiceName != '{WARMUP_SERVICE}'\")\n"
        "print('\\n'.join(row[0] for row in r.result_rows))\n"
    )
    proc = subprocess.run([python, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise BenchError(f"reading span ids in {data_dir} failed:\n{proc.stderr[-3000:]}")
    return {line for line in proc.stdout.splitlines() if line}
