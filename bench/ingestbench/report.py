"""Reporting: medians per system over the runs, the table, and the derived figures (sidecar CPU per
span against the Collector's, ingest scaling, where the time goes)."""

from __future__ import annotations

import statistics
from typing import Any

from ingestbench.stages import render as render_stages

FRONT = {"monitor-kafka": "monitor sidecar", "monitor-kafka-2ingest": "monitor sidecar", "otelcol-kafka": "otelcol",
         "monitor-embedded": "pipeline", "phoenix": "phoenix serve"}
"""The process that takes the OTLP requests in, per system (its CPU per span is reported): `monitor
up`'s pipeline process (receiver, redaction, spool), the sidecar, the Collector, Phoenix (all of it)."""

COLUMNS = [
    ("system", "system", "{}"),
    ("sent", "spans_sent", "{}"),
    ("acked", "acknowledged", "{}"),
    ("stored", "stored_live", "{}"),
    ("stored after stop", "stored_after_stop", "{}"),
    ("accept spans/s", "accept_spans_per_s", "{:,.0f}"),
    ("e2e spans/s", "e2e_spans_per_s", "{:,.0f}"),
    ("e2e s", "e2e_seconds", "{:.2f}"),
    ("503 retries", "retries_503", "{}"),
    ("errors", "error_count", "{}"),
    ("server CPU s", "server_cpu_s", "{:.1f}"),
    ("machine busy %", "machine_busy_pct", "{:.0f}"),
    ("other CPU s", "other_cpu_s", "{:.1f}"),
    ("front CPU µs/span", "front_cpu_us_per_span", "{:.0f}"),
    ("inference_events", "inference_events", "{}"),
]


def summarize(runs: list[dict[str, Any]], systems: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per system: the median of every numeric field over its runs (the only run's values if one)."""
    for r in runs:
        front = FRONT.get(r.get("system", ""))
        per = r.get("cpu_us_per_span_by_process") or {}
        if front in per:
            r["front_cpu_us_per_span"] = per[front]
        counts = r.get("counts") or {}
        if isinstance(counts.get("inference_events"), int):
            r["inference_events"] = counts["inference_events"] - ((counts.get("all_rows") or 0) - counts["spans"])
        stage_us = _stage_us(r)
        if stage_us:
            r["ingest_stage_us_per_span"] = stage_us
    out: dict[str, dict[str, Any]] = {}
    for name in systems:
        mine = [r for r in runs if r["system"] == name]
        if not mine:
            continue
        row: dict[str, Any] = {"system": name, "runs": len(mine),
                               "failures": [r["failure"] for r in mine if r.get("failure")]}
        for key in [k for _, k, _ in COLUMNS[1:]] + ["window_s", "background_busy_pct"]:
            vals = [r.get(key) for r in mine if isinstance(r.get(key), (int, float))]
            row[key] = statistics.median(vals) if vals else None
        stage_runs = [r["ingest_stage_us_per_span"] for r in mine if r.get("ingest_stage_us_per_span")]
        if stage_runs:
            row["ingest_stage_us_per_span"] = {k: round(statistics.median(x.get(k, 0) for x in stage_runs), 1)
                                               for k in stage_runs[0]}
        if row["e2e_spans_per_s"] is None:
            partial = [r.get("e2e_partial_spans_per_s") for r in mine if r.get("e2e_partial_spans_per_s")]
            row["e2e_note"] = f"never stored all spans (partial rate {statistics.median(partial):,.0f}/s)" \
                if partial else None
        out[name] = row
    return out


def _stage_us(run: dict[str, Any]) -> dict[str, float] | None:
    """µs per span of each ``monitor_ingest_stage_seconds`` stage in the running ingest process(es)
    (decode, normalize, enrich: quality and the event rows, write: the inserts), over every span they
    stored (warm-up included)."""
    scrapes = [run["metrics"]] if run.get("metrics") else list(run.get("ingest_metrics") or [])
    totals: dict[str, float] = {}
    for m in scrapes:
        for key, v in m.items():
            if key.startswith("monitor_ingest_stage_seconds_total{"):
                stage = key.split('stage="', 1)[1].split('"', 1)[0]
                totals[stage] = totals.get(stage, 0.0) + v
    spans = (run.get("stored_live") or 0) + (run.get("warmup_spans") or 0)
    if not totals or not spans:
        return None
    return {k: round(1e6 * totals[k] / spans, 1) for k in ("decode", "normalize", "enrich", "write") if k in totals}


def _median(vals: list[Any]) -> Any:
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def summarize_scaling(cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not cells:
        return None
    return {"runs": len(cells),
            "ingest_1_spans_per_s": _median([c.get("ingest_1", {}).get("spans_per_s") for c in cells]),
            "ingest_2_spans_per_s": _median([c.get("ingest_2", {}).get("spans_per_s") for c in cells]),
            "ratio": _median([c.get("ratio") for c in cells]),
            "ingest_1_cpu_us_per_span": _median([c.get("ingest_1", {}).get("ingest_cpu_us_per_span") for c in cells]),
            "ingest_2_cpu_us_per_span": _median([c.get("ingest_2", {}).get("ingest_cpu_us_per_span") for c in cells]),
            "stored_after_stop": [(c.get("ingest_1", {}).get("stored_after_stop"),
                                   c.get("ingest_2", {}).get("stored_after_stop")) for c in cells],
            "duplicates": [c.get("ingest_2", {}).get("duplicates_across_processes") for c in cells],
            "failures": [c["failure"] for c in cells if c.get("failure")]}


def render(summary: dict[str, dict[str, Any]], scaling: dict[str, Any] | None = None,
           stages: dict[str, Any] | None = None, goal: float = 20000) -> str:
    lines: list[str] = []
    if summary:
        lines += _table(summary)
        sc, col = (summary.get("monitor-kafka") or {}).get("front_cpu_us_per_span"), \
            (summary.get("otelcol-kafka") or {}).get("front_cpu_us_per_span")
        if sc and col:
            lines.append(f"sidecar CPU per span: {sc:.0f} µs vs the Collector's {col:.0f} µs = {sc / col:.1f}x "
                         f"(goal: at most 3x)")
        for name in ("monitor-embedded", "monitor-kafka"):
            rate = (summary.get(name) or {}).get("e2e_spans_per_s")
            if rate:
                lines.append(f"{name}: {rate:,.0f} spans/s stored end to end = {100 * rate / goal:.0f}% of the goal "
                             f"({goal:,.0f})")
    if scaling:
        r1, r2 = scaling.get("ingest_1_spans_per_s"), scaling.get("ingest_2_spans_per_s")
        lines.append("")
        lines.append(f"monitor ingest draining a topic of 2 partitions: 1 process {r1 or 0:,.0f} spans/s "
                     f"({scaling.get('ingest_1_cpu_us_per_span')} CPU µs/span), 2 processes {r2 or 0:,.0f} spans/s "
                     f"({scaling.get('ingest_2_cpu_us_per_span')} CPU µs/span): ratio {scaling.get('ratio')}; "
                     f"stored after stop {scaling['stored_after_stop']}, duplicates across processes "
                     f"{scaling['duplicates']}")
        for f in scaling.get("failures") or []:
            lines.append(f"ingest-scaling: FAILED: {f.splitlines()[0]}")
    if stages:
        lines.append("")
        lines.append(render_stages(stages))
    return "\n".join(lines)


def _table(summary: dict[str, dict[str, Any]]) -> list[str]:
    cells = [[h for h, _, _ in COLUMNS]]
    for row in summary.values():
        line = []
        for _, key, fmt in COLUMNS:
            v = row.get(key)
            if v is None:
                line.append("FAILED" if key == "system" and row["failures"] else "-")
            else:
                line.append(fmt.format(v) if not isinstance(v, float) or fmt != "{}" else f"{v:g}")
        if row.get("failures") and len(row["failures"]) == row["runs"]:
            line[0] += " (failed)"
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    runs = max((row["runs"] for row in summary.values()), default=1)
    if runs > 1:
        lines.insert(0, f"(medians over {runs} runs per system)")
    ph = summary.get("phoenix", {}).get("e2e_spans_per_s")
    for name in ("monitor-embedded", "monitor-kafka"):
        mine = summary.get(name, {}).get("e2e_spans_per_s")
        if mine and ph:
            lines.append(f"end-to-end ratio {name} / phoenix: {mine / ph:.2f}x")
    for row in summary.values():
        if row.get("ingest_stage_us_per_span"):
            lines.append(f"{row['system']}: ingest stages in the running process, µs per span: " + ", ".join(
                f"{k} {v:g}" for k, v in row["ingest_stage_us_per_span"].items()))
        if row.get("e2e_note"):
            lines.append(f"{row['system']}: {row['e2e_note']}")
        if row.get("stored_after_stop") is not None and row.get("acknowledged") is not None \
                and row["stored_after_stop"] != row["acknowledged"]:
            lines.append(f"{row['system']}: acknowledged {row['acknowledged']:g} but {row['stored_after_stop']:g} "
                         f"stored after a graceful stop ({row['acknowledged'] - row['stored_after_stop']:+g} lost)")
        if row.get("inference_events") is not None and row.get("stored_after_stop") is not None \
                and row["inference_events"] != row["stored_after_stop"]:
            lines.append(f"{row['system']}: {row['inference_events']:g} inference_events for "
                         f"{row['stored_after_stop']:g} stored spans (every span here is one model request)")
        if (row.get("other_cpu_s") or 0) > 0.1 * (row.get("window_s") or 1e9):
            lines.append(f"{row['system']}: WARNING: processes outside the benchmark used {row['other_cpu_s']:.1f} "
                         "CPU-seconds during the run; the machine was not quiet")
        for f in row.get("failures") or []:
            lines.append(f"{row['system']}: FAILED: {f.splitlines()[0]}")
    return lines
