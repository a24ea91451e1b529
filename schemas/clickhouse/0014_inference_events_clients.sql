-- Who called, and the request parameters model extraction shows in (README "Clients and abuse").
-- client_id: what the Clients page and the abuse checks group by: the keyed hash of the API key
-- (client_key_hash, HMAC-SHA256 with clients.secret; the key itself is never stored), else
-- 'user:<id>', else 'addr:<hash>', else '' (anonymous). max_tokens: the limit the request asked
-- for (NULL: not sent); logprobs / top_logprobs / logit_bias: what it asked of the token
-- distribution (0: nothing); injection: the prompt reads like a jailbreak or prompt injection.
ALTER TABLE $database.inference_events
    ADD COLUMN IF NOT EXISTS client_id LowCardinality(String),
    ADD COLUMN IF NOT EXISTS client_key_hash String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS user_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS conversation_id String CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS max_tokens Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS logprobs UInt8,
    ADD COLUMN IF NOT EXISTS top_logprobs UInt16,
    ADD COLUMN IF NOT EXISTS logit_bias UInt16,
    ADD COLUMN IF NOT EXISTS injection UInt8;
