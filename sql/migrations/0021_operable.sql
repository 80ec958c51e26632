-- 0021_operable: command_log keeps a cut stream whole by reference; workers publish
-- their window statistics for /metrics.
--
-- command_log: a stream longer than the per-command cap keeps its head and tail
-- in body, and the whole of it in the result store: full_ref is the ref of that object
-- (noetl.result_ref, any tier; deleted with its execution like every result), full_bytes
-- its size. Both null when body is the whole stream. `noetl logs --full` prints it.
alter table noetl.command_log
add column if not exists full_ref text,
add column if not exists full_bytes bigint;

comment on column noetl.command_log.full_ref is
'result ref (noetl://execution/...) of the whole stream when body holds only its head and tail';
comment on column noetl.command_log.full_bytes is
'size in bytes of the whole stream stored under full_ref';

-- What the worker ran over the trailing window (per kind: claims, completions, run-time
-- histogram), published by its heartbeat; /metrics sums the rows of live workers instead
-- of reading noetl.command.
alter table noetl.worker add column if not exists stats jsonb;

comment on column noetl.worker.stats is
'per kind over the last window_seconds: claims, completions, finished, finished_seconds, '
'buckets (noetl_pg/command_stats.py); published by the heartbeat';

-- The BRIN indexes of 0015 served only /metrics' window over noetl.command, which the
-- workers' published statistics replace; every command update paid for them.
drop index if exists noetl.command_claimed_at_brin;
drop index if exists noetl.command_finished_at_brin;

-- `noetl status ID` says which schedule tick started an execution.
create index if not exists schedule_run_execution_idx
on noetl.schedule_run (execution_id) where execution_id is not null;
