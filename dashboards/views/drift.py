"""Drift: per-feature drift scores over time, reference versus current distributions, semantic
drift with the clusters that grew or shrank and example prompts."""

import streamlit as st

from monitor.webui import ui
from monitor.webui.queries import drift as q

st.header("Drift")
store = ui.store()
f = ui.filters()

latest = q.latest_results(store, f, ("feature_drift", "semantic_drift"))
if latest.empty:
    st.info("No drift results in this range. The checks run every `checks.interval_s` (5 minutes) inside "
            "`monitor up` (or `monitor checks`), once the current window and its reference (a pinned baseline, "
            "or the same window a day earlier) both have `checks.min_samples` requests. Run them now with "
            "`monitor check`.", icon=":material/info:")
    st.stop()

fails = latest[latest["status"] == "fail"]
c = st.columns(3)
c[0].metric("Results", ui.fmt_num(len(latest)))
c[1].metric("Drifting", ui.fmt_num(len(fails)))
c[2].metric("Insufficient data", ui.fmt_num((latest["status"] == "insufficient_data").sum()))
ui.table(latest[["status", "model", "group", "check", "metric", "method", "value", "threshold", "p_value",
                 "current_n", "reference_n", "reference", "at"]],
         column_config={"value": st.column_config.NumberColumn("score", format="%.4g"),
                        "p_value": st.column_config.NumberColumn("p-value", format="%.3g")})

scopes = latest[["model", "group"]].drop_duplicates()
labels = [f"{m}{' [' + g + ']' if g else ''}" for m, g in scopes.itertuples(index=False)]


def one_model() -> None:
    """Scores, distributions and clusters of one model; picking another reruns only this part."""
    pick = st.selectbox("Model", range(len(labels)), format_func=lambda i: labels[i], key="drift_scope")
    model, group = scopes.iloc[pick]["model"], scopes.iloc[pick]["group"]

    st.subheader("Feature drift over time")
    scores = q.scores_over_time(store, f, "feature_drift", model, group)
    if scores.empty:
        st.caption("no feature-drift results for this model in the range")
    else:
        features = sorted(scores["metric"].unique())
        failing = sorted(set(fails[(fails["model"] == model) & (fails["check"] == "feature_drift")]["metric"]))
        shown = st.multiselect("Features", features, default=failing[:6] or features[:4], key="drift_features")
        ui.line_chart(scores[scores["metric"].isin(shown)], "value", "metric", "Drift score (last per bucket)",
                      "score", key="drift_ts")

        st.subheader("Reference versus current")
        metric = st.selectbox("Feature", features, index=features.index(failing[0]) if failing else 0,
                              key="drift_metric")
        dist = q.distribution(store, f, model, "feature_drift", metric, group)
        if dist.empty:
            st.caption("no distribution stored for this result")
        else:
            shares = dist.melt(id_vars="bucket", value_vars=["reference_share", "current_share"], var_name="window",
                               value_name="share")
            shares["window"] = shares["window"].str.removesuffix("_share")
            ui.bar_chart(shares, f"{metric}: share per bucket (latest run)", "drift_dist", 320, x="bucket", y="share",
                         color="window", barmode="group", percent=True, x_title="")

    st.subheader("Semantic drift")
    sem = [s for s in q.semantic(store, f) if s["model"] == model and s["group"] == group]
    if not sem:
        st.caption("no semantic-drift results for this model in the range (checks.semantic.enabled)")
    for s in sem:
        st.markdown(f"**{ui.md_escape(s['field'].capitalize())}s**")
        c = st.columns(4)
        c[0].metric("Status", s["status"])
        c[1].metric("MMD²", "–" if s["value"] is None else f"{s['value']:.4g}")
        c[2].metric("p-value", "–" if s["p_value"] is None else f"{s['p_value']:.3g}")
        c[3].metric("Texts (current / reference)", f"{s['current_n']:,} / {s['reference_n']:,}")
        if s["reason"]:
            st.caption(s["reason"])
        for k, cl in enumerate(s["clusters"]):
            change = cl.get("change", 0.0)
            title = (f"{'grew' if change >= 0 else 'shrank'} {abs(change) * 100:.1f} pts: "
                     f"{cl.get('reference_share', 0) * 100:.1f}% → {cl.get('current_share', 0) * 100:.1f}%"
                     f" · {ui.md_escape(cl.get('label') or 'cluster ' + str(cl.get('cluster')))}")
            with st.expander(title, expanded=k == 0):
                st.caption("example texts" + (" (current window)" if change >= 0 else " (reference window)"))
                for text in cl.get("examples") or []:
                    ui.plain("", text)


ui.fragment(one_model, "Drift")
