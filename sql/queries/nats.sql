-- Queries of the NATS accelerator and the capacity registry (noetl_pg/nats_bus.py,
-- noetl_pg/worker/, `noetl workers`).

-- name: report_worker
-- Heartbeat with capacity, sent by the worker itself (via 'db'); true when applied.
select noetl.report_worker_v1(%(report)s, 'db') as applied;

-- name: apply_worker_reports
-- A batch of reports that arrived over NATS, applied before the messages are acknowledged.
select noetl.apply_worker_reports_v1(%(reports)s, 'nats') as applied;

-- name: set_wakeup_nats
-- This session publishes its wake-ups over NATS (no NOTIFY), or goes back to NOTIFY.
select set_config('noetl.wakeup', case when %(nats)s then 'nats' else 'notify' end, false);

-- name: take_wake_counts
-- Commands issued per kind by this session's commits since the last call (then cleared).
select noetl.take_wake_counts_v1() as counts;

-- name: notify_workers
-- Wake LISTENing workers now (NATS went away between the commit and the publish).
select pg_notify('noetl_command', '');

-- name: worker_capacity
-- The capacity registry, live workers first.
select
    worker_id,
    state,
    hostname,
    pid,
    kinds,
    slots,
    available_slots,
    tool_pools,
    reported_via,
    capacity_at,
    heartbeat_at,
    heartbeat_age_seconds
from noetl.worker_capacity
where %(all_workers)s or state = 'alive'
order by state = 'alive' desc, worker_id asc;
