"""Batched inserts with deterministic deduplication tokens.

Every insert carries ``insert_deduplication_token = <batch token>:<table>``.
Tables are created with ``non_replicated_deduplication_window`` (Replicated
tables deduplicate by default), so inserting the same batch again with the
same token is a no-op on chdb and on a server alike. Ingest derives the
batch token from Kafka (topic, partition, offset range), which is what
makes a redelivered batch land once.
"""

from __future__ import annotations

import time

from monitor.otlp.rows import TABLE_COLUMNS, Rows
from monitor.selfmetrics import SelfMetrics
from monitor.store.client import Store

__all__ = ["Writer"]

# Inserted first so a partially applied batch is retried from the same tables.
_ORDER = ("otel_traces", "inference_events", "otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram",
          "otel_metrics_exponential_histogram", "otel_metrics_summary", "otel_logs")


class Writer:
    def __init__(self, store: Store, metrics: SelfMetrics):
        self.store = store
        self.metrics = metrics

    def write(self, rows: Rows, token: str) -> int:
        """Insert every non-empty table; raises StoreError (retry with the same token)."""
        total = 0
        for table in _ORDER:
            batch = rows.get(table)
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                self.store.insert(table, batch, TABLE_COLUMNS[table],
                                  settings={"insert_deduplication_token": f"{token}:{table}"})
            except Exception:
                self.metrics.store_errors.inc()
                raise
            self.metrics.insert_seconds.labels(table).observe(time.perf_counter() - t0)
            self.metrics.rows_written.labels(table).inc(len(batch))
            total += len(batch)
        return total
