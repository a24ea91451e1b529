"""The dashboards' query result cache: a bounded LRU shared by every session of the process.

Keyed by (SQL, parameters, hints). The pages' time ranges are quantised
(:func:`monitor.webui.filters.fresh_seconds`: a preset range ends at the next multiple of 10 s,
1 or 5 minutes), so every rerun within that bucket asks the same question and is answered here
for free: a widget change, a page switch, another tab, the Overview's auto-refresh. An entry
lives at most its ``ttl_s`` (the same bucket length), so nothing is shown staler than the bucket.

Bounded twice: :data:`MAX_ENTRIES` entries and :data:`MAX_BYTES` of (estimated) result size; a
result larger than :data:`MAX_ENTRY_BYTES` (a request's full prompt of many MB) is not kept.
Expired entries are dropped as new ones come, so an idle cache shrinks back.

Concurrent askers of the same key wait for the first one's answer instead of running the query
again (a burst of tabs at the same moment runs each query once).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

__all__ = ["ResultCache", "CachedResult", "MAX_ENTRIES", "MAX_BYTES", "MAX_ENTRY_BYTES", "disable", "enable",
           "enabled"]

MAX_ENTRIES = 512
MAX_BYTES = 32 * 2**20
MAX_ENTRY_BYTES = 2 * 2**20

_enabled = True


def disable() -> None:
    """Turn caching off in this process (every query runs; benchmarks of the uncached path)."""
    global _enabled
    _enabled = False


def enable() -> None:
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


class CachedResult(NamedTuple):
    """What a cached query hands back: the two attributes of a clickhouse-connect QueryResult the
    pages read. ``result_rows`` must not be changed (it is shared)."""

    column_names: tuple[str, ...]
    result_rows: list[tuple]
    seconds: float
    """What the query took when it ran."""


class _Entry(NamedTuple):
    result: CachedResult
    expires: float
    size: int


class ResultCache:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 max_entry_bytes: int = MAX_ENTRY_BYTES):
        self.max_entries, self.max_bytes, self.max_entry_bytes = max_entries, max_bytes, max_entry_bytes
        self._entries: OrderedDict[Any, _Entry] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get_or_run(self, key: Any, ttl_s: float, run: Callable[[], Any]) -> tuple[CachedResult, bool]:
        """The cached result of ``key`` if younger than ``ttl_s``, else ``run()``'s (a QueryResult),
        kept. Returns (result, whether it came from the cache)."""
        while True:
            with self._lock:
                now = time.monotonic()
                entry = self._entries.get(key)
                if entry is not None and entry.expires > now:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry.result, True
                waiting = self._inflight.get(key)
                if waiting is None:
                    self._inflight[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait(60)  # someone runs it now; then look again (it may have failed: then we run it)
        try:
            t = time.perf_counter()
            raw = run()
            result = CachedResult(tuple(raw.column_names), list(raw.result_rows), time.perf_counter() - t)
            self._put(key, result, ttl_s)
            return result, False
        finally:
            with self._lock:
                done = self._inflight.pop(key, None)
            if done is not None:
                done.set()

    def _put(self, key: Any, result: CachedResult, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        size = _size(result)
        if size > self.max_entry_bytes:
            return
        with self._lock:
            now = time.monotonic()
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            for k in [k for k, e in self._entries.items() if e.expires <= now]:
                self._bytes -= self._entries.pop(k).size
            self._entries[key] = _Entry(result, now + ttl_s, size)
            self._bytes += size
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, e = self._entries.popitem(last=False)
                self._bytes -= e.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _size(result: CachedResult) -> int:
    """Rough bytes of a result: text and binary values at their length, anything else 16 bytes."""
    n = 64 * len(result.result_rows)
    for row in result.result_rows:
        for v in row:
            if isinstance(v, (str, bytes)):
                n += len(v) + 49
            elif isinstance(v, (list, tuple, dict)):
                n += 16 + 16 * len(v) + sum(len(x) for x in (v.values() if isinstance(v, dict) else v)
                                            if isinstance(x, str))
            else:
                n += 16
    return n


def freeze(value: Any) -> Any:
    """A hashable form of query parameters (lists and dicts become tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(freeze(v) for v in value)
    return value
