"""`monitor ingest` with one and with two processes on a topic of two partitions.

Per cell (one process, then two in one consumer group): a new topic of two partitions, the ingest
processes started on it (``kafka.spans_topic``) and waited for until the group has settled (each
process logged its partitions: with two, one each), then the spans produced straight into it (one
record per OTLP request, lz4, acks=all, alternating between the partitions, as `monitor sidecar`
would write them). The clock runs from the first record sent to the last row stored (start-up, imports
and the group join are not ingest work; the topic fills in ~1 s while ingest consumes); rows are counted on the processes' /metrics and, after a graceful
stop, in their chdb directories (one per process: chdb allows one process per directory), with the
span ids compared across them for duplicates.

Filling the topic before the processes join would measure something else: the first member to join
takes both partitions and works through the whole backlog as one batch (up to
``ingest.max_batch_messages``) before it rejoins the group, so the second gets nothing to do.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from procs import BenchError, log, wait_until
from procstat import CLK_TCK, cpu_jiffies

from ingestbench.systems import PARTITIONS, System


class IngestDrain(System):
    name = "ingest-drain"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = []
        self.start_broker()

    def fill(self, topic: str, bodies: list[tuple[bytes, int]]) -> float:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", compression_type="lz4",
                                 max_request_size=8 << 20, linger_ms=5)
        t0 = time.perf_counter()
        futures = [producer.send(topic, value=body, partition=i % PARTITIONS) for i, (body, _) in enumerate(bodies)]
        producer.flush()
        for f in futures:
            f.get(timeout=60)
        producer.close()
        return time.perf_counter() - t0

    def create_topic(self, topic: str) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        finally:
            admin.close()

    def settled(self, topic: str, processes: int) -> bool:
        """Each process's last "assigned ..." line names its share of ``topic``'s partitions."""
        shares = []
        for p, _, _ in self.ingests:
            try:
                lines = [ln for ln in p.log_path.read_text(errors="replace").splitlines() if "assigned " in ln]
            except OSError:
                return False
            if not lines:
                return False
            shares.append(len(re.findall(rf"\b{re.escape(topic)}-\d+", lines[-1])))
        return sum(shares) == PARTITIONS and all(n == PARTITIONS // processes for n in shares)

    def drain(self, processes: int, bodies: list[tuple[bytes, int]]) -> dict[str, Any]:
        self.name = f"ingest-drain-{processes}"  # group id and log names per cell
        topic = f"bench_spans_{processes}"
        n = sum(c for _, c in bodies)
        self.create_topic(topic)
        self.start_ingest(processes, {"MONITOR_KAFKA__SPANS_TOPIC": topic})
        t_join = time.perf_counter()
        wait_until(f"{processes} ingest process(es) to share the partitions of {topic}",
                   lambda: self.settled(topic, processes), self.procs, self.args.start_timeout)
        out: dict[str, Any] = {"processes": processes, "group_settled_s": round(time.perf_counter() - t_join, 1)}
        pids = [p.pid for p, _, _ in self.ingests]
        cpu0 = cpu_jiffies(pids) / CLK_TCK
        t_start = time.perf_counter()
        out["fill_seconds"] = round(self.fill(topic, bodies), 2)
        samples: list[tuple[float, int]] = []
        deadline = t_start + self.args.timeout
        while True:
            v = self.ingest_stored()
            now = time.perf_counter()
            if v is not None:
                samples.append((now, v))
                if v >= n:
                    break
            if now > deadline:
                break
            for p, _, _ in self.ingests:
                p.check()
            time.sleep(self.args.poll_interval)
        cpu1 = cpu_jiffies(pids) / CLK_TCK
        first = next(((t, c) for t, c in samples if c > 0), None)
        last = samples[-1] if samples else None
        out["stored_live"] = last[1] if last else None
        if last and last[1] >= n:
            out["from_first_send_seconds"] = round(last[0] - t_start, 3)
            out["spans_per_s"] = round(n / (last[0] - t_start), 1)
            if first and first[1] < n:  # a busy process may answer /metrics late: not always seen
                out["drain_seconds"] = round(last[0] - first[0], 3)
                out["drain_spans_per_s"] = round((n - first[1]) / (last[0] - first[0]), 1)
        else:
            out["failure"] = f"stored {last[1] if last else None} of {n} in {self.args.timeout:.0f}s"
        out["ingest_cpu_s"] = round(cpu1 - cpu0, 2)
        out["ingest_cpu_us_per_span"] = round(1e6 * (cpu1 - cpu0) / n, 1)
        after = self.stop_ingest_and_count({}, stop_broker=False)
        after.pop("stop", None)
        out.update(after)
        self.procs = [p for p in self.procs if p is self.broker]
        return out


def run_scaling(args: argparse.Namespace, workdir: Path, run_id: str,
                bodies: list[tuple[bytes, int]]) -> dict[str, Any]:
    """One process, then two; ``ratio`` = rate(2) / rate(1), rates from the first send to the last row."""
    n = sum(c for _, c in bodies)
    cell = IngestDrain(args, workdir, run_id)
    out: dict[str, Any] = {"system": "ingest-scaling", "run": run_id, "spans_sent": n, "partitions": PARTITIONS}
    try:
        cell.start()
        for k in (1, 2):
            res = cell.drain(k, bodies)
            out[f"ingest_{k}"] = res
            log(f"ingest-scaling: {k} process(es): {res.get('spans_per_s')} spans/s from the first send, "
                f"{res.get('drain_spans_per_s')} from the first stored row "
                f"(stored after stop {res.get('stored_after_stop')}, duplicates "
                f"{res.get('duplicates_across_processes', 0)})")
        r1, r2 = out["ingest_1"].get("spans_per_s"), out["ingest_2"].get("spans_per_s")
        out["ratio"] = round(r2 / r1, 2) if r1 and r2 else None
    except BenchError as exc:
        log(f"ingest-scaling: FAILED: {exc}")
        out["failure"] = str(exc)
    finally:
        cell.kill()
    return out
