"""How in-process sources hand OTLP data to the pipeline without ever waiting on it.

:meth:`Emitter.emit` is non-blocking and thread-safe: it returns False (and
counts the loss) when the bounded queue is full, so a source in a request
path -- the capture proxy -- never slows down or fails because monitoring is
saturated or broken. A worker on the receiver's event loop feeds the queue
into :meth:`Ingress.export`, the same path OTLP requests take. An export the
pipeline refuses for now (a :class:`~monitor.errors.RetryableError`: it is
overloaded) is put back at the head of the queue after a backoff that grows
while the refusals go on (:class:`~monitor.backoff.Retrier`, ``Retry-After``
honoured); one refused for good (any other monitor error) is dropped and
counted, and so is one still waiting to be retried when the emitter closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Protocol

from google.protobuf.message import Message

from monitor.backoff import Backoff, Retrier
from monitor.errors import MonitorError, RetryableError
from monitor.otlp.codec import Signal, item_count

__all__ = ["Emitter", "LocalEmitter", "MemoryEmitter"]

log = logging.getLogger("monitor.sidecar")

_CONCURRENCY = 8
"""Exports in flight at once from in-process sources."""


class Emitter(Protocol):
    def emit(self, signal: Signal, msg: Message) -> bool:
        """Queue ``msg`` (an ``Export*ServiceRequest``) for the pipeline; False if it was dropped."""
        ...


class MemoryEmitter:
    """Test double: keeps what it is given."""

    def __init__(self) -> None:
        self.emitted: list[tuple[Signal, Message]] = []

    def emit(self, signal: Signal, msg: Message) -> bool:
        self.emitted.append((signal, msg))
        return True


class LocalEmitter:
    """Bounded queue in front of an Ingress, drained on the receiver's event loop."""

    def __init__(self, ingress, loop: asyncio.AbstractEventLoop, max_pending: int = 1000):
        self.ingress = ingress
        self.loop = loop
        self.max_pending = max_pending
        self._queue: deque[tuple[Signal, Message]] = deque()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._retry = Retrier(Backoff(1.0, 10.0), what="internal export", on_retry=self._retrying)
        self._task: asyncio.Task | None = None
        self._last_warning = 0.0
        self._busy = 0
        self._in_flight: set[asyncio.Task] = set()

    def start(self) -> None:
        def _start() -> None:
            self._wake = asyncio.Event()
            self._closing = asyncio.Event()
            self._task = self.loop.create_task(self._drain())
        self.loop.call_soon_threadsafe(_start)

    def emit(self, signal: Signal, msg: Message) -> bool:
        with self._lock:
            if len(self._queue) >= self.max_pending:
                self._dropped(signal, msg, "queue full")
                return False
            self._queue.append((signal, msg))
        try:
            self.loop.call_soon_threadsafe(self._notify)
        except RuntimeError:  # loop closed: shutting down
            return False
        return True

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _dropped(self, signal: Signal, msg: Message, why: str) -> None:
        n = item_count(signal, msg)
        self.ingress.metrics.rejected.labels(signal, "internal", "dropped").inc(n)
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.warning("monitoring data dropped (%s): %d %s items; the model server is not affected", why, n, signal)

    async def _drain(self) -> None:
        """Export queued items, a few at a time: each export waits for its durable write (an insert
        in embedded mode), so exporting one by one would leave the batching of ingest idle."""
        assert self._wake is not None
        in_flight = self._in_flight
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._queue or len(in_flight) >= _CONCURRENCY:
                        break
                    item = self._queue.popleft()
                    self._busy += 1
                task = asyncio.ensure_future(self._export(*item))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _t: self._notify())

    async def _export(self, signal: Signal, msg: Message) -> None:
        try:
            await self.ingress.export(signal, msg, "internal")
            self._retry.succeeded()
        except RetryableError as exc:
            # Keep it (the queue stays bounded: new items are dropped while it is full).
            await self._requeue_after(signal, msg, self._retry.delay(exc))
        except MonitorError as exc:  # PermanentError and the like: retrying cannot help
            self._dropped(signal, msg, str(exc))
        except Exception:  # never let a bug stop the drain
            log.exception("internal export failed")
            self._dropped(signal, msg, "internal error")
        finally:
            with self._lock:
                self._busy -= 1

    async def _requeue_after(self, signal: Signal, msg: Message, delay: float) -> None:
        """Put ``msg`` back at the head of the queue after ``delay``; dropped (and counted) if the
        emitter closes meanwhile."""
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), delay)
        except asyncio.TimeoutError:
            with self._lock:
                self._queue.appendleft((signal, msg))
            return
        except asyncio.CancelledError:
            self._dropped(signal, msg, "shutting down")
            raise
        self._dropped(signal, msg, "shutting down")

    def _retrying(self, exc: Exception, attempt: int, delay: float) -> None:
        # the ingress logs the overload itself; a line per refused item would flood the log
        log.debug("internal export refused (%s); retry %d in %.1fs", exc, attempt, delay)

    async def aclose(self, timeout: float = 10.0) -> bool:
        """Export what is queued (up to ``timeout``), then stop draining."""
        done = await self.flush(timeout)
        if self._closing is not None:
            self._closing.set()  # what still waits to be retried is dropped and counted
        for task in [self._task, *self._in_flight]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._task = None
        return done

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything emitted so far has been exported (for shutdown)."""
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            with self._lock:
                if not self._queue and not self._busy:
                    return True
            await asyncio.sleep(0.01)
        return False
