"""A transport that keeps what it is given in memory: the test double for receivers."""

from __future__ import annotations

from google.protobuf.message import Message

from monitor.errors import Overloaded
from monitor.otlp.codec import Signal
from monitor.transport.base import Accepted

__all__ = ["MemoryTransport"]


class MemoryTransport:
    def __init__(self, overloaded: bool = False):
        self.published: list[tuple[Signal, Message]] = []
        self.wires: list[bytes | None] = []
        """The ``wire`` each publish was given (the receiver's processors hand it over)."""
        self.overloaded = overloaded

    def publish(self, signal: Signal, msg: Message, wire: bytes | None = None) -> Accepted:
        if self.overloaded:
            raise Overloaded("memory transport set to overloaded", retry_after=1)
        self.published.append((signal, msg))
        self.wires.append(wire)
        return Accepted()

    def start(self) -> None:
        pass

    def close(self, timeout: float = 30.0) -> None:
        pass
