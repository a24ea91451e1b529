"""Refresh ahead: the queries of a page in use run again as their time bucket turns, before anyone asks.

A page over a preset range reads a range that ends at the next multiple of the range's freshness
bucket (:func:`monitor.webui.filters.preset`: 10 s, 1 or 5 minutes). Within a bucket every rerun is
answered by the :class:`~monitor.webui.cache.ResultCache`; the first view after the bucket turned
ran all of the page's queries again (a 7-day page over 10M rows: ~0.5-1 s before the browser could
draw anything). The page-level query functions of :mod:`monitor.webui.queries` are marked
:func:`prefetchable`: a call over a range that follows the clock (it ends within one bucket after
now) is remembered, and when its bucket ends the :class:`Prefetcher` calls the function again with
the next bucket's range (the same filters, moved by one bucket), which puts into the cache exactly
the queries the page will ask (whatever the function derives from the range, such as the
ten-minute rollup boundaries, is derived again). The next view is a cache hit; a view at the
moment a query is prefetched waits for that run instead of running it twice (the cache's
in-flight rule).

What is shown is what the cache shows without it: answers computed within their own bucket,
kept at most a bucket. Bounded: a call nobody makes again is dropped ``idle_s`` after its last view
(``dashboard.prefetch_s``, 15 minutes by default); one turn spends at most ``share`` of the bucket
(most recently viewed first) and leaves the rest to whoever asks; a text search is never prefetched
(it is the user's own question, and it is audited); at most :data:`MAX_TRACKED` calls are followed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Callable, TypeVar

from monitor.webui.cache import freeze

__all__ = ["Prefetcher", "prefetchable", "MAX_TRACKED"]

log = logging.getLogger("monitor.webui")

MAX_TRACKED = 256
"""Calls followed at most (the least recently viewed go first)."""

_local = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def prefetchable(fn: F) -> F:
    """Mark a query function ``fn(store, f: Filters, *args, **kw)`` as safe to call again ahead of
    time: it only reads (it writes nothing; its audit entry, if any, is for a text search, which is
    never run ahead) and what it asks depends only on its arguments and ``f``'s range (a function
    whose answer is "now" whatever the range, such as the alerts firing, gains nothing from it).
    Calls made inside another prefetchable call, or by the prefetcher itself, are not tracked."""

    @functools.wraps(fn)
    def call(store: Any, f: Any, *args: Any, **kw: Any) -> Any:
        outer = getattr(_local, "depth", 0)
        if outer == 0 and not getattr(_local, "prefetching", False):
            prefetcher = getattr(store, "prefetcher", None)
            if prefetcher is not None:
                prefetcher.note(call, store, f, args, kw)
        _local.depth = outer + 1
        try:
            return fn(store, f, *args, **kw)
        finally:
            _local.depth = outer

    return call  # type: ignore[return-value]


@dataclass
class _Tracked:
    call: Callable[..., Any]
    store: Any
    f: Any
    args: tuple
    kw: dict
    step: float
    end: float
    """Unix time the range (and its bucket) ends: when the call for the next bucket is due."""
    last_read: float
    """time.monotonic() of the last view that made this call (kept through its successors)."""


def _key(call: Callable[..., Any], f: Any, args: tuple, kw: dict) -> tuple:
    """The call's identity: Filters hash by their range, models, status and search; ``extra`` is left out
    of their hash, so it is added here."""
    return (call, f, freeze(f.extra), freeze(args), freeze(kw))


class Prefetcher:
    """Follows prefetchable calls over ranges that follow the clock and makes them again for the
    next bucket when theirs ends (a daemon thread, started by the first one followed)."""

    def __init__(self, *, idle_s: float = 900.0, share: float = 0.25, autostart: bool = True, metrics: Any = None):
        self.idle_s, self.share, self.autostart = idle_s, share, autostart
        self.metrics = metrics
        """:class:`~monitor.selfmetrics.SelfMetrics` for the counters on /metrics (None: none)."""
        self._tracked: dict[tuple, _Tracked] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.prefetched = self.skipped = self.failed = 0
        """Calls made ahead of their bucket, ones a turn had no time left for, and ones that raised."""
        self.seconds = 0.0
        """What the calls made ahead took in all."""

    def __len__(self) -> int:
        return len(self._tracked)

    def note(self, call: Callable[..., Any], store: Any, f: Any, args: tuple, kw: dict) -> bool:
        """A page made ``call(store, f, *args, **kw)``; follow it when ``f``'s range follows the clock
        and holds no text search. Returns whether it is followed."""
        if self.idle_s <= 0 or self._stopped or getattr(f, "search", "").strip():
            return False
        from monitor.webui.filters import fresh_seconds

        step = float(fresh_seconds(f.end - f.start))
        end, wall = f.end.timestamp(), time.time()
        if not wall < end <= wall + step + 1.0:
            return False  # a fixed range (a custom one, in the past): nothing to refresh ahead
        try:
            key = _key(call, f, args, kw)
            hash(key)
        except TypeError:  # an argument that cannot be a cache key: the page works, it is not followed
            return False
        now = time.monotonic()
        with self._lock:
            t = self._tracked.get(key)
            if t is not None:
                t.last_read = now
                return True
            if len(self._tracked) >= MAX_TRACKED:
                del self._tracked[min(self._tracked, key=lambda k: self._tracked[k].last_read)]
            earliest = min((x.end for x in self._tracked.values()), default=None)
            self._tracked[key] = _Tracked(call, store, f, tuple(args), dict(kw), step, end, now)
        if self.autostart and self._thread is None:
            self._start()
        elif earliest is None or end < earliest:
            self._wake.set()
        return True

    def next_due(self) -> float | None:
        with self._lock:
            return min((t.end for t in self._tracked.values()), default=None)

    def run_due(self, now: float | None = None) -> int:
        """Make every followed call whose bucket ended by ``now`` (Unix time; default the clock) for
        the bucket running now, most recently viewed first, within the turn's time budget; let go of
        the ones nobody viewed for ``idle_s``. Returns how many were made."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        with self._lock:
            due = [t for t in self._tracked.values() if t.end <= now]
            self._tracked = {k: t for k, t in self._tracked.items() if t.end > now}
        due.sort(key=lambda t: -t.last_read)
        spent, ran = 0.0, 0
        failed_before, skipped_before = self.failed, self.skipped
        _local.prefetching = True
        try:
            for t in due:
                if mono - t.last_read > self.idle_s:
                    continue  # nobody looked for a while: let it go
                by = (int((now - t.end) // t.step) + 1) * t.step  # a late turn skips to the bucket running now
                moved = replace(t.f, start=t.f.start + timedelta(seconds=by), end=t.f.end + timedelta(seconds=by))
                nxt = _Tracked(t.call, t.store, moved, t.args, t.kw, t.step, t.end + by, t.last_read)
                if spent <= self.share * t.step:
                    t0 = time.perf_counter()
                    try:
                        t.call(t.store, moved, *t.args, **t.kw)
                        ran += 1
                    except Exception as exc:  # the view that asks next makes the call and shows the error
                        self.failed += 1
                        log.debug("dashboard prefetch of %s failed (%s): %s", getattr(t.call, "__qualname__", t.call),
                                  type(exc).__name__, exc)
                    took = time.perf_counter() - t0
                    spent += took
                    self.seconds += took
                else:
                    self.skipped += 1
                key = _key(nxt.call, nxt.f, nxt.args, nxt.kw)
                with self._lock:
                    cur = self._tracked.get(key)
                    if cur is None or cur.last_read < nxt.last_read:
                        self._tracked[key] = nxt
        finally:
            _local.prefetching = False
        self.prefetched += ran
        m = self.metrics
        if m is not None and due:
            failed = self.failed - failed_before
            m.dashboard_prefetch.labels("made").inc(ran)
            m.dashboard_prefetch.labels("failed").inc(failed)
            m.dashboard_prefetch.labels("skipped").inc(self.skipped - skipped_before)
            m.dashboard_prefetch_seconds.inc(spent)
        if ran:
            log.debug("dashboard prefetch: %d page queries for the next bucket in %.2f s", ran, spent)
        return ran

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="monitor-dashboard-prefetch", daemon=True)
        self._thread.start()
        log.info("dashboard prefetch: the queries of pages viewed in the last %.0f s run again as their time bucket "
                 "turns (dashboard.prefetch_s; 0 turns it off)", self.idle_s)

    def _loop(self) -> None:
        while not self._stopped:
            due = self.next_due()
            wait = 60.0 if due is None else due - time.time()
            if wait > 0:
                if self._wake.wait(min(wait, 60.0)):
                    self._wake.clear()
                continue
            try:
                self.run_due()
            except Exception:  # never let the thread die: the pages work without it
                log.exception("dashboard prefetch failed")
                time.sleep(1.0)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
