"""The per-minute rollup of inference_events (schema 0016) and the dashboard queries that read it.

Events go in through the ingest writer (a batch twice with its token: stored once, counted once),
the dashboards' long ranges read the rollup, and every count and sum they show equals the same
aggregate over the rows; the quantiles (merged t-digest sketches) stay within a few percent of
ClickHouse's over the rows. The fill of rows stored before the schema file counts each once, also
when the file is applied a second time (a start killed half-way), and the rollup keeps
inference_events' retention.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone

import pytest

from monitor.events import InferenceEvent
from monitor.selfmetrics import SelfMetrics
from monitor.store.migrate import migrate, schema_dir
from monitor.store.writer import Writer
from monitor.webui.filters import Filters
from monitor.webui.queries import latency as lq
from monitor.webui.queries import overview as oq
from monitor.webui.queries._sql import ROLLUP, ROLLUP_10M, rollup_source
from monitor.webui.store import ReadOnlyStore

MODELS = ("alpha", "beta", "gamma")
END = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def _events(n: int, seed: int = 7) -> list[InferenceEvent]:
    """``n`` requests over the 2 days before END: per model its own latency scale, some errors, some
    without engine timings or cost, NULL timings here and there."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        model = MODELS[i % 3]
        scale = (1.0, 3.0, 10.0)[i % 3]
        t = END - timedelta(seconds=rnd.uniform(0, 2 * 86400))
        latency = rnd.lognormvariate(5, 0.6) * scale
        engine = i % 4 != 0
        cost = i % 5 != 0
        out.append(InferenceEvent(
            timestamp=int(t.timestamp() * 1e9), trace_id=f"{i:032x}", span_id=f"{i:016x}", model=model,
            input_tokens=rnd.randint(10, 500), output_tokens=None if i % 7 == 0 else rnd.randint(1, 300),
            ttft_ms=None if i % 11 == 0 else latency / 10, latency_ms=latency,
            queue_ms=rnd.uniform(0, 20) if engine else None, prefill_ms=latency / 20 if engine else None,
            decode_ms=latency * 0.8 if engine else None, engine_latency_ms=latency * 0.9 if engine else None,
            engine_ttft_ms=latency / 12 if engine else None,
            gpu_seconds=latency / 1000 if cost else None, gpu_cost=latency / 1e6 if cost else None,
            status_code="Error" if i % 13 == 0 else "Ok",
            refusal=int(i % 9 == 0), empty_output=int(i % 17 == 0), truncated=int(i % 6 == 1),
            json_valid=(None, 1, 0)[i % 3] if i % 4 else None, pii_in_output=i % 8 // 6,
            degenerate=int(i % 19 == 0), language_mismatch=int(i % 23 == 0)))
    return out


def _write(store, events: list[InferenceEvent], token: str) -> None:
    rows = {"inference_events": [e.row() for e in events]}
    assert Writer(store, SelfMetrics()).write(rows, token) == []


def _rollup_totals(store) -> tuple[int, int, int]:
    """Requests, errors and input tokens in the minute rollup (the ten-minute one must agree)."""
    totals = [tuple(int(v) for v in store.query_rows(
        f"SELECT sum(requests), sum(errors), sum(input_tokens_sum) FROM {table}")[0]) for table in (ROLLUP, ROLLUP_10M)]
    assert totals[0] == totals[1]
    return totals[0]


_QUALITY = {"refusal_n": "sum(refusal)", "empty_n": "sum(empty_output)", "truncated_n": "sum(truncated)",
            "invalid_json_n": "countIf(json_valid = 0)", "invalid_json_d": "countIf(json_valid IS NOT NULL)",
            "pii_n": "countIf(pii_in_output > 0)", "repetition_n": "sum(degenerate)",
            "language_mismatch_n": "sum(language_mismatch)"}
"""The quality counts of the rollups (schema 0018) and what each is over the rows."""


def _quality_totals(store) -> dict[str, int]:
    """The rollups' quality counts, checked against the rows (and the ten-minute rollup against the minute one)."""
    got = [dict(zip(_QUALITY, map(int, store.query_rows(
        f"SELECT {', '.join(f'sum({c})' for c in _QUALITY)} FROM {table}")[0]))) for table in (ROLLUP, ROLLUP_10M)]
    rows = dict(zip(_QUALITY, map(int, store.query_rows(
        f"SELECT {', '.join(_QUALITY.values())} FROM inference_events")[0])))
    assert got[0] == got[1] == rows
    return rows


def test_a_redelivered_batch_is_counted_once(store):
    events = _events(900)
    _write(store, events[:500], "spool:1-500")
    _write(store, events[:500], "spool:1-500")        # redelivered: same token
    _write(store, events[500:], "spool:501-900")
    assert store.query_rows("SELECT count() FROM inference_events")[0][0] == 900
    n, errors, inp = _rollup_totals(store)
    assert n == 900
    assert errors == sum(e.status_code == "Error" for e in events)
    assert inp == sum(e.input_tokens for e in events)
    q = _quality_totals(store)
    assert q["refusal_n"] == sum(e.refusal for e in events) > 0
    assert q["invalid_json_d"] == sum(e.json_valid is not None for e in events) > q["invalid_json_n"] > 0


def test_a_failing_view_never_sets_requests_aside(store):
    """A derived table's view that cannot take a batch (here: a NULL into a non-Nullable column) does
    not make the store refuse the requests: they are stored, nothing goes to the dead letters."""
    db = store.database
    store.command(f"CREATE TABLE `{db}`.broken (model String, v Float64) ENGINE = MergeTree ORDER BY model")
    store.command(f"CREATE MATERIALIZED VIEW `{db}`.broken_mv TO `{db}`.broken AS "
                  f"SELECT model, sum(gpu_cost) AS v FROM `{db}`.inference_events GROUP BY model")
    events = [e for e in _events(50) if e.gpu_cost is None]
    _write(store, events, "b1")
    assert store.query_rows("SELECT count() FROM inference_events")[0][0] == len(events)
    assert _rollup_totals(store)[0] == len(events)


def test_timings_a_sketch_cannot_hold_still_count(store):
    """Infinite, NaN and huge timings (a sketch takes none of them) leave the batch in the rollup: counted,
    summed, and left out of the quantiles only."""
    import dataclasses
    import math

    base = _events(40)
    odd = [dataclasses.replace(e, latency_ms=v, ttft_ms=v) for e, v in zip(base, (math.inf, -math.inf, math.nan,
                                                                                   1.79e308, 1e301))]
    _write(store, odd + base[5:], "b1")
    assert _rollup_totals(store)[0] == 40
    ro = ReadOnlyStore(store)
    summary, _ = oq.traffic(ro, _filters(2))
    assert summary["requests"].sum() == 80  # per model plus the total row
    total = summary[summary["model"].isna()].iloc[0]
    finite = sorted(e.latency_ms for e in base[5:])
    assert finite[0] * 0.99 <= total["latency_p50"] <= finite[-1] * 1.01


def _filters(days: float, models: tuple[str, ...] = ()) -> Filters:
    return Filters(start=END - timedelta(days=days), end=END, models=models)


@pytest.mark.parametrize("span,start_min,end_min", [
    (2 * 86400, 0, 0),      # 2 days on whole ten minutes: the ten-minute rows alone
    (2 * 86400, 7, -3),     # the minute rows at both ends
    (6 * 3600, 0, -1),      # 6 hours (2-minute buckets): the minute rows alone
], ids=["ten-minutes", "both", "minutes"])
def test_long_ranges_read_the_rollup_and_agree_with_the_rows(store, span, start_min, end_min):
    events = _events(3000)
    _write(store, events, "b1")
    ro = ReadOnlyStore(store)
    end = END + timedelta(minutes=end_min)
    f = Filters(start=end - timedelta(seconds=span) + timedelta(minutes=start_min), end=end)
    source = rollup_source(ro, f)
    assert source is not None
    assert (ROLLUP_10M in source[0]) == (span > 86400 / 2) and (ROLLUP in source[0].replace(ROLLUP_10M, "")) == (
        (start_min, end_min) != (0, 0))
    # the same range from the rows: one second later, so it is not on whole minutes
    raw = Filters(start=f.start + timedelta(seconds=1), end=f.end)
    assert rollup_source(ro, raw) is None
    assert rollup_source(ro, Filters(start=END - timedelta(hours=1), end=END)) is None  # 30 s buckets
    expected = sum(f.start.timestamp() * 1e9 + 1e9 <= e.timestamp < f.end.timestamp() * 1e9 for e in events)

    summary, ts = oq.traffic(ro, f)
    summary_raw, ts_raw = oq.traffic(ro, raw)
    by = summary.set_index(summary["model"].fillna("(all)"))
    by_raw = summary_raw.set_index(summary_raw["model"].fillna("(all)"))
    assert list(by.index) == list(by_raw.index) and by.loc["(all)", "requests"] == expected
    for col in ("requests", "errors", "input_tokens", "output_tokens"):
        assert list(by[col]) == list(by_raw[col]), col
    inside = [e for e in events if f.start.timestamp() * 1e9 <= e.timestamp < f.end.timestamp() * 1e9]
    for col in ("latency", "ttft"):
        for p in (50, 95, 99):
            for k in by.index:
                values = [getattr(e, f"{col}_ms") for e in inside if k in ("(all)", e.model)]
                _within_a_percent_of_its_rank(by.loc[k, f"{col}_p{p}"], values, p / 100, (k, col, p))
    # the chart's buckets: the same buckets and counts
    assert ts["requests"].sum() == expected
    merged = ts.merge(ts_raw, on=["t", "model"], suffixes=("", "_raw"))
    assert len(merged) == len(ts) == len(ts_raw)
    assert (merged["requests"] == merged["requests_raw"]).all() and (merged["errors"] == merged["errors_raw"]).all()

    bd, series, cost = lq.timings(ro, f)
    bd_raw, series_raw, cost_raw = lq.timings(ro, raw)
    bd, bd_raw = bd.set_index("model"), bd_raw.set_index("model")
    assert (bd["requests"] == bd_raw["requests"]).all() and (bd["with_engine"] == bd_raw["with_engine"]).all()
    for c in lq.TIMINGS:
        for m in MODELS:
            assert bd.loc[m, f"{c}_mean"] == pytest.approx(bd_raw.loc[m, f"{c}_mean"], rel=1e-9), (m, c)
            for p in (50, 95):
                values = [getattr(e, c) for e in inside if e.model == m]
                _within_a_percent_of_its_rank(bd.loc[m, f"{c}_p{p}"], values, p / 100, (m, c, p))
    for m in MODELS:
        assert bd.loc[m, "outside_engine_ms"] == pytest.approx(bd_raw.loc[m, "outside_engine_ms"], rel=1e-9)
    assert list(series["t"]) == list(series_raw["t"])
    cost, cost_raw = cost.set_index("model"), cost_raw.set_index("model")
    for col in ("requests_with_cost", "tokens"):
        assert list(cost[col]) == list(cost_raw[col]), col
    for col in ("total_gpu_seconds", "total_gpu_cost", "cost_per_1k_tokens"):
        assert list(cost[col]) == pytest.approx(list(cost_raw[col]), rel=1e-9), col

    # a model filter narrows the rollup as it narrows the rows
    one, _ = oq.traffic(ro, Filters(start=f.start, end=f.end, models=("beta",)))
    assert list(one["model"].dropna()) == ["beta"]
    assert one["requests"].iloc[0] == by.loc["beta", "requests"]


def _within_a_percent_of_its_rank(got: float, values: list, level: float, what) -> None:
    """The sketches' promise: within 1 % of a value whose rank is the level's (give or take one: the
    rows' ``quantiles`` interpolates between neighbours, a sketch answers one of them)."""
    xs = sorted(v for v in values if v is not None)
    rank = level * (len(xs) - 1)
    lo, hi = xs[max(0, int(rank) - 1)], xs[min(len(xs) - 1, int(rank) + 2)]
    assert lo * 0.99 <= got <= hi * 1.01, (what, got, lo, hi)


def _fill_again(store) -> None:
    """Apply the rollups' latest fill (schema 0018: 0016's with the quality counts) again, as a start
    killed after some of its statements would."""
    store.command(f"ALTER TABLE `{store.database}`.schema_migrations DELETE WHERE version = 18",
                  settings={"mutations_sync": 2})
    assert migrate(store, 30) == [18]


def test_rows_stored_before_the_rollup_are_filled_in_once(store):
    events = _events(1200)
    store.command(f"DROP VIEW `{store.database}`.inference_events_1m_mv")   # rows stored before schema 0016
    store.command(f"TRUNCATE TABLE `{store.database}`.{ROLLUP}")
    _write(store, events[:800], "old")
    assert _rollup_totals(store)[0] == 0
    _fill_again(store)
    assert _rollup_totals(store) == (800, sum(e.status_code == "Error" for e in events[:800]),
                                     sum(e.input_tokens for e in events[:800]))
    assert _quality_totals(store)["truncated_n"] == sum(e.truncated for e in events[:800])
    _write(store, events[800:], "new")                # the view takes what comes after
    assert _rollup_totals(store)[0] == 1200
    _fill_again(store)                                # applied again: nothing counted twice
    assert _rollup_totals(store)[0] == 1200
    assert _quality_totals(store)["language_mismatch_n"] == sum(e.language_mismatch for e in events) > 0


@pytest.mark.parametrize("name", ["0016_inference_events_rollup.sql", "0018_inference_events_rollup_quality.sql"])
def test_the_fill_and_the_view_run_the_same_select(name):
    first = (schema_dir() / "0016_inference_events_rollup.sql").read_text()
    text = (schema_dir() / name).read_text()
    fill = re.search(r"^INSERT INTO \$database\.inference_events_1m\n(SELECT .*?);", text, re.S | re.M).group(1)
    view = re.search(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS \S+ TO \$database\.inference_events_1m AS\n(SELECT .*?);", text,
                     re.S | re.M).group(1)
    ten = re.search(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS \S+ TO \$database\.inference_events_10m AS\n(SELECT .*?);", text,
                    re.S | re.M).group(1)
    assert fill == view
    # every column of the table (0016's, then those 0018 adds to both tables) is written by both views, in order
    cols = re.findall(r"^    (\w+) ", first.split("CREATE TABLE", 1)[1].split(") ENGINE", 1)[0], re.M)
    if name.startswith("0018"):
        added = [re.findall(r"ADD COLUMN IF NOT EXISTS (\w+) ", part) for part in text.split("ALTER TABLE")[1:3]]
        assert added[0] == added[1] == list(_QUALITY)
        cols += added[0]
    for select in (view, ten):
        assert ["model", *re.findall(r"AS (\w+)", select.replace("\n", " "))] == sorted(cols, key=lambda c: c != "model")
    assert cols[:2] == ["minute", "model"]
    assert "CREATE TABLE IF NOT EXISTS $database.inference_events_10m AS $database.inference_events_1m;" in first


def test_both_rollups_have_the_same_columns_and_engine(store):
    """A reader takes both in one UNION ALL: the same columns in the same order, the same keys."""
    def shape(table):
        cols = store.query_rows("SELECT name, type FROM system.columns WHERE database = {db:String} AND "
                                "table = {t:String} ORDER BY position", {"db": store.database, "t": table})
        full = store.query_rows("SELECT engine_full FROM system.tables WHERE database = {db:String} AND "
                                "name = {t:String}", {"db": store.database, "t": table})[0][0]
        return cols, full

    assert shape(ROLLUP) == shape(ROLLUP_10M)
    assert "index_granularity = 256" in shape(ROLLUP_10M)[1]


def test_the_rollup_keeps_the_events_retention(store):
    from monitor.config import RetentionSettings

    migrate(store, 30, RetentionSettings(models={"beta": 400}))
    ttl = store.query_rows("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                           {"db": store.database, "t": ROLLUP})[0][0]
    assert "multiIf(model = 'beta', 400, 30)" in ttl
    assert "multiIf(model = 'beta', 400, 30)" in store.query_rows(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": store.database, "t": ROLLUP_10M})[0][0]
