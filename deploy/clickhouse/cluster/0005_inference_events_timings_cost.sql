-- Cluster variant of schemas/clickhouse/0005_inference_events_timings_cost.sql: the same columns
-- on every replica's local table and on the Distributed table over it.
ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS engine_ttft_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS engine_latency_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS itl_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS gpu_seconds Nullable(Float64),
    ADD COLUMN IF NOT EXISTS gpu_cost Nullable(Float64);

ALTER TABLE $database.inference_events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS engine_ttft_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS engine_latency_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS itl_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS gpu_seconds Nullable(Float64),
    ADD COLUMN IF NOT EXISTS gpu_cost Nullable(Float64);
