-- Generated from schemas/clickhouse/0011_dead_letters.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- What ingest set aside instead of storing: a message it could not decode, or an item the store
-- rejected (found by splitting a failed insert until the rejected rows were isolated). The rest
-- of the batch is stored; nothing here blocks ingest. The original bytes stay replayable.
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

-- Sharded by cityHash64(source): even enough, and deterministic.
CREATE TABLE IF NOT EXISTS $database.dead_letters ON CLUSTER '{cluster}'
AS $database.dead_letters_local
ENGINE = Distributed('{cluster}', $database, dead_letters_local, cityHash64(source));
