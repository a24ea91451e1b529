"""Faults lose nothing and duplicate nothing: broker killed, ingest killed, sidecar killed, store failing,
``monitor up`` interrupted. Every test counts stored span ids against acknowledged ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import MONITOR, ROOT, chdb_query, free_port, kafka_broker, otlp_request, post_traces, wait_until

from monitor.errors import StoreError
from monitor.runtime.apps import Ingest, Sidecar

pytestmark = pytest.mark.slow


@pytest.fixture
def own_kafka(tmp_path):
    """A broker of this test's own: these tests kill it."""
    broker = kafka_broker.KafkaBroker.start(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    yield broker
    broker.stop()


def _span_ids(store) -> tuple[int, int]:
    return store.query_rows("SELECT count(), uniqExact(SpanId) FROM otel_traces")[0]


def test_broker_killed_while_spans_keep_arriving(own_kafka, settings, store):
    settings.kafka.bootstrap_servers = [own_kafka.bootstrap]
    settings.kafka.delivery_timeout_ms = 5000
    ingest = Ingest(settings)
    ingest.start()
    sidecar = Sidecar(settings)
    sidecar.start()
    port = settings.receiver.http_port
    try:
        accepted = 0
        i = 0
        for _ in range(20):  # broker up
            assert post_traces(port, otlp_request(i, spans=5)) == 200
            accepted += 5
            i += 1
        wait_until(lambda: _span_ids(store)[0] > 0, timeout=60, message="first spans through Kafka")
        own_kafka.kill()
        down_until = time.monotonic() + 4
        while time.monotonic() < down_until:  # broker dead: the receiver keeps answering 200
            assert post_traces(port, otlp_request(i, spans=5)) == 200
            accepted += 5
            i += 1
            time.sleep(0.02)
        spooled, _, _ = sidecar.spool.stats()
        assert spooled > 0, "with the broker dead, accepted spans must wait in the spool"
        own_kafka.start_again()
        for _ in range(20):  # broker back
            assert post_traces(port, otlp_request(i, spans=5)) == 200
            accepted += 5
            i += 1
        wait_until(lambda: _span_ids(store)[0] >= accepted, timeout=120, interval=0.5,
                   message=f"{accepted} spans after the broker came back")
        time.sleep(1)  # anything extra (a duplicate) would land now
        assert _span_ids(store) == (accepted, accepted)
        assert sidecar.spool.stats()[0] == 0
    finally:
        sidecar.stop()
        ingest.stop()


def test_store_failing_for_a_while_delays_but_loses_and_duplicates_nothing(kafka, settings, store):
    settings.kafka.bootstrap_servers = [kafka.bootstrap]
    ingest = Ingest(settings)
    real_write = ingest.writer.write_native
    failures = []

    def flaky_write(blocks, counts, token):
        if len(failures) < 4:
            # half of the tables get written before the "outage": the retry must not duplicate them
            real_write({k: v for k, v in blocks.items() if k == "otel_traces"}, counts, token)
            failures.append(token)
            raise StoreError("simulated: ClickHouse refused the insert (Too many parts)")
        return real_write(blocks, counts, token)

    ingest.writer.write_native = flaky_write
    ingest.start()
    sidecar = Sidecar(settings)
    sidecar.start()
    try:
        for i in range(30):
            assert post_traces(settings.receiver.http_port, otlp_request(i, spans=4)) == 200
        wait_until(lambda: store.query_rows("SELECT count() FROM inference_events")[0][0] >= 120, timeout=120,
                   message="120 events after the store recovered")
        time.sleep(1)
        assert len(failures) == 4
        assert _span_ids(store) == (120, 120)
        assert store.query_rows("SELECT count(), uniqExact(span_id) FROM inference_events")[0] == (120, 120)
    finally:
        sidecar.stop()
        ingest.stop()


def test_ingest_killed_between_insert_and_commit(kafka, tmp_path):
    from kafka import KafkaProducer

    from monitor.otlp.split import split_for_kafka
    from monitor.otlp.codec import decode_message

    topic, group, chdb = f"crash_{os.getpid()}_{time.time_ns()}", f"g_{time.time_ns()}", tmp_path / "chdb"
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    for i in range(400):
        msg = decode_message("traces", otlp_request(i))
        for key, value in split_for_kafka("traces", msg, 1_000_000).messages:
            producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    crash = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_ingest.py"), kafka.bootstrap, str(chdb),
                            group, topic], capture_output=True, text=True, timeout=200)
    assert crash.returncode == 9, crash.stdout + crash.stderr[-4000:]
    assert "dying before commit" in crash.stdout
    first = chdb_query(chdb, "SELECT count() FROM otel_traces")[0][0]
    assert 0 < first < 400, "the crashed ingest must have stored part of the topic"

    metrics_port = free_port()
    env = dict(os.environ, MONITOR_KAFKA__SPANS_TOPIC=topic, MONITOR_KAFKA__METRICS_TOPIC=topic + "_m",
               MONITOR_KAFKA__LOGS_TOPIC=topic + "_l")
    proc = subprocess.Popen([*MONITOR, "ingest", "--kafka", kafka.bootstrap, "--clickhouse", f"chdb://{chdb}",
                             "--group-id", group, "--metrics-port", str(metrics_port)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        from monitor.status import fetch, summary

        def done():
            try:
                s = summary(fetch(f"http://127.0.0.1:{metrics_port}/metrics"))
            except OSError:
                return False
            return s["store"]["rows_written"].get("otel_traces", 0) >= 400 - first
        wait_until(done, timeout=120, interval=0.5, message="the restarted ingest to catch up")
        time.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "replaying unfinished batch" in err
    assert chdb_query(chdb, "SELECT count(), uniqExact(SpanId) FROM otel_traces")[0] == [400, 400]
    assert chdb_query(chdb, "SELECT count(), uniqExact(span_id) FROM inference_events")[0] == [400, 400]


def test_sidecar_killed_twice_loses_and_duplicates_nothing(own_kafka, settings, store, tmp_path):
    settings.kafka.bootstrap_servers = [own_kafka.bootstrap]
    own_kafka.kill()
    http_port, spool = free_port(), tmp_path / "sidecar-spool.sqlite"
    env = dict(os.environ, MONITOR_KAFKA__SPANS_TOPIC=settings.kafka.spans_topic,
               MONITOR_KAFKA__METRICS_TOPIC=settings.kafka.metrics_topic,
               MONITOR_KAFKA__LOGS_TOPIC=settings.kafka.logs_topic)
    cmd = [*MONITOR, "sidecar", "--kafka", own_kafka.bootstrap, "--spool", str(spool), "--http-port",
           str(http_port), "--grpc-port", str(free_port()), "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: post_traces(http_port, otlp_request(0, spans=5)) == 200, timeout=60,
                   message="the sidecar to answer")
        for i in range(1, 40):
            assert post_traces(http_port, otlp_request(i, spans=5)) == 200
    finally:
        proc.kill()  # SIGKILL: no flush, no goodbye
        proc.communicate(timeout=30)
    own_kafka.start_again()
    # Second crash: the broker acknowledged the spooled messages, the sidecar dies before deleting them.
    crash = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_sidecar.py"), own_kafka.bootstrap,
                            str(spool), settings.kafka.spans_topic, settings.kafka.metrics_topic,
                            settings.kafka.logs_topic], capture_output=True, text=True, timeout=180)
    assert crash.returncode == 9, crash.stdout + crash.stderr
    assert "kafka acknowledged 40 messages" in crash.stdout  # one message per request
    ingest = Ingest(settings)
    ingest.start()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_until(lambda: _span_ids(store)[0] >= 200, timeout=120, interval=0.5,
                   message="the 200 spans spooled before the crash")
        # the spans were in Kafka before the crash: ingest may store them before the restarted sidecar
        # has looked at what it had in flight; stop it only once it has
        wait_until(lambda: any("were already in Kafka" in ln for ln in lines), timeout=60, interval=0.2,
                   message="the restarted sidecar's reconciliation")
        time.sleep(1)
        assert _span_ids(store) == (200, 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(10)
        ingest.stop()
    err = "".join(lines)
    assert "from an earlier run" in err
    assert "40 of the 40 messages in flight when the last attempt ended were already in Kafka" in err


def test_monitor_up_subprocess_flushes_everything_accepted_on_sigint(tmp_path):
    data, http_port, grpc_port, mport = tmp_path / "data", free_port(), free_port(), free_port()
    proc = subprocess.Popen([*MONITOR, "up", "--data-dir", str(data), "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port), "--metrics-port", str(mport), "--admin-port", str(free_port())],
                            stderr=subprocess.PIPE, text=True)
    statuses: list[int] = []
    try:
        wait_until(lambda: _health(http_port), timeout=60, message="monitor up to listen")

        def sender():
            i = 0
            while True:
                status = post_traces(http_port, otlp_request(i, spans=5), timeout=30)
                statuses.append(status)
                if status == 0:
                    return
                i += 1

        threads = [threading.Thread(target=sender) for _ in range(1)]
        for t in threads:
            t.start()
        wait_until(lambda: len(statuses) > 30, timeout=60, message="traffic")
        status_out = subprocess.run([*MONITOR, "status", "--port", str(mport)], capture_output=True, text=True)
        assert status_out.returncode == 0 and "monitor up" in status_out.stdout
        assert "accepted: traces=" in status_out.stdout
        proc.send_signal(signal.SIGINT)
        for t in threads:
            t.join(60)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ok = statuses.count(200)
    assert ok > 30 and set(statuses) <= {200, 503, 0}
    assert f"OTLP/HTTP listening on http://127.0.0.1:{http_port}" in err
    assert f"OTLP/gRPC listening on 127.0.0.1:{grpc_port}" in err
    assert "everything accepted was written" in err
    assert chdb_query(data, "SELECT count(), uniqExact(SpanId) FROM otel_traces")[0] == [5 * ok, 5 * ok]
    assert chdb_query(data, "SELECT count() FROM inference_events")[0][0] == 5 * ok


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
