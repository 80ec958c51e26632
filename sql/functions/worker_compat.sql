-- worker_compat.sql: the unversioned worker API, kept for workers older than protocol v1.
--
-- Each function here is a thin wrapper over its _v1 twin (same arguments, same result), so
-- a worker of the previous release keeps claiming and finishing through a rolling upgrade,
-- and a DBA's `select noetl.reap_stale_claims(300)` keeps working. New callers (this
-- release's sql/queries) call the _v1 names. Contracts, locks and failure modes are those
-- of the _v1 function each one names.

-- noetl.claim_commands(worker_id, kinds, n) -> setof noetl.claimed_command
-- Contract: noetl.claim_commands_v1. Locks: as it.
create or replace function noetl.claim_commands(
    p_worker_id text,
    p_kinds text[] default null,
    p_n integer default 1
) returns setof noetl.claimed_command
language sql
as $$
    select * from noetl.claim_commands_v1(p_worker_id, p_kinds, p_n);
$$;

-- noetl.finish_and_claim(worker_id, outcomes, kinds, n) -> setof noetl.claimed_command
-- Contract: noetl.finish_and_claim_v1. Locks: as it.
create or replace function noetl.finish_and_claim(
    p_worker_id text,
    p_outcomes jsonb,
    p_kinds text[] default null,
    p_n integer default 0
) returns setof noetl.claimed_command
language sql
as $$
    select * from noetl.finish_and_claim_v1(p_worker_id, p_outcomes, p_kinds, p_n);
$$;

-- noetl.register_worker(worker_id, hostname, pid, slots, kinds) -> void
-- Contract: noetl.register_worker_v1. Locks: as it.
create or replace function noetl.register_worker(
    p_worker_id text,
    p_hostname text,
    p_pid integer,
    p_slots integer,
    p_kinds text[]
) returns void
language sql
as $$
    select noetl.register_worker_v1(p_worker_id, p_hostname, p_pid, p_slots, p_kinds);
$$;

-- noetl.worker_heartbeat(worker_id) -> boolean
-- Contract: noetl.worker_heartbeat_v1. Locks: as it.
create or replace function noetl.worker_heartbeat(p_worker_id text) returns boolean
language sql
as $$
    select noetl.worker_heartbeat_v1(p_worker_id);
$$;

-- noetl.stop_worker(worker_id) -> integer
-- Contract: noetl.stop_worker_v1. Locks: as it.
create or replace function noetl.stop_worker(p_worker_id text) returns integer
language sql
as $$
    select noetl.stop_worker_v1(p_worker_id);
$$;

-- noetl.reap_stale_claims(timeout_seconds, max_reclaims) -> integer
-- Contract: noetl.reap_stale_claims_v1. Locks: as it.
create or replace function noetl.reap_stale_claims(
    p_timeout_seconds double precision default 300,
    p_max_reclaims integer default 5
) returns integer
language sql
as $$
    select noetl.reap_stale_claims_v1(p_timeout_seconds, p_max_reclaims);
$$;

-- noetl.reap_orphan_claims(worker_id, held_command_ids, min_age_seconds) -> integer
-- Contract: noetl.reap_orphan_claims_v1. Locks: as it.
create or replace function noetl.reap_orphan_claims(
    p_worker_id text,
    p_held_command_ids bigint[],
    p_min_age_seconds double precision
) returns integer
language sql
as $$
    select noetl.reap_orphan_claims_v1(p_worker_id, p_held_command_ids, p_min_age_seconds);
$$;

-- noetl.reap_earlier_process(worker_id, max_reclaims) -> integer
-- Contract: noetl.reap_earlier_process_v1. Locks: as it.
create or replace function noetl.reap_earlier_process(
    p_worker_id text,
    p_max_reclaims integer default 5
) returns integer
language sql
as $$
    select noetl.reap_earlier_process_v1(p_worker_id, p_max_reclaims);
$$;

-- noetl.finish_cursor_claim(worker_id, command_id, attempt, claim_gen, rows, error, kinds)
--   -> (outcome, route_command_id, claimed)
-- Contract: noetl.finish_cursor_claim_v1. Locks: as it.
create or replace function noetl.finish_cursor_claim(
    p_worker_id text,
    p_command_id bigint,
    p_attempt integer,
    p_claim_gen integer,
    p_rows jsonb,
    p_error text default null,
    p_kinds text[] default null,
    out outcome text,
    out route_command_id bigint,
    out claimed bigint[]
)
language sql
as $$
    select * from noetl.finish_cursor_claim_v1(
        p_worker_id, p_command_id, p_attempt, p_claim_gen, p_rows, p_error, p_kinds
    );
$$;

-- noetl.record_partial(command_id, attempt, claim, chunk_index, has_more, row_count,
--                      columns, rows, targets) -> text
-- Contract: noetl.record_partial_v1. Locks: as it.
create or replace function noetl.record_partial(
    p_command_id bigint,
    p_attempt integer,
    p_claim integer,
    p_chunk_index integer,
    p_has_more boolean,
    p_row_count integer,
    p_columns jsonb,
    p_rows jsonb,
    p_targets jsonb
) returns text
language sql
as $$
    select noetl.record_partial_v1(
        p_command_id, p_attempt, p_claim, p_chunk_index, p_has_more, p_row_count, p_columns,
        p_rows, p_targets
    );
$$;

-- noetl.stream_chunks(command_id, attempt) -> integer[]
-- Contract: noetl.stream_chunks_v1. Locks: as it (none).
create or replace function noetl.stream_chunks(
    p_command_id bigint,
    p_attempt integer
) returns integer[]
language sql
stable
as $$
    select noetl.stream_chunks_v1(p_command_id, p_attempt);
$$;

-- noetl.report_worker(report, via) -> boolean
-- Contract: noetl.report_worker_v1. Locks: as it.
create or replace function noetl.report_worker(
    p_report jsonb,
    p_via text default 'db'
) returns boolean
language sql
as $$
    select noetl.report_worker_v1(p_report, p_via);
$$;

-- noetl.apply_worker_reports(reports, via) -> integer
-- Contract: noetl.apply_worker_reports_v1. Locks: as it.
create or replace function noetl.apply_worker_reports(
    p_reports jsonb,
    p_via text default 'nats'
) returns integer
language sql
as $$
    select noetl.apply_worker_reports_v1(p_reports, p_via);
$$;

-- noetl.take_wake_counts() -> jsonb
-- Contract: noetl.take_wake_counts_v1. Locks: as it (none).
create or replace function noetl.take_wake_counts() returns jsonb
language sql
as $$
    select noetl.take_wake_counts_v1();
$$;

-- noetl.record_store_fallbacks(fallbacks) -> integer
-- Contract: noetl.record_store_fallbacks_v1. Locks: as it.
create or replace function noetl.record_store_fallbacks(p_fallbacks jsonb) returns integer
language sql
as $$
    select noetl.record_store_fallbacks_v1(p_fallbacks);
$$;

-- noetl.describe_commands(command_ids) -> setof noetl.claimed_command
-- Contract: noetl.describe_commands_v1. Locks: as it (none).
create or replace function noetl.describe_commands(p_command_ids bigint[])
returns setof noetl.claimed_command
language sql
stable
as $$
    select * from noetl.describe_commands_v1(p_command_ids);
$$;
