-- The statements of the HTTP server (noetl_pg/server/), each under a `-- name:` header.
-- Reads come from noetl.execution and its projected state (noetl.execution_state),
-- noetl.catalog, noetl.command's indexes and noetl.worker; noetl.event is only read one
-- page at a time by primary key.

-- name: server_ping
-- Health check: the database answers.
select 1 as ok;

-- name: server_start_execution
-- POST /api/execute: start a run of a registered playbook; returns execution_id.
select noetl.start_execution(%(path)s, %(payload)s, %(version)s) as execution_id;

-- name: server_commands_issued
-- How many commands an execution has issued so far (the execute response's count).
select count(*) as commands
from noetl.command
where execution_id = %(execution_id)s;

-- name: server_catalog_by_id
-- The path and version of one catalog row (POST /api/execute by catalog_id).
select
    path,
    version
from noetl.catalog
where catalog_id = %(catalog_id)s;

-- name: server_catalog_entries
-- POST /api/catalog/list: every registered version, optionally of one path, newest first.
select
    catalog_id,
    path,
    version,
    content,
    created_at,
    spec -> 'workload' as payload,
    spec -> 'metadata' as meta
from noetl.catalog
where %(path)s::text is null or path = %(path)s::text
order by created_at desc, catalog_id desc;

-- name: server_catalog_entry
-- POST /api/catalog/resource: by catalog_id, else path and version (latest when null).
select
    catalog_id,
    path,
    version,
    content,
    created_at,
    spec -> 'workload' as payload,
    spec -> 'metadata' as meta
from noetl.catalog
where
    (%(catalog_id)s::bigint is not null and catalog_id = %(catalog_id)s::bigint)
    or (
        %(catalog_id)s::bigint is null
        and path = %(path)s::text
        and (%(version)s::integer is null or version = %(version)s::integer)
    )
order by version desc
limit 1;

-- name: server_executions_page
-- GET /api/executions: newest first, filtered by status and path (prefix), one page.
select
    x.execution_id,
    x.catalog_id,
    x.path,
    x.version,
    x.status,
    x.error,
    x.failed_step,
    x.parent_execution_id,
    x.started_at,
    x.finished_at,
    (
        select st.state -> 'steps' from noetl.execution_state as st
        where st.execution_id = x.execution_id
    ) as steps,
    (
        select st.state -> 'loop' from noetl.execution_state as st
        where st.execution_id = x.execution_id
    ) as loops,
    (
        select count(*) from noetl.catalog_step as cs
        where cs.catalog_id = x.catalog_id
    ) as step_count
from noetl.execution as x
where
    (%(status)s::text is null or x.status = %(status)s::text)
    and (%(path)s::text is null or starts_with(x.path, %(path)s::text))
    and x.execution_id < coalesce(%(before_id)s::bigint, 9223372036854775807)
order by x.execution_id desc
limit %(row_limit)s offset %(row_offset)s;

-- name: server_execution
-- GET /api/executions/{id} and /status: the row with its projected state (no event scan);
-- the result (it may be large) only when asked for.
select
    x.execution_id,
    x.catalog_id,
    x.path,
    x.version,
    x.status,
    x.error,
    x.failed_step,
    x.parent_execution_id,
    x.ctx,
    x.started_at,
    x.finished_at,
    case when %(with_result)s then x.result end as result,
    coalesce((
        select st.state from noetl.execution_state as st
        where st.execution_id = x.execution_id
    ), '{}') as state,
    (
        select count(*) from noetl.catalog_step as cs
        where cs.catalog_id = x.catalog_id
    ) as step_count
from noetl.execution as x
where x.execution_id = %(execution_id)s;

-- name: server_execution_graph
-- The steps and arcs of an execution's playbook version (its catalog spec).
select
    c.spec -> 'workflow' as workflow,
    c.spec ->> 'entry_step' as entry_step
from noetl.execution as x
inner join noetl.catalog as c on x.catalog_id = c.catalog_id
where x.execution_id = %(execution_id)s; -- noqa: RF02

-- name: server_events_page
-- One page of an execution's events by primary key: newest first, before a cursor,
-- after since_event_id, optionally of one type.
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
    result_ref,
    error,
    created_at
from noetl.event
where
    execution_id = %(execution_id)s
    -- plain ranges (no "param is null or ..."), so a generic plan still walks the key
    and event_id < coalesce(%(before_id)s::bigint, 9223372036854775807)
    and event_id > coalesce(%(since_id)s::bigint, 0)
    and (%(event_type)s::text is null or event_type = %(event_type)s::text)
order by event_id desc
limit %(row_limit)s offset %(row_offset)s;

-- name: server_cancel_execution
-- POST /api/executions/{id}/cancel: noetl.cancel_execution (one transaction with the next).
select noetl.cancel_execution(%(execution_id)s, %(reason)s) as cancelled;

-- name: server_cancelled_tree
-- The executions of a tree that this transaction finished CANCELLED (finished_at = now()).
with recursive tree as (
    select execution_id from noetl.execution
    where execution_id = %(execution_id)s
    union all
    select child.execution_id
    from noetl.execution as child
    inner join tree on child.parent_execution_id = tree.execution_id
)

select x.execution_id
from noetl.execution as x
inner join tree on x.execution_id = tree.execution_id
where x.status = 'CANCELLED' and x.finished_at = now()
order by x.execution_id;

-- name: server_workers
-- Registered workers with heartbeat age, slots and how many commands each holds now.
select
    w.worker_id,
    w.hostname,
    w.pid,
    w.slots,
    w.kinds,
    w.started_at,
    w.heartbeat_at,
    w.stopped_at,
    extract(epoch from clock_timestamp() - w.heartbeat_at)::double precision
        as heartbeat_age_seconds,
    (
        select count(*) from noetl.command as c
        where c.status = 'claimed' and c.claimed_by = w.worker_id
    ) as claimed
from noetl.worker as w
order by w.stopped_at is not null, w.heartbeat_at desc;

-- name: server_queue
-- Commands queued (due and later), claimed and waiting, per kind (partial indexes only).
select
    kind,
    count(*) filter (
        where status = 'queued' and available_at <= now()
    ) as queued_due,
    count(*) filter (
        where status = 'queued' and available_at > now()
    ) as queued_later,
    count(*) filter (where status = 'claimed') as claimed,
    count(*) filter (where status = 'waiting') as waiting
from noetl.command
where status in ('queued', 'claimed', 'waiting')
group by kind
order by kind;

-- name: server_token_add
-- `noetl server token add`: store (or replace) a token's hash under a name with a role.
insert into noetl.api_token (name, role, token_sha256)
values (%(token_name)s, %(role)s, %(token_sha256)s)
on conflict (name) do update
    set
        role = excluded.role,
        token_sha256 = excluded.token_sha256,
        created_at = now(),
        revoked_at = null
returning name, role, created_at;

-- name: server_token_revoke
-- `noetl server token revoke`: a revoked token is refused from then on.
update noetl.api_token
set revoked_at = now()
where name = %(token_name)s and revoked_at is null
returning name;

-- name: server_token_list
-- `noetl server token list`: names, roles and dates (never hashes).
select
    name,
    role,
    created_at,
    revoked_at
from noetl.api_token
order by name;

-- name: server_token_lookup
-- The role of a presented token (by its hash); none when unknown or revoked.
select
    name,
    role
from noetl.api_token
where token_sha256 = %(token_sha256)s and revoked_at is null;

-- name: server_token_count
-- How many live tokens exist (none: a loopback server runs without auth).
select count(*) as tokens
from noetl.api_token
where revoked_at is null;

-- name: server_optional_functions
-- Which optional SQL functions this database has (the resume/rerun endpoints need them).
select
    to_regprocedure('noetl.resume_execution(bigint)') is not null as resume,
    to_regprocedure('noetl.rerun_execution(bigint, text)') is not null as rerun;

-- name: server_resume_execution
-- POST /api/executions/{id}/resume: noetl.resume_execution; how many commands it reissued.
select noetl.resume_execution(%(execution_id)s) as commands;

-- name: server_rerun_execution
-- POST /api/executions/{id}/rerun: noetl.rerun_execution from a step; the new execution.
select noetl.rerun_execution(%(execution_id)s, %(from_step)s) as execution_id;
