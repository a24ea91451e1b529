"""End to end: events written through the spine (OTLP into a running `monitor up`), then `monitor check`
finds the drift the test injected -- slower decoding, another topic in the prompts, more refusals --
reports the right clusters, exits non-zero, and `monitor baseline pin` works through the admin endpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.request

import pytest
from conftest import MONITOR, chdb_query, free_port, wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from test_semantic_drift import TOPIC_A, TOPIC_B, _sentences

pytest.importorskip("torch")

REFUSAL = "I'm sorry, but I can't help with that."


def _request(spans: list[dict]) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "support-bot"
    ss = rs.scope_spans.add()
    for s in spans:
        span = ss.spans.add()
        span.trace_id, span.span_id = random.randbytes(16), random.randbytes(8)
        span.name, span.kind = "chat support-llm", 3
        span.start_time_unix_nano = s["start_ns"]
        span.end_time_unix_nano = s["start_ns"] + int(s["latency_ms"] * 1e6)
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "support-llm"),
                           ("gen_ai.input.messages", json.dumps([{"role": "user", "content": s["prompt"]}])),
                           ("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": s["completion"]}])),
                           ("gen_ai.response.finish_reasons", '["stop"]')):
            a = span.attributes.add()
            a.key, a.value.string_value = key, value
        for key, value in (("gen_ai.latency.time_in_model_decode", s["decode_s"]),
                           ("gen_ai.latency.time_to_first_token", s["ttft_s"])):
            a = span.attributes.add()
            a.key, a.value.double_value = key, value
        for key, value in (("gen_ai.usage.input_tokens", s["in_tok"]), ("gen_ai.usage.output_tokens", s["out_tok"])):
            a = span.attributes.add()
            a.key, a.value.int_value = key, value
    return req.SerializeToString()


def _events(texts_a, texts_b, n: int, start_ns: int, span_ns: int, drift: bool, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        other_topic = drift and rng.random() < 0.25
        prompt = rng.choice(texts_b if other_topic else texts_a)
        refused = rng.random() < (0.15 if drift else 0.01)
        out_tok = rng.randint(40, 80)
        per_token = rng.gauss(0.030 if drift else 0.020, 0.003)  # decoding got 50% slower
        out.append({
            "start_ns": start_ns + int(i * span_ns / n), "prompt": prompt,
            "completion": REFUSAL if refused else "Here is what the documentation says: " + rng.choice(texts_a),
            "in_tok": rng.randint(20, 60), "out_tok": out_tok, "decode_s": out_tok * per_token,
            "ttft_s": abs(rng.gauss(0.08, 0.01)), "latency_ms": 100 + out_tok * per_token * 1000,
        })
    return out


def test_monitor_check_finds_injected_drift_through_the_admin_endpoint(tmp_path):
    rng = random.Random(11)
    texts_a, texts_b = _sentences(TOPIC_A), _sentences(TOPIC_B)
    data, http_port, admin_port, metrics_port = tmp_path / "data", free_port(), free_port(), free_port()
    env = dict(os.environ, MONITOR_CHECKS__ENABLED="false", MONITOR_CHECKS__ADMIN_PORT=str(admin_port),
               MONITOR_CHECKS__SEMANTIC__SAMPLE="600", MONITOR_CHECKS__SEMANTIC__PERMUTATIONS="500",
               MONITOR_CHECKS__SEMANTIC__FIELDS="prompt")
    proc = subprocess.Popen([*MONITOR, "up", "--data-dir", str(data), "--http-port", str(http_port),
                             "--grpc-port", str(free_port()), "--metrics-port", str(metrics_port),
                             "--admin-port", str(admin_port)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        def listening():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=2).status == 200
            except OSError:
                return False
        wait_until(listening, timeout=60, message="monitor up")
        now = time.time_ns()
        hour = 3600 * 10**9
        reference = _events(texts_a, texts_b, 900, now - 24 * hour - hour + 60 * 10**9, hour - 120 * 10**9,
                            False, rng)
        current = _events(texts_a, texts_b, 900, now - hour + 60 * 10**9, hour - 120 * 10**9, True, rng)
        for batch in (reference[i:i + 300] for i in range(0, 900, 300)):
            assert _post(http_port, _request(batch)) == 200
        for batch in (current[i:i + 300] for i in range(0, 900, 300)):
            assert _post(http_port, _request(batch)) == 200
        # a 200 means "spooled": the store process has them a moment later
        from monitor.status import fetch, summary
        wait_until(lambda: summary(fetch(f"http://127.0.0.1:{metrics_port}/metrics"))["store"]["rows_written"].get(
            "inference_events", 0) >= 1800, timeout=60, message="the 1800 events stored")

        run = subprocess.run([*MONITOR, "check", "--window", "1h", "--reference", "day", "--json"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 1, run.stdout[-6000:] + run.stderr[-3000:]  # a check failed: non-zero for cron and CI
        report = json.loads(run.stdout)
        (scope,) = report["scopes"]
        assert scope["model"] == "support-llm" and scope["reference_kind"] == "day"
        res = {(r["check"], r["metric"]): r for r in scope["results"]}
        assert res[("feature_drift", "decode_ms")]["status"] == "fail"
        assert res[("feature_drift", "tokens_per_second")]["status"] == "fail"
        assert res[("feature_drift", "input_tokens")]["status"] == "ok"  # unchanged distribution
        assert res[("quality", "refusal_rate")]["status"] == "fail"
        assert res[("quality", "refusal_rate")]["value"] > 0.1 > res[("quality", "refusal_rate")]["reference_value"]
        sem = res[("semantic_drift", "prompt")]
        assert sem["status"] == "fail" and sem["p_value"] < 0.01
        clusters = sem["details"]["clusters"]  # grew or shrank most first
        assert [abs(c["change"]) for c in clusters] == sorted((abs(c["change"]) for c in clusters), reverse=True)
        top = max(clusters, key=lambda c: c["change"])  # the one that grew most: the injected topic
        assert top in clusters[:3] and top["current_share"] > top["reference_share"]
        injected = set(texts_b)
        assert sum(e in injected for e in top["examples"]) >= len(top["examples"]) - 1

        human = subprocess.run([*MONITOR, "check", "--window", "1h", "--reference", "day", "--only", "quality"],
                               capture_output=True, text=True, env=env, timeout=300)
        assert human.returncode == 1 and "FAIL  quality" in human.stdout and "refusal_rate" in human.stdout

        # Pin the reference window as the baseline; `auto` now uses it.
        pin = subprocess.run([*MONITOR, "baseline", "pin", "--model", "support-llm", "--from=-25h",
                              "--to=-23h"], capture_output=True, text=True, env=env, timeout=60)
        assert pin.returncode == 0, pin.stderr
        again = subprocess.run([*MONITOR, "check", "--window", "1h", "--only", "quality", "--json"],
                               capture_output=True, text=True, env=env, timeout=300)
        assert json.loads(again.stdout)["scopes"][0]["reference_kind"] == "baseline"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    # results were written to ClickHouse for the dashboards and alerts
    rows = chdb_query(data, "SELECT check, metric, status FROM check_results WHERE status = 'fail' "
                            "ORDER BY check, metric")
    assert ["semantic_drift", "prompt", "fail"] in rows and ["quality", "refusal_rate", "fail"] in rows
    assert chdb_query(data, "SELECT count() FROM check_distributions WHERE metric = 'decode_ms'")[0][0] > 0


def _post(port: int, body: bytes) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status
