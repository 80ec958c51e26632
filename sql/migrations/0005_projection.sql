-- 0005_projection: shards, leases and checkpoints of the asynchronous projection of events
-- into execution.state (see sql/functions/projection.sql). Idempotent.

-- One row per projection shard: executions with execution_id % shard_count = shard.
-- A projector owns a shard while its lease runs; the checkpoint is the (tx_id, event_id)
-- of the last folded event, in that order: every event of the shard before it is folded.
create table if not exists noetl.projection_shard (
    shard integer primary key check (shard >= 0),
    shard_count integer not null check (shard_count > shard),
    owner text,
    lease_expires_at timestamptz,
    checkpoint_tx_id xid8 not null default '0'::xid8,
    checkpoint_event_id bigint not null default 0,
    folded_events bigint not null default 0,
    folded_at timestamptz
) with (fillfactor = 50);

insert into noetl.projection_shard (shard, shard_count)
select
    shard_number as shard,
    16 as shard_count
from generate_series(0, 15) as shard_number
on conflict (shard) do nothing;

-- Live projectors (one row each, refreshed with every lease renewal) so that shares can be
-- balanced: a projector holding more than its share releases the excess.
create table if not exists noetl.projector (
    owner text primary key,
    seen_at timestamptz not null default now()
);

-- The projector reads each shard's events in (tx_id, event_id) order from its checkpoint.
create index if not exists event_tx_idx on noetl.event (tx_id, event_id);

-- The columns of an event the fold reads (never the result: it may be large).
do $$
begin
    if to_regtype('noetl.projection_event') is null then
        create type noetl.projection_event as (
            event_id bigint,
            tx_id xid8,
            event_type text,
            node_name text,
            command_id bigint,
            loop_id bigint,
            iter_index integer,
            attempt integer,
            meta jsonb,
            error text,
            created_at timestamptz
        );
    end if;
end
$$;
