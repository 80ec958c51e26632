-- One function per repeated shape (issue 13 item 4): requeue_commands puts a command back
-- on the queue, execution_is_running is the one RUNNING test, cancel_children cancels the
-- running children of an execution, record_events is the set-based door to the event log,
-- and lock_claimed_command names the worker whose call it refuses.
begin;
select plan(26);
set local client_min_messages = warning;

select * from noetl.register_playbook('t/shape', 'yaml', '{"entry_step": "a", "workflow": [
  {"step": "a", "plan": {"route_mode": "none", "max_attempts": 3}}
]}'::jsonb);

create temporary table shape_run as
select noetl.start_execution('t/shape') as execution_id;
create temporary table shape_cmd as
select c.command_id
from noetl.command as c, shape_run as r
where c.execution_id = r.execution_id;

create function pg_temp.cmd() returns noetl.command
language sql as $$
    select c.* from noetl.command as c inner join shape_cmd as s using (command_id);
$$;

-- requeue_commands
select noetl.claim_command_ids('w1', null, 1);
select is(
    noetl.requeue_commands((select array_agg(command_id) from shape_cmd)), 1,
    'requeue_commands puts a claim back'
);
select is(
    (
        select (c.status, c.attempt, c.claimed_by, c.claimed_at, c.reclaims)::text
        from pg_temp.cmd() as c
    ),
    '(queued,1,,,0)', 'queued again at the same attempt, unclaimed, no reclaim counted'
);
select ok(
    (select c.available_at <= noetl.now() from pg_temp.cmd() as c), 'and due at once'
);

select noetl.claim_command_ids('w1', null, 1);
select set_config('noetl.wakeup', 'nats', true) as wakeup;
select noetl.take_wake_counts_v1();
select is(
    noetl.requeue_commands((select array_agg(command_id) from shape_cmd), true, 60, true, false),
    1, 'a retry after a delay, counted as a reclaim, without a wake-up'
);
select is(
    (select (c.status, c.attempt, c.claimed_by, c.reclaims)::text from pg_temp.cmd() as c),
    '(queued,2,,1)', 'at the next attempt, reclaims + 1'
);
select ok(
    (select c.available_at >= noetl.now() + interval '59 seconds' from pg_temp.cmd() as c),
    'due after the delay'
);
select is(noetl.take_wake_counts_v1(), '{}'::jsonb, 'wake false: no wake-up collected');
update noetl.command as c set available_at = noetl.now()
from shape_cmd as s
where c.command_id = s.command_id;
select noetl.claim_command_ids('w1', null, 1);
select noetl.requeue_commands((select array_agg(command_id) from shape_cmd));
select is(
    noetl.take_wake_counts_v1(), '{"*": 1}'::jsonb, 'wake (the default): workers are woken once'
);
select is(noetl.requeue_commands('{}'), 0, 'nothing to requeue: 0');
select is(noetl.take_wake_counts_v1(), '{}'::jsonb, 'and no wake-up');
select set_config('noetl.wakeup', '', true) as wakeup;

-- execution_is_running
select ok(
    noetl.execution_is_running((select execution_id from shape_run)),
    'execution_is_running: a started execution runs'
);
select ok(not noetl.execution_is_running(-1), 'an unknown execution does not');
select noetl.cancel_execution((select execution_id from shape_run), 'test');
select ok(
    not noetl.execution_is_running((select execution_id from shape_run)),
    'a cancelled one does not'
);

-- cancel_children
create temporary table shape_parent as
select noetl.start_execution('t/shape') as execution_id;
create temporary table shape_children as
select
    g.n,
    noetl.start_execution_from(
        't/shape', '{}', null, p.execution_id,
        (
            select c.command_id from noetl.command as c
            where c.execution_id = p.execution_id
        )
    ) as execution_id
from shape_parent as p, generate_series(1, 2) as g (n);
select noetl.finish_execution(
    (
        select execution_id from shape_children
        where n = 2
    ), 'COMPLETED', null, null, null
);
select is(
    noetl.cancel_children((select execution_id from shape_parent), 'parent says stop'), 1,
    'cancel_children cancels the running child only'
);
select is(
    (
        select array_agg((e.status, e.error)::text order by s.n)
        from shape_children as s
        inner join noetl.execution as e on s.execution_id = e.execution_id
    ),
    array['(CANCELLED,"parent says stop")', '(COMPLETED,)'],
    'with the reason as its error; the finished child is left alone'
);
select ok(
    noetl.execution_is_running((select execution_id from shape_parent)),
    'the parent itself runs on'
);
select is(
    noetl.cancel_children((select execution_id from shape_parent), 'again'), 0,
    'no running child left: 0'
);

-- record_events
create temporary table shape_events as
select
    noetl.record_events(array[
        row(
            r.execution_id, 'test.first', 'a', null, 1,
            '{"result_ref": "noetl://execution/1/x", "store_tier": "db", "sha256": "0"}',
            null, null, null, null, null
        )::noetl.event_record,
        row(
            r.execution_id, 'test.second', 'a', null, 1, null, 'an error',
            '{"k": 1}', null, null, nextval('noetl.event_id_seq') + 1000
        )::noetl.event_record
    ]) as recorded
from shape_parent as r;
select is((select recorded from shape_events), 2, 'record_events writes every element');
select results_eq(
    $$
        select e.event_type, e.result_ref, e.error, e.meta
        from noetl.event as e, shape_parent as r
        where e.execution_id = r.execution_id and e.event_type like 'test.%'
        order by e.event_id
    $$,
    $$
        values
        ('test.first', 'noetl://execution/1/x', null, null::jsonb),
        ('test.second', null, 'an error', '{"k": 1}'::jsonb)
    $$,
    'in array order, with result_ref taken from a ref result'
);
select ok(
    (
        select e.event_id > currval('noetl.event_id_seq')
        from noetl.event as e, shape_parent as r
        where e.execution_id = r.execution_id and e.event_type = 'test.second'
    ),
    'an event_id reserved beforehand is kept'
);
select is(
    noetl.record_events(null) + noetl.record_events('{}'), 0, 'nothing to record: 0'
);

-- lock_claimed_command names the worker it refuses
select is(
    (
        noetl.lock_claimed_command(
            (select command_id from shape_cmd), 1, null, null, 'cursor', 'w9'
        )
    ).command_id,
    null, 'lock_claimed_command refuses a command no longer claimed'
);
select is(
    (
        select e.meta ->> 'worker_id'
        from noetl.event as e, shape_cmd as s
        where e.command_id = s.command_id and e.event_type = 'command.outcome_refused'
        order by e.event_id desc
        limit 1
    ),
    'w9', 'and its refusal names the worker (whose NOTICE tells it)'
);

-- each shape has one place: no other function writes the event log, puts a command back
-- on the queue, or NOTIFYs the workers
create function pg_temp.functions_matching(p_pattern text) returns text[]
language sql as $$
    select array_agg(p.proname::text order by p.proname)
    from pg_proc as p
    where p.pronamespace = 'noetl'::regnamespace and p.prosrc ~* p_pattern;
$$;
select is(
    pg_temp.functions_matching('insert\s+into\s+noetl\.event\s*\('),
    array['record_event', 'record_events'],
    'only record_event and record_events insert into noetl.event'
);
select is(
    pg_temp.functions_matching('set\s+status\s*=\s*''queued'''),
    array['requeue_commands', 'resume_execution'],
    'only requeue_commands (and resume_execution, re-issuing finished commands) re-queue'
);
select is(
    pg_temp.functions_matching('pg_notify\s*\(\s*''noetl_command'''),
    array['notify_queue'],
    'only notify_queue wakes workers'
);

select * from finish();
rollback;
