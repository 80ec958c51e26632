-- 0017_stream: the chunks of streamed steps (`tool.output.stream`, one `call.partial` per
-- chunk; sql/functions/stream.sql).

-- One row per chunk a streamed step recorded, per attempt (noetl.record_partial): the key
-- (execution, command, attempt, chunk_index) makes each call.partial event unique, so a
-- stream run again after its worker died records no chunk twice; event_id is its event.
create table if not exists noetl.stream_chunk (
    execution_id bigint not null,
    command_id bigint not null,
    attempt integer not null,
    chunk_index integer not null check (chunk_index >= 0),
    row_count integer not null check (row_count >= 0),
    has_more boolean not null,
    event_id bigint not null,
    recorded_at timestamptz not null default now(),
    primary key (execution_id, command_id, attempt, chunk_index)
);
