-- Client-seen versus engine-side timings, inter-token latency, and GPU cost per request.
-- ttft_ms / latency_ms hold what the client saw when the capture proxy measured it (else the
-- engine's); engine_ttft_ms / engine_latency_ms hold the engine's own figures (vLLM's span).
ALTER TABLE $database.inference_events
    ADD COLUMN IF NOT EXISTS engine_ttft_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS engine_latency_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS itl_ms Nullable(Float64),
    ADD COLUMN IF NOT EXISTS gpu_seconds Nullable(Float64),
    ADD COLUMN IF NOT EXISTS gpu_cost Nullable(Float64);
