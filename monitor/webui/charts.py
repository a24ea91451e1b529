"""The pages' charts: specs for ``dashboards/static/chart.js`` (uPlot on a canvas), mounted as a
Streamlit component.

Why not plotly, the first round's choice: in Chromium on this project's 2-core reference machine a
page's first plotly chart cost ~0.3 s of every load (plotly.js starting up) and each further one
~65 ms; seven uPlot charts cost ~0.03 s in all (``bench/dashboard_floor.py``: ``plotly-7`` vs
``uplot-7``). uPlot (MIT, vendored in ``dashboards/static/uplot``, 1.6.32 from npm) is served by the
dashboard's own server (Streamlit's static file route, ``server.enableStaticServing``): no page
loads anything from elsewhere.

Text from the store (series names, categories, titles built from stored values) goes into the spec
as it is: uPlot writes legend and title as ``textContent`` and draws ticks on the canvas, so it can
never become markup, and shows exactly as stored.

A spec (JSON, the component's ``data``): ``kind`` (``line``/``bar``), ``title``, ``height``,
``x`` (epoch seconds, or category indexes with ``labels``), ``x_min``/``x_max``, ``y_min``/``y_max``,
``series`` (``name``, ``y``; bars also ``y0``/``y1``: where each bar starts and ends), ``percent``,
``markers``; bars ``orientation``, ``mode`` (stack/group/overlay), ``band`` (one bar's slot in x
units), ``hover`` (more columns of the bar under the cursor).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from monitor.extras import require

require("dashboards", "the dashboard charts")

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

COMPONENT = "monitor_chart"
LIBRARY = "uplot/uPlot.esm.js"


def _static_dir():
    from monitor.webui.server import app_path
    return app_path().parent / "static"


@lru_cache(maxsize=1)
def _component():
    static = _static_dir()
    css = (static / "uplot" / "uPlot.min.css").read_text() + \
        "\n.mon-chart-hover { font-size: 0.8rem; color: #555; min-height: 1.2em; text-align: center; }\n"
    return st.components.v2.component(COMPONENT, js=(static / "chart.js").read_text(), css="/* uPlot */\n" + css,
                                      isolate_styles=False)


def library_url() -> str:
    """Where the browser imports uPlot from: this server's static route, under its base path."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base + '/' if base else ''}app/static/{LIBRARY}"


def mount(spec: dict[str, Any], key: str | None) -> None:
    _component()(key=key, data={**spec, "lib": library_url()})


# -- building specs (pure: tests read them) ----------------------------------------------------------


def epoch_seconds(s: pd.Series) -> list[float | None]:
    """Times as seconds since the epoch; naive times are UTC wall time (as the queries return them)."""
    t = pd.to_datetime(s)
    t = t.dt.tz_localize("UTC") if getattr(t.dt, "tz", None) is None else t.dt.tz_convert("UTC")
    secs = (t - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return [None if v != v else float(v) for v in secs.tolist()]


def _values(s: pd.Series) -> list[float | None]:
    out = []
    for v in s.tolist():
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(None if math.isnan(f) or math.isinf(f) else f)
    return out


def _groups(df: pd.DataFrame, color: str | None) -> list[tuple[str, pd.DataFrame]]:
    if color is None:
        return [("", df)]
    return [(str(name), g) for name, g in df.groupby(color, sort=False, observed=True)]


def _y_range(lows: list[float], highs: list[float]) -> tuple[float, float]:
    lo = min([0.0, *lows])
    hi = max([0.0, *highs])
    if hi <= lo:
        hi = lo + 1.0
    pad = (hi - lo) * 0.05  # room above the highest point, and below the lowest when under zero
    return (lo - pad if lo < 0 else lo), hi + pad


def line_spec(df: pd.DataFrame, y: str, color: str | None, title: str, y_title: str, percent: bool,
              start_s: float, end_s: float) -> dict[str, Any]:
    """One series per ``color`` group of ``y`` over the time column ``t`` (aligned on the union of
    the groups' times; a series without a point at a time is skipped there, its line goes on)."""
    ts = epoch_seconds(df["t"]) if len(df) else []  # converted once, for all groups (None: no time)
    df = df.assign(_t=[math.nan if v is None else v for v in ts])
    xs = sorted({v for v in ts if v is not None})
    at = {v: i for i, v in enumerate(xs)}
    series, ys = [], []
    for name, g in _groups(df, color) if len(df) else []:
        col: list[float | None] = [None] * len(xs)
        for t, v in zip(g["_t"], _values(g[y])):
            if t == t:
                col[at[t]] = v
        series.append({"name": name if color else y, "y": col})
        ys += [v for v in col if v is not None]
    lo, hi = _y_range(ys, ys)
    return {"kind": "line", "title": title, "height": 260, "x": xs, "x_min": start_s, "x_max": end_s,
            "y_min": lo, "y_max": hi, "series": series, "percent": percent, "y_title": y_title,
            "markers": len(df) < 40}


def bar_spec(df: pd.DataFrame, title: str, height: int, *, x: str, y: str, color: str | None = None,
             base: str | None = None, hover_data: list[str] | None = None, orientation: str = "v",
             barmode: str = "relative", percent: bool = False, x_title: str | None = None) -> dict[str, Any]:
    """Bars of the value column (``y``; ``x`` when ``orientation="h"``) per category or time of the
    other, one series per ``color`` group: stacked (``relative``), side by side (``group``) or
    over each other (``overlay``); from ``base`` where given (one bar per row then: a waterfall)."""
    value, cat = (x, y) if orientation == "h" else (y, x)
    timed = pd.api.types.is_datetime64_any_dtype(df[cat]) if len(df) else False
    per_row = base is not None
    if timed:
        keys = epoch_seconds(df[cat])
        xs = sorted({k for k in keys if k is not None})
        steps = [b - a for a, b in zip(xs, xs[1:]) if b > a]
        band = min(steps) if steps else 60.0
        labels = None
    else:
        keys = list(range(len(df))) if per_row else [str(v) for v in df[cat].tolist()]
        order = keys if per_row else list(dict.fromkeys(keys))
        labels = [str(v) for v in df[cat].tolist()] if per_row else order
        xs = list(range(len(order)))
        band = 1.0
    slot = {k: i for i, k in enumerate(xs if timed else order)}
    df = df.assign(_key=keys, _value=_values(df[value]), _base=_values(df[base]) if base else 0.0)
    stacked = barmode == "relative" and not per_row
    pos = [0.0] * len(xs)
    neg = [0.0] * len(xs)
    series, lows, highs = [], [], []
    for name, g in _groups(df, color):
        length: list[float | None] = [None] * len(xs)
        y0: list[float | None] = [None] * len(xs)
        y1: list[float | None] = [None] * len(xs)
        for k, v, b in zip(g["_key"], g["_value"], g["_base"]):
            if k is None or v is None:
                continue
            i = slot[k]
            length[i] = (length[i] or 0.0) + v
            if stacked:
                run = pos if v >= 0 else neg
                y0[i], y1[i] = run[i], run[i] + v
                run[i] += v
            else:
                start = b if (per_row and b is not None) else 0.0
                y0[i], y1[i] = start, start + length[i]
        series.append({"name": name if color else value, "y": length, "y0": y0, "y1": y1})
        lows += [v for v in y0 if v is not None] + [v for v in y1 if v is not None]
        highs += [v for v in y1 if v is not None]
    lo, hi = _y_range(lows, highs)
    if timed:
        x_min, x_max = (xs[0] - band, xs[-1] + band) if xs else (0.0, 1.0)
    else:
        x_min, x_max = -0.5, max(len(xs), 1) - 0.5
    spec: dict[str, Any] = {
        "kind": "bar", "title": title, "height": max(120, int(height) - 60), "x": xs, "labels": labels,
        "x_min": x_min, "x_max": x_max, "y_min": lo, "y_max": hi, "series": series, "percent": percent,
        "orientation": orientation, "mode": "group" if barmode == "group" else "stack", "band": band,
        "x_title": cat if x_title is None else x_title, "y_title": value, "markers": False,
        "axis_size": min(260, 16 + 7 * max([len(v) for v in labels or []] or [4])),
    }
    if hover_data and per_row:
        spec["hover"] = {"columns": list(hover_data),
                         "rows": [["" if v is None else str(v) for v in row]
                                  for row in df[list(hover_data)].itertuples(index=False, name=None)]}
    return spec
