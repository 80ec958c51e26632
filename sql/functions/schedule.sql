-- schedule.sql: cron schedules (table noetl.schedule, migration 0016).
--
-- Map: add_schedule -> (workers' housekeeping) due_schedules -> fire_schedule -> an
-- execution per tick; pause_schedule, delete_schedule. Cron expressions are evaluated by
-- the client (noetl_pg/schedules.py); the database decides which tick fires, once.

-- noetl.add_schedule(path, cron, timezone, payload, missed_policy, first_run_at)
--   -> schedule_id
-- Contract: stores a schedule whose first tick is first_run_at (the client computed it from
--   the cron expression in the time zone). The playbook must be registered.
-- Locks: none beyond the new row.
-- Failure modes: raises (22023) for an unregistered path, a payload that is not a JSON
--   object or an unknown missed_policy.
create or replace function noetl.add_schedule(
    p_path text,
    p_cron text,
    p_timezone text,
    p_payload jsonb,
    p_missed_policy text,
    p_first_run_at timestamptz
) returns bigint
language plpgsql
as $$
declare
    v_schedule_id bigint;
begin
    if not exists (select 1 from noetl.catalog as c where c.path = p_path) then
        raise exception 'playbook % is not registered', p_path using errcode = '22023';
    end if;
    if jsonb_typeof(coalesce(p_payload, '{}'::jsonb)) <> 'object' then
        raise exception 'schedule payload must be a JSON object' using errcode = '22023';
    end if;
    if p_missed_policy not in ('skip', 'catch_up') then
        raise exception 'missed-tick policy must be skip or catch_up, got %', p_missed_policy
            using errcode = '22023';
    end if;
    insert into noetl.schedule (path, cron, timezone, payload, missed_policy, next_run_at)
    values (p_path, p_cron, p_timezone, coalesce(p_payload, '{}'::jsonb), p_missed_policy,
            p_first_run_at)
    returning schedule_id into v_schedule_id;
    return v_schedule_id;
end;
$$;

-- noetl.due_schedules(limit) -> setof noetl.schedule
-- Contract: up to `limit` unpaused schedules whose next tick is due (next_run_at <=
--   noetl.now()), oldest tick first. Reading them claims nothing: fire_schedule decides.
-- Locks: none (skips nothing; a schedule being fired is seen and then refused there).
create or replace function noetl.due_schedules(p_limit integer default 20)
returns setof noetl.schedule
language sql
stable
as $$
    select s.*
    from noetl.schedule as s
    where not s.paused and s.next_run_at <= noetl.now()
    order by s.next_run_at
    limit p_limit
$$;

-- noetl.fire_schedule(schedule_id, expected_next_run_at, scheduled_for, next_run_at)
--   -> execution_id
-- Contract: fires one tick exactly once. When the schedule still has expected_next_run_at
--   as its next tick and is not paused, records schedule_run (schedule_id, scheduled_for),
--   starts the execution (path, payload) and moves next_run_at to next_run_at, all in this
--   transaction. Returns the new execution id; NULL when another worker fired it first,
--   the schedule was paused or deleted, or the tick was already recorded. A start that
--   fails (the playbook's payload limit, a removed path) records the tick with its error
--   and still moves on, so a broken schedule does not fire in a loop.
-- Locks: the schedule row (FOR UPDATE SKIP LOCKED: a worker that finds it locked leaves the
--   tick to the one holding it).
create or replace function noetl.fire_schedule(
    p_schedule_id bigint,
    p_expected_next_run_at timestamptz,
    p_scheduled_for timestamptz,
    p_next_run_at timestamptz
) returns bigint
language plpgsql
as $$
declare
    v_schedule noetl.schedule;
    v_execution_id bigint;
    v_error text;
begin
    select * into v_schedule
    from noetl.schedule as s
    where s.schedule_id = p_schedule_id
    for update skip locked;
    if not found or v_schedule.paused
        or v_schedule.next_run_at <> p_expected_next_run_at then
        return null;
    end if;

    insert into noetl.schedule_run (schedule_id, scheduled_for)
    values (p_schedule_id, p_scheduled_for)
    on conflict do nothing;
    if not found then
        update noetl.schedule as s set next_run_at = p_next_run_at
        where s.schedule_id = p_schedule_id;
        return null;
    end if;

    begin
        v_execution_id := noetl.start_execution(v_schedule.path, v_schedule.payload);
    exception when others then
        v_error := sqlerrm;
    end;

    update noetl.schedule_run as r
    set execution_id = v_execution_id, error = v_error
    where r.schedule_id = p_schedule_id and r.scheduled_for = p_scheduled_for;
    update noetl.schedule as s
    set next_run_at = p_next_run_at,
        last_run_at = noetl.now(),
        last_execution_id = coalesce(v_execution_id, s.last_execution_id)
    where s.schedule_id = p_schedule_id;
    return v_execution_id;
end;
$$;

-- noetl.pause_schedule(schedule_id, paused, next_run_at) -> boolean
-- Contract: pauses (paused = true) or resumes a schedule; resuming sets next_run_at (the
--   client's next tick after now, so a long pause does not count as missed ticks) when
--   given. Returns false when there is no such schedule.
-- Locks: the schedule row.
create or replace function noetl.pause_schedule(
    p_schedule_id bigint, p_paused boolean, p_next_run_at timestamptz default null
) returns boolean
language plpgsql
as $$
begin
    update noetl.schedule as s
    set paused = p_paused, next_run_at = coalesce(p_next_run_at, s.next_run_at)
    where s.schedule_id = p_schedule_id;
    return found;
end;
$$;

-- noetl.delete_schedule(schedule_id) -> boolean
-- Contract: removes the schedule and its tick history (executions it started stay).
--   Returns false when there is no such schedule.
-- Locks: the schedule row.
create or replace function noetl.delete_schedule(p_schedule_id bigint) returns boolean
language plpgsql
as $$
begin
    delete from noetl.schedule as s where s.schedule_id = p_schedule_id;
    return found;
end;
$$;
