#!/usr/bin/env python3
"""Sustained ingest benchmark: spans/s until every span is stored and countable.

Compares, in one invocation and one after another (never concurrently):

- ``monitor-embedded``: ``monitor up`` (receiver -> in-process queue -> chdb);
- ``monitor-kafka``: a real Kafka broker (``deploy/kafka/broker.py``) +
  ``monitor sidecar`` (receiver -> SQLite spool -> Kafka) + ``monitor ingest``
  (Kafka -> chdb);
- ``phoenix``: Arize Phoenix (``phoenix serve``, OTLP/HTTP on its own port,
  SQLite storage), installed into its own virtualenv
  (``~/.cache/llm-monitor/phoenix-venv``) so its pins never touch the project's.

Load: ``--spans`` realistic GenAI chat spans, pre-built before timing into
OTLP/HTTP protobuf requests (``ExportTraceServiceRequest``) of ``--batch``
spans each, posted to ``/v1/traces`` by ``--concurrency`` client threads.
503/429 are retried after ``Retry-After`` (and counted); any other non-200 is
an error. Every system first gets one warm-up request (not timed) and must
store it before the clock starts.

Measured per run:

- acceptance rate: acknowledged spans / (last 200 - first send);
- end-to-end rate: spans / (moment all of them are countable in storage -
  first send). monitor: ``monitor_store_rows_written_total{table="otel_traces"}``
  on the (ingest) process's /metrics; Phoenix: ``count(*)`` of its SQLite
  ``spans`` table (read-only connection);
- after a graceful stop (SIGINT), the stored count read from the data
  directory itself (chdb in a fresh process; SQLite).

Run with the project's virtualenv::

    ~/.cache/llm-monitor/venv/bin/python bench/ingest.py --spans 20000

Every process it starts runs in its own process group and is killed on exit,
including on Ctrl-C and errors. Logs stay in the work directory (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from procstat import CLK_TCK, cpu_jiffies, descendants, free_port, machine_busy, pid_alive

ROOT = Path(__file__).resolve().parents[1]
BROKER_PY = ROOT / "deploy" / "kafka" / "broker.py"
CACHE = Path(os.environ.get("MONITOR_CACHE_DIR", Path.home() / ".cache" / "llm-monitor"))
DEFAULT_PHOENIX_VENV = CACHE / "phoenix-venv"
SYSTEMS = ("monitor-embedded", "monitor-kafka", "phoenix")
WARMUP_SERVICE = "bench-warmup"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A system could not be started or measured; the message says why."""


# ----------------------------------------------------------------------------- load

SENTENCES = [
    "The quarterly report shows revenue growth in every region except the northeast.",
    "Please summarize the attached meeting notes in three short bullet points.",
    "Our customers in Germany have asked for invoices that include the VAT number.",
    "The deployment failed because the container image could not be pulled from the registry.",
    "Write a polite reply declining the invitation but suggesting a call next week.",
    "Translate the following paragraph into Spanish while keeping the formal tone.",
    "The patient reported mild headaches after the second dose of the medication.",
    "Explain the difference between a process and a thread to a junior engineer.",
    "The warehouse inventory count was off by twelve pallets on Tuesday morning.",
    "Draft a product description for a waterproof hiking backpack with a 30 liter capacity.",
    "List the main risks of migrating the billing database during the holiday season.",
    "The train to Lyon was delayed by forty minutes because of a signal failure.",
    "Can you recommend three books about the history of the printing press?",
    "Our support team resolved most tickets within four hours last month.",
    "Rewrite this function so that it no longer allocates memory inside the loop.",
    "The contract renewal is due at the end of March and requires legal review.",
    "Describe the water cycle for a class of ten-year-old students.",
    "The new onboarding flow reduced the drop-off rate on the second screen.",
    "Compare the battery life of the two laptops under a typical office workload.",
    "A customer says the discount code was applied twice on the same order.",
    "Give me a recipe for a vegetarian lasagna that serves six people.",
    "The sensor readings drift upward by about two degrees every afternoon.",
    "Outline a study plan for passing the cloud architecture certification in eight weeks.",
    "The marketing team wants a catchy subject line for the spring newsletter.",
    "Identify any personally identifiable information in the text below and redact it.",
    "The server logs show repeated timeouts when the cache cluster is under load.",
    "Suggest names for a coffee shop that also sells secondhand books.",
    "The hiring committee will interview the final two candidates on Friday.",
]
ANSWERS = [
    "Here is a concise summary of the main points.",
    "Revenue grew in most regions, driven mainly by renewals and the new enterprise tier.",
    "The northeast declined slightly because two large accounts delayed their purchases.",
    "I would recommend retrying the deployment after checking the registry credentials.",
    "Thank you for the kind invitation; unfortunately I will be travelling that week.",
    "A process has its own memory space, while threads share the memory of their process.",
    "The most likely cause is a misconfigured timeout between the service and the cache.",
    "First, verify the inventory records; second, reconcile them with the shipping logs.",
    "This backpack keeps your gear dry on long trails and fits comfortably on any frame.",
    "The main risks are data loss, extended downtime and inconsistent invoices.",
    "Both laptops last roughly nine hours, but the lighter model charges faster.",
    "The discount was applied twice because the cart was submitted from two tabs.",
    "Preheat the oven to 190 degrees and layer the sauce, pasta and vegetables evenly.",
    "The drift follows the afternoon sun, so the sensor housing may need shading.",
    "Week one covers networking fundamentals; week two focuses on identity and access.",
    "I redacted two names, one phone number and an email address from the text.",
    "Some options are Chapter and Bean, The Reading Cup, and Second Pour Books.",
    "Let me know if you would like a more detailed breakdown by month.",
    "In short, the change is safe to roll out gradually behind a feature flag.",
    "I could not find any evidence of a security incident in the provided logs.",
]
MODELS = ["llama-3-8b"]
SERVICES = ["chat-gateway", "support-bot", "doc-summarizer"]


def _text(rng: random.Random, pool: list[str], lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    return " ".join(rng.sample(pool, n))


def build_requests(n_spans: int, batch: int, seed: int, service_override: str | None = None) -> list[tuple[bytes, int]]:
    """``(body, span_count)`` per request; realistic GenAI chat spans, unique random ids."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    rng = random.Random(seed)
    ids = random.SystemRandom()

    def kv(key: str, value: Any) -> KeyValue:
        if isinstance(value, bool):
            return KeyValue(key=key, value=AnyValue(bool_value=value))
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        if isinstance(value, float):
            return KeyValue(key=key, value=AnyValue(double_value=value))
        if isinstance(value, list):
            return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(
                values=[AnyValue(string_value=str(v)) for v in value])))
        return KeyValue(key=key, value=AnyValue(string_value=str(value)))

    out: list[tuple[bytes, int]] = []
    now_ns = time.time_ns()
    made = 0
    seen: set[bytes] = set()
    while made < n_spans:
        count = min(batch, n_spans - made)
        service = service_override or SERVICES[len(out) % len(SERVICES)]
        req = ExportTraceServiceRequest()
        rs = req.resource_spans.add()
        rs.resource.attributes.extend([
            kv("service.name", service),
            kv("service.version", "2.3.1"),
            kv("service.instance.id", f"{service}-{len(out) % 4}"),
            kv("host.name", f"gpu-node-{len(out) % 3 + 1}"),
            kv("deployment.environment.name", "production"),
            kv("telemetry.sdk.language", "python"),
            kv("telemetry.sdk.name", "opentelemetry"),
            kv("telemetry.sdk.version", "1.30.0"),
        ])
        ss = rs.scope_spans.add()
        ss.scope.name = "opentelemetry.instrumentation.openai_v2"
        ss.scope.version = "2.1b0"
        for _ in range(count):
            trace_id = ids.getrandbits(128).to_bytes(16, "big")
            span_id = ids.getrandbits(64).to_bytes(8, "big")
            if span_id in seen:  # astronomically unlikely; keep the promise anyway
                continue
            seen.add(span_id)
            model = rng.choice(MODELS)
            prompt = _text(rng, SENTENCES, 3, 6)
            completion = _text(rng, ANSWERS, 3, 6)
            finish = "length" if rng.random() < 0.05 else "stop"
            in_tok = len(prompt) // 4 + rng.randint(0, 20)
            out_tok = len(completion) // 4 + rng.randint(0, 20)
            duration_ns = rng.randint(150, 9000) * 1_000_000
            start = now_ns - rng.randint(0, 300) * 1_000_000_000 - duration_ns
            span = ss.spans.add()
            span.trace_id = trace_id
            span.span_id = span_id
            span.name = f"chat {model}"
            span.kind = Span.SPAN_KIND_CLIENT
            span.start_time_unix_nano = start
            span.end_time_unix_nano = start + duration_ns
            attrs = [
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.provider.name", "vllm"),
                kv("gen_ai.request.model", model),
                kv("gen_ai.response.model", model),
                kv("gen_ai.request.temperature", rng.choice([0.0, 0.2, 0.7, 1.0])),
                kv("gen_ai.request.max_tokens", rng.choice([256, 512, 1024, 2048])),
                kv("gen_ai.usage.input_tokens", in_tok),
                kv("gen_ai.usage.output_tokens", out_tok),
                kv("gen_ai.response.finish_reasons", [finish]),
                kv("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": prompt}]}])),
                kv("gen_ai.output.messages", json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": completion}],
                      "finish_reason": finish}])),
            ]
            if rng.random() < 0.35:  # plain (non-GenAI, non-OpenInference) attributes on some spans
                attrs += [
                    kv("server.address", "vllm.internal"),
                    kv("server.port", 8000),
                    kv("gen_ai.response.id", f"chatcmpl-{ids.getrandbits(96):024x}"),
                    kv("gen_ai.request.top_p", 0.9),
                    kv("user.id", f"user-{rng.randint(1, 500)}"),
                    kv("session.id", f"sess-{rng.randint(1, 2000):05d}"),
                ]
            span.attributes.extend(attrs)
            if rng.random() < 0.01:
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = "upstream timeout"
                span.attributes.append(kv("error.type", "timeout"))
            made += 1
        out.append((req.SerializeToString(), len(ss.spans)))
    return out


# ----------------------------------------------------------------------------- processes

class Proc:
    """A child in its own session/process group; stdout+stderr go to ``log_path``."""

    registry: list["Proc"] = []

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


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    import urllib.request
    import urllib.error
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


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


_ROWS_RE = re.compile(r'^monitor_store_rows_written_total\{[^}]*table="otel_traces"[^}]*\}\s+(\S+)', re.M)


def monitor_rows(metrics_port: int) -> int | None:
    status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
    if status != 200:
        return None
    m = _ROWS_RE.search(text)
    return int(float(m.group(1))) if m else 0


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
    proc = subprocess.run([python, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=300)
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


# ----------------------------------------------------------------------------- sending

@dataclass
class SendResult:
    acked_spans: int = 0
    rejected_spans: int = 0          # partial_success.rejected_spans in 200 answers
    requests_ok: int = 0
    retries_503: int = 0
    retries_429: int = 0
    retry_sleep_s: float = 0.0
    connection_retries: int = 0
    errors: list[str] = field(default_factory=list)
    failed_spans: int = 0
    first_send: float = 0.0
    last_ack: float = 0.0


def send_all(url: str, bodies: list[tuple[bytes, int]], concurrency: int, deadline: float,
             headers: dict[str, str] | None = None) -> tuple[SendResult, threading.Event, threading.Event]:
    """Start the sender threads; returns (result, go, done). Set ``go`` to start; ``done`` is set at the end."""
    import requests
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    res = SendResult()
    lock = threading.Lock()
    go, done = threading.Event(), threading.Event()
    it = iter(range(len(bodies)))
    remaining = [concurrency]
    hdrs = {"Content-Type": "application/x-protobuf", **(headers or {})}

    def worker() -> None:
        session = requests.Session()
        go.wait()
        try:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                body, n = bodies[i]
                attempts = 0
                while True:
                    if time.perf_counter() > deadline:
                        with lock:
                            res.errors.append(f"request {i}: gave up at the deadline")
                            res.failed_spans += n
                        break
                    try:
                        r = session.post(url, data=body, headers=hdrs, timeout=(10, 300))
                    except requests.RequestException as exc:
                        attempts += 1
                        with lock:
                            res.connection_retries += 1
                        if attempts > 5:
                            with lock:
                                res.errors.append(f"request {i}: {type(exc).__name__}: {exc}")
                                res.failed_spans += n
                            break
                        time.sleep(0.5 * attempts)
                        session = requests.Session()
                        continue
                    if r.status_code == 200:
                        rejected = 0
                        try:
                            resp = ExportTraceServiceResponse.FromString(r.content)
                            rejected = resp.partial_success.rejected_spans
                        except Exception:
                            pass
                        now = time.perf_counter()
                        with lock:
                            res.requests_ok += 1
                            res.acked_spans += n - rejected
                            res.rejected_spans += rejected
                            res.last_ack = max(res.last_ack, now)
                        break
                    if r.status_code in (503, 429):
                        try:
                            wait = float(r.headers.get("Retry-After", "1"))
                        except ValueError:
                            wait = 1.0
                        wait = max(0.0, min(wait, 60.0))
                        with lock:
                            if r.status_code == 503:
                                res.retries_503 += 1
                            else:
                                res.retries_429 += 1
                            res.retry_sleep_s += wait
                        time.sleep(wait)
                        continue
                    with lock:
                        res.errors.append(f"request {i}: HTTP {r.status_code}: {r.text[:300]!r}")
                        res.failed_spans += n
                    break
        finally:
            session.close()
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    for k in range(concurrency):
        threading.Thread(target=worker, name=f"sender-{k}", daemon=True).start()
    return res, go, done


# ----------------------------------------------------------------------------- systems

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

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def kill(self) -> None:
        for p in reversed(self.procs):
            p.kill()

    def logfile(self, what: str) -> Path:
        return self.logs / f"{self.run_id}-{self.name}-{what}.log"


class MonitorEmbedded(System):
    name = "monitor-embedded"

    def start(self) -> None:
        self.grpc, self.http, self.metrics = free_port(), free_port(), free_port()
        self.data = (self.dir / "chdb").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.up = Proc("monitor up", [
            *self.args.monitor_cmd, "up", "--data-dir", str(self.data), "--grpc-port", str(self.grpc),
            "--http-port", str(self.http), "--metrics-port", str(self.metrics)],
            self.logfile("up"), cwd=self.dir)
        self.procs = [self.up]
        wait_until("monitor up to answer /metrics and /health",
                   lambda: monitor_rows(self.metrics) is not None
                   and http_get(f"http://127.0.0.1:{self.http}/health")[0] == 200,
                   self.procs, self.args.start_timeout)

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


class MonitorKafka(System):
    name = "monitor-kafka"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        kport = free_port()
        bootstrap_file = self.logfile("broker-stdout")
        self.broker = Proc("kafka broker", [
            self.args.python, str(BROKER_PY), "run", "--data-dir", str((self.dir / "kafka").resolve()),
            "--port", str(kport)], self.logfile("broker"), stdout_path=bootstrap_file)
        self.procs = [self.broker]

        def bootstrap() -> str | None:
            try:
                m = re.search(r"^BOOTSTRAP=(\S+)", bootstrap_file.read_text(), re.M)
            except OSError:
                return None
            return m.group(1) if m else None

        self.bootstrap = wait_until("the Kafka broker to print BOOTSTRAP=", bootstrap, self.procs,
                                    self.args.start_timeout)
        self.broker.remember_children()  # the JVM runs in a session of its own
        self.grpc, self.http, self.sc_metrics, self.in_metrics = free_port(), free_port(), free_port(), free_port()
        self.data = (self.dir / "chdb").resolve()
        self.spool = (self.dir / "spool" / "spool.sqlite").resolve()
        self.sidecar = Proc("monitor sidecar", [
            *self.args.monitor_cmd, "sidecar", "--kafka", self.bootstrap, "--spool", str(self.spool),
            "--grpc-port", str(self.grpc), "--http-port", str(self.http), "--metrics-port", str(self.sc_metrics)],
            self.logfile("sidecar"), cwd=self.dir)
        self.procs.append(self.sidecar)
        wait_until("monitor sidecar to answer /health", lambda: http_get(
            f"http://127.0.0.1:{self.http}/health")[0] == 200, self.procs, self.args.start_timeout)
        self.ingest = Proc("monitor ingest", [
            *self.args.monitor_cmd, "ingest", "--kafka", self.bootstrap, "--clickhouse", f"chdb://{self.data}",
            "--metrics-port", str(self.in_metrics)], self.logfile("ingest"), cwd=self.dir)
        self.procs.append(self.ingest)
        wait_until("monitor ingest to answer /metrics", lambda: monitor_rows(self.in_metrics) is not None,
                   self.procs, self.args.start_timeout)
        self.broker.remember_children()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}/v1/traces"

    def stored(self) -> int | None:
        return monitor_rows(self.in_metrics)

    def extra(self) -> dict[str, Any]:
        return {"sidecar_metrics": scrape(self.sc_metrics), "ingest_metrics": scrape(self.in_metrics)}

    def stop_and_count(self) -> dict[str, Any]:
        stops = {"monitor sidecar": self.sidecar.stop(signal.SIGINT, self.args.stop_timeout),
                 "monitor ingest": self.ingest.stop(signal.SIGINT, self.args.stop_timeout),
                 "kafka broker": self.broker.stop(signal.SIGTERM, self.args.stop_timeout)}
        counts = chdb_count(self.args.python, self.data)
        spool_left = None
        if self.spool.exists():
            try:
                conn = sqlite3.connect(f"file:{self.spool}?mode=ro", uri=True)
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                spool_left = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
                conn.close()
            except sqlite3.Error as exc:
                spool_left = f"unreadable: {exc}"
        return {"stop": stops, "counts": counts, "stored_after_stop": counts["spans"], "spool_rows_left": spool_left}


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


# ----------------------------------------------------------------------------- one run

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
        per0 = {p.name: cpu_jiffies([p.pid]) / CLK_TCK for p in sysm.procs}
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
        per1 = {p.name: cpu_jiffies([p.pid]) / CLK_TCK for p in sysm.procs}
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


# ----------------------------------------------------------------------------- phoenix venv

def ensure_phoenix(venv: Path, install: bool) -> str | None:
    """Create/reuse the Phoenix virtualenv; returns None when usable, else why not."""
    exe = venv / "bin" / "phoenix"
    py = venv / "bin" / "python"
    if exe.exists() and py.exists():
        probe = subprocess.run([str(py), "-c", "import phoenix, importlib.metadata as m; "
                                "print(m.version('arize-phoenix'))"], capture_output=True, text=True)
        if probe.returncode == 0:
            log(f"phoenix {probe.stdout.strip()} in {venv}")
            return None
    if not install:
        return f"no working Phoenix in {venv} (and --no-install-phoenix)"
    log(f"installing arize-phoenix into {venv} (once; may take a few minutes)")
    if not py.exists():
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        p = subprocess.run([base_python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if p.returncode != 0:
            return f"python -m venv {venv} failed:\n{p.stdout}\n{p.stderr}"
    p = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "arize-phoenix"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return f"pip install arize-phoenix failed (exit {p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    if not exe.exists():
        return f"pip installed arize-phoenix but {exe} does not exist"
    return None


# ----------------------------------------------------------------------------- report

COLUMNS = [
    ("system", "system", "{}"),
    ("sent", "spans_sent", "{}"),
    ("acked", "acknowledged", "{}"),
    ("stored", "stored_live", "{}"),
    ("stored after stop", "stored_after_stop", "{}"),
    ("accept spans/s", "accept_spans_per_s", "{:,.0f}"),
    ("e2e spans/s", "e2e_spans_per_s", "{:,.0f}"),
    ("e2e s", "e2e_seconds", "{:.2f}"),
    ("503 retries", "retries_503", "{}"),
    ("errors", "error_count", "{}"),
    ("server CPU s", "server_cpu_s", "{:.1f}"),
    ("machine busy %", "machine_busy_pct", "{:.0f}"),
    ("other CPU s", "other_cpu_s", "{:.1f}"),
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: the median of every numeric field over its runs (the only run's values if one)."""
    out: dict[str, dict[str, Any]] = {}
    for name in SYSTEMS:
        mine = [r for r in runs if r["system"] == name]
        if not mine:
            continue
        row: dict[str, Any] = {"system": name, "runs": len(mine),
                               "failures": [r["failure"] for r in mine if r.get("failure")]}
        for key in [k for _, k, _ in COLUMNS[1:]] + ["window_s", "background_busy_pct"]:
            vals = [r.get(key) for r in mine if isinstance(r.get(key), (int, float))]
            row[key] = statistics.median(vals) if vals else None
        if row["e2e_spans_per_s"] is None:
            partial = [r.get("e2e_partial_spans_per_s") for r in mine if r.get("e2e_partial_spans_per_s")]
            row["e2e_note"] = f"never stored all spans (partial rate {statistics.median(partial):,.0f}/s)" \
                if partial else None
        out[name] = row
    return out


def render(summary: dict[str, dict[str, Any]]) -> str:
    cells = [[h for h, _, _ in COLUMNS]]
    for row in summary.values():
        line = []
        for _, key, fmt in COLUMNS:
            v = row.get(key)
            if v is None:
                line.append("FAILED" if key == "system" and row["failures"] else "-")
            else:
                line.append(fmt.format(v) if not isinstance(v, float) or fmt != "{}" else f"{v:g}")
        if row.get("failures") and len(row["failures"]) == row["runs"]:
            line[0] += " (failed)"
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    runs = max((row["runs"] for row in summary.values()), default=1)
    if runs > 1:
        lines.insert(0, f"(medians over {runs} runs per system)")
    ph = summary.get("phoenix", {}).get("e2e_spans_per_s")
    for name in ("monitor-embedded", "monitor-kafka"):
        mine = summary.get(name, {}).get("e2e_spans_per_s")
        ratio = f"{mine / ph:.2f}x" if mine and ph else "n/a"
        lines.append(f"end-to-end ratio {name} / phoenix: {ratio}")
    for row in summary.values():
        if row.get("e2e_note"):
            lines.append(f"{row['system']}: {row['e2e_note']}")
        if row.get("stored_after_stop") is not None and row.get("acknowledged") is not None \
                and row["stored_after_stop"] != row["acknowledged"]:
            lines.append(f"{row['system']}: acknowledged {row['acknowledged']:g} but {row['stored_after_stop']:g} "
                         f"stored after a graceful stop ({row['acknowledged'] - row['stored_after_stop']:+g} lost)")
        if (row.get("other_cpu_s") or 0) > 0.1 * (row.get("window_s") or 1e9):
            lines.append(f"{row['system']}: WARNING: processes outside the benchmark used {row['other_cpu_s']:.1f} "
                         "CPU-seconds during the run; the machine was not quiet")
        for f in row.get("failures") or []:
            lines.append(f"{row['system']}: FAILED: {f.splitlines()[0]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Sustained end-to-end ingest benchmark: monitor (embedded, Kafka) "
                                             "vs Arize Phoenix.")
    ap.add_argument("--spans", type=int, default=20000, help="spans per run [20000]")
    ap.add_argument("--batch", type=int, default=256, help="spans per OTLP request [256]")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client threads [8]")
    ap.add_argument("--repeat", type=int, default=1, help="runs per system; medians are reported [1]")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--timeout", type=float, default=300, help="per run: seconds to send and store everything [300]")
    ap.add_argument("--start-timeout", type=float, default=180, help="seconds for a system to come up [180]")
    ap.add_argument("--stop-timeout", type=float, default=60, help="seconds for a graceful stop [60]")
    ap.add_argument("--poll-interval", type=float, default=0.1, help="seconds between stored-count polls [0.1]")
    ap.add_argument("--seed", type=int, default=42, help="seed of the text generator [42]")
    ap.add_argument("--phoenix-venv", type=Path, default=DEFAULT_PHOENIX_VENV,
                    help=f"virtualenv for arize-phoenix, created if missing [{DEFAULT_PHOENIX_VENV}]")
    ap.add_argument("--no-install-phoenix", action="store_true", help="skip Phoenix unless already installed")
    ap.add_argument("--workdir", type=Path, default=None, help="data and logs [a new /tmp/llm-monitor-bench-* dir]")
    ap.add_argument("--keep", action="store_true", help="keep the data directories (logs are always kept)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON [<workdir>/ingest-<timestamp>.json under /tmp]")
    args = ap.parse_args(argv)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"unknown systems: {', '.join(sorted(unknown))}")
    args.python = sys.executable
    probe = subprocess.run([sys.executable, "-c", "import monitor, chdb, clickhouse_connect, requests"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"run this with the project's virtualenv (import failed):\n{probe.stderr}", file=sys.stderr)
        return 2
    args.monitor_cmd = [sys.executable, "-m", "monitor"]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="llm-monitor-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.out or workdir / f"ingest-{stamp}.json"

    def _term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, _term)

    cmdline = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["ingest.py", *argv])
    print(f"command: {cmdline}")
    print(f"cpus: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))}), "
          f"python {sys.version.split()[0]}, workdir {workdir}")

    phoenix_skip = None
    if "phoenix" in systems:
        phoenix_skip = ensure_phoenix(args.phoenix_venv.expanduser(), not args.no_install_phoenix)
        if phoenix_skip:
            print(f"SKIPPING phoenix: {phoenix_skip}")
            systems.remove("phoenix")
        args.phoenix_venv = args.phoenix_venv.expanduser()

    t = time.perf_counter()
    bodies = build_requests(args.spans, args.batch, args.seed)
    warmup = build_requests(args.batch, args.batch, args.seed + 1, service_override=WARMUP_SERVICE)
    size = sum(len(b) for b, _ in bodies)
    print(f"load: {args.spans} spans in {len(bodies)} requests of <= {args.batch} "
          f"({size / 1e6:.1f} MB protobuf, {size / max(1, args.spans):.0f} B/span), built in "
          f"{time.perf_counter() - t:.1f}s; concurrency {args.concurrency}; + 1 warm-up request per run", flush=True)

    classes = {"monitor-embedded": MonitorEmbedded, "monitor-kafka": MonitorKafka, "phoenix": Phoenix}
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "command": cmdline, "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "started": stamp, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "payload_bytes": size, "phoenix_skipped": phoenix_skip, "runs": runs, "workdir": str(workdir),
    }
    rc = 0
    try:
        for rep in range(args.repeat):
            for name in systems:
                log(f"=== {name} (run {rep + 1}/{args.repeat}) ===")
                runs.append(run_system(classes[name], args, workdir, f"r{rep + 1}", bodies, warmup))
    except KeyboardInterrupt:
        log("interrupted; killing everything started")
        rc = 130
    finally:
        Proc.kill_all()
        summary = summarize(runs)
        result["summary"] = summary
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2, default=str))
        except OSError as exc:
            log(f"could not write {out_path}: {exc}")
        if summary:
            print()
            print(render(summary))
        print(f"\nresults: {out_path}\nlogs: {workdir / 'logs'}")
    if rc == 0 and any(r.get("failure") for r in runs):
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
