"""Embedded ingest: drain the in-process queue into ClickHouse, then wake the publishers.

Batches are cut by size (``ingest.max_batch_items``) or age
(``ingest.flush_interval_ms``) so ClickHouse sees few, large inserts; every
publisher in a batch is answered after the insert, never before.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict

from monitor.backoff import Backoff
from monitor.config import IngestSettings
from monitor.errors import RetryableError, StoreError
from monitor.otlp.rows import Rows
from monitor.store.writer import Writer
from monitor.transport.inprocess import InProcessTransport, Pending

__all__ = ["EmbeddedIngest"]

log = logging.getLogger("monitor.ingest")


class EmbeddedIngest:
    def __init__(self, transport: InProcessTransport, writer: Writer, settings: IngestSettings):
        self.transport = transport
        self.writer = writer
        self.settings = settings
        self._run = uuid.uuid4().hex[:12]
        self._seq = 0
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="monitor-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Insert everything queued, then stop; returns False if it had to give up (store down)."""
        self.transport.close()
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(5)
            return False
        return True

    def _loop(self) -> None:
        from monitor.quality import warm_up
        warm_up()  # load the language model now, not on the first request
        s = self.settings
        while True:
            batch = self.transport.take(s.max_batch_items, s.flush_interval_ms / 1000, self._stop)
            if not batch:
                if self._stop.is_set() and self.transport.pending() == 0:
                    return
                continue
            self._write(batch)

    def _write(self, batch: list[Pending]) -> None:
        rows: Rows = defaultdict(list)
        for p in batch:
            for table, table_rows in p.rows.items():
                rows[table].extend(table_rows)
        self._seq += 1
        token = f"embedded:{self._run}:{self._seq}"
        backoff = Backoff(0.1, self.settings.retry_backoff_max_s)
        while True:
            try:
                self.writer.write(rows, token)
                break
            except StoreError as exc:
                if self._abandon.is_set():
                    for p in batch:
                        p.settle(RetryableError("store unavailable", retry_after=5))
                    return
                delay = backoff.next_delay(exc.retry_after)
                log.warning("insert failed (%s); retrying in %.1fs with the same dedup token", exc, delay)
                self._abandon.wait(delay)
        for p in batch:
            p.settle()
