-- 0002_loop: loop counters and items. One `loop` row per activation of a loop step (a step
-- reached twice gets two rows), one `loop_item` row per element of its collection.

create sequence if not exists noetl.loop_id_seq;

create table if not exists noetl.loop (
    loop_id bigint primary key default nextval('noetl.loop_id_seq'),
    execution_id bigint not null,
    step_name text not null,
    -- The 'loop' command whose worker rendered the collection; completes at loop close.
    command_id bigint not null,
    iterator text not null,
    mode text not null check (mode in ('sequential', 'parallel')),
    max_in_flight integer not null check (max_in_flight >= 1),
    total integer not null,
    issued integer not null default 0,
    done integer not null default 0,
    failed integer not null default 0,
    -- Fan-out (distributed) loops: failed shards are retried up to max_shard_retries.
    is_fanout boolean not null default false,
    max_shard_retries integer not null default 0,
    status text not null default 'running' check (status in ('running', 'done', 'cancelled')),
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    constraint loop_command_key unique (execution_id, command_id)
) with (fillfactor = 50);

create table if not exists noetl.loop_item (
    loop_id bigint not null,
    iter_index integer not null,
    execution_id bigint not null,
    item_value jsonb,
    status text not null default 'pending'
    check (status in ('pending', 'issued', 'done', 'failed')),
    command_id bigint,
    result jsonb,
    shard_attempts integer not null default 0,
    primary key (loop_id, iter_index)
) with (fillfactor = 80);

create index if not exists loop_item_pending_idx on noetl.loop_item (loop_id, iter_index)
where status = 'pending';
