-- Cluster variant of schemas/clickhouse/0007_embedding_cache.sql: a replicated local table and a
-- Distributed table of the same name over it (see README.md in this folder).
-- Sharded by the text hash: a text's cached embedding lives on one shard, lookups (`IN` over a
-- batch of hashes) fan out to all shards, and a retried batch splits over the shards as before.

CREATE TABLE IF NOT EXISTS $database.embedding_cache_local ON CLUSTER '{cluster}' (
    model LowCardinality(String),
    text_hash FixedString(16),
    embedding Array(Float32) CODEC(ZSTD(1)),
    created DateTime DEFAULT now() CODEC(Delta(4), ZSTD(1))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/embedding_cache_local', '{replica}')
PARTITION BY toDate(created)
ORDER BY (model, text_hash)
TTL created + toIntervalDay($retention_days)
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS $database.embedding_cache ON CLUSTER '{cluster}'
AS $database.embedding_cache_local
ENGINE = Distributed('{cluster}', $database, embedding_cache_local, cityHash64(text_hash));
