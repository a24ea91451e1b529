-- Generated from schemas/clickhouse/0008_check_results.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Results of drift, quality and SLO checks (one row per check x metric x scope x run), and the
-- per-bucket distributions behind feature and semantic drift (reference vs current shares) for
-- the dashboards. Pinned baselines: the reference windows `monitor baseline pin` sets.
CREATE TABLE IF NOT EXISTS $database.check_results_local ON CLUSTER '{cluster}' (
    run_id String,
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    check LowCardinality(String),
    model LowCardinality(String),
    group String,
    metric LowCardinality(String),
    method LowCardinality(String),
    window_start DateTime64(3),
    window_end DateTime64(3),
    reference_start DateTime64(3),
    reference_end DateTime64(3),
    reference_kind LowCardinality(String),
    value Nullable(Float64),
    reference_value Nullable(Float64),
    threshold Nullable(Float64),
    p_value Nullable(Float64),
    status LowCardinality(String),
    current_n UInt64,
    reference_n UInt64,
    details String CODEC(ZSTD(3))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/check_results_local', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (model, check, metric, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Sharded by cityHash64(model): a model's results together.
CREATE TABLE IF NOT EXISTS $database.check_results ON CLUSTER '{cluster}'
AS $database.check_results_local
ENGINE = Distributed('{cluster}', $database, check_results_local, cityHash64(model));

CREATE TABLE IF NOT EXISTS $database.check_distributions_local ON CLUSTER '{cluster}' (
    run_id String,
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    check LowCardinality(String),
    model LowCardinality(String),
    group String,
    metric LowCardinality(String),
    bucket String,
    bucket_order UInt32,
    reference_share Float64,
    current_share Float64
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/check_distributions_local', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (model, check, metric, timestamp, bucket_order)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Sharded by cityHash64(model): beside the model's results.
CREATE TABLE IF NOT EXISTS $database.check_distributions ON CLUSTER '{cluster}'
AS $database.check_distributions_local
ENGINE = Distributed('{cluster}', $database, check_distributions_local, cityHash64(model));

CREATE TABLE IF NOT EXISTS $database.baselines_local ON CLUSTER '{cluster}' (
    model LowCardinality(String),
    group String,
    start DateTime64(3),
    end DateTime64(3),
    pinned_at DateTime64(3) DEFAULT now64(3),
    note String
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/baselines_local', '{replica}', pinned_at)
ORDER BY (model, group);

-- Sharded by cityHash64(model): every version of a model's baseline on one shard, so FINAL collapses them.
CREATE TABLE IF NOT EXISTS $database.baselines ON CLUSTER '{cluster}'
AS $database.baselines_local
ENGINE = Distributed('{cluster}', $database, baselines_local, cityHash64(model));
