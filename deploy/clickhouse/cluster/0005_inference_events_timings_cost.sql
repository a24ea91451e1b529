-- Generated from schemas/clickhouse/0005_inference_events_timings_cost.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Client-seen versus engine-side timings, inter-token latency, and GPU cost per request.
-- ttft_ms / latency_ms hold what the client saw when the capture proxy measured it (else the
-- engine's); engine_ttft_ms / engine_latency_ms hold the engine's own figures (vLLM's span).
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
