-- 0010_reclaims: a crash is not a failure. Idempotent (columns and index only if missing).
--
-- claim_gen: the claim's fencing token. claim_command_ids bumps it each time a queued
--   command is claimed, and a worker's outcome names the generation it holds, so a command
--   put back on the queue at the SAME attempt (its worker died, its reply was lost) still
--   refuses the late outcome of the claim it was taken from. A command created already
--   claimed starts at generation 0.
-- reclaims: how many times the command was taken back from a worker that stopped
--   heartbeating (or from an earlier process with the same worker id). Bounded by the
--   reaper's max_reclaims (NOETL_MAX_RECLAIMS): past it the command fails as poison.
alter table noetl.command add column if not exists claim_gen integer not null default 0;
alter table noetl.command add column if not exists reclaims integer not null default 0;

-- A worker limited to some kinds (`noetl worker --kinds`) claims through this index, so
-- the claim reads O(batch) entries whatever the backlog of other kinds.
create index if not exists command_queue_kind_idx
on noetl.command (kind, priority desc, command_id)
where status = 'queued';
