"""``monitor up``: the data plane hands its requests to the store process through the spool.

The receiver (and the capture proxy's spans) run in the pipeline process; the
store process owns the chdb directory (one process per directory) and drains
the same SQLite spool into ClickHouse (:mod:`monitor.ingest.spool_source`).
``publish`` returns once the request is committed to the spool: a 200 means
"on disk, will be stored", whatever the store process is doing (a slow page,
a check, a restart). One message per request, as the receiver got it (the
``otlp_proto`` bytes of its ``*Data``); no split: nothing limits a local
message's size but the receiver's own request limit.
"""

from __future__ import annotations

from google.protobuf.message import Message

from monitor.config import KafkaSettings
from monitor.otlp.codec import Signal
from monitor.transport.base import Accepted
from monitor.transport.spool import Spool

__all__ = ["LocalTransport"]


class LocalTransport:
    def __init__(self, spool: Spool, topics: KafkaSettings):
        self.spool = spool
        self.topics = topics
        """Only the topic names: a spool row is labelled like the Kafka message it would be."""

    def publish(self, signal: Signal, msg: Message, wire: bytes | None = None) -> Accepted:
        self.spool.append([(self.topics.topic(signal), None, msg.SerializeToString() if wire is None else wire)])
        return Accepted()

    def start(self) -> None:
        pass

    def close(self, timeout: float = 30.0) -> None:
        self.spool.close()
