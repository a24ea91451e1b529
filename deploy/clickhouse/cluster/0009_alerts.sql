-- Generated from schemas/clickhouse/0009_alerts.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Alerts (monitor/alerts/): what fired and resolved, the durable outbox of notifications, every
-- delivery attempt, and the state of each alert between check runs.
--
-- alert_events: one row per transition ('fire' | 'resolve') and per test notification ('test').
-- Written first, with insert_deduplication_token = notification_id: it is the commit point of a
-- transition, and a restart re-enqueues the outbox rows of an event that lacks them. The firing
-- set is the latest row per alert_id (argMax by timestamp) whose event is 'fire'.
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

-- Sharded by cityHash64(alert_id): an alert's transitions on one shard.
CREATE TABLE IF NOT EXISTS $database.alert_events ON CLUSTER '{cluster}'
AS $database.alert_events_local
ENGINE = Distributed('{cluster}', $database, alert_events_local, cityHash64(alert_id));

-- alert_outbox: one row per (notification, channel); every status change is a new row with a
-- later updated_at, so readers use FINAL. The enqueued row is deterministic (its updated_at is the
-- transition's time), so enqueueing the same notification twice leaves one row and never
-- overrides a later status. The payload holds no secret: signatures and PagerDuty routing keys
-- are added at delivery, from the config.
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

-- Sharded by cityHash64(notification_id): every version of an outbox row on one shard, so FINAL collapses them.
CREATE TABLE IF NOT EXISTS $database.alert_outbox ON CLUSTER '{cluster}'
AS $database.alert_outbox_local
ENGINE = Distributed('{cluster}', $database, alert_outbox_local, cityHash64(notification_id));

-- alert_deliveries: one row per delivery attempt, for the dashboards and for debugging receivers.
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

-- Sharded by cityHash64(notification_id): beside the notification's outbox rows.
CREATE TABLE IF NOT EXISTS $database.alert_deliveries ON CLUSTER '{cluster}'
AS $database.alert_deliveries_local
ENGINE = Distributed('{cluster}', $database, alert_deliveries_local, cityHash64(notification_id));

-- alert_state: the state machine of each alert (inactive | pending | firing | resolved) with the
-- time it entered that state, so a restart keeps for-durations and cooldowns. Transitions that
-- notify are also in alert_events, which wins when it is newer (a crash between the two writes).
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

-- Sharded by cityHash64(alert_id): every version of an alert's state on one shard, so FINAL collapses them.
CREATE TABLE IF NOT EXISTS $database.alert_state ON CLUSTER '{cluster}'
AS $database.alert_state_local
ENGINE = Distributed('{cluster}', $database, alert_state_local, cityHash64(alert_id));
