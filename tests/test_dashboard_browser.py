"""`monitor up` serves the dashboards in-process: every page loads in headless Chromium with no
exception shown, a screenshot per page is kept as a test artifact, and a prompt carrying HTML and
markdown is displayed literally (no element injected, no script run).

Chromium is Debian's (``apt-get install -y chromium``; tests/run.sh installs it), driven by
Playwright's Python package with ``executable_path``: no browser download.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import MONITOR, ROOT, free_port, post_traces, wait_until
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

ARTIFACTS = Path(os.environ.get("MONITOR_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts") / "dashboard"
INJECTION = "<script>window.__xss = 1; alert(1)</script> see [click](http://evil) <img src=x onerror=\"window.__xss=2\">"
PAGES = [("", "Overview"), ("latency_gpu", "Latency & GPU"), ("drift", "Drift"), ("quality", "Quality"),
         ("requests", "Requests"), ("alerts", "Alerts")]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is needed for the dashboard browser test: apt-get install -y chromium "
                    "(tests/run.sh installs it)")
    import importlib.util

    if importlib.util.find_spec("playwright") is None:
        pytest.fail("the playwright package is needed: pip install -e '.[test]'")
    return path


def _spans(n: int) -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "browser-test"
    ss = rs.scope_spans.add()
    now = time.time_ns()
    for i in range(n):
        span = ss.spans.add()
        span.trace_id, span.span_id = random.randbytes(16), random.randbytes(8)
        span.name, span.kind = "chat shop-llm", 3
        span.start_time_unix_nano = now - (n - i) * 1_000_000_000
        span.end_time_unix_nano = span.start_time_unix_nano + (300 + 10 * i) * 1_000_000
        prompt = INJECTION if i == n - 1 else f"where is my order {i}?"
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "shop-llm"),
                           ("gen_ai.input.messages", json.dumps([{"role": "user", "content": prompt}])),
                           ("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": f"answer {i}"}])),
                           ("gen_ai.response.finish_reasons", '["stop"]')):
            a = span.attributes.add()
            a.key, a.value.string_value = key, value
        for key, value in (("gen_ai.usage.input_tokens", 12), ("gen_ai.usage.output_tokens", 30)):
            a = span.attributes.add()
            a.key, a.value.int_value = key, value
    return req.SerializeToString()


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_every_page_loads_in_chromium_and_shows_injected_text_literally(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    http_port, dash_port, mport = free_port(), free_port(), free_port()
    env = dict(os.environ, MONITOR_DASHBOARD__ENABLED="true", MONITOR_CHECKS__ENABLED="false")
    proc = subprocess.Popen([*MONITOR, "up", "--data-dir", str(tmp_path / "data"), "--http-port", str(http_port),
                             "--grpc-port", str(free_port()), "--metrics-port", str(mport), "--admin-port",
                             str(free_port()), "--dashboard-port", str(dash_port)],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        wait_until(lambda: _up(f"http://127.0.0.1:{dash_port}/_stcore/health"), timeout=90, message="dashboard")
        assert post_traces(http_port, _spans(20)) == 200

        from monitor.status import fetch, summary

        wait_until(lambda: summary(fetch(f"http://127.0.0.1:{mport}/metrics"))["store"]["rows_written"].get(
            "inference_events", 0) >= 20, timeout=60, message="the spans stored")

        dialogs: list[str] = []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                for i, (path, title) in enumerate(PAGES):
                    page.goto(f"http://127.0.0.1:{dash_port}/{path}", wait_until="domcontentloaded")
                    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
                    if path == "requests":
                        page.wait_for_function("t => document.body.innerText.includes(t)", arg=INJECTION,
                                               timeout=60_000)
                    _settle(page)
                    page.screenshot(path=str(ARTIFACTS / f"{i + 1}_{path or 'overview'}.png"), full_page=True)
                    assert page.locator("[data-testid='stException']").count() == 0, \
                        f"{title}: " + page.locator("[data-testid='stException']").first.inner_text()
                    if path == "":
                        assert "Requests/s" in page.inner_text("body")
                    if path == "requests":
                        text = page.inner_text("body")
                        assert INJECTION in text                       # shown literally, as typed
                        assert page.locator("a[href='http://evil']").count() == 0
                        assert page.locator("img[src='x']").count() == 0
                        assert page.evaluate("() => window.__xss === undefined")
                    assert page.locator("script:has-text('__xss')").count() == 0
            finally:
                browser.close()
        assert dialogs == []
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert f"dashboard on http://127.0.0.1:{dash_port}" in err
    assert "stopped; everything accepted was written" in err


def _settle(page, quiet_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Wait until Streamlit has finished running the page (its status widget gone for a while)."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator("[data-testid='stStatusWidget']").count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        page.wait_for_timeout(100)
