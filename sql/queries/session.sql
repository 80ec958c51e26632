-- Session statements: the LISTEN channels of the wake-ups (noetl.notify_queue,
-- noetl_pg/worker/wakeup.py, noetl_pg/runtime.py) and the settings the postgres tool gives its
-- transaction on a user's database (noetl_pg/tools/postgres.py).

-- name: listen_commands
-- Wake-ups of new or re-queued commands (noetl.notify_queue).
listen noetl_command;

-- name: listen_cancel
-- Cancelled executions (payload: execution_id).
listen noetl_cancel;

-- name: listen_executions
-- Executions that reached a terminal status.
listen noetl_execution;

-- name: tool_standard_strings
-- Backslashes in string literals are literal, whatever the server's default.
select set_config('standard_conforming_strings', 'on', true);

-- name: tool_statement_timeout
-- The step's timeout for the rest of the transaction (milliseconds as text).
select set_config('statement_timeout', %(timeout)s, true);
