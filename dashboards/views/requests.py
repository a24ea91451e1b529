"""Requests: filter by model, status, time and text; one request's full record and its trace."""

import json

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import requests as q

SEARCH_BUDGET_S = 1.0

st.header("Requests")
store = ui.store()
ui.require_events(store)
f = ui.filters()

# A text search may have to read every prompt of the range: it stops after about a second and says
# how far back it got, unless the user asked for the whole range for this term.
whole = bool(f.search) and st.session_state.get("search_whole_range") == (f.search, f.start, f.end)
rows, n, exact, searched_from = q.listing(store, f, budget_s=None if whole else SEARCH_BUDGET_S)
if searched_from is not None:
    st.info(f"Searched {searched_from:%Y-%m-%d %H:%M} – {f.end:%Y-%m-%d %H:%M} UTC, the newest part of the range, "
            "within the page's time budget; older requests were not searched yet.")
    if st.button("Search the whole range", key="search_whole"):
        st.session_state["search_whole_range"] = (f.search, f.start, f.end)
        st.rerun()
if rows.empty:
    ui.no_rows(f, "requests matching the filters")
    st.stop()
st.caption(f"{'' if exact else 'at least '}{n:,} matching request{'s' if n != 1 else ''}"
           + (f"; the latest {len(rows)} below" if n > len(rows) else "") + (" · search:" if f.search else ""))
if f.search:
    st.code(f.search, language=None)
ui.table(rows.rename(columns={"prompt_preview": "prompt", "completion_preview": "completion"}),
         column_config={"latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.0f"),
                        "ttft_ms": st.column_config.NumberColumn("TTFT (ms)", format="%.0f")})


def _label(i: int) -> str:
    r = rows.iloc[i]
    prompt = (r["prompt_preview"] or "").replace("\n", " ")
    return f"{r['timestamp']:%H:%M:%S} · {r['model']} · {r['status']} · {prompt[:60]}"


def request_detail() -> None:
    """One request in full and its trace; picking another request reruns only this part."""
    st.subheader("Request")
    i = st.selectbox("Show", range(len(rows)), format_func=_label, key="req_pick")
    sel = rows.iloc[i]
    d = q.detail(store, sel["trace_id"], sel["span_id"], near=sel["timestamp"])
    if d is None:
        st.warning("this request is no longer in the store")
        return
    c = st.columns(6)
    c[0].metric("Status", d["status_code"] + (f" ({d['error_type']})" if d.get("error_type") else ""))
    c[1].metric("Latency", ui.fmt_ms(d.get("latency_ms")))
    c[2].metric("TTFT", ui.fmt_ms(d.get("ttft_ms")))
    c[3].metric("Input tokens", ui.fmt_num(d.get("input_tokens")))
    c[4].metric("Output tokens", ui.fmt_num(d.get("output_tokens")))
    c[5].metric("Finish reason", d.get("finish_reason") or "–")
    st.caption(ui.md_escape(f"{d['timestamp']} UTC · model {d['model']} · service {d['service_name']} · "
                            f"source {d['source']} · trace {d['trace_id']} · span {d['span_id']}"))
    left, right = st.columns(2)
    with left:
        ui.plain("prompt", d.get("prompt"))
        if d.get("system_prompt"):
            ui.plain("system prompt", d["system_prompt"])
    with right:
        ui.plain("completion", d.get("completion"))
    timing = {k: d.get(k) for k in ("queue_ms", "prefill_ms", "decode_ms", "engine_ttft_ms", "engine_latency_ms",
                                     "itl_ms", "gpu_seconds", "gpu_cost")}
    flags = {k: d.get(k) for k in ("prompt_language", "completion_language", "refusal", "empty_output", "truncated",
                                    "json_valid", "pii_in_output", "repetition", "degenerate", "language_mismatch")}
    with st.expander("Engine timings, cost and quality flags"):
        ui.plain("timings", json.dumps(timing, indent=2, default=str))
        ui.plain("quality", json.dumps(flags, indent=2, default=str))
    # The raw JSON (messages, attributes) only when asked: code blocks cost the browser's syntax
    # highlighter on every load even inside a closed expander (see ui.plain).
    if st.toggle("Messages and attributes (JSON)", key="req_json"):
        for key in ("input_messages", "output_messages"):
            if d.get(key):
                ui.plain(key.replace("_", " "), d[key], mono=True)
        ui.plain("attributes", json.dumps(dict(d.get("attributes") or {}), indent=2, ensure_ascii=False,
                                          sort_keys=True), mono=True)

    st.subheader("Trace")
    spans = q.spans(store, d["trace_id"])
    if spans.empty:
        st.caption("no spans stored for this trace")
    else:
        ui.bar_chart(spans.drop(columns=["attributes"]), "Spans (ms from the trace's start)", "trace",
                     120 + 32 * len(spans), x="duration_ms", y="name",
                     base="offset_ms", orientation="h", color="service", hover_data=["kind", "status", "span_id"])
        ui.table(spans.drop(columns=["attributes"]))
        if st.toggle("Each span's attributes (JSON)", key="req_span_json"):
            for _, s in spans.iterrows():
                ui.plain(ui.md_escape(f"{s['name']} · {s['duration_ms']:.1f} ms · attributes"), s["attributes"],
                         mono=True)


ui.fragment(request_detail, "Requests")
