-- Generated from schemas/clickhouse/0006_inference_events_quality.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Quality signals computed at ingest for every request (monitor.quality.analyse), so rates over
-- any window are SQL aggregates: detected languages, refusal, empty output, truncation, JSON
-- validity where JSON was requested (NULL otherwise), PII placeholders in the output, repetition.
ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS prompt_language LowCardinality(String),
    ADD COLUMN IF NOT EXISTS completion_language LowCardinality(String),
    ADD COLUMN IF NOT EXISTS refusal UInt8,
    ADD COLUMN IF NOT EXISTS empty_output UInt8,
    ADD COLUMN IF NOT EXISTS truncated UInt8,
    ADD COLUMN IF NOT EXISTS json_valid Nullable(UInt8),
    ADD COLUMN IF NOT EXISTS pii_in_output UInt16,
    ADD COLUMN IF NOT EXISTS repetition Float32,
    ADD COLUMN IF NOT EXISTS degenerate UInt8,
    ADD COLUMN IF NOT EXISTS language_mismatch UInt8;

ALTER TABLE $database.inference_events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS prompt_language LowCardinality(String),
    ADD COLUMN IF NOT EXISTS completion_language LowCardinality(String),
    ADD COLUMN IF NOT EXISTS refusal UInt8,
    ADD COLUMN IF NOT EXISTS empty_output UInt8,
    ADD COLUMN IF NOT EXISTS truncated UInt8,
    ADD COLUMN IF NOT EXISTS json_valid Nullable(UInt8),
    ADD COLUMN IF NOT EXISTS pii_in_output UInt16,
    ADD COLUMN IF NOT EXISTS repetition Float32,
    ADD COLUMN IF NOT EXISTS degenerate UInt8,
    ADD COLUMN IF NOT EXISTS language_mismatch UInt8;
