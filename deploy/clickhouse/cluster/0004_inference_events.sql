-- Generated from schemas/clickhouse/0004_inference_events.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- One typed row per model request, normalised from any GenAI dialect
-- (see monitor/events.py for the meaning and unit of every column).
-- Durations are milliseconds; NULL means "not reported", never zero.
CREATE TABLE IF NOT EXISTS $database.inference_events_local ON CLUSTER '{cluster}' (
    timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    trace_id String CODEC(ZSTD(1)),
    span_id String CODEC(ZSTD(1)),
    service_name LowCardinality(String),
    model LowCardinality(String),
    provider LowCardinality(String),
    operation LowCardinality(String),
    source LowCardinality(String),
    prompt String CODEC(ZSTD(3)),
    completion String CODEC(ZSTD(3)),
    system_prompt String CODEC(ZSTD(3)),
    input_messages String CODEC(ZSTD(3)),
    output_messages String CODEC(ZSTD(3)),
    input_tokens Nullable(UInt32),
    output_tokens Nullable(UInt32),
    ttft_ms Nullable(Float64),
    latency_ms Nullable(Float64),
    queue_ms Nullable(Float64),
    prefill_ms Nullable(Float64),
    decode_ms Nullable(Float64),
    inference_ms Nullable(Float64),
    finish_reason LowCardinality(String),
    status_code LowCardinality(String),
    error_type LowCardinality(String),
    request_id String CODEC(ZSTD(1)),
    attributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    INDEX idx_trace_id trace_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_span_id span_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_attr_key mapKeys(attributes) TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/inference_events_local', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (model, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Sharded by cityHash64(trace_id): a request's event and its spans on one shard.
CREATE TABLE IF NOT EXISTS $database.inference_events ON CLUSTER '{cluster}'
AS $database.inference_events_local
ENGINE = Distributed('{cluster}', $database, inference_events_local, cityHash64(trace_id));
