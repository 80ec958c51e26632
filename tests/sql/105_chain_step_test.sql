-- A chain step's transition with fewer statements: complete_command fences its command
-- by the update itself (lock_claimed_command only for a refusal), route_after and
-- check_progress read the execution's state once each, execution_is_running reads the row
-- by its key, describe_commands_v1 describes a single command without its window,
-- command_context picks a result's keys through result_keys. The answers are those of
-- the statements they replace.
begin;
select plan(24);
set local client_min_messages = warning;

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["b"],
                "is_join": false, "has_loop": false, "successors": ["b"], "max_attempts": 1,
                "reads": {}, "loop_reads": {}}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 1,
                "reads": {"a": ["k", "gone"]}, "loop_reads": {}}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/chain_step', 'yaml', (select spec from spec_fixture));

create temporary table run as
select noetl.start_execution('t/chain_step') as execution_id;
create temporary table first_claim as
select c.* from noetl.claim_commands_v1('w1', null, 1) as c;

-- execution_is_running
select ok(
    noetl.execution_is_running((select r.execution_id from run as r)),
    'execution_is_running: a running execution'
);
select ok(not noetl.execution_is_running(-1), 'execution_is_running: an unknown one is not');

-- complete_command: the fence is the update's WHERE clause
select is(
    (
        select r.outcome from noetl.complete_command(
            (select f.command_id from first_claim as f), 1, '{"k": 1}', null, null, null,
            (select f.claim_gen + 1 from first_claim as f)
        ) as r
    ),
    'stale', 'another claim generation is stale'
);
select is(
    (
        select (c.status, c.finished_at is null)::text from noetl.command as c
        where c.command_id = (select f.command_id from first_claim as f)
    ),
    '(claimed,t)', 'and changes nothing'
);
select is(
    (
        select e.meta ->> 'op' from noetl.event as e
        where
            e.command_id = (select f.command_id from first_claim as f)
            and e.event_type = 'command.outcome_refused'
    ),
    'done', 'but its refusal is recorded'
);
select throws_ok(
    $$select * from noetl.complete_command(-7, 1, '{}')$$,
    'P0002', null, 'an unknown command id raises'
);

-- A route command is finished by apply_route: refused with an error, nothing changed.
create temporary table route_cmd as
select noetl.issue_command(
    (select r.execution_id from run as r), 'route@t', 'route', 'a', 1, null, null, null, 'w1'
) as command_id;
select throws_ok(
    format(
        'select * from noetl.complete_command(%s, 1, %L)',
        (select rc.command_id from route_cmd as rc), '{}'
    ),
    '22023', null, 'a route command completed raises'
);
select is(
    (
        select c.status from noetl.command as c
        where c.command_id = (select rc.command_id from route_cmd as rc)
    ),
    'claimed', 'and stays claimed'
);
update noetl.command as c set status = 'cancelled'
where c.command_id = (select rc.command_id from route_cmd as rc);

-- An attempt NULL fences nothing, as in lock_claimed_command: the step completes.
select is(
    (
        select r.outcome from noetl.complete_command(
            (select f.command_id from first_claim as f), null, '{"k": 1, "x": 2}'
        ) as r
    ),
    'ok', 'the claimed command completes'
);
select is(
    (
        select (c.status, c.finished_at is not null)::text from noetl.command as c
        where c.command_id = (select f.command_id from first_claim as f)
    ),
    '(done,t)', 'done, with its finish time'
);
select is(
    (
        select count(*)::integer from noetl.event as e
        where
            e.command_id = (select f.command_id from first_claim as f)
            and e.event_type = 'call.done'
    ),
    1, 'one call.done'
);

-- route_after issued b; check_progress saw it active and left the execution running.
create temporary table b_cmd as
select c.command_id from noetl.command as c
where c.execution_id = (select r.execution_id from run as r) and c.step_name = 'b';
select is((select count(*)::integer from b_cmd), 1, 'the next step is issued once');
select is(
    (
        select x.status from noetl.execution as x
        inner join run as r on x.execution_id = r.execution_id
    ),
    'RUNNING', 'and the execution still runs'
);

-- describe_commands_v1: one command alone, as within a batch
create temporary table b_claim as
select c.* from noetl.claim_commands_v1('w1', null, 1) as c;
select is(
    (select (b.context -> 'results')::text from b_claim as b),
    '{"a": {"k": 1}}', 'one command: its context holds the keys its step reads'
);
select is(
    (
        select (d.command_id, d.step_name, d.kind, d.claim_gen, d.context)::text
        from noetl.describe_commands_v1(array(select b.command_id from b_cmd as b)) as d
    ),
    (
        select (d.command_id, d.step_name, d.kind, d.claim_gen, d.context)::text
        from noetl.describe_commands_v1(
            array(select b.command_id from b_cmd as b) || array[-1::bigint]
        ) as d
    ),
    'the same row as in a batch'
);
select is(
    (select count(*)::integer from noetl.describe_commands_v1(array[-1::bigint])),
    0, 'an unknown command: no row'
);

-- result_keys
select is(
    noetl.result_keys('{"k": 1, "x": 2}', '["k", "gone"]'), '{"k": 1}'::jsonb,
    'result_keys: the keys the result has'
);
select is(
    noetl.result_keys('{"k": 1}', '["gone"]'), '{}'::jsonb, 'result_keys: none of them'
);

-- The last step: nothing active, no arrival waiting: the execution completes.
select is(
    (
        select r.outcome from noetl.complete_command(
            (select b.command_id from b_claim as b), 1, '{"done": true}', null, null, null,
            (select b.claim_gen from b_claim as b)
        ) as r
    ),
    'ok', 'the last step completes'
);
select is(
    (
        select (x.status, x.result)::text
        from noetl.execution as x
        inner join run as r on x.execution_id = r.execution_id
    ),
    '(COMPLETED,"{""done"": true}")', 'and so does the execution, with its result'
);
select ok(
    not noetl.execution_is_running((select r.execution_id from run as r)),
    'execution_is_running: a finished one is not'
);

-- route_after: nothing routed once the execution is no longer running; a step the
-- playbook lacks raises while it runs.
create temporary table run2 as
select noetl.start_execution('t/chain_step') as execution_id;
create temporary table ghost as
select noetl.issue_command(
    (select r.execution_id from run2 as r), 'ghost@t', 'noop', 'ghost', 1, null, null, null,
    'w1'
) as command_id;
select throws_ok(
    format(
        'select * from noetl.complete_command(%s, 1, %L)',
        (select g.command_id from ghost as g), '{}'
    ),
    'P0002', null, 'route_after: a step not in the playbook raises'
);
select noetl.fail_execution((select r.execution_id from run2 as r), 'a', 'stop');
update noetl.command as c set status = 'claimed'
where c.command_id = (select g.command_id from ghost as g);
select is(
    (
        select r.outcome from noetl.complete_command(
            (select g.command_id from ghost as g), 1, '{}'
        ) as r
    ),
    'ok', 'a command of a failed execution still completes'
);
select is(
    (
        select count(*)::integer from noetl.command as c
        where c.execution_id = (select r.execution_id from run2 as r) and c.step_name = 'b'
    ),
    0, 'and routes nowhere'
);

select * from finish();
rollback;
