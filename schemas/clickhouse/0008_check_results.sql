-- Results of drift, quality and SLO checks (one row per check x metric x scope x run), and the
-- per-bucket distributions behind feature and semantic drift (reference vs current shares) for
-- the dashboards. Pinned baselines: the reference windows `monitor baseline pin` sets.
CREATE TABLE IF NOT EXISTS $database.check_results (
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
) ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (model, check, metric, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS $database.check_distributions (
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
) ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (model, check, metric, timestamp, bucket_order)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS $database.baselines (
    model LowCardinality(String),
    group String,
    start DateTime64(3),
    end DateTime64(3),
    pinned_at DateTime64(3) DEFAULT now64(3),
    note String
) ENGINE = ReplacingMergeTree(pinned_at)
ORDER BY (model, group);
