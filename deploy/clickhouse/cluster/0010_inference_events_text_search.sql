-- Cluster variant of schemas/clickhouse/0010_inference_events_text_search.sql: the same n-gram
-- bloom filter indexes on every replica's local table (the Distributed table has no indexes; a
-- search through it uses each shard's).
ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}'
    ADD INDEX IF NOT EXISTS idx_prompt_ngram lowerUTF8(prompt) TYPE ngrambf_v1(3, 32768, 3, 0) GRANULARITY 1,
    ADD INDEX IF NOT EXISTS idx_completion_ngram lowerUTF8(completion) TYPE ngrambf_v1(3, 32768, 3, 0) GRANULARITY 1;

-- Your choice: ADD INDEX covers parts written from now on. To index the rows already stored, run the
-- two mutations below (uncomment them, or run them by hand later, e.g. off-peak). Each reads the
-- prompt and completion of every part once and writes only the index files (in chdb on 2 cores:
-- ~2 minutes per 10 million rows); on a replicated table the mutation is queued once per shard and
-- every replica ends up with the index files of its parts. Skipping them is safe: searches stay
-- correct and read the text of unindexed parts, which age out with the retention TTL.
-- ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}' MATERIALIZE INDEX idx_prompt_ngram;
-- ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}' MATERIALIZE INDEX idx_completion_ngram;
