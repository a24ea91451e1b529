"""The transport contract between the receiver and ingest.

``publish`` returns only once the data is durable: committed to the SQLite
spool, which the Kafka forwarder (``monitor sidecar``) or the store process's
ingest (``monitor up``) drains, so an OTLP 200 always means "will not be
lost". It is called on one of the receiver's worker threads (never its event
loop) and may block for a disk write. When a bounded buffer is full it raises
:class:`~monitor.errors.Overloaded` and the receiver answers 503/UNAVAILABLE
with Retry-After; it never blocks the caller indefinitely and never grows
without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message

from monitor.otlp.codec import Signal

__all__ = ["Accepted", "Transport"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the transport took: items it could not take are counted in ``rejected`` (partial success)."""

    rejected: int = 0
    reason: str = ""


class Transport(Protocol):
    def publish(self, signal: Signal, msg: Message, wire: bytes | None = None) -> Accepted:
        """Hand one validated export request over; returns when it is durable (blocking).

        ``wire``: ``msg.SerializeToString()`` when the caller has it (not encoded again), else None."""
        ...

    def start(self) -> None:
        """Start background work (forwarders, ingest workers)."""
        ...

    def close(self, timeout: float = 30.0) -> None:
        """Flush what was accepted, then stop. Safe to call without start() and more than once."""
        ...
