"""Feature drift (monitor.checks.feature_drift): agreement with evidently, statistical validity, contract.

Data is generated inside chdb with ``INSERT ... SELECT FROM numbers()``. The random numbers are
deterministic functions of the row number and a seed (uniforms from ``cityHash64``, normals by
Box-Muller, exponentials by inversion), so every run sees the same data and the rates asserted
below are reproducible, not flaky.
"""

from __future__ import annotations

import math
import time
import uuid
import warnings
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from monitor.checks.base import CheckContext, Scope, Window
from monitor.checks.feature_drift import FEATURES, METHODS, FeatureDriftCheck, select_method, sturges_edges
from monitor.config import ChecksSettings, FeatureOverride, StoreSettings
from monitor.errors import ConfigError

# rows older than the table's TTL (30 days) would be dropped: stay recent
T0 = (datetime.now(timezone.utc) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
REF = Window(T0, T0 + timedelta(hours=1), "reference")
CUR = Window(T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1), "current")

NOMINAL = 0.05
TRIALS = 200
FPR_BOUND = NOMINAL + 3 * math.sqrt(NOMINAL * (1 - NOMINAL) / TRIALS)  # 0.0962


# --- deterministic data in ClickHouse -----------------------------------------------------------

class G:
    """SQL for seeded random numbers of row ``number``: ``u`` uniform (0,1), ``n`` N(0,1), ``e`` Exp(1)."""

    def __init__(self, seed: int):
        self.seed = seed

    def u(self, k: int) -> str:
        return f"((bitShiftRight(cityHash64(number, {self.seed}, {k}), 11) + 0.5) / 9007199254740992.0)"

    def n(self, k: int) -> str:
        return f"(sqrt(-2 * log({self.u(k)})) * cos(2 * pi() * {self.u(k + 1000)}))"

    def e(self, k: int) -> str:
        return f"(-log({self.u(k)}))"


def base_columns(g: G) -> dict[str, str]:
    return {
        "input_tokens": f"toUInt32(50 + 40 * {g.e(10)})",
        "output_tokens": f"toUInt32(greatest(1, 200 + 14 * {g.n(11)}))",
        "prompt": f"repeat('p', toUInt32(exp(4.5 + 0.6 * {g.n(12)})))",
        "completion": f"repeat('c', toUInt32(exp(5 + 0.5 * {g.n(13)})))",
        "ttft_ms": f"300 + 50 * {g.n(14)}",
        "latency_ms": f"2000 + 300 * {g.n(15)}",
        "itl_ms": f"25 + 4 * {g.n(16)}",
        "queue_ms": f"20 * {g.e(17)}",
        "prefill_ms": f"100 + 10 * {g.n(18)}",
        "decode_ms": f"1500 + 200 * {g.n(19)}",
        "finish_reason": f"multiIf({g.u(20)} < 0.8, 'stop', {g.u(20)} < 0.9, 'length', 'tool_calls')",
        "status_code": f"if({g.u(21)} < 0.01, 'Error', 'Ok')",
        "attributes": f"map('gen_ai.response.model', if({g.u(22)} < 0.5, 'llama-3-8b-0701', 'llama-3-8b-0915'))",
    }


def insert(store, window: Window, n: int, seed: int, columns: dict[str, str] | None = None, *,
           model: str = "llama", trials: int = 1, only: bool = False) -> None:
    """``trials`` x ``n`` rows spread over ``window``; with trials > 1 the model is ``<model><trial>``.

    ``only``: just ``columns`` (the rest take their defaults): the many-trial tables check a few
    features each, and generating every trial's prompt and completion text (and their search index)
    was most of their insert time."""
    g = G(seed)
    cols = {} if only else base_columns(g)
    cols.update(columns or {})
    start_ns = int(window.start.timestamp()) * 10**9
    step = int(window.seconds * 10**9) // n
    cols.update({
        "timestamp": f"fromUnixTimestamp64Nano(toInt64({start_ns} + (number % {n}) * {step}))",
        "trace_id": f"concat(lower(hex(cityHash64(number, {seed}, 1))), lower(hex(cityHash64(number, {seed}, 2))))",
        "span_id": f"lower(hex(cityHash64(number, {seed}, 3)))",
        "service_name": "'test'",
        "model": f"'{model}'" if trials == 1 else f"concat('{model}', toString(intDiv(number, {n})))",
    })
    names = list(cols)
    store.command(f"INSERT INTO inference_events ({', '.join(names)}) "
                  f"SELECT {', '.join(cols[c] for c in names)} FROM numbers({n * trials})")


def context(store, settings: ChecksSettings, model: str = "llama", group=()) -> CheckContext:
    return CheckContext(store=store, scope=Scope(model, tuple(group)), current=CUR, reference=REF,
                        settings=settings)


def by_metric(results) -> dict:
    return {r.metric: r for r in results}


@pytest.fixture(scope="module")
def module_store(chdb_dir):
    """A database of this module's own in the worker's one chdb directory."""
    from monitor.store.client import Store
    from monitor.store.migrate import migrate

    s = Store(StoreSettings(url=f"chdb://{chdb_dir}", database=f"sd_{uuid.uuid4().hex[:10]}"))
    migrate(s, 30)
    yield s
    s.command(f"DROP DATABASE IF EXISTS `{s.database}`")
    s.close()


# --- 1M-row windows: agreement with evidently's DataDriftPreset ---------------------------------

BIG = 1_000_000


def big_current_columns(g: G) -> dict[str, str]:
    """The scenarios, one per feature (reference: base_columns)."""
    return {
        # no drift, but the NULL share goes from 5% to 30% (NULLs are not a drift signal)
        "latency_ms": f"if({g.u(30)} < 0.30, NULL, 2000 + 300 * {g.n(15)})",
        "ttft_ms": f"300 + 50 * {g.n(14)} + 4",            # +0.08 sd: just below the 0.1 threshold
        "decode_ms": f"1500 + 200 * {g.n(19)} + 26",       # +0.13 sd: just above it
        "queue_ms": f"40 * {g.e(17)}",                     # mean doubled: large
        "itl_ms": f"25 + 4 * {g.n(16)} + 0.8",             # +0.2 sd
        "output_tokens": f"toUInt32(greatest(1, 201 + 14 * {g.n(11)}))",
        "input_tokens": f"toUInt32(50 + 44 * {g.e(10)})",
        "prompt": f"repeat('p', toUInt32(exp(4.52 + 0.6 * {g.n(12)})))",
        "finish_reason": f"multiIf({g.u(20)} < 0.65, 'stop', {g.u(20)} < 0.9, 'length', 'tool_calls')",
        "attributes": (f"map('gen_ai.response.model', multiIf({g.u(22)} < 0.5, 'llama-3-8b-0701', "
                       f"{g.u(22)} < 0.95, 'llama-3-8b-0915', 'llama-3-8b-1101'))"),
    }


@pytest.fixture(scope="module")
def big(module_store):
    t = time.monotonic()
    ref_cols = {"latency_ms": f"if({G(1).u(30)} < 0.05, NULL, 2000 + 300 * {G(1).n(15)})"}
    insert(module_store, REF, BIG, seed=1, columns=ref_cols)
    insert(module_store, CUR, BIG, seed=2, columns=big_current_columns(G(2)))
    print(f"\n[big] generated 2 x {BIG:,} rows in chdb in {time.monotonic() - t:.1f}s")
    return module_store


@pytest.fixture(scope="module")
def big_frames(big):
    """The same rows in pandas, features computed here from the raw columns (not from the check's SQL)."""
    t = time.monotonic()
    frames = [load_frame(big, w) for w in (REF, CUR)]
    print(f"[big] loaded into pandas in {time.monotonic() - t:.1f}s")
    return frames


def load_frame(store, w: Window):
    import pandas as pd

    df = store.client().query_df(
        "SELECT input_tokens, output_tokens, lengthUTF8(prompt) AS prompt_length, "
        "lengthUTF8(completion) AS completion_length, ttft_ms, latency_ms, itl_ms, queue_ms, prefill_ms, decode_ms, "
        "finish_reason, status_code, attributes['gen_ai.response.model'] AS model_version "
        "FROM inference_events WHERE model = 'llama' AND timestamp >= {a:DateTime64(9, 'UTC')} "
        "AND timestamp < {b:DateTime64(9, 'UTC')}", parameters={"a": w.start, "b": w.end})
    out = pd.DataFrame(index=df.index)
    for c in ("input_tokens", "output_tokens", "prompt_length", "completion_length", "ttft_ms", "latency_ms",
              "itl_ms", "queue_ms", "prefill_ms", "decode_ms"):
        out[c] = pd.to_numeric(df[c]).astype("float64")
    for c in ("prompt_length", "completion_length"):
        out.loc[out[c] == 0, c] = np.nan
    dec, lat, ttft, ot = out["decode_ms"], out["latency_ms"], out["ttft_ms"].fillna(0), out["output_tokens"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["tokens_per_second"] = np.where(dec > 0, ot / (dec / 1000),
                                            np.where((lat - ttft) > 0, ot / ((lat - ttft) / 1000), np.nan))
    for c in ("finish_reason", "status_code", "model_version"):
        out[c] = df[c].astype(object).where(df[c].astype(str) != "", None)
    return out


def _categorical(ref, cur, cols):
    """Categorical dtype with the same categories in both frames (evidently is ~5x faster on it)."""
    import pandas as pd

    ref, cur = ref.copy(), cur.copy()
    for c in cols:
        cats = sorted(set(ref[c].dropna()) | set(cur[c].dropna()))
        ref[c] = pd.Categorical(ref[c], categories=cats)
        cur[c] = pd.Categorical(cur[c], categories=cats)
    return ref, cur


def run_evidently(ref, cur, num, cat, **preset):
    """evidently's DataDriftPreset on the full frames: {column: (test name, drift score, drifted)}."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
    from evidently.presets import DataDriftPreset

    names = {st.display_name: name for name, d in _registered_stat_tests.items() for st in d.values()}
    ref, cur = _categorical(ref[num + cat], cur[num + cat], cat)
    dd = DataDefinition(numerical_columns=num, categorical_columns=cat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset(columns=num + cat, **preset)], include_tests=True).run(
            current_data=Dataset.from_pandas(cur, data_definition=dd),
            reference_data=Dataset.from_pandas(ref, data_definition=dd))
    d = snap.dict()
    status = {t["name"].removeprefix("Value Drift for column "): t["status"] for t in d["tests"]
              if t["name"].startswith("Value Drift for column ")}
    out = {}
    for m in d["metrics"]:
        cfg = m["config"]
        if cfg.get("type") == "evidently:metric_v2:ValueDrift":
            out[cfg["column"]] = (names.get(cfg["method"], cfg["method"]), float(m["value"]), status[cfg["column"]] == "FAIL")
    return out


def compare(results: dict, ev: dict) -> float:
    """Assert verdicts and methods agree and statistics are close; return the max relative difference."""
    worst = 0.0
    lines = []
    for col, (method, score, drifted) in ev.items():
        r = results[col]
        mine = r.details["drift_score"]
        rel = abs(mine - score) / max(abs(score), 1e-300)
        lines.append(f"{col:18s} {method:13s} monitor={mine:.6g} evidently={score:.6g} rel={rel:.1e} "
                     f"drift={drifted} bound={r.details.get('error_bound')}")
        assert r.method == method, (col, r.method, method)
        assert (r.status == "fail") == drifted, lines[-1]
        if method == "wasserstein" and not r.details["exact"]:
            # the histogram's rigorous error bound, and close in relative terms too
            assert abs(mine - score) <= r.details["error_bound"] + 1e-12, lines[-1]
            assert rel < 0.05, lines[-1]
        else:
            assert abs(mine - score) <= 1e-9 * max(abs(score), 1e-12) + 1e-15, lines[-1]
        worst = max(worst, rel)
    print("\n" + "\n".join(lines) + f"\nmax relative difference: {worst:.2e}")
    return worst


def test_agrees_with_evidently_default_rule_on_1m_rows(big, big_frames):
    num = ["latency_ms", "ttft_ms", "decode_ms", "queue_ms"]
    cat = ["finish_reason", "status_code", "model_version"]
    s = ChecksSettings()
    t = time.monotonic()
    results = by_metric(FeatureDriftCheck(s).run(context(big, s)))
    ours = time.monotonic() - t
    t = time.monotonic()
    ev = run_evidently(*big_frames, num, cat)
    print(f"\n[default] FeatureDriftCheck (all {len(results)} features) {ours:.1f}s; "
          f"evidently DataDriftPreset ({len(ev)} columns) {time.monotonic() - t:.1f}s")
    compare(results, ev)
    # the scenarios behave as designed (so the agreement above is not all "no drift")
    verdicts = {c: results[c].status for c in num + cat}
    assert verdicts == {"latency_ms": "ok", "ttft_ms": "ok", "decode_ms": "fail", "queue_ms": "fail",
                        "finish_reason": "fail", "status_code": "ok", "model_version": "fail"}
    assert results["latency_ms"].reference_n == pytest.approx(0.95 * BIG, rel=0.01)
    assert results["latency_ms"].current_n == pytest.approx(0.70 * BIG, rel=0.01)
    # details for dashboards
    h = results["decode_ms"].details["histogram"]
    assert len(h["edges"]) - 1 <= 20 and sum(h["reference"]) == results["decode_ms"].reference_n
    assert sum(h["current"]) + h["current_below"] + h["current_above"] == results["decode_ms"].current_n
    cats = {c["value"]: c for c in results["finish_reason"].details["categories"]}
    assert cats["length"]["reference"] == pytest.approx(0.10, abs=0.002)
    assert cats["length"]["current"] == pytest.approx(0.25, abs=0.002)


OVERRIDES = {
    "output_tokens": ("psi", 0.005),
    "itl_ms": ("jensenshannon", None),
    "tokens_per_second": ("ks", 0.01),
    "input_tokens": ("kl_div", 0.002),
    "status_code": ("chisquare", None),
    "model_version": ("psi", 0.2),
}
DIRECT = {"prompt_length": "t_test", "completion_length": "hellinger", "finish_reason": "z",
          "prefill_ms": "ks", "ttft_ms": "hellinger"}


def test_agrees_with_evidently_overrides_on_1m_rows(big, big_frames):
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    feats = {k: FeatureOverride(method=m, threshold=t) for k, (m, t) in OVERRIDES.items()}
    feats.update({k: FeatureOverride(method=m) for k, m in DIRECT.items()})
    s = ChecksSettings(features=feats)
    t = time.monotonic()
    # chisquare="evidently": its one-sample form, for exact agreement (the default is the calibrated form)
    results = by_metric(FeatureDriftCheck(s, chisquare="evidently").run(context(big, s)))
    ours = time.monotonic() - t
    num = [c for c in OVERRIDES if FEATURES[c].type == "numeric"]
    cat = [c for c in OVERRIDES if FEATURES[c].type == "categorical"]
    t = time.monotonic()
    ev = run_evidently(*big_frames, num, cat,
                       per_column_method={k: m for k, (m, _) in OVERRIDES.items()},
                       per_column_threshold={k: th for k, (_, th) in OVERRIDES.items() if th is not None})
    took = time.monotonic() - t
    # evidently's registered tests called directly on the full 1M-row columns (what ValueDrift calls)
    ref, cur = big_frames
    for col, method in DIRECT.items():
        ct = ColumnType.Numerical if FEATURES[col].type == "numeric" else ColumnType.Categorical
        a, b = ref[col].dropna(), cur[col].dropna()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = get_stattest(a, b, ct, method)(a, b, ct, None)
        ev[col] = (method, float(res.drift_score), bool(res.drifted))
    print(f"\n[overrides] FeatureDriftCheck {ours:.1f}s; evidently DataDriftPreset ({len(num + cat)} columns) "
          f"{took:.1f}s")
    compare(results, ev)
    for col, (method, th) in OVERRIDES.items():
        assert results[col].method == method
        assert results[col].threshold == (th if th is not None else METHODS[method].default_threshold)
    verdicts = {c: (ev[c][2]) for c in ev}
    assert any(verdicts.values()) and not all(verdicts.values()), verdicts


# --- statistical validity -----------------------------------------------------------------------

SMALL, LARGE = 400, 3000


def _fpr_columns(g: G) -> dict[str, str]:
    return {
        "output_tokens": f"toUInt32(1 + floor(4 * {g.u(40)}))",          # 4 values: chisquare / JS
        "input_tokens": f"toUInt32(100 + 15 * {g.n(41)})",               # many integer values: PSI override
        "latency_ms": f"exp(7.5 + 0.4 * {g.n(42)})",                    # continuous, skewed: ks / wasserstein
        "finish_reason": f"multiIf({g.u(43)} < 0.7, 'stop', {g.u(43)} < 0.9, 'length', 'tool_calls')",
        "status_code": f"if({g.u(44)} < 0.1, 'Error', 'Ok')",
    }


@pytest.mark.parametrize("n, expected", [
    (SMALL, {"latency_ms": "ks", "output_tokens": "chisquare", "finish_reason": "chisquare", "status_code": "z"}),
    (LARGE, {"latency_ms": "wasserstein", "output_tokens": "jensenshannon", "finish_reason": "jensenshannon",
             "status_code": "jensenshannon", "input_tokens": "psi"}),
], ids=["n400-small-sample-tests", "n3000-distances"])
def test_false_positive_rate_at_or_below_nominal(module_store, n, expected):
    """200 reference/current pairs drawn from one distribution: each test path flags at most its level."""
    prefix = f"fpr{n}_"
    insert(module_store, REF, n, seed=100 + n, columns=_fpr_columns(G(100 + n)), model=prefix, trials=TRIALS,
           only=True)
    insert(module_store, CUR, n, seed=200 + n, columns=_fpr_columns(G(200 + n)), model=prefix, trials=TRIALS,
           only=True)
    s = ChecksSettings(features={"input_tokens": FeatureOverride(method="psi")} if n > 1000 else {})
    check = FeatureDriftCheck(s, features=list(expected), raw_limit=0)  # the aggregate path, not evidently's
    fails = {f: 0 for f in expected}
    evidently_chi = {f: 0 for f in expected if expected[f] == "chisquare"}
    t = time.monotonic()
    for trial in range(TRIALS):
        for r in check.run(context(module_store, s, model=f"{prefix}{trial}")):
            assert r.method == expected[r.metric], (r.metric, r.method)
            assert r.reference_n == n and r.current_n == n
            fails[r.metric] += r.status == "fail"
            if r.method == "chisquare":
                evidently_chi[r.metric] += r.details["evidently_p_value"] < NOMINAL
    rates = {f: k / TRIALS for f, k in fails.items()}
    ev_rates = {f: k / TRIALS for f, k in evidently_chi.items()}
    print(f"\n[fpr n={n}] {TRIALS} trials in {time.monotonic() - t:.1f}s; false-positive rates "
          + ", ".join(f"{f}/{expected[f]}={v:.3f}" for f, v in rates.items()) + f" (bound {FPR_BOUND:.4f})"
          + "".join(f"; evidently's one-sample chisquare on {f}: {v:.3f}" for f, v in ev_rates.items()))
    for f, rate in rates.items():
        assert rate <= FPR_BOUND, (f, expected[f], rate)
    if n == SMALL:  # the p-value tests really are calibrated (not trivially silent)
        assert rates["latency_ms"] > 0 and rates["finish_reason"] > 0
        # why the default chisquare is the two-sample form: evidently's over-rejects at equal sizes
        assert all(v > FPR_BOUND for v in ev_rates.values()), ev_rates


POWER_TRIALS = 100
POWER_N = 5000


def test_power_mean_shift_and_category_mix(module_store):
    """0.2 sd shift of latency_ms and finish_reason length 10% -> 25%, 5k rows per window."""
    prefix = "power_"
    ref = {"latency_ms": f"2000 + 300 * {G(7).n(50)}",
           "finish_reason": f"multiIf({G(7).u(51)} < 0.85, 'stop', {G(7).u(51)} < 0.95, 'length', 'tool_calls')"}
    cur = {"latency_ms": f"2060 + 300 * {G(8).n(50)}",
           "finish_reason": f"multiIf({G(8).u(51)} < 0.70, 'stop', {G(8).u(51)} < 0.95, 'length', 'tool_calls')"}
    insert(module_store, REF, POWER_N, seed=7, columns=ref, model=prefix, trials=POWER_TRIALS, only=True)
    insert(module_store, CUR, POWER_N, seed=8, columns=cur, model=prefix, trials=POWER_TRIALS, only=True)
    s = ChecksSettings()
    check = FeatureDriftCheck(s, features=["latency_ms", "finish_reason"], raw_limit=0)
    hits = {"latency_ms": 0, "finish_reason": 0}
    for trial in range(POWER_TRIALS):
        for r in check.run(context(module_store, s, model=f"{prefix}{trial}")):
            hits[r.metric] += r.status == "fail"
            assert r.method == {"latency_ms": "wasserstein", "finish_reason": "jensenshannon"}[r.metric]
    power = {k: v / POWER_TRIALS for k, v in hits.items()}
    print(f"\n[power] {POWER_TRIALS} trials: {power}")
    assert power["latency_ms"] >= 0.95 and power["finish_reason"] >= 0.95, power


# --- exactness on small data: the literal evidently path and the aggregate path agree ----------

def test_small_windows_match_evidently_literally(store):
    """Windows under raw_limit: evidently's own test runs on the raw values; the aggregates give the same."""
    cols = {"latency_ms": f"exp(7.5 + 0.4 * {G(3).n(42)})", "output_tokens": f"toUInt32(1 + floor(4 * {G(3).u(40)}))"}
    insert(store, REF, 600, seed=3, columns=cols)
    cur = {"latency_ms": f"exp(7.65 + 0.4 * {G(4).n(42)})", "output_tokens": f"toUInt32(1 + floor(3 * {G(4).u(40)}))"}
    insert(store, CUR, 900, seed=4, columns=cur)
    s = ChecksSettings()
    results = by_metric(FeatureDriftCheck(s, raw_limit=5000).run(context(store, s)))
    assert results["latency_ms"].method == "ks" and results["status_code"].method == "z"
    assert results["output_tokens"].method == "chisquare"
    for r in results.values():
        if r.status == "insufficient_data":
            continue
        if r.method == "chisquare":  # the calibrated form decides; evidently's p-value is kept, identical
            assert r.details["engine"] == "clickhouse-aggregates" and r.details["chisquare_form"] == "two_sample"
            assert r.details["evidently_p_value"] == pytest.approx(r.details["evidently_score"], rel=1e-9)
            continue
        assert r.details["engine"] == "evidently", r.metric
        agg, ev = r.details["aggregate_score"], r.details["drift_score"]
        tol = r.details.get("error_bound", 0) if r.method == "wasserstein" else 1e-9 * max(abs(ev), 1e-12)
        assert abs(agg - ev) <= tol + 1e-15, (r.metric, r.method, agg, ev)
    assert results["latency_ms"].status == "fail" and results["output_tokens"].status == "fail"


def test_wasserstein_exact_when_threshold_within_bound(store):
    insert(store, REF, 20_000, seed=5)
    insert(store, CUR, 20_000, seed=6, columns={"latency_ms": f"2030 + 300 * {G(6).n(15)}"})
    s = ChecksSettings()
    first = by_metric(FeatureDriftCheck(s, features=["latency_ms"], raw_limit=0).run(context(store, s)))["latency_ms"]
    assert first.method == "wasserstein" and not first.details["exact"] and first.details["error_bound"] > 0
    # a threshold inside the histogram's error bound forces the exact computation
    s2 = ChecksSettings(features={"latency_ms": FeatureOverride(threshold=first.value)})
    exact = by_metric(FeatureDriftCheck(s2, features=["latency_ms"], raw_limit=0).run(context(store, s2)))["latency_ms"]
    assert exact.details["exact"] is True and exact.details["error_bound"] == 0
    ref, cur = load_frame(store, REF), load_frame(store, CUR)
    from scipy.stats import wasserstein_distance
    a, b = ref["latency_ms"].dropna().to_numpy(), cur["latency_ms"].dropna().to_numpy()
    truth = wasserstein_distance(a, b) / max(float(np.std(a)), 0.001)
    assert exact.value == pytest.approx(truth, rel=1e-9)
    assert abs(first.value - truth) <= first.details["error_bound"]
    assert (exact.status == "fail") == (truth >= first.value)


# --- the contract ------------------------------------------------------------------------------

def test_min_samples_gives_insufficient_data(store):
    insert(store, REF, 500, seed=9)
    insert(store, CUR, 99, seed=10)
    s = ChecksSettings(min_samples=100)
    results = FeatureDriftCheck(s, raw_limit=0).run(context(store, s))
    assert {r.status for r in results} == {"insufficient_data"}
    assert by_metric(results)["latency_ms"].current_n == 99
    # enough rows but too few non-null values of one feature
    insert(store, CUR, 400, seed=11, columns={"ttft_ms": "NULL"})
    r = by_metric(FeatureDriftCheck(s, raw_limit=0).run(context(store, s)))
    assert r["latency_ms"].status != "insufficient_data" and r["latency_ms"].current_n == 499
    assert r["ttft_ms"].status == "insufficient_data" and r["ttft_ms"].current_n == 99


def test_overrides_are_honoured(store):
    insert(store, REF, 3000, seed=12)
    insert(store, CUR, 3000, seed=13, columns={
        "finish_reason": f"multiIf({G(13).u(20)} < 0.6, 'stop', {G(13).u(20)} < 0.9, 'length', 'tool_calls')"})
    s = ChecksSettings()
    default = by_metric(FeatureDriftCheck(s, raw_limit=0).run(context(store, s)))
    assert default["finish_reason"].method == "jensenshannon" and default["finish_reason"].status == "fail"
    assert default["latency_ms"].method == "wasserstein" and default["latency_ms"].threshold == 0.1
    s = ChecksSettings(features={"latency_ms": {"method": "ks", "threshold": 0.01},
                                 "finish_reason": {"threshold": 0.5},
                                 "status_code": {"method": "psi"}})
    r = by_metric(FeatureDriftCheck(s, raw_limit=0).run(context(store, s)))
    assert (r["latency_ms"].method, r["latency_ms"].threshold) == ("ks", 0.01)
    assert r["latency_ms"].p_value is not None and 0 <= r["latency_ms"].p_value <= 1
    assert (r["finish_reason"].method, r["finish_reason"].threshold) == ("jensenshannon", 0.5)
    assert r["finish_reason"].status == "ok"  # same statistic, higher threshold
    assert r["finish_reason"].value == pytest.approx(default["finish_reason"].value, rel=1e-12)
    assert (r["status_code"].method, r["status_code"].threshold) == ("psi", 0.1)


def test_min_change_keeps_small_significant_moves_of_the_median_from_counting(store):
    insert(store, REF, 3000, seed=21)
    # the latency 15% slower: significant at n=3000, smaller than a latency floor of 50%
    insert(store, CUR, 3000, seed=22, columns={"latency_ms": f"1.15 * (2000 + 300 * {G(22).n(15)})"})
    s = ChecksSettings(features={"latency_ms": {"method": "ks", "threshold": 0.001}})
    plain = by_metric(FeatureDriftCheck(s, raw_limit=0, features=["latency_ms"]).run(context(store, s)))
    assert plain["latency_ms"].status == "fail"
    assert plain["latency_ms"].details["median_change"] == pytest.approx(0.15, abs=0.02)
    s = ChecksSettings(features={"latency_ms": {"method": "ks", "threshold": 0.001, "min_change": 0.5}})
    floored = by_metric(FeatureDriftCheck(s, raw_limit=0, features=["latency_ms"]).run(context(store, s)))
    r = floored["latency_ms"]
    assert r.status == "ok" and r.details["below_min_change"] is True and r.details["min_change"] == 0.5
    assert r.p_value == pytest.approx(plain["latency_ms"].p_value)  # the test itself is unchanged
    s = ChecksSettings(features={"latency_ms": {"method": "ks", "threshold": 0.001, "min_change": 0.1}})
    low = by_metric(FeatureDriftCheck(s, raw_limit=0, features=["latency_ms"]).run(context(store, s)))
    assert low["latency_ms"].status == "fail" and "below_min_change" not in low["latency_ms"].details


@pytest.mark.parametrize("features, match", [
    ({"finish_reason": {"min_change": 0.5}}, "numeric features only"),
    ({"latency_ms": {"method": "nope"}}, "unsupported test 'nope'"),
    ({"latency_ms": {"method": "mannw"}}, "needs raw values"),
    ({"finish_reason": {"method": "ks"}}, "does not apply to categorical"),
    ({"latency_ms": {"method": "chisquare"}}, "does not apply to numeric"),
    ({"latencyms": {"method": "ks"}}, "unknown feature"),
    ({"latency_ms": {"method": "ks", "threshold": 1.5}}, "below 1"),
])
def test_bad_overrides_raise_config_error(features, match):
    with pytest.raises(ConfigError, match=match):
        FeatureDriftCheck(ChecksSettings(features=features))


def test_nulls_and_non_finite_values_are_ignored(store):
    insert(store, REF, 2000, seed=14)
    # the same distribution of non-null values; 40% NULL, plus NaN and +inf rows that must not count
    insert(store, CUR, 2000, seed=15, columns={
        "ttft_ms": f"multiIf({G(15).u(61)} < 0.4, NULL, {G(15).u(61)} < 0.45, nan, {G(15).u(61)} < 0.5, inf, "
                   f"300 + 50 * {G(15).n(14)})",
        "finish_reason": f"if({G(15).u(62)} < 0.4, '', multiIf({G(15).u(20)} < 0.8, 'stop', "
                         f"{G(15).u(20)} < 0.9, 'length', 'tool_calls'))"})
    s = ChecksSettings()
    r = by_metric(FeatureDriftCheck(s, raw_limit=0).run(context(store, s)))
    cur = load_frame(store, CUR)
    finite = cur["ttft_ms"][np.isfinite(cur["ttft_ms"])]
    assert r["ttft_ms"].current_n == len(finite) and 900 < len(finite) < 1100
    assert r["ttft_ms"].status == "ok" and r["finish_reason"].status == "ok"
    assert r["finish_reason"].current_n == cur["finish_reason"].notna().sum()
    assert "" not in {c["value"] for c in r["finish_reason"].details["categories"]}
    # the statistic is evidently's on the finite, non-null values
    from evidently.legacy.calculations.stattests import wasserstein_stat_test
    from evidently.legacy.core import ColumnType
    ref = load_frame(store, REF)
    ev = wasserstein_stat_test(ref["ttft_ms"].dropna(), finite, ColumnType.Numerical, None).drift_score
    assert abs(r["ttft_ms"].value - ev) <= r["ttft_ms"].details["error_bound"] + 1e-12


def test_scope_model_and_group_are_honoured(store):
    shifted = {"latency_ms": f"5000 + 300 * {G(18).n(15)}",
               "finish_reason": "'content_filter'"}
    insert(store, REF, 3000, seed=16, columns={"attributes": "map('tenant', 'a')"})
    insert(store, CUR, 3000, seed=17, columns={"attributes": "map('tenant', 'a')"})
    insert(store, CUR, 3000, seed=18, columns={**shifted, "attributes": "map('tenant', 'a')"}, model="other")
    insert(store, CUR, 3000, seed=19, columns={**shifted, "attributes": "map('tenant', 'b')"})
    s = ChecksSettings()
    check = FeatureDriftCheck(s, features=["latency_ms", "finish_reason"], raw_limit=0)
    a = by_metric(check.run(context(store, s, group=[("tenant", "a")])))
    assert a["latency_ms"].current_n == 3000 and a["latency_ms"].reference_n == 3000
    assert a["latency_ms"].status == "ok" and a["finish_reason"].status == "ok"
    # without the group, tenant b's drifted rows of the same model count; the other model's never do
    whole = by_metric(check.run(context(store, s)))
    assert whole["latency_ms"].current_n == 6000 and whole["latency_ms"].status == "fail"
    assert whole["finish_reason"].status == "fail"
    other = by_metric(check.run(context(store, s, model="other")))
    assert other["latency_ms"].reference_n == 0 and other["latency_ms"].status == "insufficient_data"


def test_language_columns_used_when_present_skipped_when_absent(store):
    has = {r[0] for r in store.query_rows(
        "SELECT name FROM system.columns WHERE database = {d:String} AND table = 'inference_events'",
        {"d": store.database})}
    if "prompt_language" not in has:  # before migration 0006 existed: add what it adds
        store.command("ALTER TABLE inference_events ADD COLUMN prompt_language LowCardinality(String), "
                      "ADD COLUMN completion_language LowCardinality(String)")
    insert(store, REF, 3000, seed=20, columns={"prompt_language": f"if({G(20).u(70)} < 0.9, 'en', 'fr')",
                                               "completion_language": "'en'"})
    insert(store, CUR, 3000, seed=21, columns={"prompt_language": f"if({G(21).u(70)} < 0.5, 'en', 'fr')",
                                               "completion_language": "'en'"})
    s = ChecksSettings()
    r = by_metric(FeatureDriftCheck(s, raw_limit=0).run(context(store, s)))
    assert r["prompt_language"].status == "fail" and r["completion_language"].status == "ok"
    store.command("ALTER TABLE inference_events DROP COLUMN prompt_language, DROP COLUMN completion_language")
    r = by_metric(FeatureDriftCheck(s, raw_limit=0).run(context(store, s)))
    assert "prompt_language" not in r and "completion_language" not in r and "latency_ms" in r


# --- pieces against evidently / numpy ------------------------------------------------------------

def test_selection_rule_is_evidentlys():
    import pandas as pd
    from evidently.legacy.calculations.stattests.registry import _get_default_stattest
    from evidently.legacy.core import ColumnType

    for n in (10, 1000, 1001, 5000):
        for distinct in (1, 2, 3, 5, 6, 20, 50):
            ref = pd.Series(np.arange(n) % distinct, dtype="float64")
            cur = pd.Series(np.arange(7) % distinct, dtype="float64")
            for ftype, ct in (("numeric", ColumnType.Numerical), ("categorical", ColumnType.Categorical)):
                a, b = (ref, cur) if ftype == "numeric" else (ref.astype(str), cur.astype(str))
                expected = _get_default_stattest(a, b, ct).name
                assert select_method(ftype, n, min(distinct, n)) == expected, (ftype, n, distinct)
    for name, m in METHODS.items():
        from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
        st = next(iter(_registered_stat_tests[name].values()))
        assert m.default_threshold == st.default_threshold, name
        assert m.types == {{"num": "numeric", "cat": "categorical"}[t.value] for t in _registered_stat_tests[name]}


def test_sturges_edges_are_numpys():
    rng = np.random.default_rng(0)
    for size in (1, 2, 21, 1000, 123_457):
        a = rng.normal(3, 7, size)
        assert np.array_equal(sturges_edges(a.min(), a.max(), size), np.histogram_bin_edges(a, bins="sturges"))
    a = np.full(10, 4.0)
    assert np.array_equal(sturges_edges(4.0, 4.0, 10), np.histogram_bin_edges(a, bins="sturges"))
