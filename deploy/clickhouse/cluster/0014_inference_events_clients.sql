-- Generated from schemas/clickhouse/0014_inference_events_clients.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Who called, and the request parameters model extraction shows in (README "Clients and abuse").
-- client_id: what the Clients page and the abuse checks group by: the keyed hash of the API key
-- (client_key_hash, HMAC-SHA256 with clients.secret; the key itself is never stored), else
-- 'user:<id>', else 'addr:<hash>', else '' (anonymous). max_tokens: the limit the request asked
-- for (NULL: not sent); logprobs / top_logprobs / logit_bias: what it asked of the token
-- distribution (0: nothing); injection: the prompt reads like a jailbreak or prompt injection.
ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS client_id LowCardinality(String),
    ADD COLUMN IF NOT EXISTS client_key_hash String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS user_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS conversation_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS max_tokens Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS logprobs UInt8,
    ADD COLUMN IF NOT EXISTS top_logprobs UInt16,
    ADD COLUMN IF NOT EXISTS logit_bias UInt16,
    ADD COLUMN IF NOT EXISTS injection UInt8;

ALTER TABLE $database.inference_events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS client_id LowCardinality(String),
    ADD COLUMN IF NOT EXISTS client_key_hash String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS user_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS conversation_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS max_tokens Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS logprobs UInt8,
    ADD COLUMN IF NOT EXISTS top_logprobs UInt16,
    ADD COLUMN IF NOT EXISTS logit_bias UInt16,
    ADD COLUMN IF NOT EXISTS injection UInt8;
