-- operable.sql: worker statistics for /metrics, and schedules over HTTP.

-- name: worker_publish_stats
-- The heartbeat's second statement: what this worker ran over the trailing window
-- (noetl_pg/command_stats.py), read by /metrics instead of noetl.command.
update noetl.worker
set stats = %(stats)s
where worker_id = %(worker_id)s;

-- name: server_metrics
-- /metrics in one round trip: executions by status (execution_status_idx), live workers,
-- their slots and the sum of their published window statistics (noetl.worker, one row
-- per worker), the queue per kind (the partial indexes of the active statuses), and the
-- projection lag over RUNNING executions (one primary-key probe of noetl.event each).
select
    (
        select coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
        from (
            select
                x.status,
                count(*) as n
            from noetl.execution as x
            group by x.status
        ) as s
    ) as executions,
    (
        select
            jsonb_build_object(
                'alive', count(*),
                'slots', coalesce(sum(w.slots), 0),
                'stats', coalesce(
                    jsonb_agg(w.stats) filter (where w.stats is not null),
                    '[]'::jsonb
                )
            )
        from noetl.worker as w
        where
            w.stopped_at is null
            and w.heartbeat_at > clock_timestamp() - make_interval(secs => %(alive_seconds)s)
    ) as workers,
    (
        select coalesce(jsonb_agg(to_jsonb(q) order by q.kind), '[]'::jsonb)
        from (
            select
                c.kind,
                count(*) filter (
                    where c.status = 'queued' and c.available_at <= now()
                ) as queued_due,
                count(*) filter (
                    where c.status = 'queued' and c.available_at > now()
                ) as queued_later,
                count(*) filter (where c.status = 'claimed') as claimed,
                count(*) filter (where c.status = 'waiting') as waiting
            from noetl.command as c
            where c.status in ('queued', 'claimed', 'waiting')
            group by c.kind
        ) as q
    ) as queue,
    (
        select
            jsonb_build_object(
                'executions_behind', count(pending.created_at),
                'seconds_behind', coalesce(
                    max(extract(epoch from clock_timestamp() - pending.created_at)), 0
                )::double precision
            )
        from noetl.execution as x
        left join noetl.execution_state as st on x.execution_id = st.execution_id
        left join lateral (
            select e.created_at
            from noetl.event as e
            where
                e.execution_id = x.execution_id
                and e.event_id > coalesce((st.state #>> '{position,1}')::bigint, 0)
            order by e.event_id
            limit 1
        ) as pending on true
        where x.status = 'RUNNING'
    ) as lag;

-- name: schedule_of_execution
-- The schedule tick that started an execution, if one did (`noetl status`).
select
    r.schedule_id,
    s.cron,
    s.timezone,
    r.scheduled_for
from noetl.schedule_run as r
inner join noetl.schedule as s on r.schedule_id = s.schedule_id
where r.execution_id = %(execution_id)s -- noqa: RF02
order by r.scheduled_for
limit 1;
