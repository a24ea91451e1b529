"""Embedded ingest: the store process drains the data plane's spool into ClickHouse.

Exactly once, like the Kafka consumer (:mod:`monitor.ingest.consumer`):

1. A batch is the oldest spool rows ``[first, last]`` (up to ``ingest.max_batch_bytes``;
   when few are waiting, up to ``ingest.flush_interval_ms`` is spent gathering more, so
   ClickHouse sees a few large inserts per second, not one per request).
2. The range is marked in the spool before anything is written.
3. Every insert carries the token ``spool:<spool id>:<first>-<last>:<table>``.
4. The rows are deleted from the spool (and the mark cleared) only after ClickHouse
   acknowledged every insert.

A store process killed between 3 and 4 finds the mark at its next start and redoes exactly
that range with the same token: ClickHouse drops the repeat. What a sender can put in a
message never stops this loop (see :class:`~monitor.ingest.stage.IngestStage`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from monitor.config import IngestSettings
from monitor.errors import Cancelled
from monitor.ingest.stage import Ahead, IngestStage, Message
from monitor.otlp.codec import Signal
from monitor.transport.spool import SpooledMessage, Spool

__all__ = ["SpoolIngest"]

log = logging.getLogger("monitor.ingest")

_MARK = "ingest"


class SpoolIngest:
    def __init__(self, spool: Spool, stage: IngestStage, settings: IngestSettings, signal_of: Callable[[str], Signal]):
        self.spool = spool
        self.stage = stage
        self.settings = settings
        self.signal_of = signal_of
        self._stop = threading.Event()
        self._drain_until: float | None = None
        self._thread: threading.Thread | None = None
        self.batches = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="monitor-ingest", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 2.0) -> bool:
        """Store what is spooled for up to ``drain_s`` more seconds, then stop (the rest stays in the
        spool for the next start); returns False when the loop had to be abandoned mid-batch."""
        self._drain_until = time.monotonic() + drain_s
        if self._thread is None:
            return True
        self._thread.join(drain_s + 1.0)
        self._stop.set()  # a batch still being written gives up waiting for the store
        self._thread.join(5.0)
        return not self._thread.is_alive()

    def pending(self) -> int:
        return self.spool.stats()[0]

    def _draining_done(self) -> bool:
        return self._drain_until is not None and (time.monotonic() >= self._drain_until or self.pending() == 0)

    def _loop(self) -> None:
        try:
            self.stage.warm_up()
            marked = self.spool.marked(_MARK)
            if marked is not None:
                again = self.spool.between(marked["first"], marked["last"])
                log.info("redoing the spool batch [%d, %d] an earlier run marked but did not finish "
                         "(%d messages; its inserts are deduplicated)", marked["first"], marked["last"], len(again))
                if again:
                    self._write(again, marked["first"], marked["last"])
                else:
                    self.spool.delete([], mark=_MARK)
            queued: deque[tuple[list[SpooledMessage], list[Message], Ahead | None]] = deque()
            while not self._stop.is_set() and not self._draining_done():
                if not queued:
                    batch = self._gather()
                    if not batch:
                        continue
                    messages = self._messages(batch)
                    queued.append((batch, messages, self.stage.ahead(messages, behind=False)))
                # with worker processes: the full batch already waiting behind this one is prepared by
                # them while this one is written
                while len(queued) <= self.stage.lookahead:
                    nxt = self._full_batch_after(queued[-1][0][-1][0])
                    if not nxt:
                        break
                    messages = self._messages(nxt)
                    queued.append((nxt, messages, self.stage.ahead(messages)))
                batch, messages, ahead = queued.popleft()
                self._write(batch, batch[0][0], batch[-1][0], messages, ahead)
        except Cancelled:
            log.info("ingest stopped with a batch unwritten; it stays in the spool for the next start")
        except Exception:  # pragma: no cover - a bug: say so loudly, the supervisor restarts the process
            log.exception("embedded ingest failed")
            raise

    def _gather(self) -> list[SpooledMessage]:
        s = self.settings
        if not self.spool.wait(0.2):
            return []
        deadline = time.monotonic() + s.flush_interval_ms / 1000
        while True:
            batch = self.spool.head(s.max_batch_messages, s.max_batch_bytes)
            oldest_age = time.time() - batch[0][4] if batch else 0.0
            if self._full(batch) or not batch or oldest_age * 1000 >= s.flush_interval_ms or time.monotonic() >= deadline \
                    or self._drain_until is not None:
                return batch
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _full_batch_after(self, seq: int) -> list[SpooledMessage]:
        """The messages after ``seq`` when they make a full batch already, else [] (then the next batch
        is gathered once this one is written, as without workers: a light load keeps its large batches)."""
        if self._drain_until is not None:
            return []
        s = self.settings
        batch = self.spool.head(s.max_batch_messages, s.max_batch_bytes, after=seq)
        return batch if self._full(batch) else []

    def _full(self, batch: list[SpooledMessage]) -> bool:
        """As many messages, or (nearly) as many bytes, as a batch may hold."""
        s = self.settings
        return len(batch) >= s.max_batch_messages or sum(len(m[3]) for m in batch) >= s.max_batch_bytes * 0.9

    def _messages(self, batch: list[SpooledMessage]) -> list[Message]:
        return [Message(self.signal_of(m[1]), m[3], f"spool:{self.spool.id}:{m[0]}") for m in batch]

    def _write(self, batch: list[SpooledMessage], first: int, last: int, messages: list[Message] | None = None,
               ahead: Ahead | None = None) -> None:
        self.spool.mark(_MARK, first, last)
        token = f"spool:{self.spool.id}:{first}-{last}"
        self.stage.run(self._messages(batch) if messages is None else messages, token, self._stop, ahead)
        self.spool.delete(batch, mark=_MARK)
        self.batches += 1
