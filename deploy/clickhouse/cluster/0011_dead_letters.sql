-- Cluster variant of schemas/clickhouse/0011_dead_letters.sql: a replicated local table and a
-- Distributed table of the same name (see README.md in this folder).

CREATE TABLE IF NOT EXISTS $database.dead_letters_local ON CLUSTER '{cluster}' (
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    source String CODEC(ZSTD(1)),
    signal LowCardinality(String),
    item Int32,
    reason String CODEC(ZSTD(1)),
    payload String CODEC(ZSTD(3))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/dead_letters_local', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (signal, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS $database.dead_letters ON CLUSTER '{cluster}'
AS $database.dead_letters_local
ENGINE = Distributed('{cluster}', $database, dead_letters_local, cityHash64(source));
