"""Batched inserts with deterministic deduplication tokens, and isolation of refused rows.

Every insert carries ``insert_deduplication_token = <batch token>:<table>``.
Tables are created with ``non_replicated_deduplication_window`` (Replicated
tables deduplicate by default), so inserting the same batch again with the
same token is a no-op on chdb and on a server alike, for the table and for what
its materialized views write (``deduplicate_blocks_in_dependent_materialized_views``:
without it a redelivered batch is dropped by ``inference_events`` and counted again
by its per-minute rollup; the rollup tables carry a deduplication window too). A view that fails
(``materialized_views_ignore_errors``) never refuses the rows themselves: a derived table may miss
a batch, the requests are never set aside for it. Ingest derives the
batch token from where the batch came from (Kafka topic, partition and offset
range; spool position range), which is what makes a redelivered batch land
once. ClickHouse's deduplication id for a token also depends on how many blocks
the insert holds: ingest writes a batch's tables as blocks it encoded, the same
blocks however it prepared them (:meth:`Writer.write_native`,
:data:`monitor.ingest.prepare.BLOCKS`).

A table insert the store *refuses* (:class:`~monitor.errors.RejectedData`: a
value it cannot hold) is split in halves, recursively, each half with a token
derived from its position (``...:<table>/0/1``), until the refused rows stand
alone; every other row lands. The split is deterministic, so a batch retried
after a crash splits the same way and its halves deduplicate too. The refused
rows are returned to the caller to set aside; an unavailable store
(:class:`~monitor.errors.StoreError`) is raised for the caller to retry.

Ingest's inserts into ``inference_events`` leave out its text-search n-gram indexes (schema 0010):
building them was a third of ClickHouse's CPU for an insert (~18 of ~55 us per span), on the path
the store process waits on. Merges build them (every merge recomputes a part's skip indexes anyway),
and a part without them is read whole by a search, with the same answers: only the newest parts
are, the ones merges have not reached yet. Where the store does not have the setting
(``exclude_materialize_skip_indexes_on_insert``; older ClickHouse servers), inserts build them as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from monitor.errors import RejectedData
from monitor.selfmetrics import SelfMetrics
from monitor.store.client import Store
from monitor.store.tables import INSERT_ORDER, TABLE_COLUMNS

__all__ = ["Writer", "Refused"]

_VIEW_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1, "materialized_views_ignore_errors": 1}
"""Every insert: what a table's materialized views write is deduplicated with it, and a view that
fails never refuses the rows (module docstring)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Row ``index`` of ``table`` in the batch was refused by the store, for ``reason``."""

    table: str
    index: int
    reason: str


_DEFERRED_INDEXES = {"inference_events": "idx_prompt_ngram, idx_completion_ngram"}
"""Skip indexes ingest's inserts leave to merges, per table (module docstring)."""
_DEFER_SETTING = "exclude_materialize_skip_indexes_on_insert"


class Writer:
    def __init__(self, store: Store, metrics: SelfMetrics):
        self.store = store
        self.metrics = metrics
        self._table_settings: dict[str, dict] | None = None

    def _settings(self, table: str, token: str) -> dict:
        """An insert's settings: its token, :data:`_VIEW_SETTINGS` and the table's deferred indexes."""
        if self._table_settings is None:  # once, on the first write (a StoreError here is the write's)
            known = self.store.query_rows("SELECT count() FROM system.settings WHERE name = %(n)s",
                                          {"n": _DEFER_SETTING})[0][0]
            self._table_settings = {t: {_DEFER_SETTING: names} for t, names in _DEFERRED_INDEXES.items()} \
                if known else {}
        return {"insert_deduplication_token": token, **_VIEW_SETTINGS, **self._table_settings.get(table, {})}

    def write(self, rows: dict[str, list[list]], token: str) -> list[Refused]:
        """Insert every non-empty table (in :data:`INSERT_ORDER`); returns the rows the store refused.

        Raises StoreError when the store is unavailable: retry the whole batch with the same token."""
        refused: list[Refused] = []
        for table in INSERT_ORDER:
            batch = rows.get(table)
            if batch:
                self._insert(table, batch, 0, f"{token}:{table}", refused)
        return refused

    def write_native(self, blocks: dict[str, bytes], counts: dict[str, int], token: str) -> dict[str, str]:
        """Insert blocks already encoded (:mod:`monitor.store.native`; ``counts``: rows per table) with
        the tokens :meth:`write` uses; returns the tables the store refused, and why: write their rows
        with :meth:`write_halves` (never again whole: see :data:`monitor.ingest.prepare.BLOCKS`).

        Raises StoreError when the store is unavailable: retry the whole batch with the same token."""
        refused: dict[str, str] = {}
        for table in INSERT_ORDER:
            block = blocks.get(table)
            if not block:
                continue
            t0 = time.perf_counter()
            try:
                self.store.insert_native(table, block, TABLE_COLUMNS[table],
                                         settings=self._settings(table, f"{token}:{table}"))
            except RejectedData as exc:
                self.metrics.store_errors.inc()
                refused[table] = str(exc)
                continue
            except Exception:
                self.metrics.store_errors.inc()
                raise
            self.metrics.insert_seconds.labels(table).observe(time.perf_counter() - t0)
            self.metrics.rows_written.labels(table).inc(counts.get(table, 0))
        return refused

    def write_halves(self, table: str, rows: list[list], token: str, reason: str) -> list[Refused]:
        """The rows of a table whose whole insert was refused (for ``reason``), in halves as :meth:`write`
        splits a refused insert, with the same tokens; returns the rows refused on their own."""
        refused: list[Refused] = []
        if len(rows) == 1:
            refused.append(Refused(table, 0, reason))
            self.metrics.rows_refused.labels(table).inc()
            return refused
        mid = len(rows) // 2
        self._insert(table, rows[:mid], 0, f"{token}:{table}/0", refused)
        self._insert(table, rows[mid:], mid, f"{token}:{table}/1", refused)
        return refused

    def _insert(self, table: str, rows: list[list], offset: int, token: str, refused: list[Refused]) -> None:
        t0 = time.perf_counter()
        try:
            self.store.insert(table, rows, TABLE_COLUMNS[table], settings=self._settings(table, token))
        except RejectedData as exc:
            self.metrics.store_errors.inc()
            if len(rows) == 1:
                refused.append(Refused(table, offset, str(exc)))
                self.metrics.rows_refused.labels(table).inc()
                return
            mid = len(rows) // 2
            self._insert(table, rows[:mid], offset, f"{token}/0", refused)
            self._insert(table, rows[mid:], offset + mid, f"{token}/1", refused)
            return
        except Exception:
            self.metrics.store_errors.inc()
            raise
        self.metrics.insert_seconds.labels(table).observe(time.perf_counter() - t0)
        self.metrics.rows_written.labels(table).inc(len(rows))
