"""What the dashboards stand on: the store's bounded client pool, ``?database=`` in a chdb URL, the
result cache and the page timings."""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from conftest import MONITOR

from monitor.config import StoreSettings
from monitor.errors import ConfigError, StoreError


def test_threads_share_a_bounded_pool_of_clients(store):
    """64 threads (as Streamlit runs a thread per page view) share at most POOL_SIZE chdb clients;
    a thread never keeps one between calls."""
    from monitor.store.client import POOL_SIZE

    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                assert store.query_rows("SELECT sum(number) FROM numbers(20000)")[0][0] == 199990000
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert 1 <= store.clients_open() <= POOL_SIZE["chdb"]
    # the raw client still answers, one call at a time
    assert list(store.client().query_df("SELECT 1 AS x")["x"]) == [1]
    assert store.client().database == store.database


def test_queries_beyond_the_pool_wait_and_run_in_parallel_up_to_it(store):
    from monitor.store.client import POOL_SIZE

    n = POOL_SIZE["chdb"]
    t = time.monotonic()
    threads = [threading.Thread(target=store.query_rows, args=("SELECT sleep(0.5)",)) for _ in range(2 * n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    took = time.monotonic() - t
    assert 0.9 < took < 0.5 * 2 * n, took  # two rounds of n in parallel, not 2n in a row
    assert store.clients_open() == n


def test_a_closed_store_refuses_calls_and_closes_a_client_in_use_when_its_call_ends(settings):
    from monitor.store.client import Store

    s = Store(settings.store)
    started = threading.Event()
    result: list = []

    def slow() -> None:
        started.set()
        result.append(s.query_rows("SELECT sleep(0.5), 1")[0][1])

    t = threading.Thread(target=slow)
    t.start()
    started.wait()
    time.sleep(0.1)
    s.close()
    t.join(30)
    assert result == [1]            # the call in flight finished
    assert s.clients_open() == 0    # and its client was closed then
    with pytest.raises(StoreError, match="closed"):
        s.query_rows("SELECT 1")
    s.close()


def test_the_embedded_engine_opens_with_its_caches_bounded(store):
    """ClickHouse sizes its data caches for a server (5 GiB each); the embedded store caps them
    (store.embedded_cache_mb) so a long-running `monitor up` does not grow with every part it reads."""
    want = StoreSettings().chdb_options()
    assert set(want) == {"mark_cache_size", "primary_index_cache_size", "index_mark_cache_size",
                         "query_condition_cache_size"} and set(want.values()) == {64 * 1024 * 1024}
    got = dict(store.query_rows("SELECT name, value FROM system.server_settings WHERE name IN "
                                "('mark_cache_size', 'primary_index_cache_size', 'index_mark_cache_size', "
                                "'query_condition_cache_size')"))
    assert {k: int(v) for k, v in got.items()} == want


def test_chdb_url_database_parameter_is_used(chdb_dir):
    from monitor.store.client import Store, database_name

    s = Store(StoreSettings(url=f"chdb://{chdb_dir}?database=from_url"))
    try:
        assert s.database == "from_url" and "database from_url" in s.describe()
        assert s.query_rows("SELECT currentDatabase()") == [("from_url",)]
    finally:
        s.close()
    assert database_name(StoreSettings(url=f"chdb://{chdb_dir}?database=x", database="x")) == "x"
    assert database_name(StoreSettings(url=f"chdb://{chdb_dir}")) == "monitor"


@pytest.mark.parametrize("url,message", [
    ("chdb://{d}?db=x", "takes one parameter, ?database=NAME (not db)"),
    ("chdb://{d}?database=x&user=y", "(not user)"),
    ("chdb://{d}?database=", "takes one name"),
    ("chdb://{d}?database=a`b", "takes one name"),
    ("chdb://{d}?database=a&database=b", "takes one name"),
])
def test_chdb_url_with_anything_else_stops_with_a_clear_error(chdb_dir, url, message):
    from monitor.store.client import database_name

    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        database_name(StoreSettings(url=url.format(d=chdb_dir)))
    with pytest.raises(ConfigError, match="give one of them"):
        database_name(StoreSettings(url=f"chdb://{chdb_dir}?database=a", database="b"))


def test_monitor_dashboard_stops_on_a_chdb_url_it_cannot_honour(tmp_path):
    proc = subprocess.run([*MONITOR, "dashboard", "--clickhouse", f"chdb://{tmp_path}/data?databse=bench",
                           "--port", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "chdb:// takes one parameter, ?database=NAME (not databse)" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- result cache -------------------------------------------------------------------------------------


class _Result:
    def __init__(self, rows):
        self.column_names, self.result_rows = ("x",), rows


def test_cache_reuses_a_result_within_its_ttl_and_stays_bounded():
    from monitor.webui.cache import ResultCache

    c = ResultCache(max_entries=3, max_bytes=10_000, max_entry_bytes=2_000)
    calls = []

    def run(v):
        calls.append(v)
        return _Result([(v,)])

    assert c.get_or_run("a", 60, lambda: run(1)) == (c.get_or_run("a", 60, lambda: run(2))[0], False)
    assert calls == [1]
    assert c.get_or_run("b", 0.05, lambda: run(3))[1] is False
    time.sleep(0.06)
    assert c.get_or_run("b", 0.05, lambda: run(4))[0].result_rows == [(4,)]  # expired: ran again
    for k in "cdef":
        c.get_or_run(k, 60, lambda: run(k))
    assert len(c) == 3                                              # LRU: the oldest went
    c.get_or_run("big", 60, lambda: _Result([("x" * 5000,)]))       # over max_entry_bytes: not kept
    assert c.get_or_run("big", 60, lambda: _Result([("y",)]))[1] is False
    assert c.bytes <= 10_000


def test_cache_runs_a_query_once_for_concurrent_askers():
    from monitor.webui.cache import ResultCache

    c = ResultCache()
    runs = []

    def slow():
        runs.append(1)
        time.sleep(0.3)
        return _Result([(1,)])

    out = []
    threads = [threading.Thread(target=lambda: out.append(c.get_or_run("k", 60, slow))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(runs) == 1 and len(out) == 8 and sum(hit for _, hit in out) == 7


def test_page_range_is_quantised_so_reruns_within_the_bucket_hit_the_cache(store):
    from monitor.webui import timing
    from monitor.webui.filters import fresh_seconds, preset
    from monitor.webui.queries import overview
    from monitor.webui.store import ReadOnlyStore

    t0 = datetime(2026, 3, 1, 12, 0, 0, 500000, tzinfo=timezone.utc)
    f1, f2 = preset("Last 24 hours", t0), preset("Last 24 hours", t0 + timedelta(seconds=50))
    assert f1 == f2 and f1.end == datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc) and f1.end > t0
    assert preset("Last 24 hours", t0 + timedelta(seconds=60)).end == datetime(2026, 3, 1, 12, 2, tzinfo=timezone.utc)
    assert preset("Last hour", t0).end == datetime(2026, 3, 1, 12, 0, 10, tzinfo=timezone.utc)
    assert preset("Last 7 days", t0).end == datetime(2026, 3, 1, 12, 5, tzinfo=timezone.utc)
    assert [fresh_seconds(timedelta(hours=h)) for h in (0.25, 1, 6, 24, 168)] == [10, 10, 60, 60, 300]

    ro = ReadOnlyStore(store)
    assert ro.has_table("inference_events_10m")  # asked once per dashboard process: not part of the runs below
    with timing.page_run("test") as run:
        overview.summary(ro, f1)
        overview.summary(ro, f2)
        overview.summary(ro, preset("Last 24 hours", t0 + timedelta(seconds=70)))
    assert (run.queries, run.cached) == (3, 1)
    assert timing.recent()[-1]["page"] == "test"


# -- refresh ahead ------------------------------------------------------------------------------------


class _CountingStore:
    """A store that answers every query with its parameters and counts what it ran."""

    embedded, database = True, "db"

    def __init__(self, seconds: float = 0.0):
        self.ran: list[tuple[str, dict]] = []
        self.seconds = seconds

    def query(self, sql, parameters=None, settings=None):
        self.ran.append((sql, dict(parameters or {})))
        time.sleep(self.seconds)
        return _Result([(sorted((k, str(v)) for k, v in (parameters or {}).items()),)])


def _page_query():
    """A page's query function that derives more than the range from it, as the rollup reader does
    (the ten-minute boundaries inside the range), and calls another prefetchable one."""
    from monitor.webui.prefetch import prefetchable

    @prefetchable
    def inner(store, f):
        return store.query_rows("SELECT 2 WHERE t >= {start:DateTime} AND t < {end:DateTime}",
                                {"start": f.start, "end": f.end})

    @prefetchable
    def page(store, f, label="x"):
        lo = datetime.fromtimestamp(-(-f.start.timestamp() // 600) * 600, timezone.utc)
        sql = "SELECT 1 WHERE t >= {start:DateTime} AND t < {end:DateTime} AND m >= {lo:DateTime}"
        if lo == f.start:
            sql += " AND aligned"
        return store.query_rows(sql, {"start": f.start, "end": f.end, "lo": lo, "label": label}), inner(store, f)

    return page


def _preset_away_from_a_turn(name: str):
    from monitor.webui.filters import fresh_seconds, preset

    f = preset(name)
    if f.end.timestamp() - time.time() < min(2.0, fresh_seconds(f.end - f.start) / 4):
        time.sleep(f.end.timestamp() - time.time() + 0.1)
        f = preset(name)
    return f


def test_prefetch_makes_a_viewed_pages_calls_for_the_next_bucket_and_nothing_else():
    from dataclasses import replace

    from monitor.webui.filters import preset
    from monitor.webui.store import ReadOnlyStore

    store = _CountingStore()
    ro = ReadOnlyStore(store, prefetch_s=900)
    ro.prefetcher.autostart = False  # turns driven by hand below, with a clock of the test's own
    page = _page_query()
    f = _preset_away_from_a_turn("Last 24 hours")
    page(ro, f, label="a")
    page(ro, replace(f, search="secret"))                                     # a search: never
    page(ro, replace(f, start=f.start - timedelta(days=9), end=f.end - timedelta(days=8)))  # fixed, past
    assert len(ro.prefetcher) == 1 and len(store.ran) == 5                    # 2 + 1 (inner: cached) + 2

    from monitor.webui.prefetch import prefetchable

    @prefetchable
    def odd(store, f, opts):
        return store.query_rows("SELECT 3 WHERE t >= {start:DateTime}", {"start": f.start})

    assert odd(ro, f, bytearray(b"unhashable")) and len(ro.prefetcher) == 1  # works, not followed
    store.ran.pop()

    assert ro.prefetcher.run_due(f.end.timestamp() - 0.5) == 0               # the bucket has not ended yet
    ran = len(store.ran)
    assert ro.prefetcher.run_due(f.end.timestamp() + 0.5) == 1
    assert len(store.ran) == ran + 2
    # the page's view in the new bucket: every query answered from the cache, as a run would answer
    nxt = preset("Last 24 hours", f.end + timedelta(seconds=0.5))
    assert nxt.end == f.end + timedelta(seconds=60)
    got = page(ro, nxt, label="a")
    assert len(store.ran) == ran + 2
    fresh = page(ReadOnlyStore(_CountingStore(), prefetch_s=0), nxt, label="a")
    assert got == fresh
    assert len(ro.prefetcher) == 1                                            # the view refreshed the same call

    # a turn that comes late skips to the bucket running now; a page nobody views is let go
    assert ro.prefetcher.run_due(nxt.end.timestamp() + 125) == 1
    assert store.ran[-2][1]["end"] == nxt.end + timedelta(seconds=180)
    ro.prefetcher.idle_s = 0.05
    time.sleep(0.1)
    assert ro.prefetcher.run_due(nxt.end.timestamp() + 185) == 0 and len(ro.prefetcher) == 0
    assert ro.prefetcher.prefetched == 2 and ro.prefetcher.failed == 0


def test_prefetch_spends_at_most_its_share_of_the_bucket_most_recently_viewed_first():
    from monitor.webui.prefetch import prefetchable
    from monitor.webui.store import ReadOnlyStore

    from monitor.selfmetrics import SelfMetrics

    store = _CountingStore()
    ro = ReadOnlyStore(store, prefetch_s=900)
    ro.prefetcher.autostart = False
    ro.prefetcher.metrics = metrics = SelfMetrics()

    @prefetchable
    def page(store, f, i):
        return store.query_rows(f"SELECT {i} WHERE t >= {{start:DateTime}} AND t < {{end:DateTime}}",
                                {"start": f.start, "end": f.end})

    f = _preset_away_from_a_turn("Last hour")                                # a 10 s bucket: 2.5 s a turn
    for i in range(12):
        page(ro, f, i)
        time.sleep(0.002)
    assert len(ro.prefetcher) == 12
    store.ran.clear()
    store.seconds = 0.3
    assert ro.prefetcher.run_due(f.end.timestamp() + 0.1) == 9               # 9 x 0.3 s: the 9th starts at 2.4 s
    assert ro.prefetcher.skipped == 3
    assert [sql.split()[1] for sql, _ in store.ran] == [str(i) for i in range(11, 2, -1)]
    assert len(ro.prefetcher) == 12                                           # the skipped ones are still followed
    calls = {o: metrics.registry.get_sample_value("monitor_dashboard_prefetch_calls_total", {"outcome": o})
             for o in ("made", "skipped", "failed")}
    assert calls == {"made": 9, "skipped": 3, "failed": 0}
    assert 2.5 < metrics.registry.get_sample_value("monitor_dashboard_prefetch_seconds_total") < 3.5


def test_a_page_viewed_after_its_bucket_turned_is_answered_from_the_cache(store):
    """The real thread over the real engine: the Overview over the last hour (10 s buckets), viewed
    again in the next bucket, runs no query."""
    from monitor.webui import timing
    from monitor.webui.filters import preset
    from monitor.webui.queries import overview
    from monitor.webui.store import ReadOnlyStore

    ro = ReadOnlyStore(store, prefetch_s=900)
    try:
        assert ro.has_table("inference_events_10m")
        f = _preset_away_from_a_turn("Last hour")
        with timing.page_run("first") as first:
            overview.traffic(ro, f)
            overview.models(ro, f)
        assert first.queries == 2 and first.cached == 0
        deadline = time.time() + 30
        while ro.prefetcher.prefetched < 2 and time.time() < deadline:
            time.sleep(0.05)
        with timing.page_run("after the turn") as after:
            nxt = preset("Last hour")
            overview.traffic(ro, nxt)
            overview.models(ro, nxt)
        assert nxt.end > f.end and (after.queries, after.cached) == (2, 2)
    finally:
        ro.prefetcher.stop()
