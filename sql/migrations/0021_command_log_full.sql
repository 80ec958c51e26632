-- 0021_command_log_full: a stream longer than the per-command cap keeps its head and tail
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
