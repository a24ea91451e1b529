-- Cluster (sharded + replicated) variant of schemas/clickhouse/0001_otel_traces.sql.
-- Not applied by monitor.store.migrate: apply it with clickhouse-client after
-- substituting $database and $retention_days (see README.md in this folder).
--
-- Every table of the single-node file becomes two tables on every node:
--   <table>_local  ReplicatedMergeTree holding this shard's rows, with the same
--                  columns, codecs, indexes, PARTITION BY, ORDER BY, TTL and
--                  SETTINGS as the single-node table.
--   <table>        Distributed over <table>_local: the name ingest inserts into
--                  and dashboards read, so both work unchanged.
-- The single-node tables set non_replicated_deduplication_window so that a
-- retried insert with the same insert_deduplication_token is a no-op. It only
-- applies to non-replicated tables and is dropped here: ReplicatedMergeTree
-- deduplicates by replicated_deduplication_window instead (on by default,
-- per shard, kept in Keeper). Its default and that of the time limit
-- replicated_deduplication_window_seconds depend on the version (see
-- system.merge_tree_settings): add them to SETTINGS if a retry can come later.

-- The database, on every node. Run this file first.
CREATE DATABASE IF NOT EXISTS $database ON CLUSTER '{cluster}';

-- Raw spans, in the OpenTelemetry Collector ClickHouse exporter's layout
-- (same table name, column names and types), so Grafana's ClickHouse data
-- source and other OTel tooling read them unchanged.
CREATE TABLE IF NOT EXISTS $database.otel_traces_local ON CLUSTER '{cluster}' (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(T64, ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/otel_traces_local', '{replica}')
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
TTL toDateTime(Timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Sharded by trace id: all spans of a trace land on one shard, so a trace is
-- read from one shard and the materialized view below (which runs where the
-- spans are inserted) sees them together.
CREATE TABLE IF NOT EXISTS $database.otel_traces ON CLUSTER '{cluster}'
AS $database.otel_traces_local
ENGINE = Distributed('{cluster}', $database, otel_traces_local, cityHash64(TraceId));

-- Trace lookup by id without a full scan (the exporter's companion table).
CREATE TABLE IF NOT EXISTS $database.otel_traces_trace_id_ts_local ON CLUSTER '{cluster}' (
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1)),
    End DateTime CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/otel_traces_trace_id_ts_local', '{replica}')
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
TTL Start + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Same key as otel_traces, so each shard's lookup rows describe its own spans.
CREATE TABLE IF NOT EXISTS $database.otel_traces_trace_id_ts ON CLUSTER '{cluster}'
AS $database.otel_traces_trace_id_ts_local
ENGINE = Distributed('{cluster}', $database, otel_traces_trace_id_ts_local, cityHash64(TraceId));

-- Local to local: fires on each replica that receives a block of spans for
-- otel_traces_local and writes that shard's otel_traces_trace_id_ts_local.
-- Reading the Distributed otel_traces instead would fire only on the node
-- the insert was sent to, and writing the Distributed table would send rows
-- across the network for nothing.
CREATE MATERIALIZED VIEW IF NOT EXISTS $database.otel_traces_trace_id_ts_mv ON CLUSTER '{cluster}'
TO $database.otel_traces_trace_id_ts_local
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM $database.otel_traces_local
WHERE TraceId != ''
GROUP BY TraceId;
