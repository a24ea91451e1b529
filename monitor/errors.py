"""Errors the monitor raises, sorted by what a caller should do about them.

    MonitorError
    ├── ConfigError          bad settings; raised at start, never mid-run
    ├── Cancelled            long work (a check, model training) stopped because the process stops
    ├── PermanentError       the data itself is bad; retrying cannot help (drop or dead-letter it)
    │   ├── DecodeError      bytes that are not OTLP in the declared encoding
    │   │   └── PayloadTooLarge  over the size limit, before or after decompression
    │   └── RejectedData     the store refused an insert because of a value in it
    └── RetryableError       the pipeline or a dependency is unavailable now; retry later
        ├── Overloaded       a bounded queue or spool is full (maps to 503/UNAVAILABLE + Retry-After)
        ├── TransportError   Kafka is unreachable or refused the write
        └── StoreError       ClickHouse is unreachable or refused the insert

Third-party exceptions (kafka-python, clickhouse-connect, grpc) are translated
into these at the module that imports the client, never further out.
"""

from __future__ import annotations

__all__ = [
    "MonitorError",
    "ConfigError",
    "Cancelled",
    "PermanentError",
    "DecodeError",
    "PayloadTooLarge",
    "RejectedData",
    "RetryableError",
    "Overloaded",
    "TransportError",
    "StoreError",
]


class MonitorError(Exception):
    """Base of every error the monitor raises on purpose."""


class ConfigError(MonitorError):
    """Settings are invalid or incomplete; the message says which and how to fix it."""


class Cancelled(MonitorError):
    """Long work was asked to stop (Ctrl-C, SIGTERM); what it finished so far is kept."""


class PermanentError(MonitorError):
    """Retrying the same data cannot succeed."""


class DecodeError(PermanentError):
    """The payload could not be decoded as OTLP in its declared encoding."""


class PayloadTooLarge(DecodeError):
    """The payload is over the configured limit (compressed or decompressed)."""


class RejectedData(PermanentError):
    """The store refused an insert because of what it holds (a value out of a column's range, a type it
    cannot convert); the same rows will be refused again, so they must be isolated and set aside."""


class RetryableError(MonitorError):
    """A temporary condition; ``retry_after`` is a hint in seconds (or None)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(RetryableError):
    """A bounded buffer is full; the sender should back off and retry."""


class TransportError(RetryableError):
    """The transport (Kafka) could not take the data now."""


class StoreError(RetryableError):
    """The store (ClickHouse) could not take or serve the data now."""
