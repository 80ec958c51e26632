-- 0014c_command_log: what a step printed. One row per captured stream of one command
-- attempt (python stdout/stderr, bounded by the executor: NOETL_PYTHON_LOG_BYTES per
-- stream, head and tail kept), read by `noetl logs`, and by `noetl status` for the
-- traceback of a failed step. Deleted with its execution (noetl.purge_executions).
create table if not exists noetl.command_log (
    execution_id bigint not null,
    log_id bigint generated always as identity,
    command_id bigint not null,
    attempt integer not null,
    step_name text not null,
    iter_index integer,
    stream text not null check (stream in ('stdout', 'stderr')),
    body text not null,
    -- A body over 1 MiB is refused: the executor bounds what it captures well below that.
    constraint command_log_bounded check (octet_length(body) <= 1048576),
    created_at timestamptz not null default clock_timestamp(),
    primary key (execution_id, log_id)
);
