"""`monitor up` as processes: the data plane apart from the analysis plane.

- The capture proxy's latency does not move while a heavy check runs in the store process (a ratio).
- A killed proxy process is restarted, and the log says why.
- A killed store process loses nothing the receiver acknowledged, and duplicates nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import PRIORITY_ENV, MONITOR, chdb_query, free_port, otlp_request, post_traces, wait_until
from fake_upstream import FakeUpstream

from monitor.sidecar.proxy.native import native_binary


def _metrics(port: int) -> dict[str, float]:
    from monitor.status import fetch
    snap = fetch(f"http://127.0.0.1:{port}/metrics")
    return {f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}": value
            for name, samples in snap.items() for labels, value in samples}


def _pid(mport: int, process: str) -> int:
    return int(_metrics(mport).get(f"monitor_process_pid{{process={process}}}", 0))


class _Up:
    def __init__(self, tmp_path, upstream: str | None = None, env: dict | None = None,
                 production_priority: bool = False):
        self.data = tmp_path / "data"
        self.http, self.grpc, self.mport, self.admin = free_port(), free_port(), free_port(), free_port()
        self.proxy = free_port()
        cmd = [*MONITOR, "up", "--data-dir", str(self.data), "--http-port", str(self.http), "--grpc-port",
               str(self.grpc), "--metrics-port", str(self.mport), "--admin-port", str(self.admin), "--no-dashboard"]
        if upstream:
            cmd += ["--upstream", upstream, "--proxy-port", str(self.proxy)]
        self.log = tmp_path / "up.log"
        self._f = open(self.log, "w")
        # production_priority: the processes' default niceness (the suite's conftest runs them all at 0)
        base = {k: v for k, v in os.environ.items() if not (production_priority and k in PRIORITY_ENV)}
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT,
                                     env=dict(base, MONITOR_CHECKS__ENABLED="false", **(env or {})))
        wait_until(lambda: "ready; Ctrl-C to stop" in self.text() or self.proc.poll() is not None, timeout=180,
                   message="monitor up ready")
        assert self.proc.poll() is None, self.text()[-3000:]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._f.close()
        return self.proc.returncode


def _first_byte_ms(port: int, i: int) -> float:
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": f"q{i}"}]}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read(1)
    t = (time.perf_counter() - t0) * 1000
    resp.read()
    conn.close()
    assert first and resp.status == 200
    return t


def _load(port: int, seconds: float, streams: int = 6) -> list[float]:
    out: list[float] = []
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        i = 0
        while time.monotonic() < stop:
            out.append(_first_byte_ms(port, k * 100000 + i))
            i += 1
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(out)


def _q(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _seed_texts(port: int, n: int, hours_ago: float, topic: str) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    now = time.time_ns() - int(hours_ago * 3600e9)
    for start in range(0, n, 250):
        req = trace_service_pb2.ExportTraceServiceRequest()
        ss = req.resource_spans.add().scope_spans.add()
        for j in range(start, min(n, start + 250)):
            sid = (hash((topic, j)) & (2**63 - 1)) or 1
            span = ss.spans.add(trace_id=sid.to_bytes(16, "big"), span_id=sid.to_bytes(8, "big"), name="chat heavy",
                                start_time_unix_nano=now + j * 1_000_000, end_time_unix_nano=now + j * 1_000_000 + 10)
            for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "heavy"),
                               ("gen_ai.input.messages", json.dumps([{"role": "user", "content":
                                                                      f"{topic} question number {j} about item {j * 7}"}]))):
                span.attributes.add(key=key).value.string_value = value
        assert post_traces(port, req.SerializeToString()) == 200


def test_proxy_latency_does_not_move_while_a_heavy_check_runs(tmp_path):
    upstream = FakeUpstream(tokens=["tok"] * 8, pace_s=0.005).start()
    up = _Up(tmp_path, upstream.url, env={"MONITOR_CHECKS__SEMANTIC__SAMPLE": "1500",
                                           "MONITOR_CHECKS__SEMANTIC__FIELDS": "prompt"}, production_priority=True)
    check = None
    try:
        _seed_texts(up.http, 1500, 0.2, "database")
        _seed_texts(up.http, 1500, 24.2, "shopping")
        wait_until(lambda: _metrics(up.mport).get("monitor_store_rows_written_total{process=store,table=inference_events}",
                                                   0) >= 3000, timeout=120, message="the texts stored")
        pids = {role: _pid(up.mport, role) for role in ("proxy", "pipeline", "store")}
        priorities = {role: _priority(pid) for role, pid in pids.items()}
        groups = {role: _cpu_cgroup(pid) for role, pid in pids.items()}
        _load(up.proxy, 1.0)  # warm the connection pools
        idle = _load(up.proxy, 4.0)
        check = subprocess.Popen([*MONITOR, "check", "--only", "semantic_drift", "--window", "1h", "--reference",
                                  "day"], env=dict(os.environ, MONITOR_CHECKS__ADMIN_PORT=str(up.admin)),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # torch and the model load (one core, for seconds), then the embedding of 3,000 texts starts
        wait_until(lambda: "embedding model" in up.text(), timeout=120, message="the check's model loaded")
        time.sleep(1.0)
        busy = _load(up.proxy, 4.0)
        still_running = check.poll() is None
    finally:
        if check is not None and check.poll() is None:
            check.kill()
        rc = up.stop()
        upstream.stop()
    assert rc == 0, up.text()[-3000:]
    # Under contention the proxy goes first: the analysis side runs at a higher niceness, set on its
    # process and on its session's autogroup (else the scheduler shares the CPU fairly between sessions),
    # and under SCHED_IDLE (it gives the CPU up the moment the proxy wakes)
    auto = Path("/proc/self/autogroup").exists()
    assert priorities == {"proxy": (0, 0 if auto else None, False), "pipeline": (10, 10 if auto else None, True),
                          "store": (19, 19 if auto else None, True)}, priorities
    # and the store in a cgroup marked cpu.idle (processes.idle_cgroup), where this machine lets it create one:
    # preempted at once by any task outside it, whatever session it is in
    store_group = groups["store"]
    if os.geteuid() == 0 and store_group is not None and store_group[1] is not None:
        name = store_group[0].rsplit("/", 1)[-1]
        assert re.fullmatch(r"llm-monitor-\d+-idle", name) and store_group[1] == 1, groups
        assert groups["proxy"][0] == groups["pipeline"][0] != store_group[0], groups
        assert "runs in the idle cgroup" in up.text()
        assert not Path(store_group[2]).exists(), "the idle cgroup outlived monitor up"
    else:
        assert "not in an idle cgroup" in up.text(), (groups, up.text()[-2000:])
    assert still_running, "the check must still be running while the busy load is measured"
    assert len(idle) > 50 and len(busy) > 50
    p50_idle, p50_busy, p90_idle, p90_busy = _q(idle, .5), _q(busy, .5), _q(idle, .9), _q(busy, .9)
    # the store process embeds texts on one core; the proxy is a process of its own: no GIL to wait for
    assert p50_busy <= 1.5 * p50_idle + 5.0, (p50_idle, p50_busy)
    assert p90_busy <= 1.5 * p90_idle + 10.0, (p90_idle, p90_busy)


def _cpu_cgroup(pid: int) -> tuple[str, int | None, str] | None:
    """(the cpu cgroup of a process, its cpu.idle or None, its directory) (cgroup v1's cpu hierarchy or v2)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            d = Path("/sys/fs/cgroup/cpu") / path.lstrip("/")
            break
    else:
        path = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
        if path is None:
            return None
        d = Path("/sys/fs/cgroup") / path.lstrip("/")
    try:
        idle = int((d / "cpu.idle").read_text())
    except OSError:
        idle = None
    return path, idle, str(d)


def _priority(pid: int) -> tuple[int, int | None, bool]:
    """(niceness, the niceness of its autogroup or None without autogroups, runs under SCHED_IDLE) of a
    process."""
    nice = os.getpriority(os.PRIO_PROCESS, pid)
    idle = os.sched_getscheduler(pid) == os.SCHED_IDLE
    try:
        auto = Path(f"/proc/{pid}/autogroup").read_text()  # "/autogroup-123 nice 19"
    except OSError:
        return nice, None, idle
    return nice, int(auto.split("nice")[1]), idle


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the live children of ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in task.read_text().split():
            try:
                out.append((int(c), Path(f"/proc/{c}/comm").read_text().strip()))
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("impl", ["python", "native"])
def test_a_killed_proxy_process_is_restarted_and_serves_again(tmp_path, impl):
    """Either request path: the proxy process killed is restarted; the native binary dies with the process
    that started it (no orphan holding the port), and the binary killed on its own takes its process along
    (then restarted, as any proxy process)."""
    if impl == "native" and native_binary() is None:
        pytest.skip("NATIVE PROXY NOT BUILT: monitor/_native/monitor-proxy is missing (pip install -e . with cargo "
                    "on PATH builds it)")
    upstream = FakeUpstream(pace_s=0.001).start()
    up = _Up(tmp_path, upstream.url, env={"MONITOR_PROXY__IMPLEMENTATION": impl})
    try:
        assert _first_byte_ms(up.proxy, 1) > 0
        assert ("[native request path]" in up.text()) == (impl == "native")
        pid = _pid(up.mport, "proxy")
        assert pid > 0
        binaries = [c for c, comm in _children(pid) if comm == "monitor-proxy"]
        assert len(binaries) == (1 if impl == "native" else 0), _children(pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: _pid(up.mport, "proxy") not in (0, pid), timeout=30, message="a new proxy process")
        wait_until(lambda: _try(lambda: _first_byte_ms(up.proxy, 2)), timeout=10, message="the proxy serving again")
        m = _metrics(up.mport)
        assert m["monitor_process_restarts_total{process=proxy}"] == 1
        for b in binaries:  # PR_SET_PDEATHSIG: the binary went with the process that started it
            wait_until(lambda b=b: not _alive(b), timeout=15, message=f"the old monitor-proxy {b} gone")
        if impl == "native":
            pid2 = _pid(up.mport, "proxy")
            (native2,) = [c for c, comm in _children(pid2) if comm == "monitor-proxy"]
            os.kill(native2, signal.SIGKILL)
            wait_until(lambda: _pid(up.mport, "proxy") not in (0, pid2), timeout=30,
                       message="the proxy process ended with its binary and was restarted")
            wait_until(lambda: _try(lambda: _first_byte_ms(up.proxy, 3)), timeout=10,
                       message="the proxy serving again")
            assert _metrics(up.mport)["monitor_process_restarts_total{process=proxy}"] == 2
    finally:
        rc = up.stop()
        upstream.stop()
    assert rc == 0
    assert "proxy killed by SIGKILL; restarting it" in up.text()
    if impl == "native":
        assert "the native proxy (monitor-proxy) was killed by signal 9" in up.text()


def _try(fn) -> bool:
    try:
        fn()
        return True
    except (OSError, AssertionError, http.client.HTTPException):
        return False


def test_killing_the_store_process_loses_nothing_the_receiver_acknowledged(tmp_path):
    up = _Up(tmp_path)
    acked: list[int] = []
    statuses: list[int] = []
    stop = threading.Event()

    def sender() -> None:
        i = 0
        while not stop.is_set():
            status = post_traces(up.http, otlp_request(i, spans=5), timeout=30)
            statuses.append(status)
            if status == 200:
                acked.append(i)
            i += 1
    t = threading.Thread(target=sender)
    t.start()
    try:
        wait_until(lambda: len(acked) > 20, timeout=60, message="traffic acknowledged")
        pid = _pid(up.mport, "store")
        os.kill(pid, signal.SIGKILL)  # mid-batch, most likely
        wait_until(lambda: _pid(up.mport, "store") not in (0, pid), timeout=120, message="a new store process")
        time.sleep(1.0)
        stop.set()
        t.join(60)
        assert set(statuses) <= {200, 503}, set(statuses)  # the receiver never saw the store go
        want = 5 * len(acked)
        wait_until(lambda: _metrics(up.mport).get("monitor_spool_messages{process=pipeline}", 1) == 0, timeout=120,
                   message="the spool drained")
    finally:
        stop.set()
        rc = up.stop()
    assert rc == 0, up.text()[-3000:]
    assert "store killed by SIGKILL; restarting it" in up.text()
    assert chdb_query(up.data, "SELECT count(), uniqExact(SpanId) FROM otel_traces")[0] == [want, want]
    assert chdb_query(up.data, "SELECT count() FROM inference_events")[0][0] == want
