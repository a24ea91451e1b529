"""Compare: two models, versions, adapters or endpoints on the selected range, each difference with
its test; shadow pairs (the same prompt answered by both) and where they disagree most; the versions
the monitor has seen, new ones marked."""

import pandas as pd
import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import compare as q

st.header("Compare")
store = ui.store()
ui.require_events(store)
f = ui.filters()

sides = q.sides(store, f)
if sides.empty:
    ui.no_rows(f)
    st.stop()

labels = list(dict.fromkeys(sides["label"]))
if len(labels) < 2:
    st.info("Only one model answered in this range. Route a second model or version through the proxy "
            "(`proxy.routes`), shadow a share of the traffic to it (`proxy.shadow`), or widen the range.")
c1, c2, c3 = st.columns([2, 2, 1])
a = c1.selectbox("A (incumbent)", labels, index=0, key="compare_a")
b = c2.selectbox("B (candidate)", labels, index=min(1, len(labels) - 1), key="compare_b")
semantic = c3.checkbox("Semantic", value=False, key="compare_semantic",
                       help="Embed the answers (all-MiniLM-L6-v2): MMD test and answer similarity of shadow pairs. "
                            "Takes a few seconds on a CPU.")

st.caption("Answered in the range")
ui.table(sides[["label", "endpoint", "endpoint_kind", "requests", "shadow_requests"]])

if a == b:
    st.info("Pick two different sides.")
    st.stop()

r = q.comparison(store, f, a, b, semantic=semantic)
sa, sb = r["sides"]["a"], r["sides"]["b"]
m = st.columns(4)
m[0].metric("A requests", f"{sa['requests']:,}", help=f"{sa['shadow_requests']:,} of them shadow copies")
m[1].metric("B requests", f"{sb['requests']:,}", help=f"{sb['shadow_requests']:,} of them shadow copies")
pairs = r["pairs"]
m[2].metric("Shadow pairs", f"{pairs['pairs']:,}")
k = r["cost"]["per_1k_requests"]
m[3].metric("Cost per 1k requests (B)", ui.fmt_num(k["b"]),
            delta=None if k["diff"] is None else f"{k['diff']:+.4g} vs A", delta_color="inverse")


def _ci(v) -> str:
    return "" if not v or v[0] is None else f"{v[0]:+.4g} .. {v[1]:+.4g}"


st.subheader("Distributions")
st.caption("Mann-Whitney U (two-sided) on whether B's values tend to differ; bootstrap 95% CIs of B - A.")
rows = []
for name, d in r["distributions"].items():
    rows.append({"metric": name, "A median": d["median_a"], "B median": d["median_b"], "A p95": d["p95_a"],
                 "B p95": d["p95_b"], "B - A median": d.get("median_diff"), "95% CI": _ci(d.get("median_diff_ci")),
                 "p95 ratio B/A": d.get("p95_ratio"), "ratio CI": _ci(d.get("p95_ratio_ci")),
                 "p-value": d.get("p_value"), "n A": d["n_a"], "n B": d["n_b"]})
ui.table(pd.DataFrame(rows))

st.subheader("Quality and errors")
st.caption("Two-proportion z-test (two-sided); Newcombe 95% CI of the difference in rates.")
rows = []
for name, d in r["rates"].items():
    rows.append({"rate": name, "A": d["rate_a"], "B": d["rate_b"], "B - A": d.get("diff"),
                 "95% CI": _ci(d.get("ci")), "p-value": d.get("p_value"), "A count": f"{d['x_a']}/{d['n_a']}",
                 "B count": f"{d['x_b']}/{d['n_b']}"})
ui.table(pd.DataFrame(rows), column_config={c: st.column_config.NumberColumn(c, format="percent")
                                            for c in ("A", "B", "B - A")})

st.subheader("Cost")
c = r["cost"]
ui.table(pd.DataFrame([
    {"": "per 1k requests", "A": k["a"], "B": k["b"], "B - A": k["diff"], "95% CI": _ci(k.get("ci")),
     "p-value": k.get("p_value")},
    {"": "per 1k tokens", "A": c["per_1k_tokens"]["a"], "B": c["per_1k_tokens"]["b"], "B - A": None, "95% CI": "",
     "p-value": None},
]))
st.caption("Managed endpoints: tokens x `cost.token_prices`; self-hosted: GPU-seconds x `gpu.price_per_gpu_hour`. "
           f"Requests with a cost: A {c['requests_with_cost']['a']:,}, B {c['requests_with_cost']['b']:,}.")

s = r["semantic"]
st.subheader("Semantic drift between the answers")
if "skipped" in s:
    st.caption(ui.md_escape(s["skipped"]))
else:
    st.metric("MMD p-value", f"{s['p_value']:.3g}", help=f"MMD² {s['mmd2']:.4g}, {s['n_a']} vs {s['n_b']} answers")

st.subheader("Shadow pairs: the same prompt, both answers")
if not pairs["pairs"]:
    st.caption("No shadow pairs in this range: `proxy.shadow` sends a share of A's requests to B as well.")
else:
    p = st.columns(4)
    p[0].metric("both answered", f"{pairs['both_answered']:,}")
    p[1].metric("both refused", f"{pairs['both_refused']:,}")
    p[2].metric("one refused", f"{pairs['one_refused']:,}",
                help=f"only A: {pairs['refused_only_a']}, only B: {pairs['refused_only_b']}")
    sim = pairs.get("similarity")
    p[3].metric("answer similarity (median)", "-" if sim is None else f"{sim['median']:.3f}",
                help="tick Semantic to compute it" if sim is None else sim["method"])
    st.caption("Where they disagree most")
    for e in pairs.get("most_disagreeing", []):
        tag = "-" if e["similarity"] is None else f"{e['similarity']:.2f}"
        with st.expander(f"similarity {tag} · refused A {e['refused_a']} · B {e['refused_b']} · "
                         f"{ui.md_escape(e['prompt'][:80])}"):
            ui.plain("prompt", e["prompt"])
            ui.plain(ui.md_escape(f"A: {a}"), e["answer_a"])
            ui.plain(ui.md_escape(f"B: {b}"), e["answer_b"])
            st.caption(f"trace {e['trace_id']}")

st.subheader("Versions seen")
v = q.versions(store, f)
if v.empty:
    st.caption("none recorded yet")
else:
    new = v[v["new"]]
    if not new.empty:
        st.success(f"{len(new)} new version(s) first seen in this range: "
                   + ", ".join(ui.md_escape(q.label_of(x, y, z)) for x, y, z in
                               zip(new["model"], new["model_version"], new["adapter"])))
    ui.table(v)
