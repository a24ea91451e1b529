-- How ingest's parts are written and merged (README "Benchmarks": ingest). Every ingest batch is
-- one part of otel_traces and one of inference_events (a few thousand rows, a few MB), and
-- background merges rewrite each row again at every level of the merge tree: with the defaults
-- (wide parts from 10 MB, merge_selector_base 5) the inserts and their merges cost ClickHouse
-- ~98 us of CPU per span. Young parts stay compact (one file for all columns instead of two
-- per column: less to write and to merge; merged parts past 256 MB uncompressed become wide,
-- as before, for the long-range reads of the dashboards and checks), and merges wait for about
-- twice as many parts of a size before merging them (fewer levels, so each row is rewritten
-- fewer times): ~70 us per span, measured over 240,000 spans until merges went quiet.
ALTER TABLE $database.otel_traces MODIFY SETTING min_bytes_for_wide_part = 268435456, merge_selector_base = 10;
ALTER TABLE $database.inference_events MODIFY SETTING min_bytes_for_wide_part = 268435456, merge_selector_base = 10;
