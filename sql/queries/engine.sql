-- The statements noetl-pg's Python code runs, each under a `-- name: <name>` header with a
-- one-line description. Python calls them by name (noetl_pg.db.query); it never builds SQL.

-- name: register_playbook
-- Store a new version of a playbook; returns catalog_id, version.
select
    catalog_id,
    version
from noetl.register_playbook(%(path)s, %(content)s, %(spec)s);

-- name: start_execution
-- Start a run of a registered playbook; returns execution_id.
select noetl.start_execution(%(path)s, %(payload)s, %(version)s) as execution_id;

-- name: catalog_list
-- Registered playbooks, newest version of each path first.
select
    path,
    version,
    catalog_id,
    created_at
from noetl.catalog
order by path asc, version desc;

-- name: catalog_spec
-- The canonical spec of one catalog row (workers cache it per catalog_id).
select spec from noetl.catalog
where catalog_id = %(catalog_id)s;

-- name: claim_commands
-- Claim up to n due commands of the given kinds.
select * from noetl.claim_commands_v1(%(worker_id)s, %(kinds)s, %(n)s);

-- name: finish_and_claim
-- Apply finished outcomes and claim the next commands, in one transaction.
select * from noetl.finish_and_claim_v1(%(worker_id)s, %(outcomes)s, %(kinds)s, %(n)s);

-- name: register_worker
-- Add or refresh this worker's registry row.
select noetl.register_worker_v1(%(worker_id)s, %(hostname)s, %(pid)s, %(slots)s, %(kinds)s);

-- name: worker_heartbeat
-- Prove this worker (and so all its claims) alive.
select noetl.worker_heartbeat_v1(%(worker_id)s) as alive;

-- name: stop_worker
-- Leave cleanly: release claims that never reached an outcome.
select noetl.stop_worker_v1(%(worker_id)s) as released;

-- name: execution_status
-- One execution's row (status, result, error, state), without scanning events.
select
    x.execution_id,
    x.path,
    x.version,
    x.status,
    x.result,
    x.error,
    x.failed_step,
    x.started_at,
    x.finished_at,
    x.parent_execution_id,
    coalesce((
        select st.state from noetl.execution_state as st
        where st.execution_id = x.execution_id
    ), '{}') as state
from noetl.execution as x
where x.execution_id = %(execution_id)s;

-- name: execution_steps
-- Per-step command summary of one execution (for `noetl status`).
select
    step_name,
    count(*) filter (where kind <> 'route') as commands,
    count(*) filter (where status = 'done' and kind <> 'route') as done,
    count(*) filter (where status = 'failed') as failed,
    count(*) filter (where status in ('queued', 'claimed', 'waiting')) as active,
    max(attempt) as max_attempt
from noetl.command
where execution_id = %(execution_id)s
group by step_name
order by min(command_id);

-- name: execution_events
-- The event history of one execution in order.
select
    event_id,
    event_type,
    node_name,
    command_id,
    attempt,
    loop_id,
    iter_index,
    meta,
    result,
    error,
    created_at
from noetl.event
where execution_id = %(execution_id)s
order by event_id;

-- name: executions_list
-- Recent executions, optionally filtered by status and path.
select
    execution_id,
    path,
    version,
    status,
    started_at,
    finished_at
from noetl.execution
where
    (%(status)s::text is null or status = %(status)s::text)
    and (%(path)s::text is null or path = %(path)s::text)
order by execution_id desc
limit %(row_limit)s;

-- name: reap_stale_claims
-- Take back claims of workers silent for timeout_seconds (a no-op while another daemon reaps):
-- re-queued at the same attempt, or failed as poison past max_reclaims.
select noetl.reap_stale_claims_v1(%(timeout_seconds)s, %(max_reclaims)s) as reaped;

-- name: cancel_execution
-- Cancel an execution and its running children; returns how many were cancelled.
select noetl.cancel_execution(%(execution_id)s, %(reason)s) as cancelled;

-- name: record_store_fallbacks
-- Warning events for results written to a lower store tier than the first one tried.
select noetl.record_store_fallbacks_v1(%(fallbacks)s) as recorded;

-- name: claim_projection_shards
-- Projector heartbeat: renew leases, take free or expired shards, rebalance; held shards.
select shard from noetl.claim_projection_shards(%(owner)s, %(lease_seconds)s) as shard;

-- name: project_shard
-- Fold the next batch of one shard's events into execution_state (owned, folded, ...).
select * from noetl.project_shard(%(shard)s, %(owner)s, %(batch_limit)s);

-- name: project_shards
-- One projector round: a batch of each held shard with events, idle shards moved on.
select * from noetl.project_shards(%(owner)s, %(batch_limit)s);

-- name: release_projection_shards
-- A projector's clean exit: give up its leases at once.
select noetl.release_projection_shards(%(owner)s) as released;

-- name: set_projection_shard_count
-- Re-shard the projection (no-op when the count is unchanged).
select noetl.set_projection_shard_count(%(count)s) as shard_count;

-- name: execution_progress
-- One execution's row with its projected state and its shard's projection lag.
select
    x.execution_id,
    x.path,
    x.version,
    x.status,
    x.result,
    x.error,
    x.failed_step,
    x.started_at,
    x.finished_at,
    x.parent_execution_id,
    s.shard,
    s.owner as projector,
    lag.seconds_behind as projection_seconds_behind,
    coalesce((
        select st.state from noetl.execution_state as st
        where st.execution_id = x.execution_id
    ), '{}') as state
from noetl.execution as x
inner join noetl.projection_shard as s on mod(x.execution_id, s.shard_count) = s.shard
cross join lateral noetl.projection_shard_lag(s) as lag
where x.execution_id = %(execution_id)s; -- noqa: RF02

-- name: projection_lag
-- Per shard: owner, checkpoint, events waiting and seconds behind.
select * from noetl.projection_lag
order by shard;

-- name: reap_orphan_claims
-- Take back this worker's claims older than min_age_seconds that no slot holds.
select noetl.reap_orphan_claims_v1(
    %(worker_id)s, %(held)s::bigint[], %(min_age_seconds)s
) as reaped;
