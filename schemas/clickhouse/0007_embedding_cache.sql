-- Sentence embeddings of prompt and completion texts, so that semantic drift embeds each text once
-- (monitor/checks/embeddings.py). Key: the embedding model and a 128-bit blake2b of the text
-- (the text itself is not stored here). Rows are written with an insert_deduplication_token per
-- batch, so a retried insert is a no-op; two check runs that embed the same new text at the same
-- time can still leave two equal rows, which readers collapse with GROUP BY text_hash.
-- A plain MergeTree (not Replacing): duplicates are rare, equal, and harmless to readers.
-- Rows expire with the events they were computed from: TTL on `created`.
CREATE TABLE IF NOT EXISTS $database.embedding_cache (
    model LowCardinality(String),
    text_hash FixedString(16),
    embedding Array(Float32) CODEC(ZSTD(1)),
    created DateTime DEFAULT now() CODEC(Delta(4), ZSTD(1))
) ENGINE = MergeTree
PARTITION BY toDate(created)
ORDER BY (model, text_hash)
TTL created + toIntervalDay($retention_days)
SETTINGS index_granularity = 1024, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000;
