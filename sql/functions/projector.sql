-- projector.sql: who folds which shard, and how far behind it is. Shards are
-- execution_id % shard_count; a projector holds a shard through a lease in
-- noetl.projection_shard and folds it with project_shards (projector_round.sql; the fold
-- of events into a state is projection.sql).

-- noetl.claim_projection_shards(owner, lease_seconds) -> setof shard
-- Contract: the projector heartbeat. Records `owner` as live, renews its leases, then
--   balances: its share is ceil(shards / live projectors); below it, it takes free shards
--   and shards whose lease expired (a dead peer's); above it, it releases the excess for
--   the others to take. Returns the shards `owner` holds after the call.
-- Locks: shard rows, FOR UPDATE SKIP LOCKED (a shard being folded is never taken).
create or replace function noetl.claim_projection_shards(
    p_owner text,
    p_lease_seconds double precision
) returns setof integer
language plpgsql
as $$
declare
    v_lease interval := make_interval(secs => p_lease_seconds);
    v_live integer;
    v_share integer;
    v_held integer;
begin
    insert into noetl.projector as p (owner, seen_at) values (p_owner, noetl.now())
    on conflict (owner) do update set seen_at = excluded.seen_at;
    delete from noetl.projector as p where p.seen_at < noetl.now() - 10 * v_lease;

    select count(*) into v_live from noetl.projector as p where p.seen_at > noetl.now() - v_lease;
    select ceil(count(*)::numeric / greatest(v_live, 1)) into v_share
    from noetl.projection_shard;

    update noetl.projection_shard as s set lease_expires_at = noetl.now() + v_lease
    where s.owner = p_owner;
    get diagnostics v_held = row_count;

    if v_held > v_share then
        update noetl.projection_shard as s set owner = null, lease_expires_at = null
        where s.shard in (
            select o.shard from noetl.projection_shard as o
            where o.owner = p_owner
            order by o.shard desc
            limit v_held - v_share
            for update skip locked
        );
    elsif v_held < v_share then
        update noetl.projection_shard as s
        set owner = p_owner, lease_expires_at = noetl.now() + v_lease
        where s.shard in (
            select f.shard from noetl.projection_shard as f
            where f.owner is null or f.lease_expires_at < noetl.now()
            order by f.shard
            limit v_share - v_held
            for update skip locked
        );
    end if;

    return query
    select s.shard from noetl.projection_shard as s where s.owner = p_owner order by s.shard;
end;
$$;

-- noetl.release_projection_shards(owner) -> integer
-- Contract: a projector's clean exit: gives up its leases at once (peers need not wait for
--   them to expire) and forgets the projector. Returns the number of shards released.
-- Locks: the owner's shard rows (waits for a fold in progress on them).
create or replace function noetl.release_projection_shards(p_owner text)
returns integer
language plpgsql
as $$
declare
    v_released integer;
begin
    update noetl.projection_shard as s set owner = null, lease_expires_at = null
    where s.owner = p_owner;
    get diagnostics v_released = row_count;
    delete from noetl.projector as p where p.owner = p_owner;
    return v_released;
end;
$$;

-- noetl.set_projection_shard_count(n) -> integer
-- Contract: re-shards the projection into n shards (no-op when already n). Every new
--   shard starts from the oldest checkpoint of the old ones: events after it that some
--   old shard had folded are folded again, which the fold ignores (state.position).
--   Leases are dropped; projectors claim the new shards on their next heartbeat.
-- Locks: the shard table (EXCLUSIVE: waits for folds in progress, blocks new ones).
create or replace function noetl.set_projection_shard_count(p_count integer)
returns integer
language plpgsql
as $$
declare
    v_oldest noetl.projection_shard;
begin
    if p_count is null or p_count < 1 then
        raise exception 'shard count must be at least 1, got %', p_count using errcode = '22023';
    end if;
    lock table noetl.projection_shard in exclusive mode;
    if (select count(*) from noetl.projection_shard where shard_count = p_count) = p_count then
        return p_count;
    end if;
    select * into v_oldest from noetl.projection_shard as s
    order by s.checkpoint_tx_id, s.checkpoint_event_id
    limit 1;
    delete from noetl.projection_shard;
    insert into noetl.projection_shard (shard, shard_count, checkpoint_tx_id, checkpoint_event_id)
    select shard_number, p_count, coalesce(v_oldest.checkpoint_tx_id, '0'::xid8),
        coalesce(v_oldest.checkpoint_event_id, 0)
    from generate_series(0, p_count - 1) as shard_number;
    return p_count;
end;
$$;

-- noetl.projection_shard_lag(shard) -> (oldest_pending_event_id, oldest_pending_at,
--   seconds_behind)
-- Contract: how far a shard's projection is behind: the first committed event after its
--   checkpoint and its age (0 when nothing committed waits). One index probe.
-- Locks: none.
create or replace function noetl.projection_shard_lag(p_shard noetl.projection_shard)
returns table (
    oldest_pending_event_id bigint, oldest_pending_at timestamptz, seconds_behind double precision
)
language sql
stable
as $$
    select pending.event_id, pending.created_at,
        coalesce(extract(epoch from clock_timestamp() - pending.created_at), 0)::double precision
    from (select 1) as one
    left join lateral (
        select e.event_id, e.created_at
        from noetl.event as e
        where (e.tx_id, e.event_id) > (p_shard.checkpoint_tx_id, p_shard.checkpoint_event_id)
            and e.execution_id % p_shard.shard_count = p_shard.shard
        order by e.tx_id, e.event_id
        limit 1
    ) as pending on true;
$$;

-- noetl.projection_lag: per shard, its owner and lease, its checkpoint, the newest event
-- (committed, after the checkpoint) still to fold, how many wait, and seconds behind.
create or replace view noetl.projection_lag as
select
    s.shard,
    s.shard_count,
    s.owner,
    s.lease_expires_at,
    s.checkpoint_tx_id,
    s.checkpoint_event_id,
    s.folded_events,
    s.folded_at,
    lag.oldest_pending_event_id,
    tail.newest_event_id,
    lag.seconds_behind,
    coalesce(tail.pending_events, 0) as pending_events
from noetl.projection_shard as s
cross join lateral noetl.projection_shard_lag(s) as lag
left join lateral (
    select
        max(e.event_id) as newest_event_id,
        count(*) as pending_events
    from noetl.event as e
    where
        (e.tx_id, e.event_id) > (s.checkpoint_tx_id, s.checkpoint_event_id)
        and e.execution_id % s.shard_count = s.shard
) as tail on true;
