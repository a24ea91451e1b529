-- Cluster variant of schemas/clickhouse/0006_inference_events_quality.sql.
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
