-- Direct tests of functions the flows use without testing them one by one: the clock,
-- finish_and_claim (its done, fused-route, stale and claim paths), issue_command,
-- describe_commands, notify_queue, worker registry calls.
begin;
select plan(24);

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["b"],
                "is_join": false, "has_loop": false, "successors": ["b"], "max_attempts": 2,
                "reads": {}, "loop_reads": {}}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 1,
                "reads": {}, "loop_reads": {}}},
      {"step": "r", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "router", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": ["b"], "max_attempts": 1,
                "reads": {}, "loop_reads": {}}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/fn', 'yaml', (select spec from spec_fixture));
select * from noetl.register_playbook(
    't/fn_router', 'yaml',
    jsonb_set((select spec from spec_fixture), '{entry_step}', '"r"')
);

-- the clock
select is(noetl.now(), now(), 'noetl.now() is the transaction time by default');
select set_config('noetl.clock', '2031-01-01 00:00:00+00', true) as clock;
select is(
    noetl.now(), '2031-01-01 00:00:00+00'::timestamptz,
    'noetl.now() is noetl.clock when set'
);
select set_config('noetl.clock', '', true) as clock;

-- a retry becomes due when the clock passes its delay: no sleeping
select set_config('test.e1', noetl.start_execution('t/fn')::text, true) as started;
create temporary table claim_a as
select * from noetl.claim_commands('w1', null, 10);
select is(
    (
        select outcome
        from noetl.fail_command((select command_id from claim_a), 1, 'boom', 60)
    ),
    'retried', 'a failure with a 60 s retry delay is retried'
);
select is(
    (select count(*)::integer from noetl.claim_commands('w1', null, 10)),
    0, 'the retry is not due yet'
);
select set_config('noetl.clock', (now() + interval '61 seconds')::text, true) as clock;
create temporary table claim_a2 as
select * from noetl.claim_commands('w1', null, 10);
select is(
    (select attempt from claim_a2), 2, 'after moving the clock 61 s the retry is claimed'
);
select set_config('noetl.clock', '', true) as clock;

-- finish_and_claim: a stale outcome changes nothing; a done outcome routes and claims
select is(
    (
        select count(*)::integer from noetl.finish_and_claim(
            'w1',
            jsonb_build_array(jsonb_build_object(
                'op', 'done', 'command_id', (select command_id from claim_a2),
                'attempt', 1, 'result', '{}'::jsonb
            )),
            null, 5
        )
    ),
    0, 'an outcome for an old attempt is skipped and nothing is claimed'
);
select is(
    (
        select c.status from noetl.command as c
        where c.command_id = (select a2.command_id from claim_a2 as a2)
    ),
    'claimed', 'the stale outcome left the command claimed'
);
create temporary table next_b as
select * from noetl.finish_and_claim(
    'w1',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', (select command_id from claim_a2),
        'attempt', 2, 'result', '{"v": 1}'::jsonb
    )),
    null, 5
);
select is(
    (select step_name from next_b), 'b',
    'completing a claims the step its arc issued in the same call'
);
select is(
    (
        select result from noetl.step_result
        where step_name = 'a'
    ),
    '{"v": 1}'::jsonb, 'the completion stored the step result'
);
select is(
    (select count(*)::integer from noetl.finish_and_claim('w1', '[]', null, 0)),
    0, 'no outcomes and n = 0: nothing'
);

-- the fused route: targets chosen by a worker that serves routes are applied at once
select set_config('test.e2', noetl.start_execution('t/fn_router')::text, true) as started;
create temporary table claim_r as
select * from noetl.claim_commands('w1', null, 10)
where execution_id = current_setting('test.e2')::bigint;
create temporary table after_r as
select * from noetl.finish_and_claim(
    'w1',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', (select command_id from claim_r), 'attempt', 1,
        'result', '{}'::jsonb, 'targets', '[{"step": "b", "set": {"k": 1}}]'::jsonb
    )),
    null, 5
);
select is(
    (select step_name from after_r), 'b', 'the chosen target is issued and claimed'
);
select is(
    (
        select count(*)::integer from noetl.command
        where execution_id = current_setting('test.e2')::bigint and kind = 'route'
    ),
    0, 'no route command was created'
);
select is(
    (
        select ctx ->> 'k' from noetl.execution
        where execution_id = current_setting('test.e2')::bigint
    ),
    '1', 'the arc''s set reached ctx'
);

-- a worker that does not serve routes: its targets are ignored, a router decides
select set_config('test.e3', noetl.start_execution('t/fn_router')::text, true) as started;
create temporary table claim_r3 as
select * from noetl.claim_commands('w2', null, 10)
where execution_id = current_setting('test.e3')::bigint;
select is(
    (
        select count(*)::integer from noetl.finish_and_claim(
            'w2',
            jsonb_build_array(jsonb_build_object(
                'op', 'done', 'command_id', (select command_id from claim_r3), 'attempt', 1,
                'result', '{}'::jsonb, 'targets', '[{"step": "b"}]'::jsonb
            )),
            array['noop'], 0
        )
    ),
    0, 'a worker without route kinds is handed no route command'
);
select is(
    (
        select status from noetl.command
        where execution_id = current_setting('test.e3')::bigint and kind = 'route'
    ),
    'queued', 'the route command is queued for a router'
);

-- issue_command and describe_commands
select
    set_config(
        'test.x',
        noetl.issue_command(current_setting('test.e3')::bigint, 'x@test', 'noop', 'b')::text,
        true
    ) as issued;
select is(
    (
        select command_id from noetl.command
        where execution_id = current_setting('test.e3')::bigint and command_key = 'x@test'
    ),
    current_setting('test.x')::bigint,
    'issue_command returns the new command id'
);
select is(
    noetl.issue_command(current_setting('test.e3')::bigint, 'x@test', 'noop', 'b'),
    null, 'the same key again is a no-op'
);
select noetl.issue_command(current_setting('test.e3')::bigint, 'y@test', 'noop', 'b');
select is(
    (
        select array_agg(d.context is not null order by d.command_id)
        from noetl.describe_commands_v1(array(
            select c.command_id from noetl.command as c
            where
                c.execution_id = current_setting('test.e3')::bigint and c.step_name = 'b'
                and c.kind = 'noop'
        )) as d
    ),
    array[true, false],
    'describe_commands sends the context once per execution, step and kind'
);

-- issue_planned_step: the plan row a caller already read
select
    set_config(
        'test.planned',
        noetl.issue_planned_step(
            current_setting('test.e3')::bigint,
            (
                select s from noetl.catalog_step as s
                where s.step_name = 'a' and s.catalog_id = (
                    select e.catalog_id from noetl.execution as e
                    where e.execution_id = current_setting('test.e3')::bigint
                )
            ),
            'planned'
        )::text,
        true
    ) as planned;
select is(
    (
        select c.kind || ' ' || c.command_key || ' ' || c.max_attempts
        from noetl.command as c
        where c.command_id = current_setting('test.planned')::bigint
    ),
    'noop a@planned 2', 'issue_planned_step issues the step its plan row describes'
);

-- the worker registry
select noetl.register_worker('w9', 'host', 1, 1, null);
select is(noetl.worker_heartbeat('w9'), true, 'a registered worker''s heartbeat is taken');
select is(noetl.worker_heartbeat('nobody'), false, 'an unknown worker''s is refused');
select count(*) as claimed from noetl.claim_commands('w9', array['noop'], 1);
select is(noetl.stop_worker('w9'), 1, 'stop_worker puts the claim it held back');
select is(noetl.worker_heartbeat('w9'), false, 'a stopped worker''s heartbeat is refused');

-- notify_queue defers inside finish_and_claim
select set_config('noetl.defer_notify', 'on', true) as deferred;
select noetl.notify_queue();
select is(
    current_setting('noetl.notify_pending', true), 'on',
    'a deferred wake-up is only marked pending'
);

select * from finish();  -- noqa: AM04
rollback;
