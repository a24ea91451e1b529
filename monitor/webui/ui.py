"""Rendering helpers shared by the pages in ``dashboards/``: the sidebar filters, empty states,
plain-text display of user content, number formats, charts (:mod:`monitor.webui.charts`).

User content (prompts, completions, attributes, error texts) is only ever shown with
:func:`plain` (``st.text``, or ``st.code`` for JSON: literal text, no markdown, no HTML) or inside ``st.dataframe`` (a
canvas grid of plain strings). ``st.markdown`` here only renders this module's own constant text.

Charts are only built by :func:`line_chart` and :func:`bar_chart` (uPlot: canvas and
``textContent``, so stored text in a series name or category shows as stored).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from datetime import time as dtime
from pathlib import Path
from typing import Any, Callable

from monitor.extras import require

require("dashboards", "the dashboard app")

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from monitor.webui import charts, timing
from monitor.webui.filters import (
    AUTO,
    RANGE_KEYS,
    RANGES,
    Filters,
    fitting_range,
    fresh_seconds,
    preset,
)
from monitor.webui.store import get_store, options

__all__ = ["store", "sidebar", "filters", "require_events", "fragment", "plain", "table", "line_chart", "bar_chart",
           "fmt_ms", "fmt_rate", "fmt_pct", "fmt_num", "md_escape", "CUSTOM",
           "NO_DATA_HELP", "FAVICON"]

CUSTOM = "Custom"
_STATE = "monitor_filters"
_DEFAULT_RANGE = AUTO
_FIRST_EVENT_TTL_S = 60.0
_URL_KEYS = {**RANGE_KEYS, "auto": AUTO}
_URL_OF = {v: k for k, v in _URL_KEYS.items()}

FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
"""The browser tab's icon, served by the dashboard itself (a ``:material/...:`` icon would make every
page load fetch it from a public font CDN)."""


NO_DATA_HELP = """
**No requests recorded yet.** Point a model server or its clients at the monitor:

- **Clients through the capture proxy** (prompts, completions, client-seen TTFT): start
  `monitor up --upstream http://127.0.0.1:8000` and use `http://127.0.0.1:8080/v1` as the
  OpenAI base URL instead of the server's own.
- **The server's own traces**: vLLM `--otlp-traces-endpoint http://127.0.0.1:4317`, or any
  OpenTelemetry SDK with `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`.
- **Engine metrics** (KV cache, queue depth): add `--scrape http://127.0.0.1:8000/metrics`.
- **Just looking?** `monitor demo` runs a small model server with traffic in front of it.

See the README's *Quick start*.
"""


def store():
    """The read-only store (see :mod:`monitor.webui.store`)."""
    return get_store()


# -- filters ---------------------------------------------------------------------------------------


def sidebar() -> None:
    """The filters every page shares, in the sidebar (rendered by ``dashboards/app.py`` on every
    page, so a choice survives switching pages). The range is also kept in the URL (``?range=7d``),
    so a reload or a shared link opens the same range."""
    from monitor.webui.queries import overview

    sb = st.sidebar
    sb.title("llm-monitor")
    names = [AUTO, *RANGES, CUSTOM]
    if "f_range" not in st.session_state:  # a new session: the range asked for in the URL, if any
        asked = _URL_KEYS.get(str(st.query_params.get("range", "")).lower())
        st.session_state["f_range"] = asked or _DEFAULT_RANGE
    choice = sb.selectbox("Time range", names, key="f_range")
    key = _URL_OF.get(choice)
    if st.query_params.get("range") != key:
        if key is None:
            st.query_params.pop("range", None)
        else:
            st.query_params["range"] = key
    custom = None
    if choice == CUSTOM:
        today = datetime.now(timezone.utc).date()
        picked = sb.date_input("From / to (UTC, inclusive)", value=(today - timedelta(days=1), today), key="f_dates")
        if isinstance(picked, (tuple, list)) and len(picked) == 2:
            custom = (picked[0], picked[1])
    sel = _selection(choice, custom, (), "all", "")
    try:
        available = overview.models(store(), _build(sel))
    except Exception as exc:  # an unreachable store: the page says so
        available = []
        sb.caption(f"cannot list models: {type(exc).__name__}")
    chosen = sb.multiselect("Models", sorted(set(available) | set(st.session_state.get("f_models", []))),
                            key="f_models", placeholder="all models")
    status = sb.radio("Status", ["all", "ok", "error"], horizontal=True, key="f_status",
                      help="Requests page and quality examples")
    search = sb.text_input("Search prompts and completions", key="f_search",
                           help="Case-insensitive substring; Requests page and quality examples")
    st.session_state[_STATE] = _selection(choice, custom, tuple(chosen), status, search)
    if choice == AUTO:
        sb.caption(f"Auto: {_auto_range().lower()} (the shortest range holding every event)")
    sb.caption(md_escape(f"store: {store().describe()} (read-only)"))


def _selection(choice, custom, models, status, search) -> dict[str, Any]:
    return {"range": choice, "custom": custom, "models": tuple(models), "status": status, "search": search}


def _build(sel: dict[str, Any]) -> Filters:
    kw = {"models": tuple(sel.get("models") or ()), "status": sel.get("status") or "all",
          "search": sel.get("search") or ""}
    if sel.get("range") == CUSTOM and sel.get("custom"):
        a, b = sel["custom"]
        start = datetime.combine(a, dtime.min, tzinfo=timezone.utc)
        end = datetime.combine(b, dtime.min, tzinfo=timezone.utc) + timedelta(days=1)
        return Filters(start=start, end=max(end, start + timedelta(seconds=1)), **kw)
    name = sel.get("range") if sel.get("range") in RANGES else _auto_range()
    return preset(name, **kw)


def _auto_range() -> str:
    """:func:`~monitor.webui.filters.fitting_range` of the oldest event, looked up at most once a
    minute per session (it only changes when the first data arrives or retention drops old days)."""
    import time

    from monitor.webui.queries import overview

    cached = st.session_state.get("_first_event")
    if cached is None or time.monotonic() - cached[0] > _FIRST_EVENT_TTL_S:
        try:
            first = overview.first_event(store())
        except Exception:  # an unreachable store: the pages say so themselves
            first = None
        cached = (time.monotonic(), first)
        st.session_state["_first_event"] = cached
    return fitting_range(cached[1])


def filters() -> Filters:
    """The sidebar's filters as of now (a preset range ends at the current second, so an
    auto-refreshing fragment calling this again moves with time)."""
    return _build(st.session_state.get(_STATE) or {})


def refresh_interval() -> float | None:
    s = float(options().get("refresh_s", 10.0))
    return s if s > 0 else None


def fragment(body: Callable[[], None], name: str, run_every: float | None = None) -> None:
    """Run ``body`` as a Streamlit fragment: a widget inside it, or its ``run_every`` timer, reruns
    only ``body`` (timed as a run of page ``name``), not the page and its sidebar."""

    def timed() -> None:
        with timing.page_run(name, fragment=True):
            body()

    st.fragment(run_every=run_every)(timed)()


def now() -> datetime:
    return datetime.now(timezone.utc)


def freshness(f: Filters) -> str:
    """How old the page's figures may be, for a caption."""
    return f"figures at most {fresh_seconds(f.end - f.start)} s old"


def require_events(s) -> None:
    """Stop the page with instructions when nothing was ever recorded."""
    from monitor.webui.queries import overview

    if not overview.has_events(s):
        st.info(NO_DATA_HELP, icon=":material/info:")
        st.stop()


def no_rows(f: Filters, what: str = "requests") -> None:
    st.info(f"No {what} between {f.start:%Y-%m-%d %H:%M} and {f.end:%Y-%m-%d %H:%M} UTC"
            f"{' for the selected models' if f.models else ''}. Widen the time range or clear the model filter.",
            icon=":material/search_off:")


# -- display ----------------------------------------------------------------------------------------


def plain(label: str, text: Any, empty: str = "(empty)", mono: bool = False) -> None:
    """``text`` exactly as stored, no markdown, no HTML: ``st.text`` (wrapped plain text, whitespace
    kept), or with ``mono`` a code block. Lists of stored texts use ``st.text``: a code block goes
    through the browser's syntax highlighter, which took 0.4 s of a Quality page reload for its
    40 example texts (and 0.16 s of a Requests reload for its JSON blocks), so pages show
    code blocks only where someone asked for them. ``label``: a caption above (none when empty)."""
    if label:
        st.caption(label)
    value = "" if text is None else str(text)
    if mono:
        st.code(value if value else empty, language=None, wrap_lines=True)
    else:
        st.text(value if value else empty)


def md_escape(text: Any) -> str:
    """``text`` for a place that renders markdown (expander and widget labels): every markdown
    and HTML character escaped, so stored text can never become a link, an image or a tag."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text)).replace("\n", " ")


_MD_SPECIAL = set("\\`*_{}[]()<>#+-.!|~$:&")


def table(df: pd.DataFrame, **kw: Any) -> None:
    st.dataframe(df, hide_index=True, width="stretch", **kw)


def line_chart(df: pd.DataFrame, y: str, color: str | None, title: str, y_title: str, percent: bool = False,
               key: str | None = None) -> None:
    """One line per ``color`` group of ``y`` over the time column ``t``, across the whole selected range."""
    f = filters()
    charts.mount(charts.line_spec(df, y, color, title, y_title, percent, f.start.timestamp(), f.end.timestamp()), key)


def bar_chart(df: pd.DataFrame, title: str, key: str, height: int, *, x: str, y: str, color: str | None = None,
              base: str | None = None, hover_data: list[str] | None = None, orientation: str = "v",
              barmode: str = "relative", percent: bool = False, x_title: str | None = None) -> None:
    """Bars of ``y`` over ``x`` (``orientation="h"``: ``x`` is the length), one series per ``color``
    group, stacked (``relative``) or side by side (``group``); from ``base`` where given (one bar per
    row: a waterfall, with ``hover_data`` columns shown for the bar under the cursor)."""
    charts.mount(charts.bar_spec(df, title, height, x=x, y=y, color=color, base=base, hover_data=hover_data,
                                 orientation=orientation, barmode=barmode, percent=percent, x_title=x_title), key)


def fmt_ms(v: Any) -> str:
    if v is None or v != v:
        return "–"
    return f"{v / 1000:,.2f} s" if v >= 10_000 else f"{v:,.0f} ms"


def fmt_rate(v: Any, unit: str = "/s") -> str:
    if v is None or v != v:
        return "–"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:,.2f}{unit}" if v >= 1 or v == 0 else f"{v:.3g}{unit}"


def fmt_pct(v: Any) -> str:
    if v is None or v != v:
        return "–"
    return f"{v * 100:.2f}%"


def fmt_num(v: Any) -> str:
    if v is None or v != v:
        return "–"
    return f"{int(v):,}"
