-- Queries of cursor loops (loop.cursor): a worker applies a claim command's rows
-- (sql/functions/cursor_loop.sql, noetl_pg/cursor.py), protocol v1.

-- name: finish_cursor_claim
-- Apply what a claim command returned (rows, or its error); fenced by attempt and claim.
select * from noetl.finish_cursor_claim_v1(
    %(worker_id)s, %(command_id)s, %(attempt)s, %(claim)s, %(rows)s, %(error)s, %(kinds)s
);

-- name: cursor_claimed_commands
-- The claim payload of commands a cursor claim created already claimed by this worker.
select * from noetl.describe_commands_v1(%(command_ids)s);
