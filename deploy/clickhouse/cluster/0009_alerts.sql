-- Cluster variant of schemas/clickhouse/0009_alerts.sql: replicated local tables and Distributed
-- tables of the same names (see README.md in this folder).
-- Sharded so that every version of one outbox row (notification_id) and of one alert's state
-- (alert_id) lives on one shard: FINAL collapses them per shard.

CREATE TABLE IF NOT EXISTS $database.alert_events_local ON CLUSTER '{cluster}' (
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    alert_id String,
    rule LowCardinality(String),
    severity LowCardinality(String),
    model LowCardinality(String),
    group String,
    event LowCardinality(String),
    notification_id String,
    summary String,
    details String CODEC(ZSTD(3))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/alert_events_local', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (rule, model, group, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS $database.alert_events ON CLUSTER '{cluster}'
AS $database.alert_events_local
ENGINE = Distributed('{cluster}', $database, alert_events_local, cityHash64(alert_id));

CREATE TABLE IF NOT EXISTS $database.alert_outbox_local ON CLUSTER '{cluster}' (
    notification_id String,
    channel LowCardinality(String),
    alert_id String,
    event LowCardinality(String),
    created_at DateTime64(3),
    updated_at DateTime64(3),
    status LowCardinality(String),
    attempts UInt32,
    next_attempt_at DateTime64(3),
    last_error String,
    payload String CODEC(ZSTD(3))
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/alert_outbox_local', '{replica}', updated_at)
ORDER BY (notification_id, channel)
TTL toDateTime(created_at) + toIntervalDay($retention_days)
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS $database.alert_outbox ON CLUSTER '{cluster}'
AS $database.alert_outbox_local
ENGINE = Distributed('{cluster}', $database, alert_outbox_local, cityHash64(notification_id));

CREATE TABLE IF NOT EXISTS $database.alert_deliveries_local ON CLUSTER '{cluster}' (
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    notification_id String,
    channel LowCardinality(String),
    attempt UInt32,
    outcome LowCardinality(String),
    http_status Nullable(UInt16),
    error String,
    duration_ms Float64
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/alert_deliveries_local', '{replica}')
PARTITION BY toDate(timestamp)
ORDER BY (channel, timestamp)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS $database.alert_deliveries ON CLUSTER '{cluster}'
AS $database.alert_deliveries_local
ENGINE = Distributed('{cluster}', $database, alert_deliveries_local, cityHash64(notification_id));

CREATE TABLE IF NOT EXISTS $database.alert_state_local ON CLUSTER '{cluster}' (
    alert_id String,
    rule LowCardinality(String),
    model LowCardinality(String),
    group String,
    state LowCardinality(String),
    since DateTime64(3),
    resolved_at Nullable(DateTime64(3)),
    updated_at DateTime64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/alert_state_local', '{replica}', updated_at)
ORDER BY alert_id
TTL toDateTime(updated_at) + toIntervalDay($retention_days)
SETTINGS index_granularity = 1024;

CREATE TABLE IF NOT EXISTS $database.alert_state ON CLUSTER '{cluster}'
AS $database.alert_state_local
ENGINE = Distributed('{cluster}', $database, alert_state_local, cityHash64(alert_id));
