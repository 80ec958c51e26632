-- capacity.sql: the capacity registry. A worker reports with every heartbeat how many of
-- its slots are free and what its tool pools hold, either itself (report_worker_v1, via
-- 'db') or as an event over NATS that a consumer applies in batches
-- (apply_worker_reports_v1, via 'nats'). Reports are ordered by the worker's own send
-- time, so a redelivered or late report changes nothing. Worker protocol v1: the
-- unversioned names are kept for older workers (worker_compat.sql).

-- noetl.report_worker_v1(report, via) -> boolean
-- Contract: applies one report {worker_id, hostname, pid, slots, kinds, available_slots,
--   tool_pools, sent_at}: registers the worker when its row is missing, else refreshes
--   heartbeat_at (never backwards, never past noetl.now()) and the capacity columns.
--   Idempotent: a report whose sent_at is not newer than the worker's capacity_at (the
--   send time of the report applied last) changes nothing, nor does one sent before the
--   worker stopped cleanly; a newer one from a stopped worker registers it again.
--   Returns true when the report was applied. sent_at missing: noetl.now().
-- Locks: the worker row.
-- Failure modes: a report without worker_id raises 22023.
create or replace function noetl.report_worker_v1(
    p_report jsonb,
    p_via text default 'db'
) returns boolean
language plpgsql
as $$
declare
    v_sent timestamptz := coalesce((p_report ->> 'sent_at')::timestamptz, noetl.now());
begin
    if p_report ->> 'worker_id' is null then
        raise exception 'report_worker: the report has no worker_id' using errcode = '22023';
    end if;
    insert into noetl.worker as w (
        worker_id, hostname, pid, slots, kinds, heartbeat_at, available_slots, tool_pools,
        capacity_at, reported_via
    )
    values (
        p_report ->> 'worker_id',
        p_report ->> 'hostname',
        (p_report ->> 'pid')::integer,
        coalesce((p_report ->> 'slots')::integer, 1),
        case when jsonb_typeof(p_report -> 'kinds') = 'array' then
            array(select jsonb_array_elements_text(p_report -> 'kinds'))
        end,
        least(v_sent, noetl.now()),
        (p_report ->> 'available_slots')::integer,
        coalesce(p_report -> 'tool_pools', '{}'),
        v_sent,
        p_via
    )
    on conflict (worker_id) do update
    set hostname = excluded.hostname,
        pid = excluded.pid,
        slots = excluded.slots,
        kinds = excluded.kinds,
        heartbeat_at = greatest(w.heartbeat_at, excluded.heartbeat_at),
        available_slots = excluded.available_slots,
        tool_pools = excluded.tool_pools,
        capacity_at = excluded.capacity_at,
        reported_via = excluded.reported_via,
        stopped_at = null
    where
        (w.capacity_at is null or excluded.capacity_at > w.capacity_at)
        and (w.stopped_at is null or excluded.capacity_at > w.stopped_at);
    return found;
end;
$$;

-- noetl.apply_worker_reports_v1(reports, via) -> integer
-- Contract: applies a batch of reports (a JSON array, as report_worker_v1) in one
--   transaction, as the NATS consumer does before it acknowledges the messages; returns
--   how many were applied (the others were redeliveries or older than what is stored).
-- Locks: the worker rows, in worker_id order, so two consumers applying overlapping
--   batches never deadlock.
create or replace function noetl.apply_worker_reports_v1(
    p_reports jsonb,
    p_via text default 'nats'
) returns integer
language plpgsql
as $$
declare
    v_report jsonb;
    v_applied integer := 0;
begin
    for v_report in
        select r.value from jsonb_array_elements(coalesce(p_reports, '[]')) as r (value)
        order by r.value ->> 'worker_id', (r.value ->> 'sent_at')::timestamptz
    loop
        if noetl.report_worker_v1(v_report, p_via) then
            v_applied := v_applied + 1;
        end if;
    end loop;
    return v_applied;
end;
$$;
