-- Generated from schemas/clickhouse/0007_embedding_cache.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Sentence embeddings of prompt and completion texts, so that semantic drift embeds each text once
-- (monitor/checks/embeddings.py). Key: the embedding model and a 128-bit blake2b of the text
-- (the text itself is not stored here). Rows are written with an insert_deduplication_token per
-- batch, so a retried insert is a no-op; two check runs that embed the same new text at the same
-- time can still leave two equal rows, which readers collapse with GROUP BY text_hash.
-- A plain MergeTree (not Replacing): duplicates are rare, equal, and harmless to readers.
-- Rows expire with the events they were computed from: TTL on `created`.
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

-- Sharded by cityHash64(text_hash): one text's embedding on one shard.
CREATE TABLE IF NOT EXISTS $database.embedding_cache ON CLUSTER '{cluster}'
AS $database.embedding_cache_local
ENGINE = Distributed('{cluster}', $database, embedding_cache_local, cityHash64(text_hash));
