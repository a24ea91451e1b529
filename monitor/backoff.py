"""Retry with exponential backoff and full jitter: the one retry mechanism of every loop.

:func:`retry_call` runs an operation until it succeeds: a
:class:`~monitor.errors.RetryableError` waits (its ``retry_after`` honoured,
capped at the backoff's maximum) and tries again, a
:class:`~monitor.errors.PermanentError` is raised at once (retrying the same
data cannot help), and a set ``stop`` event ends the waiting with
:class:`~monitor.errors.Cancelled`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from monitor.errors import Cancelled, RetryableError

__all__ = ["Backoff", "full_jitter", "retry_call"]

T = TypeVar("T")
log = logging.getLogger("monitor")


def full_jitter(attempt: int, initial: float, maximum: float) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [0, min(maximum, initial * 2**(attempt-1))].

    Stateless, for retries whose attempt count is stored (the alert outbox); full jitter spreads
    the retries of many notifications that failed together."""
    return random.uniform(0.0, min(maximum, initial * (2 ** max(0, min(attempt - 1, 60)))))


class Backoff:
    """``Backoff(0.1, 30)``: waits grow 0.1, 0.2, 0.4 ... capped at 30 s, each jittered down to [d/2, d].

    ``retry_after`` hints from the failure take precedence when larger.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 30.0):
        if initial <= 0 or maximum < initial:
            raise ValueError("Backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """The next wait: jittered exponential, or a larger ``retry_after`` hint (capped at the maximum;
        a hint of any size, even 1e12, never waits longer)."""
        d = min(self.maximum, self.initial * (2 ** min(self.attempt, 60)))
        self.attempt += 1
        d = random.uniform(d / 2, d)
        hint = retry_after if isinstance(retry_after, (int, float)) and retry_after == retry_after else 0.0
        return max(d, min(max(hint, 0.0), self.maximum))

    def wait(self, stop: threading.Event, retry_after: float | None = None) -> bool:
        """Sleep the next delay; returns False early if ``stop`` is set."""
        return not stop.wait(self.next_delay(retry_after))

    def reset(self) -> None:
        self.attempt = 0


def retry_call(fn: Callable[[], T], *, stop: threading.Event, backoff: Backoff | None = None,
               what: str = "operation", on_retry: Callable[[RetryableError, int, float], None] | None = None,
               max_attempts: int | None = None) -> T:
    """``fn()`` until it returns. RetryableError: wait and retry (``on_retry(exc, attempt, delay)`` is told,
    else one warning per attempt is logged); after ``max_attempts`` the last error is raised. Any other
    exception (PermanentError included) is raised at once. ``stop`` set: :class:`Cancelled`."""
    backoff = backoff or Backoff()
    attempt = 0
    while True:
        if stop.is_set():
            raise Cancelled(f"{what} stopped before it succeeded")
        try:
            return fn()
        except RetryableError as exc:
            attempt += 1
            if max_attempts is not None and attempt >= max_attempts:
                raise
            delay = backoff.next_delay(exc.retry_after)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            else:
                log.warning("%s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
            if stop.wait(delay):
                raise Cancelled(f"{what} stopped while waiting to retry") from exc
