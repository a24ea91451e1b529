#!/usr/bin/env python
"""What Streamlit's elements cost in the browser, without the monitor: the floor under bench/dashboard_browser.py.

Serves small generated Streamlit apps (``streamlit run``, one at a time) and times warm reloads in
Debian's Chromium exactly as bench/dashboard_browser.py does (the same completion rule: Streamlit's
run over, no status widget, every plotly chart drawn, no DOM change people can see for ``--quiet``
seconds). Each app is one variable added to an empty page:

- ``empty``: a header and a line of text;
- ``sidebar``: + three sidebar widgets (a selectbox, a multiselect, a radio), as every dashboard page has;
- ``grid-1`` / ``grid-5``: + one / five ``st.dataframe`` of 20 rows x 3 columns;
- ``table-5``: + five ``st.table`` of the same rows;
- ``plotly-1``: + one plotly line chart (three series of 48 points, a time axis) as a figure dict;
- ``plotly-1-big``: + one plotly line chart of seven series of 180 points (Quality's chart at 24 h);
- ``plotly-7``: + seven plotly line charts (three series of 48 points, a time axis) as figure dicts;
- ``plotly-subplots-7``: the same 21 series as one figure with seven subplots;
- ``uplot-7``: the same seven charts as the dashboards draw them (``monitor/webui/charts.py``: uPlot);
- ``vega-7``: the same seven charts as ``st.line_chart`` (Vega-Lite).

Prints the median warm reload per app (``--reloads`` reloads after one unmeasured load) and what
each adds to the app it extends (``sidebar`` to ``empty``, the others to ``sidebar``). Rounds alternate the apps (``--rounds``), since this machine's
speed drifts between minutes.

    ~/.cache/llm-monitor/venv/bin/python bench/dashboard_floor.py [--rounds 2] [--reloads 6] [--apps empty,plotly-7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dashboard_browser import CHROMIUM, CHROMIUM_ARGS, INIT_JS, stop_process, wait_complete, wait_healthy
from procstat import free_port

ROOT = Path(__file__).resolve().parents[1]
_ROWS = 'pd.DataFrame({"a": range(20), "b": [f"text {j}" for j in range(20)], "c": [j * 1.5 for j in range(20)]})'
_XS = '[f"2026-12-06T{h:02d}:{m:02d}:00" for h in range(24) for m in (0, 30)]'
_TRACE = '{"type": "scatter", "mode": "lines", "x": XS, "y": [(j * (k + 1)) % 7 for j in range(len(XS))], "name": f"s{k}"'

APPS = {
    "empty": "",
    "sidebar": "",
    "grid-1": f"st.dataframe({_ROWS}, hide_index=True)",
    "grid-5": f"for i in range(5):\n    st.dataframe({_ROWS}, hide_index=True)",
    "table-5": f"for i in range(5):\n    st.table({_ROWS})",
    "plotly-1": "st.plotly_chart({\"data\": [" + _TRACE + "} for k in range(3)], \"layout\": {\"height\": 300}}, key=\"c\")",
    "plotly-1-big": "XS = [f\"2026-12-06T{h:02d}:{m:02d}:00\" for h in range(24) for m in range(0, 60, 8)]\n"
                    "st.plotly_chart({\"data\": [" + _TRACE + "} for k in range(7)], \"layout\": {\"height\": 300}}, key=\"c\")",
    "uplot-7": "from monitor.webui import charts\n"
               "df = pd.DataFrame({'t': pd.to_datetime(XS * 3), 'y': [(j * (k + 1)) % 7 for k in range(3) for j in range(len(XS))], "
               "'s': [f's{k}' for k in range(3) for _ in XS]})\n"
               "for i in range(7):\n    charts.mount(charts.line_spec(df, 'y', 's', f'chart {i}', '', False, "
               "df.t.min().timestamp(), df.t.max().timestamp()), f'c{i}')",
    "plotly-7": "for i in range(7):\n    st.plotly_chart({\"data\": [" + _TRACE + "} for k in range(3)], "
                "\"layout\": {\"height\": 300, \"title\": {\"text\": f\"chart {i}\"}}}, key=f\"c{i}\")",
    "plotly-subplots-7": "data = [" + _TRACE + ", \"xaxis\": f\"x{i + 1}\", \"yaxis\": f\"y{i + 1}\"} "
                         "for i in range(7) for k in range(3)]\n"
                         "st.plotly_chart({\"data\": data, \"layout\": {\"height\": 2100, \"grid\": {\"rows\": 7, "
                         "\"columns\": 1}}}, key=\"c\")",
    "vega-7": "xs = pd.to_datetime(XS)\n"
              "df = pd.DataFrame({\"t\": list(xs) * 3, \"y\": [(j * (k + 1)) % 7 for k in range(3) for j in range(len(xs))], "
              "\"s\": [f\"s{k}\" for k in range(3) for _ in xs]})\n"
              "for i in range(7):\n    st.line_chart(df, x=\"t\", y=\"y\", color=\"s\", height=300)",
}


def source(name: str) -> str:
    head = f"import pandas as pd\nimport streamlit as st\n\nXS = {_XS}\nst.header({name!r})\nst.write('a line of text')\n"
    if name != "empty":
        head += ("with st.sidebar:\n    st.selectbox('Time range', ['Last 24 hours', 'Last 7 days'])\n"
                 "    st.multiselect('Models', ['a', 'b'])\n    st.radio('Status', ['all', 'ok', 'error'])\n")
    return head + APPS[name] + "\n"


class App:
    def __init__(self, name: str, folder: Path):
        path = folder / f"{name.replace('-', '_')}.py"
        path.write_text(source(name))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(path), "--server.port", str(self.port),
             "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.enableStaticServing", "true"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.url = f"http://127.0.0.1:{self.port}/"
        wait_healthy(self.url + "_stcore/health", self.proc, 60, f"streamlit for {name}")

    def stop(self) -> None:
        stop_process(self.proc, 20)


def complete(page, quiet_s: float) -> float:
    """Seconds from navigation until the page is complete (bench/dashboard_browser.py's rule)."""
    return wait_complete(page, 0.0, quiet_s, 60.0) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apps", default=",".join(APPS), help="comma-separated subset of: " + ", ".join(APPS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reloads", type=int, default=6, help="measured warm reloads per app and round")
    ap.add_argument("--quiet", type=float, default=0.5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    names = args.apps.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        shutil.copytree(ROOT / "dashboards" / "static", Path(tmp) / "static")  # uPlot, served as the dashboards serve it
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for rnd in range(args.rounds):
            for name in names:
                app = App(name, Path(tmp))
                try:
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    ctx.add_init_script(INIT_JS)
                    page = ctx.new_page()
                    page.goto(app.url, wait_until="commit")
                    complete(page, args.quiet)
                    for _ in range(args.reloads):
                        page.reload(wait_until="commit")
                        times[name].append(complete(page, args.quiet))
                    ctx.close()
                finally:
                    app.stop()
                print(f"round {rnd + 1} {name:<18} {statistics.median(times[name][-args.reloads:]):.3f} s",
                      file=sys.stderr)
        browser.close()
    med = {n: statistics.median(t) for n, t in times.items()}
    print("| app | warm reload, median s | added to the app before it s |\n| --- | ---: | ---: |")
    for name in names:
        before = "empty" if name == "sidebar" else None if name == "empty" else "sidebar"
        added = f"{med[name] - med[before]:+.2f} (to {before})" if before in med else ""
        print(f"| {name} | {med[name]:.2f} | {added} |")


if __name__ == "__main__":
    main()
