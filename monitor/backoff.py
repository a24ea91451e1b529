"""Exponential backoff with full jitter, shared by every retry loop (ingest, spool forwarder)."""

from __future__ import annotations

import random
import threading

__all__ = ["Backoff", "full_jitter"]


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
        d = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        d = random.uniform(d / 2, d)
        return max(d, retry_after or 0.0)

    def wait(self, stop: threading.Event, retry_after: float | None = None) -> bool:
        """Sleep the next delay; returns False early if ``stop`` is set."""
        return not stop.wait(self.next_delay(retry_after))

    def reset(self) -> None:
        self.attempt = 0
