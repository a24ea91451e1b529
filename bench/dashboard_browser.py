#!/usr/bin/env python
"""The dashboards as people see them: every page in Chromium over bench/dashboard.py's 10M-row store.

Serves the dashboards the way ``monitor dashboard --clickhouse chdb://DIR`` does (the same
:class:`monitor.runtime.apps.DashboardApp`, in a process of its own, from the checkout given by
``--root``, so an older checkout is measured by the same command), drives Debian's Chromium with
Playwright (never a downloaded browser) and reports, per page and range (last 24 hours, last 7 days):

- **first load**: a new browser context (empty HTTP cache, as a first visit) opens
  ``/<page>?range=<range>`` until the page is complete;
- **warm reload**: the same tab reloads (scripts from the browser's cache), median of ``--repeat``;
- **range change**: on the loaded page, the sidebar's range switched to this one from the other,
  from the click on the option until the page is complete, median of ``--repeat``;
- **new tab**: the page opened again in a new tab of the same browser (its HTTP cache warm, a new
  Streamlit session), as a returning visitor opens it;
- **after the turn** (``--after-turn``): once every cell is measured, the run waits until the next
  5-minute boundary (where the time buckets of both ranges turn, so every cached result is of a
  bucket gone) and ``--turn-settle`` seconds more, then opens each page again in a new tab: the
  visit a minute or an hour later, with the dashboard's prefetch (``dashboard.prefetch_s``) on or,
  with ``--no-prefetch``, off.

*Complete* means: Streamlit reports its run finished (``stApp[data-test-script-state=notRunning]``),
no status widget, spinner, skeleton or stale element is left, every chart is drawn (uPlot's canvas; plotly's SVG in older checkouts),
and the DOM has not changed for ``--quiet`` seconds; the time taken is that of the last DOM change.
Changes inside a ``<canvas>`` element's fallback content do not count: the browser never draws it (the
data grid of ``st.dataframe`` fills an accessibility copy of its cells there 0.1-0.4 s after it has
drawn them); the canvas's own size and style do.

Each load is split with the server's own timing of the page's script runs (the hook
:mod:`monitor.webui.timing`; for a checkout without it the launcher times Streamlit's script
runner and the store's queries itself): **JS** = navigation start until the first script run starts
on the server (HTML, Streamlit's JavaScript, the websocket, the session), **script** = the runs'
server time (of which **queries**), **render** = the last run's end until the page is complete.
Browser and server share this machine's cores; ``--pin`` puts the server on CPU 0 and the browser
on CPU 1 (a browser with a core of its own, as a remote one would have, minus the network).

Every request the browser makes is recorded; any to another host than the dashboard is reported
(and makes the run exit non-zero).

    ~/.cache/llm-monitor/venv/bin/python bench/dashboard.py --dir /tmp/dash-bench --keep --pages alerts --ranges 24h --repeat 1   # data, once
    ~/.cache/llm-monitor/venv/bin/python bench/dashboard_browser.py --dir /tmp/dash-bench
    ~/.cache/llm-monitor/venv/bin/python bench/dashboard_browser.py --dir /tmp/dash-bench --root /tmp/old-checkout
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from procs import nginx_temp_paths
from procstat import free_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
PAGES = {"overview": ("", "Overview"), "latency_gpu": ("latency_gpu", "Latency & GPU"), "drift": ("drift", "Drift"),
         "quality": ("quality", "Quality"), "requests": ("requests", "Requests"), "alerts": ("alerts", "Alerts")}
RANGES = {"24h": "Last 24 hours", "7d": "Last 7 days"}
DATABASE = "bench"

# Runs before any page script: the time of the latest DOM change and of the latest click. A change
# inside a <canvas> (its fallback content, which the browser never draws: the data grid keeps an
# accessibility copy of its cells there and fills it after drawing) is not a change people see; the
# canvas element's own attributes (its size) are.
INIT_JS = """
window.__mon = {last: 0, changes: 0, click: 0};
const __unseen = (m) => {
    const t = m.target.nodeType === 1 ? m.target : m.target.parentElement;
    const c = t && t.closest('canvas');
    return !!c && (c !== t || m.type !== 'attributes');
};
new MutationObserver((ms) => {
    if (ms.every(__unseen)) return;
    window.__mon.last = performance.now(); window.__mon.changes++;
}).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
document.addEventListener('click', () => { window.__mon.click = performance.now(); }, true);
"""

# The page is complete (apart from the quiet period, checked by the caller).
COMPLETE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return 'script';
    if (!document.querySelector('[data-testid="stHeading"], [data-testid="stHeader"] h1, h1, h2')) return 'heading';
    if (document.querySelector('[data-testid="stStatusWidget"], [data-testid="stSpinner"], [data-testid="stSkeleton"]'))
        return 'spinner';
    if (document.querySelector('[data-stale="true"]')) return 'stale';
    for (const c of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
        if (!c.querySelector('.js-plotly-plot .main-svg')) return 'chart';
    for (const c of document.querySelectorAll('.mon-chart'))
        if (!c.getAttribute('data-drawn')) return 'chart';
    return '';
}"""


# Bytes over the network for this document and everything it loaded (0 for what came from the cache).
TRANSFER_JS = """() => performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
    .reduce((n, e) => n + (e.transferSize || 0), 0)"""

NGINX_CONF = """\
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_paths}    include {d}/dashboard.conf;
}}
"""


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Until ``url`` answers 200; exits the benchmark when ``proc`` ends first or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
            raise SystemExit(f"{what} did not start (exit {proc.poll()}) {err}".rstrip())
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_complete(page, since_ms: float, quiet_s: float, timeout_s: float) -> float:
    """Wait until the page is complete (:data:`COMPLETE_JS`, then no change people see for
    ``quiet_s``); its time (ms, page clock) of the last such change, or ``since_ms`` if later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        why, last, now = page.evaluate(f"() => [({COMPLETE_JS})(), window.__mon.last, performance.now()]")
        if not why and now - max(last, since_ms) >= quiet_s * 1000:
            return max(last, since_ms)
        page.wait_for_timeout(50)
    raise TimeoutError(f"page not complete after {timeout_s:.0f} s: {why}")


class Nginx:
    """nginx in front of the dashboards with the shipped deploy/nginx/dashboard.conf (its ports
    replaced), as a remote browser would reach them."""

    def __init__(self, root: Path, upstream_port: int, workdir: Path):
        snippet = (root / "deploy" / "nginx" / "dashboard.conf").read_text()
        self.port = free_port()
        snippet = snippet.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        snippet = snippet.replace("127.0.0.1:8501", f"127.0.0.1:{upstream_port}")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "dashboard.conf").write_text(snippet)
        (workdir / "nginx.conf").write_text(NGINX_CONF.format(d=workdir, temp_paths=nginx_temp_paths(workdir)))
        self.proc = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e",
                                      str(workdir / "error.log"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_healthy(self.url + "/_stcore/health", self.proc, 20, "nginx")

    def stop(self) -> None:
        stop_process(self.proc, 10)


def emulate_network(context, page, spec: str | None) -> None:
    """``MBIT,RTT_MS``: Chromium's network emulation on ``page`` (a browser on another machine)."""
    if not spec:
        return
    mbit, rtt = (float(x) for x in spec.split(","))
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": rtt,
                                                  "downloadThroughput": mbit * 1e6 / 8,
                                                  "uploadThroughput": mbit * 1e6 / 8})


# --- the server (a child process, run from the checkout under test) -----------------------------------

def _fallback_timing():
    """For a checkout without :mod:`monitor.webui.timing`: time Streamlit's script runs and the
    store's queries (per thread) here. Returns ``recent()``."""
    from streamlit.runtime.scriptrunner import script_runner

    from monitor.webui import store as ds

    local = threading.local()
    runs: list[dict] = []
    query = ds.ReadOnlyStore.query

    def timed_query(self, *a, **kw):
        t = time.perf_counter()
        try:
            return query(self, *a, **kw)
        finally:
            local.q = getattr(local, "q", 0.0) + time.perf_counter() - t
            local.n = getattr(local, "n", 0) + 1

    run = script_runner.ScriptRunner._run_script

    def timed_run(self, rerun_data):
        local.q, local.n = 0.0, 0
        start, t = time.time(), time.perf_counter()
        try:
            return run(self, rerun_data)
        finally:
            runs.append({"page": "", "start": start, "end": time.time(), "script_s": time.perf_counter() - t,
                         "query_s": local.q, "queries": local.n, "cached": 0,
                         "fragment": bool(rerun_data.fragment_id_queue)})
            del runs[:-500]

    ds.ReadOnlyStore.query = timed_query
    script_runner.ScriptRunner._run_script = timed_run
    return lambda: list(runs)


def serve(directory: str, port: int, timing_port: int, refresh_s: float, cache: bool, prefetch: bool = True) -> None:
    """The dashboards over ``directory`` as ``monitor dashboard`` serves them, plus the page timings
    as JSON on ``timing_port`` (GET /timings). Stops on SIGTERM."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from monitor.config import load
    from monitor.runtime.apps import DashboardApp

    dashboard = {"host": "127.0.0.1", "port": port, "refresh_s": refresh_s}
    if not prefetch:  # only then: a checkout from before prefetching refuses the key
        dashboard["prefetch_s"] = 0
    settings = load(overrides={"store": {"url": f"chdb://{directory}", "database": DATABASE},
                               "dashboard": dashboard, "telemetry": {"metrics_port": 0}})
    try:
        from monitor.webui import timing
        recent, hook = timing.recent, "monitor.webui.timing"
        if not cache:
            from monitor.webui import cache as result_cache
            result_cache.disable()
    except ImportError:
        recent, hook = _fallback_timing(), "bench fallback (script runner + ReadOnlyStore.query)"
    app = DashboardApp(settings)
    app.start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"hook": hook, "runs": recent(), "pid": os.getpid()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", timing_port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("@@ready", flush=True)
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the benchmark is gone: do not keep holding the chdb directory
            break
    httpd.shutdown()
    app.stop()


class Server:
    def __init__(self, root: Path, directory: str, refresh_s: float, cache: bool, pin: bool, prefetch: bool = True):
        self.port, self.timing_port = free_port(), free_port()
        env = dict(os.environ, PYTHONPATH=str(root))
        env.pop("MONITOR_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", directory, str(self.port),
             str(self.timing_port), str(refresh_s), "1" if cache else "0", "1" if prefetch else "0"],
            cwd=str(root), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "@@ready" not in line:
            raise SystemExit(f"the dashboard server did not start (exit {self.proc.poll()})")
        self.url = f"http://127.0.0.1:{self.port}"
        info = self.timings()
        self.hook, self.pid = info["hook"], info["pid"]

    def timings(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.timing_port}/timings", timeout=10) as r:
            return json.loads(r.read())

    def cpu_s(self) -> float:
        return _cpu_s(self.pid)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        stop_process(self.proc, 60)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def browser_cpu_s() -> float:
    """CPU seconds of every process under this one (Playwright's driver and Chromium)."""
    return sum(_cpu_s(p) for p in _descendants(os.getpid()))


# --- one measurement ----------------------------------------------------------------------------------

class Measure:
    def __init__(self, server: Server, quiet_s: float, timeout_s: float):
        self.server, self.quiet_s, self.timeout_s = server, quiet_s, timeout_s
        self.requests: list[str] = []
        self.foreign: list[str] = []

    def watch(self, context) -> None:
        own = urlsplit(self.server.url).netloc

        def on_request(req):
            self.requests.append(req.url)
            u = urlsplit(req.url)
            if u.scheme not in ("data", "blob", "about") and u.netloc != own:
                self.foreign.append(req.url)

        context.on("request", on_request)

    def complete(self, page, since_ms: float) -> float:
        return wait_complete(page, since_ms, self.quiet_s, self.timeout_s)

    def split(self, t0_wall: float, t1_wall: float) -> dict:
        """The server's script runs within [t0, t1] (wall clock, seconds)."""
        runs = [r for r in self.server.timings()["runs"] if r["end"] >= t0_wall - 0.01 and r["start"] <= t1_wall + 0.01]
        if not runs:
            return {"runs": 0}
        return {"runs": len(runs), "js_s": runs[0]["start"] - t0_wall, "script_s": sum(r["script_s"] for r in runs),
                "query_s": sum(r["query_s"] for r in runs), "queries": sum(r["queries"] for r in runs),
                "cached": sum(r.get("cached", 0) for r in runs), "render_s": t1_wall - runs[-1]["end"]}

    def load(self, page, url: str | None) -> dict:
        """goto ``url`` (None: reload) until complete."""
        cpu0, bcpu0 = self.server.cpu_s(), browser_cpu_s()
        if url is None:
            page.reload(wait_until="commit")
        else:
            page.goto(url, wait_until="commit")
        last = self.complete(page, 0.0)
        origin = page.evaluate("performance.timeOrigin") / 1000
        out = {"total_s": last / 1000, **self.split(origin, origin + last / 1000),
               "server_cpu_s": self.server.cpu_s() - cpu0, "browser_cpu_s": browser_cpu_s() - bcpu0,
               "transfer_mb": page.evaluate(TRANSFER_JS) / 1e6}
        return out

    def change_range(self, page, label: str) -> dict:
        cpu0, bcpu0 = self.server.cpu_s(), browser_cpu_s()
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name=label, exact=True).click()
        click = page.evaluate("window.__mon.click")
        last = self.complete(page, click)
        origin = page.evaluate("performance.timeOrigin") / 1000
        return {"total_s": (last - click) / 1000, **self.split(origin + click / 1000, origin + last / 1000),
                "server_cpu_s": self.server.cpu_s() - cpu0, "browser_cpu_s": browser_cpu_s() - bcpu0}


def shown_range(page) -> str:
    """What the sidebar says the range is (an older checkout ignores ``?range=``)."""
    sidebar = page.get_by_test_id("stSidebar")
    text = sidebar.get_by_test_id("stSelectbox").first.locator("input").input_value()
    if text.startswith("Auto"):
        cap = [c for c in sidebar.inner_text().splitlines() if c.startswith("Auto:")]
        text = cap[0].split("(")[0].strip() if cap else text
    return text


def _med(xs: list[dict], key: str) -> float | None:
    vals = [x[key] for x in xs if x.get(key) is not None]
    return statistics.median(vals) if vals else None


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    root = Path(args.root).resolve()
    server = Server(root, args.dir, args.refresh, cache=not args.no_cache, pin=args.pin, prefetch=not args.no_prefetch)
    if args.pin:
        os.sched_setaffinity(0, {1})  # Playwright's driver and Chromium inherit it
    print(f"serving {root} on {server.url} (timings: {server.hook}; rss {server.rss_mb():.0f} MB)", file=sys.stderr)
    front = None
    if args.via_nginx:  # the browser goes through nginx from here on (pages, assets, websocket)
        front = Nginx(ROOT, server.port, Path(tempfile.mkdtemp(prefix="dash-nginx-")))
        server.url = front.url
        print(f"through nginx on {front.url} (deploy/nginx/dashboard.conf)", file=sys.stderr)
    m = Measure(server, args.quiet, args.timeout)
    results = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            # one unmeasured load: Chromium's own first start, the server's imports
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            ctx.add_init_script(INIT_JS)
            m.watch(ctx)
            p = ctx.new_page()
            emulate_network(ctx, p, args.network)
            m.load(p, f"{server.url}/?range=24h")
            ctx.close()
            for rng in args.ranges.split(","):
                other = next(r for r in RANGES if r != rng)
                for name in args.pages.split(","):
                    path, _title = PAGES[name]
                    url = f"{server.url}/{path}?range={rng}"
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    ctx.add_init_script(INIT_JS)
                    m.watch(ctx)
                    p = ctx.new_page()
                    emulate_network(ctx, p, args.network)
                    first = m.load(p, url)
                    shown = shown_range(p)
                    reloads = [m.load(p, None) for _ in range(args.repeat)]
                    changes = []
                    for _ in range(args.repeat):
                        m.change_range(p, RANGES[other])
                        changes.append(m.change_range(p, RANGES[rng]))
                    p.close()
                    tab = ctx.new_page()  # a returning visitor: the browser's cache, a new Streamlit session
                    emulate_network(ctx, tab, args.network)
                    new_tab = m.load(tab, url)
                    ctx.close()
                    r = {"page": name, "range": rng, "shown": shown, "first": first, "reloads": reloads,
                         "changes": changes, "new_tab": new_tab}
                    results.append(r)
                    print(f"{rng:>3} {name:<12} first {first['total_s']:5.2f} s ({first['transfer_mb']:.1f} MB)  reload "
                          f"{_med(reloads, 'total_s'):5.2f} s ({_med(reloads, 'transfer_mb'):.2f} MB)  range change "
                          f"{_med(changes, 'total_s'):5.2f} s  new tab {new_tab['total_s']:5.2f} s   (shown: {shown})",
                          file=sys.stderr)
            if args.after_turn:
                turn = (time.time() // 300 + 1) * 300
                print(f"waiting {turn - time.time():.0f} s for the 5-minute boundary, then {args.turn_settle:.0f} s",
                      file=sys.stderr)
                time.sleep(turn - time.time() + args.turn_settle)
                for r in results:
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    ctx.add_init_script(INIT_JS)
                    m.watch(ctx)
                    p = ctx.new_page()
                    emulate_network(ctx, p, args.network)
                    r["after_turn"] = m.load(p, f"{server.url}/{PAGES[r['page']][0]}?range={r['range']}")
                    ctx.close()
                    a = r["after_turn"]
                    print(f"{r['range']:>3} {r['page']:<12} after the turn {a['total_s']:5.2f} s (script "
                          f"{_fmt(a.get('script_s'))}, {a.get('cached', 0)} of {a.get('queries', 0)} queries cached)",
                          file=sys.stderr)
            browser.close()
    finally:
        rss = server.rss_mb()
        server.stop()
        if front is not None:
            front.stop()
    return {"root": str(root), "hook": server.hook, "pin": args.pin, "cache": not args.no_cache,
            "prefetch": not args.no_prefetch, "after_turn": args.after_turn,
            "via_nginx": args.via_nginx, "network": args.network, "results": results,
            "server_rss_mb_end": rss, "requests": len(m.requests), "foreign_requests": sorted(set(m.foreign))}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _new_tab(t: dict | None) -> str:
    if not t:
        return "-"
    return f"**{_fmt(t['total_s'])}** ({_fmt(t.get('js_s'))} / {_fmt(t.get('script_s'))} / {_fmt(t.get('render_s'))})"


def table(out: dict) -> str:
    lines = ["| page | range | first load s (JS / script / render) | warm reload s (JS / script [queries] / render) "
             "| range change s (script [queries] / render) | new tab s (JS / script / render) | range shown on load |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in out["results"]:
        f, rl, ch = r["first"], r["reloads"], r["changes"]
        lines.append(
            f"| {PAGES[r['page']][1]} | {r['range']} "
            f"| **{_fmt(f['total_s'])}** ({_fmt(f.get('js_s'))} / {_fmt(f.get('script_s'))} / {_fmt(f.get('render_s'))}) "
            f"| **{_fmt(_med(rl, 'total_s'))}** ({_fmt(_med(rl, 'js_s'))} / {_fmt(_med(rl, 'script_s'))} "
            f"[{_fmt(_med(rl, 'query_s'))}] / {_fmt(_med(rl, 'render_s'))}) "
            f"| **{_fmt(_med(ch, 'total_s'))}** ({_fmt(_med(ch, 'script_s'))} [{_fmt(_med(ch, 'query_s'))}] "
            f"/ {_fmt(_med(ch, 'render_s'))}) | {_new_tab(r.get('new_tab'))} | {r['shown']} |")
    if any("after_turn" in r for r in out["results"]):
        lines += ["", f"after the turn (prefetch {'on' if out.get('prefetch', True) else 'off'}):", "",
                  "| page | range | first view after the turn s (JS / script [queries] / render) | queries cached |",
                  "| --- | --- | ---: | ---: |"]
        for r in out["results"]:
            a = r.get("after_turn")
            if a:
                lines.append(f"| {PAGES[r['page']][1]} | {r['range']} | **{_fmt(a['total_s'])}** ({_fmt(a.get('js_s'))} / "
                             f"{_fmt(a.get('script_s'))} [{_fmt(a.get('query_s'))}] / {_fmt(a.get('render_s'))}) "
                             f"| {a.get('cached', 0)} of {a.get('queries', 0)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/tmp/dash-bench", help="bench/dashboard.py's data directory (--keep)")
    ap.add_argument("--root", default=str(ROOT), help="the checkout whose dashboards are served [this one]")
    ap.add_argument("--pages", default=",".join(PAGES), help="comma-separated subset of: " + ", ".join(PAGES))
    ap.add_argument("--ranges", default=",".join(RANGES), help="comma-separated subset of: " + ", ".join(RANGES))
    ap.add_argument("--repeat", type=int, default=3, help="warm reloads and range changes per cell (median)")
    ap.add_argument("--quiet", type=float, default=0.5, help="seconds without a DOM change that end a load")
    ap.add_argument("--timeout", type=float, default=60.0)

    ap.add_argument("--refresh", type=float, default=0.0,
                    help="dashboard.refresh_s, the Overview's auto-refresh [0: off, so that its reruns do not "
                         "land inside a measured load]")
    ap.add_argument("--no-cache", action="store_true", help="turn the dashboards' result cache off")
    ap.add_argument("--no-prefetch", action="store_true", help="dashboard.prefetch_s: 0 (no queries run ahead of a bucket)")
    ap.add_argument("--after-turn", action="store_true",
                    help="after the cells, wait for the next 5-minute boundary and open every page again")
    ap.add_argument("--turn-settle", type=float, default=15.0, help="seconds after the boundary before --after-turn")
    ap.add_argument("--pin", action="store_true", help="server on CPU 0, browser on CPU 1")
    ap.add_argument("--via-nginx", action="store_true",
                    help="the browser reaches the dashboards through nginx with deploy/nginx/dashboard.conf (gzip)")
    ap.add_argument("--network", metavar="MBIT,RTT_MS", default=None,
                    help="emulate a browser on another machine: Chromium's network throttling, e.g. 50,20")
    ap.add_argument("--out", default="/tmp/bench-dashboard-browser.json")
    ap.add_argument("--serve", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        d, port, tport, refresh, cache, prefetch = args.serve
        serve(d, int(port), int(tport), float(refresh), cache == "1", prefetch == "1")
        return
    if not (Path(args.dir) / "bench-meta.json").is_file():
        raise SystemExit(f"no bench data in {args.dir}: run bench/dashboard.py --dir {args.dir} --keep first")
    meta = json.loads((Path(args.dir) / "bench-meta.json").read_text())
    out = run(args)
    out.update(data=meta, cpus=os.cpu_count(), load_avg=os.getloadavg())
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(table(out))
    print(f"\nserver RSS at the end {out['server_rss_mb_end']:.0f} MB; {out['requests']} requests, "
          f"{len(out['foreign_requests'])} to other hosts{': ' + ', '.join(out['foreign_requests']) if out['foreign_requests'] else ''}; "
          f"written to {args.out}", file=sys.stderr)
    if out["foreign_requests"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
