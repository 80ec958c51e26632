-- Cron schedules: add_schedule checks, due_schedules by the engine clock, fire_schedule
-- fires a tick once (a second fire of the same tick, or with a stale expected tick, starts
-- nothing), pause_schedule and delete_schedule.
begin;
select plan(12);

select * from noetl.register_playbook(
    't/scheduled', 'yaml',
    '{"entry_step": "a", "workflow": [{"step": "a", "tool": {"kind": "noop"},
      "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [], "is_join": false,
               "has_loop": false, "successors": [], "max_attempts": 1}}]}'::jsonb
);

select throws_ok(
    $$select noetl.add_schedule('t/missing', '* * * * *', 'UTC', '{}', 'skip', now())$$,
    '22023', 'playbook t/missing is not registered',
    'a schedule needs a registered playbook'
);
select throws_ok(
    $$select noetl.add_schedule('t/scheduled', '* * * * *', 'UTC', '{}', 'often', now())$$,
    '22023', 'missed-tick policy must be skip or catch_up, got often',
    'the missed-tick policy is checked'
);

select
    set_config(
        'test.schedule_id',
        noetl.add_schedule(
            't/scheduled', '* * * * *', 'UTC', '{"n": 1}', 'skip',
            '2026-01-01 10:00+00'
        )::text,
        true
    ) as added;
select set_config('noetl.clock', '2026-01-01 09:59+00', true) as clock_before;
select is(
    (select count(*)::integer from noetl.due_schedules(10)), 0,
    'a tick in the future is not due'
);
select set_config('noetl.clock', '2026-01-01 10:00:30+00', true) as clock_after;
select is(
    (select array_agg(schedule_id) from noetl.due_schedules(10)),
    array[current_setting('test.schedule_id')::bigint],
    'a tick at or before the engine clock is due'
);

select
    set_config(
        'test.execution_id',
        noetl.fire_schedule(
            current_setting('test.schedule_id')::bigint, '2026-01-01 10:00+00',
            '2026-01-01 10:00+00', '2026-01-01 10:01+00'
        )::text,
        true
    ) as fired;
select isnt(current_setting('test.execution_id'), '', 'the first fire starts an execution');
select is(
    (
        select workload ->> 'n' from noetl.execution
        where execution_id = current_setting('test.execution_id')::bigint
    ),
    '1', 'with the schedule payload'
);
select is(
    noetl.fire_schedule(
        current_setting('test.schedule_id')::bigint, '2026-01-01 10:00+00',
        '2026-01-01 10:00+00', '2026-01-01 10:01+00'
    ),
    null, 'a fire with a stale expected tick starts nothing'
);
select is(
    (
        select next_run_at from noetl.schedule
        where schedule_id = current_setting('test.schedule_id')::bigint
    ),
    '2026-01-01 10:01+00'::timestamptz, 'the next tick moved on'
);
select is(
    (
        select count(*)::integer from noetl.schedule_run
        where schedule_id = current_setting('test.schedule_id')::bigint
    ),
    1, 'one run recorded for the tick'
);

select ok(
    noetl.pause_schedule(current_setting('test.schedule_id')::bigint, true),
    'pause finds the schedule'
);
select is(
    noetl.fire_schedule(
        current_setting('test.schedule_id')::bigint, '2026-01-01 10:01+00',
        '2026-01-01 10:01+00', '2026-01-01 10:02+00'
    ),
    null, 'a paused schedule does not fire'
);
select ok(
    noetl.delete_schedule(current_setting('test.schedule_id')::bigint)
    and not noetl.delete_schedule(current_setting('test.schedule_id')::bigint),
    'delete removes the schedule once'
);

select * from finish();
rollback;
