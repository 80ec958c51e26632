-- Queries of a worker running a streamed step (sql/functions/stream.sql).

-- name: record_partial
-- Record one chunk of a streamed command and issue its chunk commands: ok, duplicate,
-- stale or stopped.
select noetl.record_partial_v1(
    %(command_id)s, %(attempt)s, %(claim)s, %(chunk_index)s, %(has_more)s, %(row_count)s,
    %(columns)s, %(rows)s, %(targets)s
) as status;

-- name: stream_chunks
-- The chunk indexes a streamed command already recorded at this attempt.
select noetl.stream_chunks_v1(%(command_id)s, %(attempt)s) as chunk_indexes;
