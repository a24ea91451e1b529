"""The sidecar's in-process sources end to end in `monitor up`: scraped engine metrics and GPU cost
land in ClickHouse through the same pipeline as OTLP."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import openai
import pytest
from conftest import free_port, wait_until
from fake_upstream import FakeUpstream

from monitor.runtime.apps import Embedded

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"


@pytest.fixture
def metrics_page():
    page = (FIXTURES / "vllm.txt").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()


def test_scraped_engine_metrics_and_gpu_cost_land_in_clickhouse(settings, store, metrics_page, caplog):
    upstream = FakeUpstream().start()
    settings.scrape.url = metrics_page
    settings.scrape.interval_s = 0.2
    settings.proxy.upstream = upstream.url
    settings.proxy.port = free_port()
    settings.gpu.gpus_per_request = 2
    settings.gpu.price_per_gpu_hour = 3.6  # 0.001 per GPU-second
    app = Embedded(settings)
    caplog.set_level("INFO")
    app.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.proxy.port}/v1", api_key="k", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        wait_until(lambda: store.query_rows(
            "SELECT count() FROM otel_metrics_gauge WHERE MetricName = 'monitor.server.kv_cache.usage'")[0][0] > 0,
            timeout=30, message="scraped KV-cache usage")
        (engine, model, running), = store.query_rows(
            "SELECT Attributes['engine'], Attributes['gen_ai.request.model'], Value FROM otel_metrics_gauge "
            "WHERE MetricName = 'monitor.server.requests.running' ORDER BY TimeUnix DESC LIMIT 1")
        assert (engine, model, running) == ("vllm", "Qwen/Qwen2.5-7B-Instruct", 7.0)
        # the same scrape's histograms: another table, so possibly another insert a moment later
        wait_until(lambda: store.query_rows("SELECT count() FROM otel_metrics_histogram "
                                            "WHERE MetricName = 'gen_ai.server.time_to_first_token'")[0][0] > 0,
                   timeout=30, message="scraped TTFT histogram")
        wait_until(lambda: store.query_rows("SELECT count() FROM inference_events")[0][0] == 1, message="event")
        (latency, gpu_s, cost), = store.query_rows("SELECT latency_ms, gpu_seconds, gpu_cost FROM inference_events")
        assert gpu_s == pytest.approx(latency / 1000 * 2)  # no engine span: client latency x 2 GPUs
        assert cost == pytest.approx(gpu_s * 3.6 / 3600)
        # no GPU on this machine: the sampler said so once and the rest runs
        assert sum("GPU metrics are off" in r.getMessage() or "NVML" in r.getMessage()
                   for r in caplog.records if r.name.startswith("monitor")) >= 1
    finally:
        app.stop()
        upstream.stop()
