-- Generated from schemas/clickhouse/0015_inference_events_model_identity.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- What answered a request, and how the same traffic compares across models (README "Comparing models").
-- requested_model: the body's / span's gen_ai.request.model (model holds the served one);
-- model_version: the deployment's label (proxy route, model.version / service.version resource
-- attribute), else the served snapshot when it differs from the requested name; adapter: the LoRA
-- adapter that answered (proxy.adapters, proxy route); endpoint / endpoint_kind: the proxy route
-- that served it ('' when none) and whether it is 'self_hosted' or 'managed' (per-token priced);
-- shadow_of: for a shadow request, the span id of the primary request it copies (same trace_id),
-- '' otherwise; cached_tokens: input tokens the provider served from its prompt cache;
-- token_cost: tokens x cost.token_prices (managed endpoints), NULL when no price applies.
ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS requested_model LowCardinality(String),
    ADD COLUMN IF NOT EXISTS model_version LowCardinality(String),
    ADD COLUMN IF NOT EXISTS adapter LowCardinality(String),
    ADD COLUMN IF NOT EXISTS endpoint LowCardinality(String),
    ADD COLUMN IF NOT EXISTS endpoint_kind LowCardinality(String),
    ADD COLUMN IF NOT EXISTS shadow_of String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS cached_tokens Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS token_cost Nullable(Float64);

ALTER TABLE $database.inference_events ON CLUSTER '{cluster}'
    ADD COLUMN IF NOT EXISTS requested_model LowCardinality(String),
    ADD COLUMN IF NOT EXISTS model_version LowCardinality(String),
    ADD COLUMN IF NOT EXISTS adapter LowCardinality(String),
    ADD COLUMN IF NOT EXISTS endpoint LowCardinality(String),
    ADD COLUMN IF NOT EXISTS endpoint_kind LowCardinality(String),
    ADD COLUMN IF NOT EXISTS shadow_of String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS cached_tokens Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS token_cost Nullable(Float64);

-- Every (model, version, adapter, endpoint) the monitor has seen, with when it first and last
-- answered: a new version appearing is recorded here by the view below as its rows are inserted,
-- and stays recorded after its events expire. Read with GROUP BY and min/max (parts merge lazily).
CREATE TABLE IF NOT EXISTS $database.model_versions_local ON CLUSTER '{cluster}' (
    model LowCardinality(String),
    model_version LowCardinality(String),
    adapter LowCardinality(String),
    endpoint LowCardinality(String),
    endpoint_kind SimpleAggregateFunction(any, LowCardinality(String)),
    first_seen SimpleAggregateFunction(min, DateTime64(9, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(9, 'UTC'))
) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/model_versions_local', '{replica}')
ORDER BY (model, model_version, adapter, endpoint);

-- Sharded by cityHash64(model): a model's versions together (min/max merge per shard, the query merges shards).
CREATE TABLE IF NOT EXISTS $database.model_versions ON CLUSTER '{cluster}'
AS $database.model_versions_local
ENGINE = Distributed('{cluster}', $database, model_versions_local, cityHash64(model));

CREATE MATERIALIZED VIEW IF NOT EXISTS $database.model_versions_mv ON CLUSTER '{cluster}' TO $database.model_versions_local AS
SELECT model, model_version, adapter, endpoint, any(endpoint_kind) AS endpoint_kind,
       min(timestamp) AS first_seen, max(timestamp) AS last_seen
FROM $database.inference_events_local
GROUP BY model, model_version, adapter, endpoint;
