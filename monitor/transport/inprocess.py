"""Embedded mode: a bounded in-process queue from the receiver to ingest.

The receiver's ``publish`` waits until ingest has inserted the batch that
holds its request (group commit), so a 200 means "in ClickHouse" here too.
The queue is bounded in requests and bytes; when full, ``publish`` raises
Overloaded at once (503 + Retry-After) instead of waiting.

Requests are turned into table rows on a small thread pool as they arrive,
so that conversion (Python) overlaps the previous batch's insert (the
ClickHouse engine, which runs without the GIL) instead of queueing behind it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from google.protobuf.message import Message

from monitor.errors import Overloaded, PermanentError
from monitor.otlp.codec import Signal, item_count
from monitor.otlp.rows import Rows, rows_for
from monitor.selfmetrics import SelfMetrics
from monitor.transport.base import Accepted

__all__ = ["InProcessTransport", "Pending"]

log = logging.getLogger("monitor.ingest")

_IDLE_S = 0.005
"""A pause in arrivals this long ends a batch early (see :meth:`InProcessTransport.take`)."""


@dataclass(slots=True)
class Pending:
    """One accepted request waiting for ingest; ``settle`` wakes its publisher."""

    signal: Signal
    rows: Rows
    size: int
    items: int
    enqueued: float
    _loop: asyncio.AbstractEventLoop | None = None
    _future: asyncio.Future | None = None
    _settled: bool = field(default=False)

    def settle(self, error: BaseException | None = None) -> None:
        if self._settled or self._future is None or self._loop is None:
            return
        self._settled = True
        fut = self._future

        def _set() -> None:
            if not fut.done():
                fut.set_exception(error) if error else fut.set_result(None)
        try:
            self._loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the receiver's loop is gone: nobody is waiting
            pass


class InProcessTransport:
    def __init__(self, max_requests: int, max_bytes: int, metrics: SelfMetrics, retry_after: float = 1.0):
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.retry_after = retry_after
        self._queue: deque[Pending] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._last_cut = 0.0
        self._convert = ThreadPoolExecutor(max_workers=2, thread_name_prefix="monitor-convert")

    # -- producer side (receiver's event loop) ---------------------------------
    async def publish(self, signal: Signal, msg: Message) -> Accepted:
        loop = asyncio.get_running_loop()
        size = msg.ByteSize()
        self._check_room(size)
        try:
            rows = await loop.run_in_executor(self._convert, rows_for, ((signal, msg),))
        except Exception as exc:  # a mapping bug must cost this request only, and say so
            log.exception("could not convert a %s request; answering 400", signal)
            raise PermanentError(f"request could not be processed: {exc}") from exc
        item = Pending(signal, rows, size, item_count(signal, msg), time.monotonic(), loop, loop.create_future())
        with self._cond:
            self._check_room(size)
            self._queue.append(item)
            self._bytes += item.size
            self._gauges()
            self._cond.notify()
        await item._future
        return Accepted()

    def _check_room(self, size: int) -> None:
        with self._cond:
            if self._closed:
                raise Overloaded("shutting down", retry_after=self.retry_after)
            if len(self._queue) >= self.max_requests or self._bytes + size > self.max_bytes:
                raise Overloaded(
                    f"ingest queue full ({len(self._queue)} requests, {self._bytes} bytes)",
                    retry_after=self.retry_after)

    # -- consumer side (ingest thread) -----------------------------------------
    def take(self, max_items: int, max_wait: float, stop: threading.Event) -> list[Pending]:
        """The next batch: up to ``max_items`` spans/points/records of whole requests.

        Publishers wait for their batch's insert, so holding a batch open only helps while more
        requests keep arriving. A batch is cut when it is full, when its oldest request has
        waited ``max_wait``, or when arrivals pause for ``_IDLE_S`` -- but not sooner than
        ``max_wait / 4`` after the previous batch, which bounds inserts to a few per second per
        table under steady load (ClickHouse prefers few, large inserts). Returns [] when idle.
        """
        batch: list[Pending] = []
        items = 0
        deadline: float | None = None
        not_before = self._last_cut + max_wait / 4
        last_arrival = 0.0
        with self._cond:
            while True:
                while self._queue and (items < max_items or not batch):
                    p = self._queue.popleft()
                    self._bytes -= p.size
                    batch.append(p)
                    items += p.items
                    last_arrival = max(last_arrival, p.enqueued)
                    if deadline is None:
                        deadline = p.enqueued + max_wait
                self._gauges()
                now = time.monotonic()
                if batch and (items >= max_items or stop.is_set() or self._closed or now >= deadline
                              or (now >= not_before and now - last_arrival >= _IDLE_S)):
                    self._last_cut = now
                    return batch
                if not batch and (stop.is_set() or self._closed):
                    return batch
                if batch:
                    wake = min(deadline, max(not_before, last_arrival + _IDLE_S))
                    self._cond.wait(timeout=max(0.0005, wake - now))
                else:
                    self._cond.wait(timeout=0.2)

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._queue))
        self.metrics.queue_bytes.set(self._bytes)

    def start(self) -> None:
        pass

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests; what is queued is still handed to ingest."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._convert.shutdown(wait=False)
