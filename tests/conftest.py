"""Shared fixtures: a real Kafka broker per test session, a chdb directory per worker.

chdb allows one data directory per process, so every in-process test of a
worker shares one directory and gets a database of its own. Tests that need a
directory of their own (``monitor up`` as a subprocess) run the engine in a
subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

_spec = importlib.util.spec_from_file_location("kafka_broker", ROOT / "deploy" / "kafka" / "broker.py")
kafka_broker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kafka_broker)  # type: ignore[union-attr]

# Real partners (llama.cpp's llama-server with a real model, the stock OpenTelemetry Collector), built once
# per machine into ~/.cache/llm-monitor/partners (tests/partners.py); a missing toolchain skips loudly.
from partners import llama_server, otelcol  # noqa: E402,F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `monitor up` serves the dashboards on 8501 by default; the many tests that start it (in-process or as a
# subprocess inheriting this environment) run without them. The dashboard tests turn them on with a free port.
os.environ.setdefault("MONITOR_DASHBOARD__ENABLED", "false")
# The suite runs two CPU-bound pytest workers side by side: at its production niceness (pipeline 10, store 19,
# on the session's autogroup: spare CPU only) a `monitor up` store process gets ~1.5 % of the machine while the
# other worker is busy, and the tests that wait on it would measure their neighbour. The processes run at
# niceness 0 and outside an idle cgroup here; tests/test_data_plane.py and the newcomer's path (alone on the
# machine) run the defaults.
PRIORITY_ENV = {"MONITOR_PROCESSES__PIPELINE_NICE": "0", "MONITOR_PROCESSES__STORE_NICE": "0",
                "MONITOR_PROCESSES__IDLE_CGROUP": "[]"}
for _name, _value in PRIORITY_ENV.items():
    os.environ.setdefault(_name, _value)


_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_PORT_BASE = 20000 + 2500 * (int(_WORKER[2:] or 0) % 4)
_next_port = [_PORT_BASE + (os.getpid() * 7) % 2000]


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768+), in a block of this xdist
    worker's own: a port picked here cannot be taken meanwhile by an outgoing connection or by the
    other worker, which an OS-assigned ephemeral port could."""
    for _ in range(2500):
        port = _next_port[0]
        _next_port[0] = _PORT_BASE + (port - _PORT_BASE + 1) % 2500
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's block")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """One real Apache Kafka 4.x broker (KRaft) for the session (per xdist worker)."""
    broker = kafka_broker.KafkaBroker.start(tmp_path_factory.mktemp("kafka"), port=free_port(),
                                            controller_port=free_port())
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def settings(chdb_dir, tmp_path):
    """Settings for an in-process pipeline: free ports, this worker's chdb dir, a fresh database."""
    from monitor.config import load

    uid = uuid.uuid4().hex[:10]
    return load(overrides={
        "receiver": {"grpc_port": free_port(), "http_port": free_port()},
        "store": {"url": f"chdb://{chdb_dir}", "database": f"t_{uid}"},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "telemetry": {"metrics_port": 0},
        "ingest": {"flush_interval_ms": 100},
        "checks": {"enabled": False, "admin_port": 0},
        "dashboard": {"enabled": False, "port": 0},
        "kafka": {"spans_topic": f"s_{uid}", "metrics_topic": f"m_{uid}", "logs_topic": f"l_{uid}",
                  "group_id": f"g_{uid}"},
    })


@pytest.fixture
def store(settings):
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    s = Store(settings.store)
    migrate(s, settings.store.retention_days)
    yield s
    s.close()


def chdb_query(path: Path, sql: str, database: str = "monitor") -> list:
    """Run ``sql`` on a chdb directory in a subprocess (this process may hold another chdb dir)."""
    import json
    import subprocess

    script = (
        "import clickhouse_connect, json, sys\n"
        f"c = clickhouse_connect.get_client(dsn={('chdb://' + str(path))!r})\n"
        f"c.database = {database!r}\n"
        "print(json.dumps(c.query(sys.argv[1]).result_rows, default=str))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, sql], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"chdb query failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def otlp_request(i: int, model: str = "llama", spans: int = 1) -> bytes:
    """An OTLP/protobuf traces request of ``spans`` GenAI spans with ids derived from ``i``."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "fault-test"
    ss = rs.scope_spans.add()
    now = time.time_ns()
    for j in range(spans):
        n = i * spans + j + 1
        span = ss.spans.add()
        span.trace_id = n.to_bytes(16, "big")
        span.span_id = n.to_bytes(8, "big")
        span.name = f"chat {model}"
        span.kind = 3
        span.start_time_unix_nano = now
        span.end_time_unix_nano = now + 250_000_000
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", model),
                           ("gen_ai.input.messages", f'[{{"role":"user","content":"prompt {n}"}}]')):
            a = span.attributes.add()
            a.key, a.value.string_value = key, value
    return req.SerializeToString()


def post_traces(port: int, body: bytes, timeout: float = 30) -> int:
    """POST an OTLP/protobuf body; returns the HTTP status (0 when the connection failed)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=body,
                                 headers={"Content-Type": "application/x-protobuf"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


MONITOR = [sys.executable, "-m", "monitor"]
