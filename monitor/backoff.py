"""Retry timing and retry decisions: the one place both live, for every loop that retries.

One timing scheme, exponential backoff with jitter, for retry number ``n`` (1, 2, ...)::

    ceiling(n) = min(maximum, initial * 2**(n - 1))
    jittered   = uniform(floor * ceiling(n), ceiling(n))
    wait       = max(jittered, min(retry_after, maximum))   # a hint from the failure wins when longer

:func:`retry_delay` computes it. Its two uses differ only in ``floor``:

- ``floor = 0`` (full jitter): retries whose attempt count is stored (the alert
  outbox), where many notifications that failed together must not come back together;
- ``floor = 1/2`` (:class:`Backoff`): the consecutive failures of one live loop (Kafka forwarder and
  ingest, the local emitter, the proxy's record socket, the supervisor's child restarts), so that a
  loop that keeps failing never spins.

One retry decision, by the error tree (:mod:`monitor.errors`), made by :class:`Retrier`:

- :class:`~monitor.errors.RetryableError`: wait (its ``retry_after`` honoured, capped at the
  backoff's maximum) and try again;
- :class:`~monitor.errors.PermanentError` (and :class:`~monitor.errors.Cancelled`): raised at once,
  retrying the same data cannot help; the caller applies its own permanent-failure handling
  (dead-letter, drop with a count, stop);
- the ``stop`` event set: the wait ends with :class:`~monitor.errors.Cancelled`;
- any other exception: raised, unless the loop must never die of a bug (``retry_unexpected``):
  then it is logged with its traceback and retried like a RetryableError.

:func:`retry_call` retries one operation until it returns; a loop that keeps its own structure (the
Kafka forwarder, the ingest consumer, the emitter's asynchronous drain) holds a :class:`Retrier` and
tells it each failure (:meth:`Retrier.wait`, or :meth:`Retrier.delay` where the loop waits itself)
and each success (:meth:`Retrier.succeeded`).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from monitor.errors import Cancelled, PermanentError, RetryableError

__all__ = ["Backoff", "Retrier", "retry_call", "retry_delay"]

T = TypeVar("T")
log = logging.getLogger("monitor")


def retry_delay(attempt: int, initial: float, maximum: float, retry_after: float | None = None, *,
                floor: float = 0.0) -> float:
    """The wait before retry number ``attempt`` (1-based), by the module's one scheme: uniform in
    [floor * c, c] with c = min(maximum, initial * 2**(attempt-1)); a ``retry_after`` hint (seconds)
    wins when longer, capped at ``maximum`` (a hint of any size, even 1e12, never waits longer; a
    negative, NaN or missing one is no hint)."""
    ceiling = min(maximum, initial * (2 ** max(0, min(attempt - 1, 60))))
    d = random.uniform(ceiling * floor, ceiling)
    hint = retry_after if isinstance(retry_after, (int, float)) and retry_after == retry_after else 0.0
    return max(d, min(max(hint, 0.0), maximum))


class Backoff:
    """``Backoff(0.1, 30)``: the waits of one loop's consecutive failures grow 0.1, 0.2, 0.4 ... capped at
    30 s, each jittered down to [d/2, d] (:func:`retry_delay` with floor 1/2); :meth:`reset` after a
    success. ``retry_after`` hints from the failure take precedence when larger (capped at the maximum)."""

    FLOOR = 0.5

    def __init__(self, initial: float = 0.1, maximum: float = 30.0):
        if initial <= 0 or maximum < initial:
            raise ValueError("Backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """The next wait (and one more failure counted)."""
        self.attempt += 1
        return retry_delay(self.attempt, self.initial, self.maximum, retry_after, floor=self.FLOOR)

    def wait(self, stop: threading.Event, retry_after: float | None = None) -> bool:
        """Sleep the next delay; returns False early if ``stop`` is set."""
        return not stop.wait(self.next_delay(retry_after))

    def reset(self) -> None:
        self.attempt = 0


OnRetry = Callable[[Exception, int, float], None]
"""``on_retry(exc, attempt, delay)``: told before each wait (else one line is logged per retry)."""


class Retrier:
    """The retry decision of one operation or one loop (see the module's docstring), with its backoff.

    ``max_attempts``: after that many failures the last error is raised. ``retry_unexpected``: an
    exception outside the error tree (a bug, an untranslated client error) is logged with its
    traceback and retried instead of raised, for loops that must not die."""

    def __init__(self, backoff: Backoff | None = None, *, what: str = "operation", on_retry: OnRetry | None = None,
                 max_attempts: int | None = None, retry_unexpected: bool = False):
        self.backoff = backoff or Backoff()
        self.what = what
        self.on_retry = on_retry
        self.max_attempts = max_attempts
        self.retry_unexpected = retry_unexpected
        self.attempt = 0
        """Failures since the last success."""

    def delay(self, exc: BaseException) -> float:
        """After the failure ``exc``: the wait before the next try, or ``exc`` raised when it is not to
        be retried (PermanentError, Cancelled, not an Exception, outside the tree without
        ``retry_unexpected``, or ``max_attempts`` reached)."""
        if isinstance(exc, RetryableError):
            hint = exc.retry_after
        elif isinstance(exc, (PermanentError, Cancelled)) or not isinstance(exc, Exception) or \
                not self.retry_unexpected:
            raise exc
        else:
            hint = None
        self.attempt += 1
        if self.max_attempts is not None and self.attempt >= self.max_attempts:
            raise exc
        delay = self.backoff.next_delay(hint)
        if self.on_retry is not None:
            self.on_retry(exc, self.attempt, delay)
        elif isinstance(exc, RetryableError):
            log.warning("%s failed (%s); retry %d in %.1fs", self.what, exc, self.attempt, delay)
        else:
            log.error("%s failed unexpectedly; retry %d in %.1fs", self.what, self.attempt, delay, exc_info=exc)
        return delay

    def wait(self, exc: BaseException, stop: threading.Event) -> None:
        """:meth:`delay`, then sleep it; :class:`Cancelled` when ``stop`` is set before or meanwhile."""
        delay = self.delay(exc)
        if stop.is_set() or stop.wait(delay):
            raise Cancelled(f"{self.what} stopped while waiting to retry") from exc

    def succeeded(self) -> None:
        """The operation worked: the next failure starts from the initial wait again."""
        self.attempt = 0
        self.backoff.reset()


def retry_call(fn: Callable[[], T], *, stop: threading.Event, backoff: Backoff | None = None,
               what: str = "operation", on_retry: OnRetry | None = None, max_attempts: int | None = None) -> T:
    """``fn()`` until it returns. RetryableError: wait (``retry_after`` honoured) and retry; after
    ``max_attempts`` the last error is raised. Any other exception (PermanentError included) is raised
    at once. ``stop`` set: :class:`Cancelled`."""
    retrier = Retrier(backoff, what=what, on_retry=on_retry, max_attempts=max_attempts)
    while True:
        if stop.is_set():
            raise Cancelled(f"{what} stopped before it succeeded")
        try:
            return fn()
        except RetryableError as exc:
            retrier.wait(exc, stop)
