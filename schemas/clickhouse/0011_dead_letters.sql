-- What ingest set aside instead of storing: a message it could not decode, or an item the store
-- rejected (found by splitting a failed insert until the rejected rows were isolated). The rest
-- of the batch is stored; nothing here blocks ingest. The original bytes stay replayable.
CREATE TABLE IF NOT EXISTS $database.dead_letters (
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    source String CODEC(ZSTD(1)),
    signal LowCardinality(String),
    item Int32,
    reason String CODEC(ZSTD(1)),
    payload String CODEC(ZSTD(3))
) ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (signal, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000;
