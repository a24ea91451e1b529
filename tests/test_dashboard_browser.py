"""`monitor up` serves the dashboards in-process: every page loads in headless Chromium with no
exception shown, a screenshot per page is kept as a test artifact, a prompt carrying HTML and
markdown is displayed literally (no element injected, no script run), and so is a model and
service name carrying HTML in the charts' legends, ticks and hover labels.

Chromium is Debian's (``apt-get install -y chromium``; tests/run.sh installs it), driven by
Playwright's Python package with ``executable_path``: no browser download.
"""

from __future__ import annotations

import contextlib
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
EVIL = "<a href=https://evil.example>CLICK-ME</a><b>BOLD</b><br>"  # a model and service name
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


def _spans(n: int, model: str = "shop-llm", service: str = "browser-test", injection: str = INJECTION,
           ago_s: float = 0.0, engine: bool = False) -> bytes:
    """``n`` chat spans a second apart, ending ``ago_s`` ago; the last one's prompt is ``injection``.
    ``engine``: with vLLM's engine timings (seconds), as the server's own spans carry them."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    now = time.time_ns() - int(ago_s * 1e9)
    for i in range(n):
        span = ss.spans.add()
        span.trace_id, span.span_id = random.randbytes(16), random.randbytes(8)
        span.name, span.kind = f"chat {model}", 3
        span.start_time_unix_nano = now - (n - i) * 1_000_000_000
        span.end_time_unix_nano = span.start_time_unix_nano + (300 + 10 * i) * 1_000_000
        prompt = injection if i == n - 1 else f"where is my order {i}?"
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", model),
                           ("gen_ai.input.messages", json.dumps([{"role": "user", "content": prompt}])),
                           ("gen_ai.output.messages", json.dumps([{"role": "assistant", "content": f"answer {i}"}])),
                           ("gen_ai.response.finish_reasons", '["stop"]')):
            a = span.attributes.add()
            a.key, a.value.string_value = key, value
        for key, value in (("gen_ai.usage.input_tokens", 12), ("gen_ai.usage.output_tokens", 30)):
            a = span.attributes.add()
            a.key, a.value.int_value = key, value
        timings = (("gen_ai.latency.time_in_queue", 0.01), ("gen_ai.latency.time_in_model_prefill", 0.05),
                   ("gen_ai.latency.time_in_model_decode", 0.2), ("gen_ai.latency.e2e", 0.28))
        for key, value in timings if engine else ():
            a = span.attributes.add()
            a.key, a.value.double_value = key, value
    return req.SerializeToString()


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def monitor_up_with_dashboards(tmp_path: Path) -> tuple[subprocess.Popen, int, int, int]:
    """`monitor up` (its processes) over ``tmp_path/data`` with the dashboards on, no checks and no
    auto-refresh; returns the process and its OTLP/HTTP, dashboard and /metrics ports."""
    http_port, dash_port, mport = free_port(), free_port(), free_port()
    env = dict(os.environ, MONITOR_DASHBOARD__ENABLED="true", MONITOR_CHECKS__ENABLED="false",
               MONITOR_DASHBOARD__REFRESH_S="0")
    proc = subprocess.Popen([*MONITOR, "up", "--data-dir", str(tmp_path / "data"), "--http-port", str(http_port),
                             "--grpc-port", str(free_port()), "--metrics-port", str(mport), "--admin-port",
                             str(free_port()), "--dashboard-port", str(dash_port)],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    return proc, http_port, dash_port, mport


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """`monitor up` with the dashboards on, 20 requests of shop-llm (the newest one's prompt is
    INJECTION) and 10 older ones of a model and service named EVIL."""
    chromium = _chromium()
    tmp_path = tmp_path_factory.mktemp("dashboard")
    # no auto-refresh: a chart re-rendered under the mouse (its time axis moved on) would hover another point
    proc, http_port, dash_port, mport = monitor_up_with_dashboards(tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        wait_until(lambda: _up(f"http://127.0.0.1:{dash_port}/_stcore/health"), timeout=90, message="dashboard")
        # the dashboard can answer before the OTLP receiver listens: a refused request accepted nothing, so retry it
        for body in (_spans(20), _spans(10, model=EVIL, service=EVIL, injection="plain", ago_s=120, engine=True)):
            wait_until(lambda: post_traces(http_port, body) == 200, timeout=60, message="the OTLP receiver")

        from monitor.status import fetch, summary

        wait_until(lambda: summary(fetch(f"http://127.0.0.1:{mport}/metrics"))["store"]["rows_written"].get(
            "inference_events", 0) >= 30, timeout=60, message="the spans stored")
        yield {"url": f"http://127.0.0.1:{dash_port}", "chromium": chromium}
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


@contextlib.contextmanager
def _browser(chromium: str, base_url: str, requests: list[str] | None = None):
    """A Chromium tab; every request it makes is recorded (in ``requests`` when given), and one to any
    other address than the dashboard's own fails the test: no font, icon, telemetry or CDN."""
    from urllib.parse import urlsplit

    from playwright.sync_api import sync_playwright

    dialogs: list[str] = []
    seen: list[str] = [] if requests is None else requests
    own = urlsplit(base_url).netloc
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.on("request", lambda r: seen.append(r.url))
            page = context.new_page()
            page.on("websocket", lambda ws: seen.append(ws.url))  # not a "request" to Playwright
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            yield page
        finally:
            browser.close()
    assert dialogs == []
    foreign = sorted({u for u in seen
                      if urlsplit(u).scheme not in ("data", "blob", "about") and urlsplit(u).netloc != own})
    assert foreign == [], f"requests to other addresses than {own}: {foreign}"


def test_every_page_loads_in_chromium_and_shows_injected_text_literally(dashboard):
    with _browser(dashboard["chromium"], dashboard["url"]) as page:
        for i, (path, title) in enumerate(PAGES):
            page.goto(f"{dashboard['url']}/{path}", wait_until="domcontentloaded")
            page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
            if path == "requests":
                page.wait_for_function("t => document.body.innerText.includes(t)", arg=INJECTION, timeout=60_000)
            if path == "":  # a chart's title is written by the chart component, once it has loaded uPlot
                page.wait_for_function("t => document.body.innerText.includes(t)", arg="Requests/s", timeout=60_000)
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


def test_no_page_makes_a_request_elsewhere_and_the_icon_is_served_locally(dashboard):
    """Every page, each with its charts drawn: every request the browser made (documents, scripts,
    fonts, the tab's icon, the websocket) went to the dashboard itself. The icon is the package's PNG."""
    from urllib.parse import urlsplit

    seen: list[str] = []
    with _browser(dashboard["chromium"], dashboard["url"], seen) as page:
        for path, title in PAGES:
            page.goto(f"{dashboard['url']}/{path}?range=1h", wait_until="domcontentloaded")
            page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=60_000)
            _settle(page)
            page.wait_for_function(_CHARTS_DRAWN, timeout=30_000)
        icon = page.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\").href")
        assert urlsplit(icon).netloc == urlsplit(dashboard["url"]).netloc, icon
        body = page.request.get(icon)
        assert body.status == 200 and body.headers["content-type"] == "image/png"
        from monitor.webui.ui import FAVICON

        assert body.body() == FAVICON.read_bytes()
        # the range is kept in the URL: a reload opens the same range
        assert "range=1h" in page.url
        # (the selectbox is a combobox: its choice is the input's value, not text)
        assert page.get_by_test_id("stSidebar").get_by_role("combobox", name="Time range").input_value() == "Last hour"
    assert any("/_stcore/stream" in u for u in seen) and len(seen) > 20, seen
    assert any(urlsplit(u).path == "/app/static/uplot/uPlot.esm.js" for u in seen), seen  # the charts' library


_CHARTS_DRAWN = "() => [...document.querySelectorAll('.mon-chart')].every(c => c.getAttribute('data-drawn') === '1')"

# elements (any namespace) linking to the evil URL (href, xlink:href): an <a> made from the data would
_LINKS_FROM_DATA = """() => [...document.querySelectorAll('*')].filter(
    e => [...e.attributes].some(a => /href$/i.test(a.name) && a.value.includes('evil.example'))).length"""


def _no_markup_from_data(page) -> None:
    assert page.evaluate(_LINKS_FROM_DATA) == 0
    for tag in ("a", "b", "br", "script"):
        assert page.locator(f".mon-chart {tag}").count() == 0


def _legend(chart) -> dict[str, str]:
    """A chart's legend, label -> the value shown for the point under the cursor ("--": none)."""
    rows = chart.locator(".u-legend .u-series").all()
    return {r.locator(".u-label").text_content(): r.locator(".u-value").text_content() for r in rows}


def _hover(page, chart, fx: float, fy: float) -> None:
    """Moves the mouse over the chart's plot area at the fractions ``fx``, ``fy`` of its size."""
    chart.scroll_into_view_if_needed()
    box = chart.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx - 10, box["y"] + box["height"] * fy)
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy, steps=3)


def test_chart_labels_show_stored_html_literally_in_chromium(dashboard):
    """A model / service name with <a>, <b> and <br> is text in every chart: the legend entries and
    the category shown for the bar under the cursor read exactly as stored, and no element comes of it."""
    with _browser(dashboard["chromium"], dashboard["url"]) as page:
        page.goto(dashboard["url"] + "/", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Overview", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_function("() => document.querySelectorAll('.mon-chart .u-legend .u-series').length >= 15",
                               timeout=60_000)
        _settle(page)
        page.wait_for_function(_CHARTS_DRAWN, timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "chart_labels_overview.png"), full_page=True)
        charts = page.locator(".mon-chart")
        assert charts.count() == 5
        labels = [label for i in range(5) for label in _legend(charts.nth(i)) if label != "time (UTC)"]
        assert sorted(labels) == sorted([EVIL, "shop-llm"] * 5), labels  # five charts, two models each
        _no_markup_from_data(page)
        # under the cursor the legend shows each line's value there: the newest points are at the right
        chart = charts.first
        for fx in (0.99, 0.97, 0.95, 0.9, 0.8, 0.6):
            _hover(page, chart, fx, 0.5)
            shown = _legend(chart)
            if shown["time (UTC)"] != "--" and any(v != "--" for k, v in shown.items() if k != "time (UTC)"):
                break
        else:
            raise AssertionError(f"no values under the cursor: {shown}")
        assert shown["time (UTC)"].startswith(str(time.gmtime().tm_year)), shown
        _no_markup_from_data(page)

        page.goto(dashboard["url"] + "/latency_gpu", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Latency & GPU", exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("Mean time per request (ms)").first.wait_for(timeout=60_000)
        _settle(page)
        page.wait_for_function(_CHARTS_DRAWN, timeout=30_000)
        bars = page.locator(".mon-chart").first
        assert bars.locator(".u-title").text_content() == "Mean time per request (ms)"
        _hover(page, bars, 0.3, 0.5)  # one row: the model with engine timings
        shown = _legend(bars)
        assert shown["model"] == EVIL, shown  # its name, as stored
        assert float(shown["decode"].replace(",", "")) > 0, shown
        _no_markup_from_data(page)


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


def test_the_shipped_nginx_config_compresses_the_javascript_and_carries_the_websocket(dashboard, tmp_path):
    """deploy/nginx/dashboard.conf in front of the dashboards (its ports replaced): a page loads
    through it in Chromium (so the websocket passes), and Streamlit's JavaScript, which Streamlit
    serves uncompressed, leaves nginx gzip-compressed to a third of its size or less."""
    import gzip
    import re
    from urllib.parse import urlsplit

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if nginx is None:
        pytest.skip("LOUD SKIP: nginx is not installed (apt-get install -y nginx): deploy/nginx/dashboard.conf "
                    "is not tried on this machine")
    port = free_port()
    snippet = (ROOT / "deploy" / "nginx" / "dashboard.conf").read_text()
    assert "listen 8080;" in snippet and "127.0.0.1:8501" in snippet
    snippet = snippet.replace("listen 8080;", f"listen 127.0.0.1:{port};").replace(
        "127.0.0.1:8501", urlsplit(dashboard["url"]).netloc)
    (tmp_path / "dashboard.conf").write_text(snippet)
    temp = "\n".join(f"    {k}_temp_path {tmp_path}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log off;\n{temp}\n    include {tmp_path}/dashboard.conf;\n}}\n")
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e",
                             str(tmp_path / "error.log"), "-g", "daemon off;"], stderr=subprocess.PIPE, text=True)
    front = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(f"{front}/_stcore/health"), timeout=30, message="nginx in front of the dashboards")
        with urllib.request.urlopen(f"{front}/alerts", timeout=30) as r:
            script = re.search(r'src="(\.?/?static/js/[^"]+\.js)"', r.read().decode()).group(1).lstrip("./")
        sizes = {}
        for base, enc in ((dashboard["url"], "identity"), (front, "gzip")):
            req = urllib.request.Request(f"{base}/{script}", headers={"Accept-Encoding": enc})
            with urllib.request.urlopen(req, timeout=30) as r:
                body, encoding = r.read(), r.headers.get("Content-Encoding")
            sizes[enc] = len(body)
            if enc == "gzip":
                assert encoding == "gzip", f"nginx did not compress {script}"
                body = gzip.decompress(body)
            else:
                assert encoding is None  # Streamlit itself leaves its bundles uncompressed
            sizes[f"{enc} plain"] = len(body)
        assert sizes["gzip plain"] == sizes["identity plain"] and sizes["gzip"] * 3 <= sizes["identity"], sizes
        with _browser(dashboard["chromium"], front) as page:
            page.goto(f"{front}/alerts", wait_until="domcontentloaded")
            page.get_by_role("heading", name="Alerts", exact=True).first.wait_for(timeout=60_000)
            _settle(page)  # the script ran: its result came over the websocket through nginx
            assert page.locator("[data-testid='stException']").count() == 0
            assert page.locator("[data-testid='stMetric']").count() >= 3
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "emerg" not in err, err
