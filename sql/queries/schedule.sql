-- Statements of noetl_pg/schedules.py and `noetl schedule` (sql/functions/schedule.sql).

-- name: schedule_add
-- A new schedule; its first tick computed by the client.
select
    noetl.add_schedule(
        %(path)s, %(cron)s, %(timezone)s, %(payload)s, %(missed_policy)s, %(first_run_at)s
    ) as schedule_id;

-- name: schedule_due
-- Schedules whose next tick is due, oldest first.
select
    schedule_id,
    cron,
    timezone,
    missed_policy,
    next_run_at,
    noetl.now() as now_at
from noetl.due_schedules(%(batch)s);

-- name: schedule_fire
-- Fire one tick; execution_id is null when another worker fired it.
select
    noetl.fire_schedule(
        %(schedule_id)s, %(expected_next_run_at)s, %(scheduled_for)s, %(next_run_at)s
    ) as execution_id;

-- name: schedule_list
-- Every schedule with its tick counts and the status of its last execution.
select
    s.schedule_id,
    s.path,
    s.cron,
    s.timezone,
    s.payload,
    s.missed_policy,
    s.paused,
    s.next_run_at,
    s.last_run_at,
    s.last_execution_id,
    e.status as last_status,
    (
        select count(*) from noetl.schedule_run as r
        where r.schedule_id = s.schedule_id
    ) as runs
from noetl.schedule as s
left join noetl.execution as e on s.last_execution_id = e.execution_id
order by s.schedule_id;

-- name: schedule_get
-- One schedule (for pause/resume, which recompute its next tick).
select
    schedule_id,
    cron,
    timezone,
    next_run_at,
    paused
from noetl.schedule
where schedule_id = %(schedule_id)s;

-- name: schedule_pause
-- Pause or resume a schedule.
select noetl.pause_schedule(%(schedule_id)s, %(paused)s, %(next_run_at)s) as found;

-- name: schedule_delete
-- Remove a schedule and its tick history.
select noetl.delete_schedule(%(schedule_id)s) as found;
