-- Rollups of inference_events for the dashboards' long ranges (README "Dashboards"): per model and
-- minute (inference_events_1m) and per model and ten minutes (inference_events_10m), the counts and
-- sums the Overview and Latency & GPU pages show, and a DDSketch per timing (quantilesDD with 1 %
-- relative accuracy: every quantile it gives is within 1 % of a value of that rank; merging sketches
-- adds their bucket counts, so the answer does not depend on how parts were merged). A 7-day page
-- reads ~1,000 rows per model of the 10-minute table (plus the minutes at its ends) instead of every
-- request (bench/README.md).
--
-- Written by the materialized views below as rows are inserted into inference_events (same insert,
-- same deduplication: the writer sets deduplicate_blocks_in_dependent_materialized_views, so a
-- redelivered batch is dropped here too); the 10-minute table is fed from the minute table. Sums
-- and counts are SimpleAggregateFunction(sum), the sketches AggregateFunction states: parts merge
-- lazily, so a reader always aggregates (GROUP BY) and never reads a row as final. The tables hold
-- no text and no identity (no prompt, client or trace): an erasure of records (monitor erase)
-- leaves these counts as they are; retention follows inference_events' days, per model too
-- (monitor/store/retention.py). Both tables have the same columns, so a reader can take the
-- 10-minute rows for the middle of a range and the minute rows for its ends in one UNION ALL.
--
-- A sketch takes values up to 1.76e308 and refuses infinities: a timing beyond 1e300 ms, infinite
-- or NaN is left out of it (still in the counts and sums).
--
-- index_granularity 256: a row holds seven sketches (~400 bytes); with the default 8,192 a range of
-- an hour decoded 8,192 rows' sketches per model (125 ms for seven merges; 14 ms at 256).
--
-- The aliases are not inference_events column names (hence _q / _sum / _n): one that is would make
-- ClickHouse read the other aggregates' arguments as that alias.
CREATE TABLE IF NOT EXISTS $database.inference_events_1m (
    minute DateTime('UTC') CODEC(Delta(4), ZSTD(1)),
    model LowCardinality(String),
    requests SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    with_engine SimpleAggregateFunction(sum, UInt64),
    input_tokens_sum SimpleAggregateFunction(sum, UInt64),
    output_tokens_sum SimpleAggregateFunction(sum, UInt64),
    outside_engine_sum SimpleAggregateFunction(sum, Float64),
    outside_engine_n SimpleAggregateFunction(sum, UInt64),
    requests_with_cost SimpleAggregateFunction(sum, UInt64),
    gpu_seconds_sum SimpleAggregateFunction(sum, Nullable(Float64)),
    gpu_cost_sum SimpleAggregateFunction(sum, Nullable(Float64)),
    cost_tokens SimpleAggregateFunction(sum, UInt64),
    latency_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    latency_ms_sum SimpleAggregateFunction(sum, Float64),
    latency_ms_n SimpleAggregateFunction(sum, UInt64),
    engine_latency_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    engine_latency_ms_sum SimpleAggregateFunction(sum, Float64),
    engine_latency_ms_n SimpleAggregateFunction(sum, UInt64),
    ttft_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    ttft_ms_sum SimpleAggregateFunction(sum, Float64),
    ttft_ms_n SimpleAggregateFunction(sum, UInt64),
    engine_ttft_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    engine_ttft_ms_sum SimpleAggregateFunction(sum, Float64),
    engine_ttft_ms_n SimpleAggregateFunction(sum, UInt64),
    queue_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    queue_ms_sum SimpleAggregateFunction(sum, Float64),
    queue_ms_n SimpleAggregateFunction(sum, UInt64),
    prefill_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    prefill_ms_sum SimpleAggregateFunction(sum, Float64),
    prefill_ms_n SimpleAggregateFunction(sum, UInt64),
    decode_ms_q AggregateFunction(quantilesDD(0.01, 0.5, 0.95, 0.99), Nullable(Float64)) CODEC(ZSTD(1)),
    decode_ms_sum SimpleAggregateFunction(sum, Float64),
    decode_ms_n SimpleAggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree
PARTITION BY toDate(minute)
ORDER BY (model, minute)
TTL minute + toIntervalDay($retention_days)
SETTINGS index_granularity = 256, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000;

-- The same per ten minutes: the same columns, engine, keys and settings (a reader takes both in one
-- UNION ALL).
CREATE TABLE IF NOT EXISTS $database.inference_events_10m AS $database.inference_events_1m;

-- The requests stored before this file: filled once, before the minute view exists (the schema
-- is applied at start, before ingest takes data), and rebuilt from nothing, so a start killed
-- half-way and run again counts every request once: both views dropped, both tables emptied, the
-- ten-minute view created (the fill of the minute table goes on into the ten-minute one through
-- it), the minute table filled, and the minute view created last. ~1 min per 10 million rows on 2
-- cores in chdb (bench/README.md). The cluster variant leaves the fill to the operator.
-- tests/test_rollup.py holds the fill's SELECT to the minute view's.
DROP VIEW IF EXISTS $database.inference_events_1m_mv;

DROP VIEW IF EXISTS $database.inference_events_10m_mv;

TRUNCATE TABLE $database.inference_events_1m;

TRUNCATE TABLE $database.inference_events_10m;

-- Every insert into the minute table from now on (the fill below included).
CREATE MATERIALIZED VIEW IF NOT EXISTS $database.inference_events_10m_mv TO $database.inference_events_10m AS
SELECT toStartOfTenMinutes(minute) AS minute, model,
       sum(requests) AS requests,
       sum(errors) AS errors,
       sum(with_engine) AS with_engine,
       sum(input_tokens_sum) AS input_tokens_sum,
       sum(output_tokens_sum) AS output_tokens_sum,
       sum(outside_engine_sum) AS outside_engine_sum,
       sum(outside_engine_n) AS outside_engine_n,
       sum(requests_with_cost) AS requests_with_cost,
       sum(gpu_seconds_sum) AS gpu_seconds_sum,
       sum(gpu_cost_sum) AS gpu_cost_sum,
       sum(cost_tokens) AS cost_tokens,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(latency_ms_q) AS latency_ms_q, sum(latency_ms_sum) AS latency_ms_sum, sum(latency_ms_n) AS latency_ms_n,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(engine_latency_ms_q) AS engine_latency_ms_q, sum(engine_latency_ms_sum) AS engine_latency_ms_sum, sum(engine_latency_ms_n) AS engine_latency_ms_n,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(ttft_ms_q) AS ttft_ms_q, sum(ttft_ms_sum) AS ttft_ms_sum, sum(ttft_ms_n) AS ttft_ms_n,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(engine_ttft_ms_q) AS engine_ttft_ms_q, sum(engine_ttft_ms_sum) AS engine_ttft_ms_sum, sum(engine_ttft_ms_n) AS engine_ttft_ms_n,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(queue_ms_q) AS queue_ms_q, sum(queue_ms_sum) AS queue_ms_sum, sum(queue_ms_n) AS queue_ms_n,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(prefill_ms_q) AS prefill_ms_q, sum(prefill_ms_sum) AS prefill_ms_sum, sum(prefill_ms_n) AS prefill_ms_n,
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(decode_ms_q) AS decode_ms_q, sum(decode_ms_sum) AS decode_ms_sum, sum(decode_ms_n) AS decode_ms_n
FROM $database.inference_events_1m
GROUP BY minute, model;

INSERT INTO $database.inference_events_1m
SELECT toStartOfMinute(timestamp) AS minute, model,
       count() AS requests,
       countIf(status_code = 'Error') AS errors,
       countIf(queue_ms IS NOT NULL OR prefill_ms IS NOT NULL OR decode_ms IS NOT NULL) AS with_engine,
       sum(ifNull(input_tokens, 0)) AS input_tokens_sum,
       sum(ifNull(output_tokens, 0)) AS output_tokens_sum,
       sumIf(ifNull(latency_ms, 0) - ifNull(engine_latency_ms, 0),
             latency_ms IS NOT NULL AND engine_latency_ms IS NOT NULL) AS outside_engine_sum,
       countIf(latency_ms IS NOT NULL AND engine_latency_ms IS NOT NULL) AS outside_engine_n,
       countIf(gpu_cost IS NOT NULL) AS requests_with_cost,
       sum(gpu_seconds) AS gpu_seconds_sum,
       sum(gpu_cost) AS gpu_cost_sum,
       sumIf(ifNull(input_tokens, 0) + ifNull(output_tokens, 0), gpu_cost IS NOT NULL) AS cost_tokens,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(latency_ms) < 1e300, latency_ms, NULL)) AS latency_ms_q,
       sum(ifNull(latency_ms, 0)) AS latency_ms_sum, count(latency_ms) AS latency_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(engine_latency_ms) < 1e300, engine_latency_ms, NULL)) AS engine_latency_ms_q,
       sum(ifNull(engine_latency_ms, 0)) AS engine_latency_ms_sum, count(engine_latency_ms) AS engine_latency_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(ttft_ms) < 1e300, ttft_ms, NULL)) AS ttft_ms_q,
       sum(ifNull(ttft_ms, 0)) AS ttft_ms_sum, count(ttft_ms) AS ttft_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(engine_ttft_ms) < 1e300, engine_ttft_ms, NULL)) AS engine_ttft_ms_q,
       sum(ifNull(engine_ttft_ms, 0)) AS engine_ttft_ms_sum, count(engine_ttft_ms) AS engine_ttft_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(queue_ms) < 1e300, queue_ms, NULL)) AS queue_ms_q,
       sum(ifNull(queue_ms, 0)) AS queue_ms_sum, count(queue_ms) AS queue_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(prefill_ms) < 1e300, prefill_ms, NULL)) AS prefill_ms_q,
       sum(ifNull(prefill_ms, 0)) AS prefill_ms_sum, count(prefill_ms) AS prefill_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(decode_ms) < 1e300, decode_ms, NULL)) AS decode_ms_q,
       sum(ifNull(decode_ms, 0)) AS decode_ms_sum, count(decode_ms) AS decode_ms_n
FROM $database.inference_events
GROUP BY minute, model;

-- Every insert into inference_events from now on.
CREATE MATERIALIZED VIEW IF NOT EXISTS $database.inference_events_1m_mv TO $database.inference_events_1m AS
SELECT toStartOfMinute(timestamp) AS minute, model,
       count() AS requests,
       countIf(status_code = 'Error') AS errors,
       countIf(queue_ms IS NOT NULL OR prefill_ms IS NOT NULL OR decode_ms IS NOT NULL) AS with_engine,
       sum(ifNull(input_tokens, 0)) AS input_tokens_sum,
       sum(ifNull(output_tokens, 0)) AS output_tokens_sum,
       sumIf(ifNull(latency_ms, 0) - ifNull(engine_latency_ms, 0),
             latency_ms IS NOT NULL AND engine_latency_ms IS NOT NULL) AS outside_engine_sum,
       countIf(latency_ms IS NOT NULL AND engine_latency_ms IS NOT NULL) AS outside_engine_n,
       countIf(gpu_cost IS NOT NULL) AS requests_with_cost,
       sum(gpu_seconds) AS gpu_seconds_sum,
       sum(gpu_cost) AS gpu_cost_sum,
       sumIf(ifNull(input_tokens, 0) + ifNull(output_tokens, 0), gpu_cost IS NOT NULL) AS cost_tokens,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(latency_ms) < 1e300, latency_ms, NULL)) AS latency_ms_q,
       sum(ifNull(latency_ms, 0)) AS latency_ms_sum, count(latency_ms) AS latency_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(engine_latency_ms) < 1e300, engine_latency_ms, NULL)) AS engine_latency_ms_q,
       sum(ifNull(engine_latency_ms, 0)) AS engine_latency_ms_sum, count(engine_latency_ms) AS engine_latency_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(ttft_ms) < 1e300, ttft_ms, NULL)) AS ttft_ms_q,
       sum(ifNull(ttft_ms, 0)) AS ttft_ms_sum, count(ttft_ms) AS ttft_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(engine_ttft_ms) < 1e300, engine_ttft_ms, NULL)) AS engine_ttft_ms_q,
       sum(ifNull(engine_ttft_ms, 0)) AS engine_ttft_ms_sum, count(engine_ttft_ms) AS engine_ttft_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(queue_ms) < 1e300, queue_ms, NULL)) AS queue_ms_q,
       sum(ifNull(queue_ms, 0)) AS queue_ms_sum, count(queue_ms) AS queue_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(prefill_ms) < 1e300, prefill_ms, NULL)) AS prefill_ms_q,
       sum(ifNull(prefill_ms, 0)) AS prefill_ms_sum, count(prefill_ms) AS prefill_ms_n,
       quantilesDDState(0.01, 0.5, 0.95, 0.99)(if(abs(decode_ms) < 1e300, decode_ms, NULL)) AS decode_ms_q,
       sum(ifNull(decode_ms, 0)) AS decode_ms_sum, count(decode_ms) AS decode_ms_n
FROM $database.inference_events
GROUP BY minute, model;
