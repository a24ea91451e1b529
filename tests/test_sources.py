"""In-process sources: the /metrics scraper (recorded pages of vLLM, TGI, SGLang, llama.cpp) and the
NVML sampler (a fake pynvml module; the real one on this GPU-less machine)."""

from __future__ import annotations

import logging
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port

from monitor.config import GpuSettings, ScrapeSettings
from monitor.ingest.normalize import Batch, metrics_rows
from monitor.store.tables import TABLE_COLUMNS
from monitor.otlp.values import to_python
from monitor.sidecar.emitter import MemoryEmitter
from monitor.sidecar.gpu import NvmlSampler
from monitor.sidecar.scrape import MetricsScraper, page_to_otlp

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
NOW = 1_754_380_800_123_000_000
RESOURCE = {"service.name": "llm-server", "host.name": "gpu-node-1"}
CUMULATIVE = 2  # AGGREGATION_TEMPORALITY_CUMULATIVE

VLLM_PROCESS_START = int(1.75438068842e09 * 1e9)
VLLM_MODEL = "Qwen/Qwen2.5-7B-Instruct"
SGLANG_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def page(engine: str) -> str:
    return (FIXTURES / f"{engine}.txt").read_text()


def metrics_of(msg) -> dict[str, list]:
    out: dict[str, list] = {}
    for rm in msg.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).append(m)
    return out


def one(msg, name: str):
    found = metrics_of(msg).get(name, [])
    assert len(found) == 1, f"{name}: {len(found)} metrics"
    return found[0]


def attrs(dp) -> dict:
    return {kv.key: to_python(kv.value) for kv in dp.attributes}


def points(msg, name: str) -> list[tuple[dict, object]]:
    m = one(msg, name)
    kind = m.WhichOneof("data")
    return [(attrs(dp), dp) for dp in getattr(m, kind).data_points]


def point(msg, metric: str, **match):
    found = [dp for a, dp in points(msg, metric) if all(a.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"{metric} {match}: {len(found)} points"
    return found[0]


def table(msg, name: str) -> list[dict]:
    """Rows ``metrics_rows`` makes for ``msg``, as dicts, in the table they land in."""
    return [dict(zip(TABLE_COLUMNS[name], row)) for row in metrics_rows(msg, Batch()).rows.get(name, [])]


def rows_named(msg, table_name: str, metric: str) -> list[dict]:
    return [r for r in table(msg, table_name) if r["MetricName"] == metric]


def assert_common(msg):
    rm = msg.resource_metrics[0]
    assert {kv.key: kv.value.string_value for kv in rm.resource.attributes} == RESOURCE
    assert rm.scope_metrics[0].scope.name == "monitor.scrape"
    for name, ms in metrics_of(msg).items():
        assert not name.endswith("_created"), name
        for m in ms:
            kind = m.WhichOneof("data")
            for dp in getattr(m, kind).data_points:
                assert dp.time_unix_nano == NOW
                if kind == "gauge":
                    assert dp.start_time_unix_nano == 0


# --------------------------------------------------------------------------- (a) the pages


def test_vllm_page():
    msg = page_to_otlp(page("vllm"), resource=RESOURCE, now_ns=NOW)
    assert_common(msg)
    base = {"engine": "vllm", "gen_ai.request.model": VLLM_MODEL, "engine.index": "0"}

    # normalised view
    assert points(msg, "monitor.server.requests.waiting")[0][0] == base
    assert point(msg, "monitor.server.requests.waiting").as_double == 3.0
    assert point(msg, "monitor.server.requests.running").as_double == 7.0
    assert point(msg, "monitor.server.kv_cache.usage").as_double == 0.2378
    assert one(msg, "monitor.server.kv_cache.usage").unit == "1"
    assert one(msg, "monitor.server.requests.running").unit == "{request}"
    pre = one(msg, "monitor.server.preemptions")
    assert pre.sum.is_monotonic and pre.sum.aggregation_temporality == CUMULATIVE
    assert pre.sum.data_points[0].as_double == 2.0
    # a counter starts at its _created time
    assert pre.sum.data_points[0].start_time_unix_nano == int(1.7543807315180774e09 * 1e9)
    tokens = one(msg, "monitor.server.tokens")
    assert tokens.unit == "{token}" and tokens.sum.is_monotonic
    assert point(msg, "monitor.server.tokens", **{"gen_ai.token.type": "input"}).as_double == 37828
    assert point(msg, "monitor.server.tokens", **{"gen_ai.token.type": "output"}).as_double == 11895
    assert points(msg, "monitor.server.tokens")[0][0] == {**base, "gen_ai.token.type": "input"}

    ttft = one(msg, "gen_ai.server.time_to_first_token")
    assert ttft.unit == "s" and ttft.histogram.aggregation_temporality == CUMULATIVE
    dp = ttft.histogram.data_points[0]
    assert attrs(dp) == base
    assert list(dp.explicit_bounds) == [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                        1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
    assert list(dp.bucket_counts) == [0, 0, 0, 0, 2, 8, 2, 2, 12, 7, 4, 1, 2] + [0] * 10
    assert dp.count == 40 and dp.sum == pytest.approx(11.163382)
    assert dp.start_time_unix_nano == int(1.7543807315199935e09 * 1e9)
    # inter-token latency wins over the deprecated time_per_output_token histogram
    tpot = point(msg, "gen_ai.server.time_per_output_token")
    assert tpot.count == 11855 and tpot.sum == pytest.approx(417.326889)
    e2e = point(msg, "gen_ai.server.request.duration")
    assert list(e2e.bucket_counts)[:11] == [0, 1, 0, 1, 0, 0, 4, 8, 18, 8, 0] and e2e.count == 40
    assert point(msg, "monitor.server.request.queue_time").count == 40
    assert list(point(msg, "monitor.server.request.prefill_time").bucket_counts)[:3] == [33, 7, 0]
    assert point(msg, "monitor.server.request.decode_time").sum == pytest.approx(256.29931)
    assert point(msg, "monitor.server.request.inference_time").sum == pytest.approx(261.27182)
    assert "monitor.server.tokens_per_second" not in metrics_of(msg)

    # raw families, under the names on the page
    raw = one(msg, "vllm:prompt_tokens_total")
    assert raw.sum.is_monotonic and raw.sum.data_points[0].as_double == 37828
    assert attrs(raw.sum.data_points[0]) == {"engine": "0", "model_name": VLLM_MODEL}
    success = {a["finished_reason"]: dp.as_double for a, dp in points(msg, "vllm:request_success_total")}
    assert success == {"stop": 31, "length": 8, "abort": 1}
    assert point(msg, "vllm:num_requests_waiting").as_double == 3.0
    assert point(msg, "vllm:kv_cache_usage_perc").as_double == 0.2378
    info = point(msg, "vllm:cache_config_info")
    assert info.as_double == 1.0 and attrs(info)["num_gpu_blocks"] == "28472"
    raw_e2e = point(msg, "vllm:e2e_request_latency_seconds")
    assert list(raw_e2e.bucket_counts) == list(e2e.bucket_counts) and len(raw_e2e.bucket_counts) == 22
    assert attrs(raw_e2e) == {"engine": "0", "model_name": VLLM_MODEL}  # no "le"
    assert point(msg, "vllm:time_per_output_token_seconds").count == 40
    assert point(msg, "vllm:iteration_tokens_total").count == 95  # a histogram whose name ends in _total
    gc = points(msg, "python_gc_objects_collected_total")
    assert sorted(dp.as_double for _, dp in gc) == [1114, 2378, 12543]
    assert {dp.start_time_unix_nano for _, dp in gc} == {VLLM_PROCESS_START}  # no _created: process start
    assert point(msg, "process_start_time_seconds").as_double == 1.75438068842e09
    assert point(msg, "process_max_fds").as_double == 1048576

    # through the table layer
    waiting = rows_named(msg, "otel_metrics_gauge", "monitor.server.requests.waiting")
    assert len(waiting) == 1
    w = waiting[0]
    assert (w["Value"], w["MetricUnit"], w["ServiceName"], w["ScopeName"]) == (3.0, "{request}", "llm-server",
                                                                               "monitor.scrape")
    assert w["Attributes"] == {"engine": "vllm", "gen_ai.request.model": VLLM_MODEL, "engine.index": "0"}
    assert w["ResourceAttributes"] == RESOURCE and w["TimeUnix"] == NOW
    tok = {r["Attributes"]["gen_ai.token.type"]: r
           for r in rows_named(msg, "otel_metrics_sum", "monitor.server.tokens")}
    assert tok["input"]["Value"] == 37828 and tok["output"]["Value"] == 11895
    assert tok["input"]["IsMonotonic"] is True and tok["input"]["AggregationTemporality"] == CUMULATIVE
    (h,) = rows_named(msg, "otel_metrics_histogram", "gen_ai.server.time_to_first_token")
    assert h["BucketCounts"] == [0, 0, 0, 0, 2, 8, 2, 2, 12, 7, 4, 1, 2] + [0] * 10
    assert h["ExplicitBounds"][:3] == [0.001, 0.005, 0.01] and h["Count"] == 40
    assert h["Sum"] == pytest.approx(11.163382) and h["MetricUnit"] == "s"
    success_rows = rows_named(msg, "otel_metrics_sum", "vllm:request_success_total")
    assert sorted(r["Attributes"]["finished_reason"] for r in success_rows) == ["abort", "length", "stop"]
    assert rows_named(msg, "otel_metrics_gauge", "vllm:cache_config_info")[0]["Value"] == 1.0
    assert not table(msg, "otel_metrics_summary")


def test_tgi_page():
    msg = page_to_otlp(page("tgi"), resource=RESOURCE, now_ns=NOW)
    assert_common(msg)
    assert points(msg, "monitor.server.requests.waiting")[0][0] == {"engine": "tgi"}
    assert point(msg, "monitor.server.requests.waiting").as_double == 2
    assert point(msg, "monitor.server.requests.running").as_double == 5
    names = set(metrics_of(msg))
    assert "monitor.server.kv_cache.usage" not in names and "monitor.server.tokens" not in names

    dur = point(msg, "gen_ai.server.request.duration")
    assert len(dur.explicit_bounds) == 35 and dur.explicit_bounds[0] == pytest.approx(0.00015)
    assert list(dur.bucket_counts) == [0] * 19 + [1, 1, 0, 5, 2, 3, 5, 9, 10, 3, 1] + [0] * 6
    assert dur.count == 40 and dur.sum == pytest.approx(185.288199)
    assert dur.start_time_unix_nano == 0  # no process_start_time_seconds on a TGI page
    assert point(msg, "gen_ai.server.time_per_output_token").sum == pytest.approx(0.793748)
    assert point(msg, "monitor.server.request.queue_time").sum == pytest.approx(8.071871)
    assert point(msg, "monitor.server.request.inference_time").sum == pytest.approx(177.18744)
    assert "monitor.server.request.prefill_time" not in names

    # raw: TGI counters have no _total suffix and keep their names
    assert point(msg, "tgi_request_count").as_double == 42
    assert "tgi_request_count_total" not in names
    assert point(msg, "tgi_request_failure", err="validation").as_double == 2
    inf = {a["method"]: dp for a, dp in points(msg, "tgi_batch_inference_duration")}
    assert inf["prefill"].count == 31 and inf["decode"].count == 400
    tokens = point(msg, "tgi_request_generated_tokens")
    assert len(tokens.explicit_bounds) == 100 and tokens.sum == 8552 and sum(tokens.bucket_counts) == 40
    skipped = point(msg, "tgi_request_skipped_tokens")
    assert list(skipped.explicit_bounds) == [0.0] and list(skipped.bucket_counts) == [40, 0]

    (row,) = rows_named(msg, "otel_metrics_histogram", "gen_ai.server.request.duration")
    assert row["Count"] == 40 and row["BucketCounts"][19:24] == [1, 1, 0, 5, 2]
    assert row["Attributes"] == {"engine": "tgi"}
    (c,) = rows_named(msg, "otel_metrics_sum", "tgi_request_count")
    assert c["Value"] == 42 and c["IsMonotonic"] is True


def test_sglang_page():
    msg = page_to_otlp(page("sglang"), resource=RESOURCE, now_ns=NOW)
    assert_common(msg)
    sched = {"engine": "sglang", "gen_ai.request.model": SGLANG_MODEL, "engine_type": "unified",
             "pp_rank": "0", "tp_rank": "0"}
    assert points(msg, "monitor.server.requests.waiting")[0][0] == sched
    assert point(msg, "monitor.server.requests.waiting").as_double == 4
    assert point(msg, "monitor.server.requests.running").as_double == 12
    assert point(msg, "monitor.server.kv_cache.usage").as_double == 0.31
    assert point(msg, "monitor.server.tokens", **{"gen_ai.token.type": "input"}).as_double == 281682
    assert point(msg, "monitor.server.tokens", **{"gen_ai.token.type": "output"}).as_double == 91375
    tps = one(msg, "monitor.server.tokens_per_second")
    assert tps.unit == "{token}/s" and tps.gauge.data_points[0].as_double == 1184.6302
    ttft = point(msg, "gen_ai.server.time_to_first_token")
    assert attrs(ttft) == {"engine": "sglang", "gen_ai.request.model": SGLANG_MODEL}
    assert list(ttft.bucket_counts) == [2, 45, 110, 91, 2] + [0] * 14
    assert ttft.count == 250 and ttft.sum == pytest.approx(85.059227)
    assert point(msg, "gen_ai.server.request.duration").count == 250
    assert point(msg, "gen_ai.server.time_per_output_token").sum == pytest.approx(4.059886)

    assert point(msg, "sglang:cache_hit_rate").as_double == 0.4127
    assert point(msg, "sglang:num_requests_total").as_double == 250
    fl = point(msg, "sglang:func_latency_seconds", name="generate_request")
    assert fl.count == 250 and fl.explicit_bounds[1] == 0.07500000000000001

    rows = rows_named(msg, "otel_metrics_gauge", "monitor.server.kv_cache.usage")
    assert [r["Value"] for r in rows] == [0.31] and rows[0]["Attributes"]["tp_rank"] == "0"


def test_llamacpp_page():
    msg = page_to_otlp(page("llamacpp"), resource=RESOURCE, now_ns=NOW)
    assert_common(msg)
    assert points(msg, "monitor.server.requests.waiting")[0][0] == {"engine": "llamacpp"}  # no model label
    assert point(msg, "monitor.server.requests.waiting").as_double == 1
    assert point(msg, "monitor.server.requests.running").as_double == 2
    assert point(msg, "monitor.server.tokens", **{"gen_ai.token.type": "input"}).as_double == 33065
    assert point(msg, "monitor.server.tokens", **{"gen_ai.token.type": "output"}).as_double == 7801
    assert point(msg, "monitor.server.tokens_per_second", **{"gen_ai.token.type": "input"}).as_double == 925.076
    assert point(msg, "monitor.server.tokens_per_second", **{"gen_ai.token.type": "output"}).as_double == 41.6415
    names = set(metrics_of(msg))
    assert not {n for n in names if n.startswith("gen_ai.")}  # llama.cpp has no latency histograms

    assert point(msg, "llamacpp:prompt_tokens_total").as_double == 33065
    assert point(msg, "llamacpp:n_busy_slots_per_decode").as_double == 1.37317  # counter without _total
    assert one(msg, "llamacpp:requests_deferred").WhichOneof("data") == "gauge"

    gauges = {(r["MetricName"], r["Attributes"].get("gen_ai.token.type")): r["Value"]
              for r in table(msg, "otel_metrics_gauge")}
    assert gauges[("monitor.server.tokens_per_second", "output")] == 41.6415
    assert gauges[("llamacpp:requests_processing", None)] == 2
    sums = {r["MetricName"]: r for r in table(msg, "otel_metrics_sum")}
    assert sums["llamacpp:tokens_predicted_total"]["Value"] == 7801
    assert not table(msg, "otel_metrics_histogram")


def test_engine_detection_and_override():
    for engine in ("vllm", "tgi", "sglang", "llamacpp"):
        msg = page_to_otlp(page(engine), now_ns=NOW)
        assert points(msg, "monitor.server.requests.running")[0][0]["engine"] == engine
    # told the engine: no guessing; told the wrong one: raw families only
    msg = page_to_otlp(page("tgi"), engine="tgi", now_ns=NOW)
    assert point(msg, "monitor.server.requests.running").as_double == 5
    msg = page_to_otlp(page("tgi"), engine="vllm", now_ns=NOW)
    assert not [n for n in metrics_of(msg) if n.startswith(("monitor.", "gen_ai."))]
    # a page of no known server: raw families only
    msg = page_to_otlp("# TYPE queue_depth gauge\nqueue_depth 4\n", now_ns=NOW)
    assert list(metrics_of(msg)) == ["queue_depth"]


def test_older_vllm_names():
    text = """# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# HELP vllm:time_per_output_token_seconds Histogram of time per output token in seconds.
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="m"} 1.0
vllm:time_per_output_token_seconds_bucket{le="0.025",model_name="m"} 4.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 5.0
vllm:time_per_output_token_seconds_count{model_name="m"} 5.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 0.1
"""
    msg = page_to_otlp(text, now_ns=NOW)
    kv = point(msg, "monitor.server.kv_cache.usage")
    assert kv.as_double == 0.5 and attrs(kv) == {"engine": "vllm", "gen_ai.request.model": "m"}
    tpot = point(msg, "gen_ai.server.time_per_output_token")
    assert list(tpot.explicit_bounds) == [0.01, 0.025] and list(tpot.bucket_counts) == [1, 3, 1]
    # both KV names on one page (vLLM 0.10): only the new one is normalised
    both = text + "# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n"
    assert [dp.as_double for _, dp in points(page_to_otlp(both, now_ns=NOW), "monitor.server.kv_cache.usage")] == [0.25]


def test_summary_untyped_and_openmetrics_created():
    text = """# HELP rpc_duration_seconds RPC latency.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{service="a",quantile="0.5"} 0.012
rpc_duration_seconds{service="a",quantile="0.99"} 0.25
rpc_duration_seconds_sum{service="a"} 17.5
rpc_duration_seconds_count{service="a"} 1000
rpc_duration_seconds_created{service="a"} 1.7e9
# TYPE jobs_total counter
jobs_total 3
jobs_created 1.6e9
stray_metric{x="1"} 7
"""
    msg = page_to_otlp(text, resource=RESOURCE, now_ns=NOW)
    s = point(msg, "rpc_duration_seconds")
    assert attrs(s) == {"service": "a"} and s.count == 1000 and s.sum == 17.5
    assert [(q.quantile, q.value) for q in s.quantile_values] == [(0.5, 0.012), (0.99, 0.25)]
    assert s.start_time_unix_nano == int(1.7e9 * 1e9)
    jobs = point(msg, "jobs_total")
    assert jobs.as_double == 3 and jobs.start_time_unix_nano == int(1.6e9 * 1e9)
    assert point(msg, "stray_metric").as_double == 7  # untyped -> gauge
    (row,) = table(msg, "otel_metrics_summary")
    assert row["ValueAtQuantiles.Quantile"] == [0.5, 0.99] and row["Count"] == 1000


@pytest.mark.parametrize("text", ["<html><body>Not Found</body></html>", "vllm:x{a=\"1\" 2\n"])
def test_garbage_page_raises_value_error(text):
    with pytest.raises(ValueError):
        page_to_otlp(text)


# --------------------------------------------------------------------------- (b) the scraper


class PageServer:
    """A real HTTP server serving a page at /metrics, on a fixed port so it can come back."""

    def __init__(self, body: str, port: int, status: int = 200):
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = state.body.encode()
                self.send_response(state.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                state.hits += 1

            def log_message(self, *args):
                pass

        self.body, self.status, self.hits = body, status, 0
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scrape_logs(caplog, level):
    return [r for r in caplog.records if r.name == "monitor.sidecar.scrape" and r.levelno == level]


def test_scraper_emits_survives_outage_and_recovers(caplog):
    caplog.set_level(logging.INFO, logger="monitor.sidecar")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    server = PageServer(page("vllm"), port)
    emitter = MemoryEmitter()
    scraper = MetricsScraper(ScrapeSettings(url=url, interval_s=0.2), emitter, RESOURCE)
    try:
        scraper.start()
        wait_for(lambda: len(emitter.emitted) >= 1, 1.0, "the first scrape")  # scraped at once, then per interval
        signal, msg = emitter.emitted[0]
        assert signal == "metrics"
        assert point(msg, "monitor.server.requests.waiting").as_double == 3
        assert msg.resource_metrics[0].resource.attributes[0].value.string_value == "llm-server"
        wait_for(lambda: len(emitter.emitted) >= 3, 2, "repeated scrapes")  # 0.4 s when idle

        server.close()  # the model server goes away
        wait_for(lambda: scrape_logs(caplog, logging.WARNING), 2, "the outage warning")
        emitted = len(emitter.emitted)
        wait_for(lambda: scraper._failures >= 4, 3, "several failed scrapes")
        warnings = scrape_logs(caplog, logging.WARNING)
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage
        assert url in warnings[0].getMessage() and "refused" in warnings[0].getMessage().lower()
        assert scraper._thread is not None and scraper._thread.is_alive()
        assert len(emitter.emitted) == emitted

        server = PageServer(page("vllm"), port)  # and comes back
        wait_for(lambda: len(emitter.emitted) > emitted, 2, "scrapes after recovery")
        again = [r for r in scrape_logs(caplog, logging.INFO) if "again" in r.getMessage()]
        assert len(again) == 1 and url in again[0].getMessage()

        # a second outage warns again, once
        server.body = "<html>oops</html>"
        wait_for(lambda: len(scrape_logs(caplog, logging.WARNING)) == 2, 2, "the bad-page warning")
        time.sleep(0.5)
        assert len(scrape_logs(caplog, logging.WARNING)) == 2
        assert "Prometheus" in scrape_logs(caplog, logging.WARNING)[1].getMessage()
    finally:
        t0 = time.monotonic()
        scraper.stop()
        assert time.monotonic() - t0 < 1
        server.close()


def test_scraper_http_error_and_no_url(caplog):
    caplog.set_level(logging.INFO, logger="monitor.sidecar")
    port = free_port()
    server = PageServer("busy", port, status=503)
    emitter = MemoryEmitter()
    scraper = MetricsScraper(ScrapeSettings(url=f"http://127.0.0.1:{port}/metrics", interval_s=10),
                             emitter, RESOURCE)
    try:
        assert scraper.scrape_once() is False and scraper.scrape_once() is False
        (warning,) = scrape_logs(caplog, logging.WARNING)
        assert "HTTP 503" in warning.getMessage()
        assert not emitter.emitted
    finally:
        server.close()
    off = MetricsScraper(ScrapeSettings(), emitter, RESOURCE)
    off.start()
    assert off._thread is None
    off.stop()


# --------------------------------------------------------------------------- (c) the NVML sampler


class FakeNvml(types.SimpleNamespace):
    """What the sampler uses of pynvml: two GPUs; the second has no power reading."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801
        pass

    class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
        pass

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    GIB = 1024 ** 3

    def __init__(self, init_error: Exception | None = None):
        super().__init__()
        self.init_error = init_error
        self.calls: list[str] = []
        self.devices = [
            dict(name="NVIDIA H100 80GB HBM3", uuid="GPU-7f3a9c1e-0000-1111-2222-333344445555", util=(87, 43),
                 mem=(80 * self.GIB, 61 * self.GIB), power=312_456, temp=64, clock=1980, energy=123_456_789,
                 procs=[(4242, 58 * self.GIB), (777, 3 * self.GIB)]),
            dict(name=b"NVIDIA A10G", uuid=b"GPU-0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff", util=(5, 1),
                 mem=(24 * self.GIB, 1 * self.GIB), power=None, temp=41, clock=210, energy=9_000,
                 procs=[(4242, None)]),
        ]

    def nvmlInit(self):  # noqa: N802
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):  # noqa: N802
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return ("handle", i)

    def _d(self, h):
        return self.devices[h[1]]

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return self._d(h)["name"]

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self._d(h)["uuid"]

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        gpu, memory = self._d(h)["util"]
        return types.SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        total, used = self._d(h)["mem"]
        return types.SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        if self._d(h)["power"] is None:
            raise self.NVMLError_NotSupported("Not Supported")
        return self._d(h)["power"]

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._d(h)["temp"]

    def nvmlDeviceGetClockInfo(self, h, clock):  # noqa: N802
        assert clock == self.NVML_CLOCK_SM
        return self._d(h)["clock"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # noqa: N802
        return self._d(h)["energy"]

    def nvmlDeviceGetComputeRunningProcesses(self, h):  # noqa: N802
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._d(h)["procs"]]


def gpu_logs(caplog, level=logging.INFO):
    return [r for r in caplog.records if r.name == "monitor.sidecar.gpu" and r.levelno == level]


def started(settings: GpuSettings, nvml=None):
    emitter = MemoryEmitter()
    sampler = NvmlSampler(settings, emitter, {"service.name": "llm-server"}, nvml=nvml)
    return sampler, emitter


def test_nvml_sampler_values_units_attributes(caplog):
    caplog.set_level(logging.INFO, logger="monitor.sidecar")
    nvml = FakeNvml()
    sampler, emitter = started(GpuSettings(interval_s=30), nvml)
    try:
        assert sampler.start() is True
        assert sampler.device_count() == 2
        wait_for(lambda: emitter.emitted, 2, "the first GPU sample")
        assert sampler.sample_once() is True  # a second sample: the power warning is not repeated
    finally:
        t0 = time.monotonic()
        sampler.stop()
        assert time.monotonic() - t0 < 1
    assert nvml.calls == ["init", "shutdown"]
    assert sampler.device_count() == 0

    signal, msg = emitter.emitted[0]
    assert signal == "metrics"
    assert msg.resource_metrics[0].scope_metrics[0].scope.name == "monitor.gpu"
    units = {m.name: m.unit for ms in metrics_of(msg).values() for m in ms}
    assert units == {
        "hw.gpu.utilization": "1", "hw.gpu.memory.utilization": "1", "hw.gpu.memory.usage": "By",
        "hw.gpu.memory.limit": "By", "hw.power": "W", "hw.temperature": "Cel", "hw.gpu.clock.sm": "MHz",
        "hw.energy": "J", "hw.gpu.process.memory.usage": "By",
    }
    h100 = {"hw.id": "GPU-7f3a9c1e-0000-1111-2222-333344445555", "hw.name": "NVIDIA H100 80GB HBM3",
            "hw.type": "gpu", "hw.gpu.index": 0}
    a10 = {"hw.id": "GPU-0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff", "hw.name": "NVIDIA A10G",
           "hw.type": "gpu", "hw.gpu.index": 1}
    util = {a["hw.gpu.index"]: (a, dp.as_double) for a, dp in points(msg, "hw.gpu.utilization")}
    assert util[0] == ({**h100, "hw.gpu.task": "general"}, 0.87)
    assert util[1] == ({**a10, "hw.gpu.task": "general"}, 0.05)
    assert point(msg, "hw.gpu.memory.utilization", **{"hw.gpu.index": 0}).as_double == 0.43
    assert point(msg, "hw.gpu.memory.usage", **{"hw.gpu.index": 0}).as_double == 61 * FakeNvml.GIB
    assert point(msg, "hw.gpu.memory.limit", **{"hw.gpu.index": 1}).as_double == 24 * FakeNvml.GIB
    power = points(msg, "hw.power")  # the A10G has no power reading: skipped, the rest is there
    assert [(a, dp.as_double) for a, dp in power] == [(h100, 312.456)]
    assert point(msg, "hw.temperature", **{"hw.gpu.index": 1}).as_double == 41
    assert point(msg, "hw.gpu.clock.sm", **{"hw.gpu.index": 0}).as_double == 1980
    energy = one(msg, "hw.energy")
    assert energy.sum.is_monotonic and energy.sum.aggregation_temporality == CUMULATIVE
    assert point(msg, "hw.energy", **{"hw.gpu.index": 0}).as_double == pytest.approx(123456.789)
    assert point(msg, "hw.energy", **{"hw.gpu.index": 1}).as_double == 9.0
    procs = {(a["hw.gpu.index"], a["process.pid"]): dp.as_double
             for a, dp in points(msg, "hw.gpu.process.memory.usage")}
    assert procs == {(0, 4242): 58 * FakeNvml.GIB, (0, 777): 3 * FakeNvml.GIB}  # None memory: skipped

    power_logs = [r for r in gpu_logs(caplog) if "power" in r.getMessage()]
    assert len(power_logs) == 1 and "Not Supported" in power_logs[0].getMessage()

    rows = {(r["MetricName"], r["Attributes"]["hw.gpu.index"]): r for r in table(msg, "otel_metrics_gauge")}
    assert rows[("hw.power", "0")]["Value"] == 312.456 and rows[("hw.power", "0")]["MetricUnit"] == "W"
    assert rows[("hw.gpu.utilization", "1")]["Attributes"]["hw.id"] == a10["hw.id"]
    (e0,) = [r for r in table(msg, "otel_metrics_sum") if r["Attributes"]["hw.gpu.index"] == "0"]
    assert e0["MetricName"] == "hw.energy" and e0["IsMonotonic"] is True


def test_nvml_sampler_server_pid():
    nvml = FakeNvml()
    sampler, emitter = started(GpuSettings(interval_s=30, server_pid=4242), nvml)
    try:
        assert sampler.start()
        wait_for(lambda: emitter.emitted, 2, "a GPU sample")
    finally:
        sampler.stop()
    pts = points(emitter.emitted[0][1], "hw.gpu.process.memory.usage")
    assert [(a["hw.gpu.index"], a["process.pid"], dp.as_double) for a, dp in pts] == [(0, 4242, 58 * FakeNvml.GIB)]


@pytest.mark.parametrize("devices, expected", [
    (["1"], [1]),
    (["GPU-7f3a9c1e-0000-1111-2222-333344445555"], [0]),
    (["0", "GPU-0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff"], [0, 1]),
])
def test_nvml_sampler_device_filter(devices, expected):
    """gpu.devices keeps the named GPUs (NVML index or UUID) and only those."""
    sampler, emitter = started(GpuSettings(interval_s=30, devices=devices), FakeNvml())
    try:
        assert sampler.start() and sampler.device_count() == len(expected)
        wait_for(lambda: emitter.emitted, 2, "a GPU sample")
    finally:
        sampler.stop()
    util = sorted(a["hw.gpu.index"] for a, _ in points(emitter.emitted[0][1], "hw.gpu.utilization"))
    assert util == expected


def test_nvml_sampler_device_filter_matching_nothing(caplog):
    caplog.set_level(logging.INFO, logger="monitor.sidecar")
    nvml = FakeNvml()
    sampler, emitter = started(GpuSettings(interval_s=30, devices="5"), nvml)  # env form: a comma list
    assert sampler.start() is False
    assert nvml.calls == ["init", "shutdown"] and not emitter.emitted
    warning, = gpu_logs(caplog, logging.WARNING)
    assert "['5'] not found" in warning.getMessage() and "GPU-7f3a9c1e" in warning.getMessage()
    assert any("no GPU of gpu.devices" in r.getMessage() for r in gpu_logs(caplog))


def test_nvml_missing_logs_once_and_emits_nothing(caplog):
    caplog.set_level(logging.INFO, logger="monitor.sidecar")
    nvml = FakeNvml(init_error=FakeNvml.NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    sampler, emitter = started(GpuSettings(interval_s=0.05), nvml)
    assert sampler.start() is False
    time.sleep(0.2)
    assert sampler._thread is None and not emitter.emitted and sampler.device_count() == 0
    (line,) = gpu_logs(caplog)
    assert "GPU metrics off" in line.getMessage() and "Library Not Found" in line.getMessage()
    sampler.stop()
    assert nvml.calls == ["init"]  # nothing to shut down

    disabled, emitter2 = started(GpuSettings(enabled=False), FakeNvml())
    assert disabled.start() is False and disabled._nvml.calls == []


def test_real_pynvml_without_a_driver(caplog):
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    caplog.set_level(logging.INFO, logger="monitor.sidecar")
    sampler, emitter = started(GpuSettings(interval_s=0.05))
    assert sampler.start() is False
    time.sleep(0.2)
    assert not emitter.emitted and sampler.device_count() == 0
    (line,) = gpu_logs(caplog)
    assert "GPU metrics off" in line.getMessage()
    sampler.stop()


# --------------------------------------------------------------------------- (d) stopping


def test_stop_is_prompt_and_safe_without_start():
    for source in (MetricsScraper(ScrapeSettings(url="http://127.0.0.1:9/metrics"), MemoryEmitter(), {}),
                   NvmlSampler(GpuSettings(), MemoryEmitter(), {}, nvml=FakeNvml())):
        t0 = time.monotonic()
        source.stop()
        source.stop()
        assert time.monotonic() - t0 < 0.1

    port = free_port()
    server = PageServer(page("llamacpp"), port)
    try:
        emitter = MemoryEmitter()
        scraper = MetricsScraper(ScrapeSettings(url=f"http://127.0.0.1:{port}/metrics", interval_s=60),
                                 emitter, {})
        sampler, gpu_emitter = started(GpuSettings(interval_s=60), FakeNvml())
        scraper.start()
        assert sampler.start()
        wait_for(lambda: emitter.emitted and gpu_emitter.emitted, 2, "both sources")
        t0 = time.monotonic()
        scraper.stop()
        sampler.stop()
        assert time.monotonic() - t0 < 1
        assert not any(t.name in ("monitor-scrape", "monitor-gpu") and t.is_alive() for t in threading.enumerate())
    finally:
        server.close()
