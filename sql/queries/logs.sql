-- logs.sql: captured step output (noetl.command_log), written by workers, read by the CLI.

-- name: command_log_put
-- Store the captured streams of one command attempt in one statement: `streams` is a JSON
-- array of {stream, body, full_ref, full_bytes}.
insert into noetl.command_log (
    execution_id, command_id, attempt, step_name, iter_index, stream, body,
    full_ref, full_bytes
)
select
    %(execution_id)s,
    %(command_id)s,
    %(attempt)s,
    %(step_name)s,
    %(iter_index)s,
    s.stream,
    s.body,
    s.full_ref,
    s.full_bytes
from jsonb_to_recordset(%(streams)s::jsonb) as s (
    stream text, body text, full_ref text, full_bytes bigint
);

-- name: command_log_list
-- An execution's captured output after `after_id`, optionally of one step, oldest first.
select
    log_id,
    command_id,
    attempt,
    step_name,
    iter_index,
    stream,
    body,
    full_ref,
    full_bytes,
    created_at
from noetl.command_log
where
    execution_id = %(execution_id)s
    and log_id > %(after_id)s
    and (%(step_name)s::text is null or step_name = %(step_name)s::text)
order by log_id
limit 10000;

-- name: command_log_last_stderr
-- The last stderr captured for a step of an execution (a failed step's traceback).
select body
from noetl.command_log
where execution_id = %(execution_id)s and step_name = %(step_name)s and stream = 'stderr'
order by log_id desc
limit 1;
