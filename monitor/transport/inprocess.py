"""Embedded mode: a bounded in-process queue from the receiver to ingest.

The receiver's ``publish`` waits until ingest has inserted the batch that
holds its request (group commit), so a 200 means "in ClickHouse" here too.
The queue is bounded in requests and bytes; when full, ``publish`` raises
Overloaded at once (503 + Retry-After) instead of waiting.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from google.protobuf.message import Message

from monitor.errors import Overloaded
from monitor.otlp.codec import Signal, item_count
from monitor.selfmetrics import SelfMetrics
from monitor.transport.base import Accepted

__all__ = ["InProcessTransport", "Pending"]


@dataclass(slots=True)
class Pending:
    """One accepted request waiting for ingest; ``settle`` wakes its publisher."""

    signal: Signal
    msg: Message
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

    # -- producer side (receiver's event loop) ---------------------------------
    async def publish(self, signal: Signal, msg: Message) -> Accepted:
        loop = asyncio.get_running_loop()
        item = Pending(signal, msg, msg.ByteSize(), item_count(signal, msg), time.monotonic(),
                       loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise Overloaded("shutting down", retry_after=self.retry_after)
            if len(self._queue) >= self.max_requests or self._bytes + item.size > self.max_bytes:
                raise Overloaded(
                    f"ingest queue full ({len(self._queue)} requests, {self._bytes} bytes)",
                    retry_after=self.retry_after)
            self._queue.append(item)
            self._bytes += item.size
            self._gauges()
            self._cond.notify()
        await item._future
        return Accepted()

    # -- consumer side (ingest thread) -----------------------------------------
    def take(self, max_items: int, max_wait: float, stop: threading.Event) -> list[Pending]:
        """Up to ``max_items`` spans/points/records of requests; waits at most ``max_wait``
        after the first request arrives for the batch to fill. Returns [] when idle."""
        batch: list[Pending] = []
        items = 0
        deadline: float | None = None
        with self._cond:
            while True:
                while self._queue and (items < max_items or not batch):
                    p = self._queue.popleft()
                    self._bytes -= p.size
                    batch.append(p)
                    items += p.items
                    if deadline is None:
                        deadline = p.enqueued + max_wait
                self._gauges()
                if items >= max_items or (batch and (stop.is_set() or self._closed)):
                    return batch
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return batch
                if not batch and (stop.is_set() or self._closed):
                    return batch
                self._cond.wait(timeout=(deadline - now) if deadline else 0.2)

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
