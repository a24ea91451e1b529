#!/usr/bin/env python
"""Feature drift on big windows: FeatureDriftCheck (ClickHouse aggregates) vs evidently (pandas).

For each size N (``--rows``, default 1M and 10M rows per window) the bench generates a reference
and a current window of N rows each in a fresh chdb directory (``INSERT ... SELECT FROM numbers()``,
deterministic pseudo-random data with drift in some features and not in others), then measures, each
in a fresh subprocess so peak memory is that of one system only:

- ``monitor``: ``FeatureDriftCheck.run`` on every feature (aggregates in chdb, in-process): wall
  time, peak RSS of the process (``VmHWM``, which covers chdb's C++ allocations) and the peak
  during the run alone (``/proc/self/clear_refs`` reset before it).
- ``evidently``: the same rows loaded into pandas (``query_df`` of the feature expressions, then
  float64 / categorical dtypes), then ``Report([DataDriftPreset()])`` with ``include_tests=True``:
  load time, run time, peak RSS. The parent kills it after ``--evidently-timeout`` seconds or above
  ``--evidently-max-rss-gb`` and reports how far it got instead of crashing.

Then per feature: the test each chose, the drift score and the verdict, and whether they agree.
A table is printed and everything is written as JSON under /tmp (``--out``).

    ~/.cache/llm-monitor/venv/bin/python bench/checks_features.py
    ~/.cache/llm-monitor/venv/bin/python bench/checks_features.py --rows 1000000 --evidently-timeout 900
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATABASE = "bench"
# recent windows: older rows would fall to the table's TTL
T0 = (datetime.now(timezone.utc) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
REF = (T0, T0 + timedelta(hours=1))
CUR = (T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1))


# --- data ---------------------------------------------------------------------------------------

def _u(seed: int, k: int) -> str:
    return f"((bitShiftRight(cityHash64(number, {seed}, {k}), 11) + 0.5) / 9007199254740992.0)"


def _n(seed: int, k: int) -> str:
    return f"(sqrt(-2 * log({_u(seed, k)})) * cos(2 * pi() * {_u(seed, k + 1000)}))"


def _e(seed: int, k: int) -> str:
    return f"(-log({_u(seed, k)}))"


def columns(seed: int, current: bool) -> dict[str, str]:
    """Reference distributions, and for the current window: drift in some features, none in others."""
    s = seed
    d = 1 if current else 0
    return {
        "input_tokens": f"toUInt32(50 + {44 if current else 40} * {_e(s, 10)})",                  # slight
        "output_tokens": f"if({_u(s, 30)} < 0.05, NULL, toUInt32(greatest(1, 200 + 14 * {_n(s, 11)})))",
        "prompt": f"repeat('p', toUInt32(exp(4.5 + 0.6 * {_n(s, 12)})))",
        "completion": f"repeat('c', toUInt32(exp({5.3 if current else 5} + 0.5 * {_n(s, 13)})))",  # large
        "ttft_ms": f"300 + 50 * {_n(s, 14)} + {4 * d}",                                           # 0.08 sd
        "latency_ms": f"if({_u(s, 31)} < {0.3 if current else 0.05}, NULL, 2000 + 300 * {_n(s, 15)})",
        "itl_ms": f"25 + 4 * {_n(s, 16)}",
        "queue_ms": f"{40 if current else 20} * {_e(s, 17)}",                                      # large
        "prefill_ms": f"100 + 10 * {_n(s, 18)}",
        "decode_ms": f"1500 + 200 * {_n(s, 19)} + {26 * d}",                                      # 0.13 sd
        "finish_reason": (f"multiIf({_u(s, 20)} < {0.65 if current else 0.8}, 'stop', {_u(s, 20)} < 0.9, "
                          "'length', 'tool_calls')"),
        "status_code": f"if({_u(s, 21)} < 0.01, 'Error', 'Ok')",
        "prompt_language": f"multiIf({_u(s, 23)} < 0.7, 'en', {_u(s, 23)} < 0.9, 'fr', 'de')",
        "completion_language": f"multiIf({_u(s, 24)} < {0.6 if current else 0.7}, 'en', {_u(s, 24)} < 0.9, 'fr', 'de')",
        "attributes": (f"map('gen_ai.response.model', multiIf({_u(s, 22)} < 0.5, 'llama-3-8b-0701', "
                       f"{_u(s, 22)} < {0.95 if current else 1.0}, 'llama-3-8b-0915', 'llama-3-8b-1101'))"),
    }


def generate(directory: str, n: int) -> dict:
    from monitor.config import StoreSettings
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    store = Store(StoreSettings(url=f"chdb://{directory}", database=DATABASE))
    migrate(store, 30)
    have = {r[0] for r in store.query_rows(
        "SELECT name FROM system.columns WHERE database = {d:String} AND table = 'inference_events'",
        {"d": DATABASE})}
    t = time.monotonic()
    for seed, (start, end), current in ((1, REF, False), (2, CUR, True)):
        cols = {k: v for k, v in columns(seed, current).items() if k in have or k == "attributes"}
        start_ns = int(start.timestamp()) * 10**9
        step = int((end - start).total_seconds() * 10**9) // n
        cols.update({
            "timestamp": f"fromUnixTimestamp64Nano(toInt64({start_ns} + number * {step}))",
            "trace_id": f"concat(lower(hex(cityHash64(number, {seed}, 1))), lower(hex(cityHash64(number, {seed}, 2))))",
            "span_id": f"lower(hex(cityHash64(number, {seed}, 3)))",
            "service_name": "'bench'", "model": "'llama'",
        })
        names = list(cols)
        store.command(f"INSERT INTO inference_events ({', '.join(names)}) "
                      f"SELECT {', '.join(cols[c] for c in names)} FROM numbers({n})",
                      settings={"max_insert_threads": 2})
    took = time.monotonic() - t
    rows = store.query_rows("SELECT count() FROM inference_events")[0][0]
    store.close()
    return {"seconds": took, "rows": rows}


# --- measurements (each in its own process) -----------------------------------------------------

def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _context(store):
    from monitor.checks.base import CheckContext, Scope, Window
    from monitor.config import ChecksSettings

    return CheckContext(store=store, scope=Scope("llama"), reference=Window(*REF), current=Window(*CUR),
                        settings=ChecksSettings())


def run_monitor(directory: str, repeat: int) -> dict:
    from monitor.checks.feature_drift import FeatureDriftCheck
    from monitor.config import ChecksSettings, StoreSettings
    from monitor.store.client import Store

    t = time.monotonic()
    store = Store(StoreSettings(url=f"chdb://{directory}", database=DATABASE))
    store.query_rows("SELECT 1")
    opened = time.monotonic() - t
    before = _status()
    reset = _reset_peak()
    check = FeatureDriftCheck(ChecksSettings(), raw_limit=0)
    runs, results = [], []
    for _ in range(repeat):
        t = time.monotonic()
        results = check.run(_context(store))
        runs.append(time.monotonic() - t)
    after = _status()
    return {
        "open_s": opened, "run_s": runs, "rss_before_run": before["VmRSS"],
        "peak_rss_process": after["VmHWM"], "peak_rss_during_run": after["VmHWM"] if reset else None,
        "features": {r.metric: {"type": r.details.get("type"), "method": r.method, "status": r.status,
                                "score": r.details.get("drift_score"), "error_bound": r.details.get("error_bound"),
                                "exact": r.details.get("exact"), "reference_n": r.reference_n,
                                "current_n": r.current_n} for r in results},
    }


def run_evidently(directory: str, features: dict, progress: str) -> dict:
    def note(**kw):
        state.update(kw)
        state.update(_status())
        Path(progress).write_text(json.dumps(state))

    state: dict = {"phase": "loading"}
    import pandas as pd

    from monitor.checks.feature_drift import FEATURES
    from monitor.config import StoreSettings
    from monitor.store.client import Store

    note()
    t = time.monotonic()
    store = Store(StoreSettings(url=f"chdb://{directory}", database=DATABASE))
    num = [f for f, v in features.items() if v["type"] == "numeric"]
    cat = [f for f, v in features.items() if v["type"] == "categorical"]
    frames = []
    for start, end in (REF, CUR):
        sel = ", ".join(f"{FEATURES[f].sql} AS {f}" for f in num + cat)
        df = store.client().query_df(
            f"SELECT {sel} FROM inference_events WHERE model = 'llama' AND timestamp >= {{a:DateTime64(9, 'UTC')}} "
            "AND timestamp < {b:DateTime64(9, 'UTC')}", parameters={"a": start, "b": end})
        for c in num:
            df[c] = pd.to_numeric(df[c]).astype("float64")
        frames.append(df)
    for c in cat:
        cats = sorted(set(frames[0][c].dropna()) | set(frames[1][c].dropna()))
        for df in frames:
            df[c] = pd.Categorical(df[c].astype(object).where(df[c].notna(), None), categories=cats)
    store.close()
    load_s = time.monotonic() - t
    note(phase="importing evidently", load_s=load_s)
    t = time.monotonic()
    import warnings

    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
    from evidently.presets import DataDriftPreset
    import_s = time.monotonic() - t
    note(phase="running DataDriftPreset", import_s=import_s)
    t = time.monotonic()
    dd = DataDefinition(numerical_columns=num, categorical_columns=cat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset(columns=num + cat)], include_tests=True).run(
            current_data=Dataset.from_pandas(frames[1], data_definition=dd),
            reference_data=Dataset.from_pandas(frames[0], data_definition=dd))
    run_s = time.monotonic() - t
    d = snap.dict()
    names = {st.display_name: name for name, reg in _registered_stat_tests.items() for st in reg.values()}
    status = {x["name"].removeprefix("Value Drift for column "): x["status"] for x in d["tests"]
              if x["name"].startswith("Value Drift for column ")}
    out = {}
    for m in d["metrics"]:
        cfg = m["config"]
        if cfg.get("type") == "evidently:metric_v2:ValueDrift":
            out[cfg["column"]] = {"method": names.get(cfg["method"], cfg["method"]), "score": float(m["value"]),
                                  "drifted": status[cfg["column"]] == "FAIL"}
    note(phase="done", run_s=run_s)
    return {"load_s": load_s, "import_s": import_s, "run_s": run_s, "peak_rss_process": _status()["VmHWM"],
            "features": out}


# --- the parent ----------------------------------------------------------------------------------

def child(mode: str, args: list[str], timeout: float | None = None, max_rss: float | None = None,
          progress: str | None = None) -> dict:
    """Run ``mode`` in a fresh interpreter; returns its JSON, or what happened to it."""
    out = tempfile.NamedTemporaryFile(prefix=f"cf-{mode}-", suffix=".json", delete=False).name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--child-out", out, *args]
    proc = subprocess.Popen(cmd, start_new_session=True)
    t0 = time.monotonic()
    peak, why = 0, None
    try:
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            if timeout is not None and time.monotonic() - t0 > timeout:
                why = f"timed out after {timeout:.0f} s"
            elif max_rss is not None and peak > max_rss:
                why = f"stopped at {peak / 2**30:.1f} GiB RSS (limit {max_rss / 2**30:.1f} GiB)"
            if why:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.25)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.monotonic() - t0
    result: dict = {"wall_s": wall, "peak_rss_sampled": peak}
    if why is None and proc.returncode == 0:
        result.update(json.loads(Path(out).read_text()))
    else:
        result["failed"] = why or f"exit status {proc.returncode}"
        if progress and Path(progress).exists():
            result["progress"] = json.loads(Path(progress).read_text())
    Path(out).unlink(missing_ok=True)
    return result


def gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000,10000000", help="rows per window, comma-separated")
    ap.add_argument("--evidently-timeout", type=float, default=600.0, help="seconds before evidently is stopped")
    ap.add_argument("--evidently-max-rss-gb", type=float, default=18.0,
                    help="evidently is stopped above this RSS (the machine must not swap or OOM)")
    ap.add_argument("--skip-evidently", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="FeatureDriftCheck runs per size (first is cold)")
    ap.add_argument("--workdir", default=None, help="where the chdb directories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the chdb directories")
    ap.add_argument("--out", default=None, help="JSON output (default /tmp/checks_features-<time>.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child:
        if a.child == "generate":
            res = generate(a.child_args[0], int(a.child_args[1]))
        elif a.child == "monitor":
            res = run_monitor(a.child_args[0], int(a.child_args[1]))
        else:
            res = run_evidently(a.child_args[0], json.loads(Path(a.child_args[1]).read_text()), a.child_args[2])
        Path(a.child_out).write_text(json.dumps(res, default=str))
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="checks-features-"))
    work.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(a.out or f"/tmp/checks_features-{stamp}.json")
    report: dict = {"started": stamp, "machine": {"cpus": os.cpu_count(), "mem_gib": _mem_gib()}, "sizes": {}}
    try:
        for n in [int(x) for x in a.rows.split(",") if x]:
            d = work / f"chdb-{n}"
            shutil.rmtree(d, ignore_errors=True)
            print(f"== {n:,} rows per window: generating...", flush=True)
            gen = child("generate", [str(d), str(n)])
            if "failed" in gen:
                raise SystemExit(f"generation failed: {gen['failed']}")
            print(f"   generated {gen['rows']:,} rows in {gen['seconds']:.1f}s; FeatureDriftCheck...", flush=True)
            mon = child("monitor", [str(d), str(a.repeat)])
            if "failed" in mon:
                raise SystemExit(f"FeatureDriftCheck failed: {mon['failed']}")
            print(f"   monitor: {', '.join(f'{x:.2f}s' for x in mon['run_s'])}, peak RSS "
                  f"{gib(mon['peak_rss_process'])} GiB", flush=True)
            ev: dict = {"skipped": True}
            if not a.skip_evidently:
                feats = {k: v for k, v in mon["features"].items() if v["status"] != "insufficient_data"}
                fpath, progress = work / f"features-{n}.json", work / f"progress-{n}.json"
                fpath.write_text(json.dumps(feats))
                print(f"   evidently DataDriftPreset on {len(feats)} columns (limit {a.evidently_timeout:.0f}s)...",
                      flush=True)
                ev = child("evidently", [str(d), str(fpath), str(progress)], timeout=a.evidently_timeout,
                           max_rss=a.evidently_max_rss_gb * 2**30, progress=str(progress))
            report["sizes"][str(n)] = {"generate": gen, "monitor": mon, "evidently": ev,
                                       "agreement": agreement(mon, ev)}
            out_path.write_text(json.dumps(report, indent=1, default=str))
            if not a.keep:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_tables(report)
    print(f"\nJSON: {out_path}")
    return 0


def agreement(mon: dict, ev: dict) -> dict:
    if "features" not in ev:
        return {}
    rows = {}
    for f, e in ev["features"].items():
        m = mon["features"][f]
        rel = abs(m["score"] - e["score"]) / max(abs(e["score"]), 1e-300)
        rows[f] = {"method": m["method"], "evidently_method": e["method"], "monitor": m["score"],
                   "evidently": e["score"], "rel_diff": rel, "monitor_drift": m["status"] == "fail",
                   "evidently_drift": e["drifted"], "agree": (m["status"] == "fail") == e["drifted"]
                   and m["method"] == e["method"], "error_bound": m["error_bound"]}
    return rows


def print_tables(report: dict) -> None:
    print(f"\nmachine: {report['machine']['cpus']} CPUs, {report['machine']['mem_gib']:.0f} GiB")
    print(f"\n{'rows/window':>12} {'system':10} {'load s':>8} {'run s':>8} {'total s':>8} {'peak RSS GiB':>13} "
          f"{'verdicts agree':>15} {'max rel diff':>13}")
    for n, s in report["sizes"].items():
        mon, ev, agr = s["monitor"], s["evidently"], s["agreement"]
        runs = mon["run_s"]
        print(f"{int(n):>12,} {'monitor':10} {'-':>8} {runs[0]:>8.2f} {runs[0]:>8.2f} "
              f"{gib(mon['peak_rss_process']):>13} {'':>15} {'':>13}"
              + (f"   (warm run {runs[1]:.2f}s)" if len(runs) > 1 else ""))
        if ev.get("skipped"):
            continue
        if "failed" in ev:
            p = ev.get("progress", {})
            got = ", ".join(f"{k} {p[k]:.1f}s" for k in ("load_s", "import_s") if k in p)
            print(f"{int(n):>12,} {'evidently':10} {ev['failed']} during '{p.get('phase', '?')}'"
                  f"{' (' + got + ')' if got else ''}; peak RSS {gib(ev['peak_rss_sampled'])} GiB")
            continue
        ok = sum(r["agree"] for r in agr.values())
        worst = max((r["rel_diff"] for r in agr.values()), default=0.0)
        print(f"{int(n):>12,} {'evidently':10} {ev['load_s']:>8.2f} {ev['run_s']:>8.2f} "
              f"{ev['load_s'] + ev['import_s'] + ev['run_s']:>8.2f} {gib(ev['peak_rss_process']):>13} "
              f"{f'{ok}/{len(agr)}':>15} {worst:>13.1e}")
    for n, s in report["sizes"].items():
        print(f"\n{int(n):,} rows per window, per feature:")
        print(f"  {'feature':20} {'test':14} {'monitor':>12} {'evidently':>12} {'rel diff':>9} {'bound':>9} "
              f"{'drift m/e':>10}")
        agr = s["agreement"]
        for f, m in s["monitor"]["features"].items():
            if f in agr:
                r = agr[f]
                bound = "-" if r["error_bound"] is None else f"{r['error_bound']:.1e}"
                print(f"  {f:20} {r['method']:14} {r['monitor']:>12.6g} {r['evidently']:>12.6g} {r['rel_diff']:>9.1e} "
                      f"{bound:>9} {('yes' if r['monitor_drift'] else 'no') + '/' + ('yes' if r['evidently_drift'] else 'no'):>10}"
                      + ("" if r["agree"] else "   <-- DISAGREE"))
            else:
                print(f"  {f:20} {m['method'] or '-':14} {m['score'] if m['score'] is not None else float('nan'):>12.6g} "
                      f"{'':>12} {'':>9} {'':>9} {('yes' if m['status'] == 'fail' else 'no') if m['status'] != 'insufficient_data' else 'n/a':>10}")


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return int(line.split()[1]) / 2**20
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
