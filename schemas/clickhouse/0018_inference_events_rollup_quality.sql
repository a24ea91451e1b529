-- The quality rates in the rollups (README "Dashboards"): per model and minute / ten minutes, how many
-- requests were refusals, empty, truncated, invalid JSON (and how many asked for JSON), had PII
-- placeholders in the output, degenerate repetition or a language mismatch: the numerators of the
-- Quality page's rates (monitor/webui/queries/quality.py: SIGNALS; the other denominators are the
-- requests). A 7-day Quality page reads ~1,000 rows per model instead of every request.
--
-- The columns are added to both tables (the same columns in the same order: a reader takes both in
-- one UNION ALL), and the views are made again with them, then filled once from the stored requests
-- as 0016 does (the same steps and the same reasons: applied at start before ingest takes data; run
-- again after a start killed half-way, it counts every request once). A store that has not applied
-- this file keeps answering the Quality page from the requests.
ALTER TABLE $database.inference_events_1m
    ADD COLUMN IF NOT EXISTS refusal_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS empty_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS truncated_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS invalid_json_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS invalid_json_d SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS pii_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS repetition_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS language_mismatch_n SimpleAggregateFunction(sum, UInt64);

ALTER TABLE $database.inference_events_10m
    ADD COLUMN IF NOT EXISTS refusal_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS empty_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS truncated_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS invalid_json_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS invalid_json_d SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS pii_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS repetition_n SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS language_mismatch_n SimpleAggregateFunction(sum, UInt64);

-- Both views again with the new columns, and the fill of 0016 with them (tests/test_rollup.py holds the
-- fill's SELECT to the minute view's). The cluster variant leaves the fill to the operator.
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
       quantilesDDMergeState(0.01, 0.5, 0.95, 0.99)(decode_ms_q) AS decode_ms_q, sum(decode_ms_sum) AS decode_ms_sum, sum(decode_ms_n) AS decode_ms_n,
       sum(refusal_n) AS refusal_n,
       sum(empty_n) AS empty_n,
       sum(truncated_n) AS truncated_n,
       sum(invalid_json_n) AS invalid_json_n,
       sum(invalid_json_d) AS invalid_json_d,
       sum(pii_n) AS pii_n,
       sum(repetition_n) AS repetition_n,
       sum(language_mismatch_n) AS language_mismatch_n
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
       sum(ifNull(decode_ms, 0)) AS decode_ms_sum, count(decode_ms) AS decode_ms_n,
       sum(refusal) AS refusal_n,
       sum(empty_output) AS empty_n,
       sum(truncated) AS truncated_n,
       countIf(json_valid = 0) AS invalid_json_n,
       countIf(json_valid IS NOT NULL) AS invalid_json_d,
       countIf(pii_in_output > 0) AS pii_n,
       sum(degenerate) AS repetition_n,
       sum(language_mismatch) AS language_mismatch_n
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
       sum(ifNull(decode_ms, 0)) AS decode_ms_sum, count(decode_ms) AS decode_ms_n,
       sum(refusal) AS refusal_n,
       sum(empty_output) AS empty_n,
       sum(truncated) AS truncated_n,
       countIf(json_valid = 0) AS invalid_json_n,
       countIf(json_valid IS NOT NULL) AS invalid_json_d,
       countIf(pii_in_output > 0) AS pii_n,
       sum(degenerate) AS repetition_n,
       sum(language_mismatch) AS language_mismatch_n
FROM $database.inference_events
GROUP BY minute, model;
