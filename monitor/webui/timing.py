"""How long each page run took on the server, and how much of it was the store's queries.

``dashboards/app.py`` wraps every script run (and :func:`monitor.webui.ui.fragment` every
partial rerun) in :func:`page_run`; :class:`~monitor.webui.store.ReadOnlyStore` reports each
query to the run of its thread (:func:`note_query`). The last :data:`KEEP` runs are kept for
:func:`recent` (bench/dashboard_browser.py reads them to split a page load into JavaScript,
script and rendering) and each run is logged at DEBUG on ``monitor.webui``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

__all__ = ["Run", "page_run", "note_query", "recent", "KEEP"]

log = logging.getLogger("monitor.webui")

KEEP = 500
_runs: deque["Run"] = deque(maxlen=KEEP)
_lock = threading.Lock()
_local = threading.local()


@dataclass
class Run:
    page: str
    start: float
    """Wall clock (``time.time()``) when the run started."""
    end: float
    script_s: float
    query_s: float
    """Time spent in store queries (cache hits cost ~0)."""
    queries: int
    """Queries asked of the store, cache hits included."""
    cached: int
    """Of ``queries``, answered from the result cache."""
    fragment: bool = False


@contextmanager
def page_run(page: str = "", fragment: bool = False) -> Iterator[Run]:
    """Time one script run of ``page`` in this thread (the run's ``page`` may be set inside; nested
    runs count once, in the outer one)."""
    outer = getattr(_local, "run", None)
    if outer is not None:
        yield outer
        return
    run = _local.run = Run(page, time.time(), 0.0, 0.0, 0.0, 0, 0, fragment)
    t = time.perf_counter()
    try:
        yield run
    finally:
        _local.run = None
        run.script_s = time.perf_counter() - t
        run.end = time.time()
        with _lock:
            _runs.append(run)
        log.debug("page %s%s ran in %.3f s: %d queries (%d cached) %.3f s", page, " (fragment)" if fragment else "",
                  run.script_s, run.queries, run.cached, run.query_s)


def note_query(seconds: float, cached: bool) -> None:
    """Count a query against the run of this thread (none: not in a page run, ignored)."""
    run = getattr(_local, "run", None)
    if run is not None:
        run.queries += 1
        run.cached += int(cached)
        run.query_s += seconds


def recent() -> list[dict]:
    """The last :data:`KEEP` runs, oldest first, as dicts."""
    with _lock:
        return [asdict(r) for r in _runs]
