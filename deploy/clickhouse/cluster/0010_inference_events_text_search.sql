-- Generated from schemas/clickhouse/0010_inference_events_text_search.sql by `python -m monitor.store.cluster_ddl`; do not edit
-- (edit the schema file and run it again). Apply by hand with clickhouse-client after substituting
-- $database and $retention_days (deploy/clickhouse/cluster/README.md); monitor.store.migrate does
-- not apply it. Every table T becomes T_local (ReplicatedMergeTree, this shard's rows) and T
-- (Distributed over T_local: the name ingest writes and dashboards read).

-- Text search on the Requests page (monitor/dashboard/queries/_sql.py SEARCH_SQL): a case-insensitive
-- substring of the prompt or the completion, written `lowerUTF8(prompt) LIKE '%term%'`. An n-gram
-- bloom filter per granule (8,192 rows) of the lowered text lets ClickHouse skip every granule that
-- lacks one of the term's 3-grams: a term nobody wrote (an ID, a name, an error string) reads the
-- index instead of the text. Terms of fewer than 3 characters, and terms whose 3-grams are all
-- common, read the text as before; an index never changes a result, only what is read.
--
-- Sizing: 32 KiB per granule and column, 3 hash functions: below 3 % false positives per 3-gram up
-- to ~30,000 distinct 3-grams in a granule (8,192 prompts of a few hundred characters hold 10-30k),
-- and a term of k 3-grams is a false positive only when all k are. About 32 KiB per 8,192 rows and
-- column before compression (~80 MB per 10 million rows for both), measured in bench/README.md.
ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}'
    ADD INDEX IF NOT EXISTS idx_prompt_ngram lowerUTF8(prompt) TYPE ngrambf_v1(3, 32768, 3, 0) GRANULARITY 1,
    ADD INDEX IF NOT EXISTS idx_completion_ngram lowerUTF8(completion) TYPE ngrambf_v1(3, 32768, 3, 0) GRANULARITY 1;

-- ADD INDEX covers new parts only. Build it for the rows already stored: a mutation that reads
-- prompt and completion of every part once and writes the index files beside them (no column is
-- rewritten): ~2 minutes per 10 million rows on 2 cores in chdb. mutations_sync = 0: it runs in
-- the background and the migration does not wait (chdb's default, 1, would hold `monitor up`'s
-- start that long); a restart resumes it. Until a part has its index, searches read that part's
-- text as before. (The cluster variant leaves this step to the operator.)
-- Mutations over every stored row: they index the rows already stored (parts written
-- from now on are indexed anyway). Run them by hand when it suits you, e.g. off-peak.
-- ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}' MATERIALIZE INDEX idx_prompt_ngram;
-- ALTER TABLE $database.inference_events_local ON CLUSTER '{cluster}' MATERIALIZE INDEX idx_completion_ngram;
