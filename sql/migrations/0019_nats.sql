-- 0019_nats: the capacity registry. Each worker reports with its heartbeat how many of its
-- slots are free and what its tool pools hold (directly, or as an event over NATS that a
-- consumer applies); publishers of NATS wake-ups offer commands to workers with free slots.
-- capacity_at is the worker's own send time of the report applied last, so a redelivered
-- or late report never overwrites a newer one; reported_via says which path it took.
alter table noetl.worker
add column if not exists available_slots integer,
add column if not exists tool_pools jsonb not null default '{}',
add column if not exists capacity_at timestamptz,
add column if not exists reported_via text;

comment on column noetl.worker.available_slots is
'Free slots in the last capacity report (slots minus what the worker is running).';
comment on column noetl.worker.tool_pools is
'Tool pools of the last capacity report: {tool kind: {free, ...pool sizes}}.';
comment on column noetl.worker.capacity_at is
'Send time of the last capacity report applied (reports older than this are ignored).';
comment on column noetl.worker.reported_via is
'How the last report arrived: db (the worker''s own call) or nats (applied by a consumer).';

-- Live workers and what they can take now: the registry `noetl workers` shows.
create or replace view noetl.worker_capacity as
select
    w.worker_id,
    w.hostname,
    w.pid,
    w.kinds,
    w.slots,
    w.available_slots,
    w.tool_pools,
    w.reported_via,
    w.capacity_at,
    w.heartbeat_at,
    w.started_at,
    case
        when w.stopped_at is not null then 'stopped'
        when w.heartbeat_at >= now() - make_interval(secs => noetl.worker_gone_seconds())
            then 'alive'
        else 'gone'
    end as state,
    extract(epoch from now() - w.heartbeat_at)::double precision as heartbeat_age_seconds
from noetl.worker as w;

comment on view noetl.worker_capacity is
'Workers with their last capacity report: free slots, tool pools, how it arrived, and state
(alive, gone or stopped, as in noetl.worker_status).';
