-- Cluster (sharded + replicated) variant of schemas/clickhouse/0003_otel_logs.sql.
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

-- Log records (OTLP LogsService), in the OpenTelemetry Collector ClickHouse exporter's layout.
CREATE TABLE IF NOT EXISTS $database.otel_logs_local ON CLUSTER '{cluster}' (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime DEFAULT toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_value mapValues(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/otel_logs_local', '{replica}')
PARTITION BY toDate(TimestampTime)
PRIMARY KEY (ServiceName, TimestampTime)
ORDER BY (ServiceName, TimestampTime, Timestamp)
TTL TimestampTime + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- Log records are spread by a hash of each record (service, time): even, and
-- deterministic, so a retried insert is split over the shards exactly as the
-- first try and each shard drops its part as a duplicate (rand() would not).
CREATE TABLE IF NOT EXISTS $database.otel_logs ON CLUSTER '{cluster}'
AS $database.otel_logs_local
ENGINE = Distributed('{cluster}', $database, otel_logs_local, cityHash64(ServiceName, Timestamp));
