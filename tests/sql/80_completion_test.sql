-- Direct tests of the lock order (sql/functions/locking.sql) and of the completion
-- helpers the outcome functions share (sql/functions/completion.sql): lock_executions,
-- lock_command_rows, lock_claimed_command, refuse_outcome, fail_command_finally and
-- after_command_failed.
--
-- A row this transaction locked FOR UPDATE carries its transaction id in xmax, so
-- pg_temp.locked() lists which fixture rows are locked. The lock fixture is inserted by
-- hand, loop iterations only, so no other lock (the budget trigger's foreign key check on
-- the execution row) is taken on it before the functions under test run.
begin;
select plan(35);
-- lock_claimed_command and refuse_outcome raise a NOTICE for a worker's log: not needed.
set local client_min_messages = warning;

insert into noetl.catalog (catalog_id, path, version, content, spec)
overriding system value values (980, 'test/locks', 1, '', '{}');
insert into noetl.execution (execution_id, catalog_id, path, version, parent_execution_id)
values
(9801, 980, 'test/locks', 1, null),
(9802, 980, 'test/locks', 1, 9801),
(9803, 980, 'test/locks', 1, null);
insert into noetl.loop (
    loop_id, execution_id, step_name, command_id, iterator, mode, max_in_flight, total,
    issued
)
values
(98001, 9802, 'work', 1, 'x', 'parallel', 1, 1, 1),
(98002, 9803, 'work', 2, 'x', 'parallel', 1, 1, 1);
insert into noetl.command (
    command_id, execution_id, command_key, kind, step_name, loop_id, iter_index, status,
    attempt, max_attempts, claimed_by, claimed_at, claim_gen
)
values
(980001, 9802, 'iter:98001:0', 'python', 'work', 98001, 0, 'claimed', 2, 3, 'w', now(), 3),
(980002, 9803, 'iter:98002:0', 'python', 'work', 98002, 0, 'queued', 1, 1, null, null, 0);

-- The fixture rows this transaction holds locked, as e<execution>, l<loop>, c<command>.
create function pg_temp.locked() returns text[]
language sql as $$
    select array(
        select r.name from (
            select 'e' || e.execution_id as name from noetl.execution as e
            where e.execution_id between 9801 and 9803 and e.xmax::text <> '0'
            union all
            select 'l' || l.loop_id from noetl.loop as l
            where l.loop_id in (98001, 98002) and l.xmax::text <> '0'
            union all
            select 'c' || c.command_id from noetl.command as c
            where c.command_id in (980001, 980002) and c.xmax::text <> '0'
        ) as r
        order by r.name
    );
$$;

select is(pg_temp.locked(), '{}'::text[], 'no fixture row is locked yet');

-- lock_executions: the executions and their ancestors, nothing else
select noetl.lock_executions(array[9802]::bigint[]);
select is(
    pg_temp.locked(), array['e9801', 'e9802'],
    'lock_executions locks the child and its parent, not an unrelated execution'
);
select lives_ok(
    $$select noetl.lock_executions(array[424242]::bigint[])$$,
    'lock_executions ignores an unknown id'
);
select is(pg_temp.locked(), array['e9801', 'e9802'], 'an unknown id locks nothing more');

-- lock_command_rows: the command's execution, its loop, the command row
select noetl.lock_command_rows(array[980002]::bigint[]);
select is(
    pg_temp.locked(), array['c980002', 'e9801', 'e9802', 'e9803', 'l98002'],
    'lock_command_rows locks the execution, the loop and the command row of that command only'
);
select lives_ok(
    $$select noetl.lock_command_rows(array[424242]::bigint[])$$,
    'lock_command_rows ignores an unknown id'
);

-- lock_claimed_command: the fencing check
select throws_ok(
    $$select noetl.lock_claimed_command(424242, 1)$$,
    'P0002', 'command 424242 does not exist', 'an unknown command is named in the error'
);
select throws_ok(
    $$select noetl.lock_claimed_command(980001, 2, 'route')$$,
    '22023', 'command 980001 is not a route command', 'a kind mismatch is refused'
);
select is(
    (noetl.lock_claimed_command(980001, 1)).command_id, null,
    'a claim at another attempt is stale: NULL'
);
select results_eq(
    $$select attempt, meta from noetl.event
      where command_id = 980001 and event_type = 'command.outcome_refused'$$,
    $$values (1, '{"status": "claimed", "current_attempt": 2, "current_claim": 3,
                  "holder": "w"}'::jsonb)$$,
    'the stale call leaves command.outcome_refused with what the command is now'
);
select is(
    (noetl.lock_claimed_command(980002, 1)).command_id, null,
    'a command that is not claimed is stale'
);
select is(
    (
        select (c.command_id, c.status, c.attempt, c.loop_id)::text
        from noetl.lock_claimed_command(980001, 2) as c
    ),
    '(980001,claimed,2,98001)', 'a claim at its attempt returns the command row'
);
select is(
    pg_temp.locked(),
    array['c980001', 'c980002', 'e9801', 'e9802', 'e9803', 'l98001', 'l98002'],
    'lock_claimed_command holds the command row and its loop'
);

-- refuse_outcome: a trace only
select noetl.refuse_outcome(c, 5, 7, 'fail', 'w-late')
from noetl.command as c
where c.command_id = 980001;
select results_eq(
    $$select e.attempt, e.meta from noetl.event as e
      where e.command_id = 980001 and e.event_type = 'command.outcome_refused'
      order by e.event_id desc limit 1$$,
    $$values (5, '{"op": "fail", "claim": 7, "worker_id": "w-late", "status": "claimed",
                  "current_attempt": 2, "current_claim": 3, "holder": "w"}'::jsonb)$$,
    'refuse_outcome records the refused attempt, claim, op and worker with the command now'
);
select is(
    (
        select (c.status, c.attempt, c.claimed_by, c.claim_gen)::text from noetl.command as c
        where c.command_id = 980001
    ),
    '(claimed,2,w,3)', 'refuse_outcome changes no state'
);
select is(
    (
        select count(*)::integer from noetl.event as e
        where
            e.execution_id = 9802 and e.loop_id = 98001 and e.iter_index = 0
            and e.event_type = 'command.outcome_refused'
    ),
    2, 'its events carry the loop and iteration of the command'
);

-- Real executions for the failure paths: `a` routes through a router, `d` directly to `b`,
-- `work` loops.
create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "router", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": ["b"], "max_attempts": 1}},
      {"step": "d", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["b"],
                "is_join": false, "has_loop": false, "reaches": ["b"], "max_attempts": 1}},
      {"step": "work", "tool": {"kind": "python"},
       "plan": {"kind": "python", "route_mode": "direct", "direct_targets": ["b"],
                "is_join": false, "has_loop": true, "reaches": ["b"], "max_attempts": 1}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/c80', 'yaml', (select spec from spec_fixture));
select * from noetl.register_playbook(
    't/c80d', 'yaml', jsonb_set((select spec from spec_fixture), '{entry_step}', '"d"')
);
select * from noetl.register_playbook(
    't/c80w', 'yaml', jsonb_set((select spec from spec_fixture), '{entry_step}', '"work"')
);

-- The command of step `p_step` of execution `p_execution_id`, claimed by `w1`.
create function pg_temp.claimed(p_execution_id bigint, p_step text) returns noetl.command
language plpgsql as $$
declare
    v_cmd noetl.command;
begin
    update noetl.command as c set status = 'claimed', claimed_by = 'w1', claimed_at = now()
    where c.execution_id = p_execution_id and c.step_name = p_step and c.status = 'queued'
    returning * into strict v_cmd;
    return v_cmd;
end;
$$;

create function pg_temp.commands(p_execution_id bigint) returns text[]
language sql as $$
    select array_agg(c.step_name || ':' || c.kind || ':' || c.status order by c.command_id)
    from noetl.command as c where c.execution_id = p_execution_id;
$$;

-- fail_command_finally: the command fails for good, nothing routes
create temporary table e1 as
select noetl.start_execution('t/c80') as execution_id;
create temporary table cmd1 as
select c.* from e1, pg_temp.claimed(e1.execution_id, 'a') as c;
select noetl.fail_command_finally(c, 'bad', '{"partial": 1}')
from noetl.command as c, cmd1
where c.command_id = cmd1.command_id;
select is(
    (
        select (c.status, c.finished_at is not null)::text
        from noetl.command as c, cmd1
        where c.command_id = cmd1.command_id
    ),
    '(failed,t)', 'fail_command_finally marks the command failed and finished'
);
select results_eq(
    $$select e.attempt, e.error, e.result from noetl.event as e, cmd1
      where e.command_id = cmd1.command_id and e.event_type = 'command.failed'$$,
    $$values (1, 'bad'::text, '{"partial": 1}'::jsonb)$$,
    'it writes command.failed with the attempt, the error and the output'
);
select is(
    (
        select (x.status, pg_temp.commands(x.execution_id))::text
        from noetl.execution as x, e1
        where x.execution_id = e1.execution_id
    ),
    '(RUNNING,{a:noop:failed})', 'it routes nothing: no route command, the run goes on'
);

-- after_command_failed, a router step: the error result is stored and a route is issued
create temporary table route1 as
select noetl.after_command_failed(c, 'bad', '{"partial": 1}', 'w1') as route_command_id
from noetl.command as c, cmd1
where c.command_id = cmd1.command_id;
select is(
    (
        select r.result from noetl.step_result as r, e1
        where r.execution_id = e1.execution_id and r.step_name = 'a'
    ),
    '{"status": "error", "error": "bad", "output": {"partial": 1}}'::jsonb,
    'a failed step stores {status, error, output} as its result'
);
select is(
    (
        select (c.kind, c.status, c.claimed_by, c.command_key = 'route@' || cmd1.command_id)::text
        from noetl.command as c, route1, cmd1
        where c.command_id = route1.route_command_id
    ),
    '(route,claimed,w1,t)',
    'it returns a route command claimed by the worker, keyed by the failed command'
);
select is(
    (
        select c.input from noetl.command as c, route1
        where c.command_id = route1.route_command_id
    ),
    (select jsonb_build_object(
        'event', 'call.error', 'source_command_id', cmd1.command_id, 'error', 'bad'
    ) from cmd1),
    'the route command evaluates the arcs for call.error with the error'
);

-- after_command_failed, a route command: the execution fails, nothing routes again
select is(
    (
        select noetl.after_command_failed(c, 'bad template', null, 'w1')
        from noetl.command as c, route1
        where c.command_id = route1.route_command_id
    ),
    null::bigint, 'a failed route command returns no route'
);
select is(
    (
        select (x.status, x.failed_step, x.error)::text
        from noetl.execution as x, e1
        where x.execution_id = e1.execution_id
    ),
    '(FAILED,a,"bad template")', 'a failed route command fails the execution, naming the step'
);
select is(
    (
        select count(*)::integer from noetl.command as c, e1
        where c.execution_id = e1.execution_id and c.kind = 'route'
    ),
    1, 'no second route command'
);

-- after_command_failed, a step with direct arcs only: call.error fails the execution
create temporary table e2 as
select noetl.start_execution('t/c80d') as execution_id;
create temporary table cmd2 as
select c.* from e2, pg_temp.claimed(e2.execution_id, 'd') as c;
select noetl.fail_command_finally(c, 'no arcs', null)
from noetl.command as c, cmd2
where c.command_id = cmd2.command_id;
select is(
    (
        select noetl.after_command_failed(c, 'no arcs', null, 'w1')
        from noetl.command as c, cmd2
        where c.command_id = cmd2.command_id
    ),
    null::bigint, 'a direct step''s failure returns no route'
);
select is(
    (
        select (x.status, x.failed_step, x.error, pg_temp.commands(x.execution_id))::text
        from noetl.execution as x, e2
        where x.execution_id = e2.execution_id
    ),
    '(FAILED,d,"no arcs",{d:noop:failed})',
    'it fails the execution and its direct target is not issued'
);
select is(
    (
        select r.result from noetl.step_result as r, e2
        where r.execution_id = e2.execution_id and r.step_name = 'd'
    ),
    '{"status": "error", "error": "no arcs"}'::jsonb,
    'without output the error result has no output key'
);

-- after_command_failed, a loop iteration: its loop counts it failed
create temporary table e3 as
select noetl.start_execution('t/c80w') as execution_id;
select
    noetl.start_loop(
        c.command_id, 1, '[1, 2]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 2}'
    )
from e3, pg_temp.claimed(e3.execution_id, 'work') as c;
create temporary table iter0 as
select c.* from noetl.command as c, e3
where c.execution_id = e3.execution_id and c.iter_index = 0;
update noetl.command as c set status = 'claimed', claimed_by = 'w1'
from iter0
where c.command_id = iter0.command_id;
select noetl.fail_command_finally(c, 'it broke', null)
from noetl.command as c, iter0
where c.command_id = iter0.command_id;
select is(
    (
        select noetl.after_command_failed(c, 'it broke', null, 'w1')
        from noetl.command as c, iter0
        where c.command_id = iter0.command_id
    ),
    null::bigint, 'a failed iteration of an open loop returns no route'
);
select is(
    (
        select (l.status, l.issued, l.done, l.failed)::text
        from noetl.loop as l, iter0
        where l.loop_id = iter0.loop_id
    ),
    '(running,2,0,1)', 'the loop counts the iteration failed'
);
select is(
    (
        select (li.status, li.result)::text
        from noetl.loop_item as li, iter0
        where li.loop_id = iter0.loop_id and li.iter_index = 0
    ),
    '(failed,"{""error"": ""it broke"", ""status"": ""error""}")',
    'the item stores its status and the error result'
);
select is(
    (
        select count(*)::integer from noetl.step_result as r, e3
        where r.execution_id = e3.execution_id
    ),
    0, 'an iteration stores no step result of its own'
);

-- the loop's second iteration fails too: the loop closes and, on_error fail, the step fails
update noetl.command as c set status = 'claimed', claimed_by = 'w1'
from e3
where c.execution_id = e3.execution_id and c.iter_index = 1;
select noetl.fail_command_finally(c, 'again', null)
from noetl.command as c, e3
where c.execution_id = e3.execution_id and c.iter_index = 1;
select noetl.after_command_failed(c, 'again', null, null)
from noetl.command as c, e3
where c.execution_id = e3.execution_id and c.iter_index = 1;
select is(
    (
        select (l.status, l.done, l.failed)::text
        from noetl.loop as l, iter0
        where l.loop_id = iter0.loop_id
    ),
    '(done,0,2)', 'the last failed iteration closes the loop'
);
select is(
    (
        select (x.status, x.failed_step, x.error)::text
        from noetl.execution as x, e3
        where x.execution_id = e3.execution_id
    ),
    '(FAILED,work,"step ""work"": 2/2 iterations failed: [0] it broke; [1] again")',
    'the loop step fails the execution with every failed iteration named'
);

-- Across the three runs: one command.failed per command failed for good (the loop command
-- too), then playbook.failed.
select is(
    (
        select array_agg(e.node_name || ':' || e.event_type order by e.event_id)
        from noetl.event as e
        where e.execution_id in (
            select e1.execution_id from e1
            union all
            select e2.execution_id from e2
            union all
            select e3.execution_id from e3
        )
        and e.event_type in ('command.failed', 'playbook.failed')
    ),
    array[
        'a:command.failed', 'a:playbook.failed', 'd:command.failed', 'd:playbook.failed',
        'work:command.failed', 'work:command.failed', 'work:command.failed',
        'work:playbook.failed'
    ],
    'one command.failed per command failed for good, then playbook.failed'
);

select * from finish();
rollback;
