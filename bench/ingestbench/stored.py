"""How the ingest bench reads what a system stored: the monitor's /metrics, chdb in a fresh process,
Phoenix's SQLite. (The processes it starts: bench/procs.py.)"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from procs import BenchError
from procstat import http_get, parse_metrics

from ingestbench.load import WARMUP_SERVICE

_ROWS_RE = re.compile(r'^monitor_store_rows_written_total\{[^}]*table="(otel_traces|inference_events)"[^}]*\}\s+(\S+)',
                      re.MULTILINE)


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
    return parse_metrics(text) if status == 200 else {}


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
