-- Generated from schemas/clickhouse/0013_audit_log.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Who did what with the stored records (monitor/governance/audit.py, README "Records governance"):
-- searched prompts for a term, opened a request in full, pinned a baseline, exported, erased, sent
-- a test alert, ran the checks by hand. One row per action.
--   actor:   "admin-token" (a request to the admin endpoint carrying its token), the dashboard
--            user (a login or an authenticating proxy's header), else "local" (a command that
--            opened the store itself, or an unauthenticated loopback endpoint)
--   action:  search | open_request | pin_baseline | export | erase | test_alert | run_checks
--   target:  what it was done to (the search term, trace/span id, model, the erased identity's
--            SHA-256 -- never the identity itself)
--   details: JSON (time range, filters, row counts per table, output format, ...)
--   origin:  dashboard | admin | cli;  address: the caller's IP where known
-- Retention of its own (retention.audit_days, 365 by default), applied at start like every TTL.
-- Rows are few: partitioned by month, and expired rows are removed row by row
-- (ttl_only_drop_parts = 0) instead of waiting for a month's whole part to expire.
CREATE TABLE IF NOT EXISTS $database.audit_log_local ON CLUSTER '{cluster}' (
    timestamp DateTime64(3) CODEC(Delta, ZSTD(1)),
    actor LowCardinality(String),
    action LowCardinality(String),
    target String CODEC(ZSTD(1)),
    details String CODEC(ZSTD(3)),
    origin LowCardinality(String),
    address String CODEC(ZSTD(1))
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/audit_log_local', '{replica}')
PARTITION BY toYYYYMM(timestamp)
ORDER BY (timestamp, actor, action)
TTL toDateTime(timestamp) + toIntervalDay($retention_days)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 0;

-- Sharded by cityHash64(actor, timestamp): even and deterministic.
CREATE TABLE IF NOT EXISTS $database.audit_log ON CLUSTER '{cluster}'
AS $database.audit_log_local
ENGINE = Distributed('{cluster}', $database, audit_log_local, cityHash64(actor, timestamp));
