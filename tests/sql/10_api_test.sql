-- The core SQL API: registration, start, dispatch idempotency, claims, attempt fencing,
-- routing and execution completion/failure, called exactly as psql would.
begin;
select plan(24);

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workload": {"x": 1}, "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["b"],
                "is_join": false, "has_loop": false, "successors": ["b"], "max_attempts": 1}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 2}}
    ]}'::jsonb as spec;

-- registration
select is(
    (
        select version
        from noetl.register_playbook('t/chain', 'yaml', (select spec from spec_fixture))
    ),
    1, 'first registration of a path is version 1'
);
select is(
    (
        select version
        from noetl.register_playbook('t/chain', 'yaml', (select spec from spec_fixture))
    ),
    2, 'registering the same path again adds version 2'
);
select throws_ok(
    $$select * from noetl.register_playbook('t/bad', 'yaml', '{"workflow": []}')$$,
    '22023', 'playbook t/bad: spec has no workflow steps',
    'a spec without steps is refused, naming the path'
);

-- start_execution errors
select throws_ok(
    $$select noetl.start_execution('t/nope')$$,
    'P0002', 'playbook "t/nope" is not registered', 'unknown path is named in the error'
);
select throws_ok(
    $$select noetl.start_execution('t/chain', '{}', 9)$$,
    'P0002', 'playbook "t/chain" has no version 9', 'unknown version is named in the error'
);
select throws_ok(
    $$select noetl.start_execution('t/chain', '[1, 2]')$$,
    '22023', 'playbook t/chain: payload must be a JSON object, got array',
    'a payload that is not an object is refused'
);
select is(
    (select count(*)::integer from noetl.execution),
    0, 'failed starts leave no execution behind'
);

-- a run
select
    set_config('test.execution_id', noetl.start_execution('t/chain', '{"y": 2}')::text, true)
        as started;

select is(
    (
        select workload from noetl.execution
        where execution_id = current_setting('test.execution_id')::bigint
    ),
    '{"x": 1, "y": 2}'::jsonb, 'workload is the playbook workload merged with the payload'
);
select is(
    (
        select count(*)::integer from noetl.command
        where execution_id = current_setting('test.execution_id')::bigint and status = 'queued'
    ),
    1, 'starting issues exactly the entry step'
);
select is(
    noetl.issue_step(
        current_setting('test.execution_id')::bigint,
        (
            select catalog_id from noetl.execution
            where execution_id = current_setting('test.execution_id')::bigint
        ),
        'a', 'start'
    ),
    null, 'issuing the same step for the same cause again is a no-op'
);
select is(
    (
        select count(*)::integer from noetl.command
        where execution_id = current_setting('test.execution_id')::bigint
    ),
    1, 'the duplicate issue created no second command'
);

create temporary table claim_a as
select * from noetl.claim_commands('w1', null, 10);
select is((select step_name from claim_a), 'a', 'a worker claims the entry step');
select ok(
    (select context -> 'workload' ->> 'y' from claim_a) = '2',
    'the claim carries the rendering context'
);
select is(
    (select count(*)::integer from noetl.claim_commands('w2', null, 10)),
    0, 'a claimed command is not claimed again'
);

select is(
    (select outcome from noetl.complete_command((select command_id from claim_a), 2, '{}')),
    'stale', 'a completion for another attempt is refused'
);
select is(
    (select outcome from noetl.complete_command((select command_id from claim_a), 1, '{"v": 1}')),
    'ok', 'the claimed attempt completes'
);
select is(
    (select outcome from noetl.complete_command((select command_id from claim_a), 1, '{"v": 9}')),
    'stale', 'a second completion of the same attempt is refused'
);
select is(
    (
        select result from noetl.step_result
        where execution_id = current_setting('test.execution_id')::bigint and step_name = 'a'
    ),
    '{"v": 1}'::jsonb, 'the refused completion changed nothing'
);

create temporary table claim_b as
select * from noetl.claim_commands('w1', null, 10);
select is((select step_name from claim_b), 'b', 'the unconditional arc issued b');

select is(
    (select outcome from noetl.fail_command((select command_id from claim_b), 1, 'boom', 0)),
    'retried', 'a failure with attempts left is retried'
);
select is(
    (select attempt from noetl.claim_commands('w1', null, 10)),
    2, 'the retry is attempt 2 of the same command'
);
select is(
    (
        select outcome
        from noetl.complete_command((select command_id from claim_b), 2, '{"ok": true}')
    ),
    'ok', 'attempt 2 completes'
);
select is(
    (
        select status || ':' || (result ->> 'ok') from noetl.execution
        where execution_id = current_setting('test.execution_id')::bigint
    ),
    'COMPLETED:true', 'the execution completes with the terminal step result'
);
select is(
    (
        select count(*)::integer from noetl.event
        where
            execution_id = current_setting('test.execution_id')::bigint
            and event_type = 'playbook.completed'
    ),
    1, 'playbook.completed is written once'
);

select * from finish();
rollback;
