-- 0001_core: the engine's tables. Idempotent: every object is created only if missing.
-- Every row is keyed by execution_id first so an execution's rows stay together and the
-- schema can be distributed by execution_id (Citus) when one server is not enough.

create schema if not exists noetl;

-- Registered playbooks: one row per (path, version). `spec` is the canonical JSON form
-- produced by the Python DSL parser; `content` is the YAML as the user wrote it.
create table if not exists noetl.catalog (
    catalog_id bigint generated always as identity primary key,
    path text not null,
    version integer not null,
    content text not null,
    spec jsonb not null,
    created_at timestamptz not null default now(),
    constraint catalog_path_version_key unique (path, version)
);

-- The routing plan of each step, extracted from `catalog.spec` at registration so the hot
-- path reads one narrow row instead of de-toasting the whole spec.
create table if not exists noetl.catalog_step (
    catalog_id bigint not null references noetl.catalog (catalog_id),
    step_name text not null,
    tool_kind text not null,
    -- 'none' (terminal), 'direct' (unconditional arcs, applied in SQL) or 'router'.
    route_mode text not null check (route_mode in ('none', 'direct', 'router')),
    -- For 'direct': the target step names, in arc order.
    direct_targets text[] not null default '{}',
    is_join boolean not null default false,
    has_loop boolean not null default false,
    -- Steps reachable from this one through any arc (for join readiness).
    reaches text[] not null default '{}',
    max_attempts integer not null default 1 check (max_attempts >= 1),
    primary key (catalog_id, step_name)
);

create sequence if not exists noetl.execution_id_seq;

create table if not exists noetl.execution (
    execution_id bigint primary key default nextval('noetl.execution_id_seq'),
    catalog_id bigint not null references noetl.catalog (catalog_id),
    path text not null,
    version integer not null,
    status text not null default 'RUNNING'
    check (status in ('RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    -- The playbook's workload merged with the start payload.
    workload jsonb not null default '{}',
    -- `ctx.*` writes from step and arc `set` blocks.
    ctx jsonb not null default '{}',
    result jsonb,
    error text,
    failed_step text,
    parent_execution_id bigint,
    parent_command_id bigint,
    -- Projection of the event history (see sql/functions/projection.sql).
    state jsonb not null default '{}',
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    updated_at timestamptz not null default now()
) with (fillfactor = 80);

create index if not exists execution_status_idx on noetl.execution (status, started_at);
create index if not exists execution_parent_idx on noetl.execution (parent_execution_id)
where parent_execution_id is not null;

-- Append-only history, the source of truth. Hash-partitioned by execution_id.
create sequence if not exists noetl.event_id_seq;

create table if not exists noetl.event (
    execution_id bigint not null,
    event_id bigint not null default nextval('noetl.event_id_seq'),
    event_type text not null,
    node_name text,
    command_id bigint,
    loop_id bigint,
    iter_index integer,
    attempt integer,
    meta jsonb,
    result jsonb,
    result_ref text,
    error text,
    -- Writing transaction id: lets the projector fold events committed out of id order.
    tx_id xid8 not null default pg_current_xact_id(),
    created_at timestamptz not null default clock_timestamp(),
    primary key (execution_id, event_id)
) partition by hash (execution_id);

do $$
begin
    for shard in 0..15 loop
        execute format(
            'create table if not exists noetl.%I partition of noetl.event '
            'for values with (modulus 16, remainder %s)',
            'event_p' || shard, shard
        );
    end loop;
end
$$;

create index if not exists event_type_idx on noetl.event (execution_id, event_type);

-- The work queue: one row per unit of work (a step run, a loop iteration, a route decision).
create sequence if not exists noetl.command_id_seq;

create table if not exists noetl.command (
    command_id bigint primary key default nextval('noetl.command_id_seq'),
    execution_id bigint not null,
    -- Deterministic identity of the cause of this command: issuing it again is a no-op.
    command_key text not null,
    -- A tool kind, or 'route' (evaluate arcs) or 'loop' (render a loop's collection).
    kind text not null,
    step_name text not null,
    loop_id bigint,
    iter_index integer,
    status text not null default 'queued'
    check (status in ('queued', 'claimed', 'waiting', 'done', 'failed', 'cancelled')),
    attempt integer not null default 1,
    max_attempts integer not null default 1,
    available_at timestamptz not null default now(),
    claimed_by text,
    claimed_at timestamptz,
    priority integer not null default 0,
    -- What the command needs beyond the step spec (route: event and source command).
    input jsonb,
    created_at timestamptz not null default now(),
    finished_at timestamptz,
    constraint command_key_unique unique (execution_id, command_key)
) with (fillfactor = 80);

-- The queue index: only queued rows, in claim order.
create index if not exists command_queue_idx on noetl.command (priority desc, command_id)
where status = 'queued';
-- Active work per execution (completion and join checks).
create index if not exists command_active_idx on noetl.command (execution_id, step_name)
where status in ('queued', 'claimed', 'waiting');
-- Claims per worker (heartbeat reaping).
create index if not exists command_claimed_by_idx on noetl.command (claimed_by)
where status = 'claimed';

-- Latest result of each step of an execution, read by templates of later steps.
create table if not exists noetl.step_result (
    execution_id bigint not null,
    step_name text not null,
    result jsonb,
    command_id bigint not null,
    updated_at timestamptz not null default now(),
    primary key (execution_id, step_name)
);

-- Arrivals at a join step waiting for the other started branches.
create table if not exists noetl.join_arrival (
    execution_id bigint not null,
    step_name text not null,
    source_command_id bigint not null,
    arc_set jsonb,
    consumed_by bigint,
    arrived_at timestamptz not null default now(),
    primary key (execution_id, step_name, source_command_id)
);

create index if not exists join_arrival_open_idx on noetl.join_arrival (execution_id)
where consumed_by is null;

-- Workers: registry and heartbeat (one row per worker, one write per interval).
create table if not exists noetl.worker (
    worker_id text primary key,
    hostname text,
    pid integer,
    slots integer not null default 1,
    kinds text[],
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    stopped_at timestamptz
) with (fillfactor = 70);
