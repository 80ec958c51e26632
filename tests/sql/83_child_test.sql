-- Direct tests of `kind: playbook` steps (sql/functions/child.sql): await_child (stale,
-- a child that cannot start, the hand-over to 'waiting') and child_finished (completed
-- with and without return_step, a pipeline resumed, failed with and without a retry, a
-- child that is no longer awaited, a second report). child_finished is called with the
-- child's row after its status is set by hand, as finish_execution would hand it over.
begin;
select plan(31);

create temporary table parent_spec as
select  -- noqa: LT09
    '{"entry_step": "call", "workflow": [
      {"step": "call", "tool": {"kind": "playbook"},
       "plan": {"kind": "playbook", "route_mode": "direct", "direct_targets": ["after"],
                "is_join": false, "has_loop": false, "reaches": ["after"],
                "max_attempts": 2}},
      {"step": "after", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/parent', 'yaml', (select spec from parent_spec));
select * from noetl.register_playbook(
    't/parent1', 'yaml',
    jsonb_set((select spec from parent_spec), '{workflow,0,plan,max_attempts}', '1')
);
select * from noetl.register_playbook('t/child', 'yaml', '{"entry_step": "c1", "workflow": [
      {"step": "c1", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}');

-- Starts a run of `p_path` and claims its entry command for `w1`; returns the command id.
create function pg_temp.start_claimed(p_path text) returns bigint
language plpgsql as $$
declare
    v_execution_id bigint := noetl.start_execution(p_path);
    v_command_id bigint;
begin
    update noetl.command as c set status = 'claimed', claimed_by = 'w1', claimed_at = now()
    where c.execution_id = v_execution_id
    returning c.command_id into strict v_command_id;
    return v_command_id;
end;
$$;

create function pg_temp.cmd(p_command_id bigint) returns noetl.command
language sql as $$ select * from noetl.command as c where c.command_id = p_command_id; $$;

-- The child execution a command waits for.
create function pg_temp.child_of(p_command_id bigint) returns bigint
language sql as $$
    select e.execution_id from noetl.execution as e where e.parent_command_id = p_command_id
    order by e.execution_id desc limit 1;
$$;

-- Ends the child as finish_execution would have, then reports it to its parent.
create function pg_temp.child_ends(
    p_child bigint, p_status text, p_result jsonb, p_error text, p_failed_step text
) returns void
language plpgsql as $$
begin
    update noetl.execution as e
    set status = p_status, result = p_result, error = p_error, failed_step = p_failed_step
    where e.execution_id = p_child;
    perform noetl.child_finished(e) from noetl.execution as e where e.execution_id = p_child;
end;
$$;

-- await_child: stale and unstartable children
create temporary table p1 as
select pg_temp.start_claimed('t/parent') as id;
select is(
    (
        select a.outcome from p1,
            noetl.await_child(p1.id, 2, 't/child', null, '{}', null, null, 'w1') as a
    ),
    'stale', 'handing over at another attempt is stale'
);
select is(
    (select (c.status, pg_temp.child_of(p1.id))::text from p1, pg_temp.cmd(p1.id) as c),
    '(claimed,)', 'a stale hand-over starts no child'
);
select is(
    (
        select (a.outcome, a.route_command_id)::text from p1,
            noetl.await_child(p1.id, 1, 't/nope', null, '{}', null, 5, 'w1') as a
    ),
    '(failed,)', 'a child that cannot start fails the command'
);
select is(
    (
        select (c.status, x.status, x.error)::text
        from p1, pg_temp.cmd(p1.id) as c, noetl.execution as x
        where x.execution_id = c.execution_id
    ),
    '(failed,FAILED,"step ''call'': child playbook cannot start: '
    || 'playbook ""t/nope"" is not registered")',
    'the failure names the step and why; unhandled, it fails the run, with no retry'
);
create temporary table p2 as
select pg_temp.start_claimed('t/parent') as id;
select is(
    (
        select a.outcome from p2,
            noetl.await_child(p2.id, 1, 't/child', null, '[1]', null, null, 'w1') as a
    ),
    'failed', 'a payload that is not an object fails the command too'
);

-- await_child: the hand-over
create temporary table p3 as
select pg_temp.start_claimed('t/parent') as id;
select is(
    (
        select (a.outcome, a.route_command_id)::text from p3,
            noetl.await_child(p3.id, 1, 't/child', null, '{"k": 1}', null, 7.5, 'w1') as a
    ),
    '(ok,)', 'await_child hands the command over'
);
select is(
    (
        select (c.status, c.claimed_by, c.attempt)::text
        from p3, pg_temp.cmd(p3.id) as c
    ),
    '(waiting,,1)', 'the command waits, holding no worker slot'
);
select is(
    (select c.input -> 'child' from p3, pg_temp.cmd(p3.id) as c),
    (
        select
            jsonb_build_object(
                'execution_id', pg_temp.child_of(p3.id), 'return_step', null,
                'retry_delay', 7.5, 'pipeline', null
            )
        from p3
    ),
    'command.input.child records what it waits for'
);
select is(
    (
        select (x.path, x.status, x.parent_execution_id = c.execution_id, x.workload)::text
        from p3, pg_temp.cmd(p3.id) as c, noetl.execution as x
        where x.execution_id = pg_temp.child_of(p3.id)
    ),
    '(t/child,RUNNING,t,"{""k"": 1}")', 'the child runs, linked to its parent, with the payload'
);

-- child_finished: completed, the child's result
select pg_temp.child_ends(pg_temp.child_of(p3.id), 'COMPLETED', '{"out": 1}', null, null)
from p3;
select is(
    (select c.status from p3, pg_temp.cmd(p3.id) as c), 'done',
    'a completed child completes the parent command'
);
select is(
    (
        select r.result from p3, pg_temp.cmd(p3.id) as c, noetl.step_result as r
        where r.execution_id = c.execution_id and r.step_name = 'call'
    ),
    '{"out": 1}'::jsonb, 'the child''s result is the step''s result'
);
select is(
    (
        select array_agg(n.step_name || ':' || n.status order by n.command_id)
        from p3, pg_temp.cmd(p3.id) as c, noetl.command as n
        where n.execution_id = c.execution_id
    ),
    array['call:done', 'after:queued'], 'the parent step routes on'
);
select pg_temp.child_ends(pg_temp.child_of(p3.id), 'COMPLETED', '{"out": 2}', null, null)
from p3;
select is(
    (
        select count(*)::integer from p3, noetl.event as e
        where e.command_id = p3.id and e.event_type = 'call.done'
    ),
    1, 'a second report of the child changes nothing'
);

-- child_finished: completed with return_step
create temporary table p4 as
select pg_temp.start_claimed('t/parent') as id;
select noetl.await_child(p4.id, 1, 't/child', null, '{}', 'c1', null, 'w1') from p4;
select
    noetl.store_step_result(
        pg_temp.child_of(p4.id), 'c1', 0, '{"from": "c1"}'
    )
from p4;
select pg_temp.child_ends(pg_temp.child_of(p4.id), 'COMPLETED', '{"out": "x"}', null, null)
from p4;
select is(
    (
        select r.result from p4, pg_temp.cmd(p4.id) as c, noetl.step_result as r
        where r.execution_id = c.execution_id and r.step_name = 'call'
    ),
    '{"from": "c1"}'::jsonb, 'with return_step the parent gets that step''s result'
);
create temporary table p5 as
select pg_temp.start_claimed('t/parent') as id;
select noetl.await_child(p5.id, 1, 't/child', null, '{}', 'never', null, 'w1') from p5;
select pg_temp.child_ends(pg_temp.child_of(p5.id), 'COMPLETED', '{"out": "x"}', null, null)
from p5;
select is(
    (
        select (c.status, r.result is null)::text
        from p5, pg_temp.cmd(p5.id) as c, noetl.step_result as r
        where r.execution_id = c.execution_id and r.step_name = 'call'
    ),
    '(done,t)', 'a return_step that never ran gives a NULL result'
);

-- child_finished: a pipeline task resumes the same attempt with the child's result
create temporary table p6 as
select pg_temp.start_claimed('t/parent') as id;
select
    noetl.await_child(
        p6.id, 1, 't/child', null, '{}', null, null, 'w1', '{"task_index": 2, "done": ["a"]}'
    )
from p6;
-- On the engine clock (set back an hour here), so the resumed command is due at once.
select set_config('noetl.clock', (now() - interval '1 hour')::text, true) as clock;
select pg_temp.child_ends(pg_temp.child_of(p6.id), 'COMPLETED', '{"n": 3}', null, null)
from p6;
select is(
    (select array_agg(c.command_id) from noetl.claim_commands('w2', array['playbook'], 5) as c),
    (select array[p6.id] from p6),
    'the resumed command is due on the engine clock and claimed'
);
select set_config('noetl.clock', '', true) as clock;
select is(
    (
        select (e.event_type, e.attempt)::text from p6, noetl.event as e
        where e.command_id = p6.id and e.event_type in ('command.resumed', 'command.retried')
    ),
    '(command.resumed,1)', 'a parked pipeline is queued again at the same attempt'
);
select is(
    (select c.input -> 'pipeline' from p6, pg_temp.cmd(p6.id) as c),
    '{"task_index": 2, "done": ["a"], "child_result": {"n": 3}}'::jsonb,
    'its input.pipeline is the parked state plus the child''s result'
);
select is(
    (
        select e.meta from p6, noetl.event as e
        where e.command_id = p6.id and e.event_type = 'command.resumed'
    ),
    (
        select jsonb_build_object('child_execution_id', pg_temp.child_of(p6.id), 'task_index', 2)
        from p6
    ),
    'command.resumed names the child and the task'
);
select is(
    (
        select count(*)::integer from p6, noetl.event as e
        where e.command_id = p6.id and e.event_type = 'call.done'
    ),
    0, 'the pipeline step is not completed yet'
);

-- child_finished: a failed child with a retry delay re-queues the parent command
create temporary table p7 as
select pg_temp.start_claimed('t/parent') as id;
select noetl.await_child(p7.id, 1, 't/child', null, '{}', null, 0, 'w1') from p7;
create temporary table child7 as
select pg_temp.child_of(p7.id) as id from p7;
select pg_temp.child_ends(child7.id, 'FAILED', null, 'boom', 'c1') from child7;
select is(
    (select (c.status, c.attempt)::text from p7, pg_temp.cmd(p7.id) as c),
    '(queued,2)', 'a failed child with attempts left re-queues the parent at the next attempt'
);
select is(
    (
        select e.error from p7, noetl.event as e
        where e.command_id = p7.id and e.event_type = 'call.error'
    ),
    (
        select
            format(
                'step ''call'': child playbook t/child (execution %s) failed in step ''c1'': boom',
                child7.id
            )
        from child7
    ),
    'the error names the step, the child, its status, its failed step and its error'
);
select is(
    (
        select e.result from p7, noetl.event as e
        where e.command_id = p7.id and e.event_type = 'call.error'
    ),
    (
        select jsonb_build_object('child_execution_id', child7.id, 'child_status', 'FAILED')
        from child7
    ),
    'call.error carries the child''s id and status'
);

-- child_finished: a child that is no longer awaited is ignored (the next attempt waits for
-- a newer child)
update noetl.command as c
set status = 'waiting', input = jsonb_set(c.input, '{child,execution_id}', '424242')
from p7
where c.command_id = p7.id;
select pg_temp.child_ends(child7.id, 'COMPLETED', '{"stale": true}', null, null)
from child7;
select is(
    (
        select (c.status, c.attempt)::text from p7, pg_temp.cmd(p7.id) as c
    ),
    '(waiting,2)', 'the parent waits for another child: the old one is ignored'
);
select is(
    (
        select count(*)::integer from p7, noetl.event as e
        where e.command_id = p7.id and e.event_type = 'call.done'
    ),
    0, 'no call.done for the old child'
);

-- child_finished: a cancelled child without attempts left fails the parent step
create temporary table p8 as
select pg_temp.start_claimed('t/parent1') as id;
select noetl.await_child(p8.id, 1, 't/child', null, '{}', null, 0, 'w1') from p8;
create temporary table child8 as
select pg_temp.child_of(p8.id) as id from p8;
select pg_temp.child_ends(child8.id, 'CANCELLED', null, 'stop', null) from child8;
select is(
    (
        select (c.status, x.status, x.failed_step)::text
        from p8, pg_temp.cmd(p8.id) as c, noetl.execution as x
        where x.execution_id = c.execution_id
    ),
    '(failed,FAILED,call)', 'a cancelled child past the parent''s attempts fails the parent'
);
select is(
    (
        select x.error from p8, pg_temp.cmd(p8.id) as c, noetl.execution as x
        where x.execution_id = c.execution_id
    ),
    (
        select
            format(
                'step ''call'': child playbook t/child (execution %s) cancelled: stop', child8.id
            )
        from child8
    ),
    'the error says the child was cancelled and why'
);

-- child_finished: a parent command that is gone, or a child without a parent command
create temporary table p9 as
select pg_temp.start_claimed('t/parent') as id;
select noetl.await_child(p9.id, 1, 't/child', null, '{}', null, null, 'w1') from p9;
update noetl.command as c set status = 'cancelled'
from p9
where c.command_id = p9.id;
select pg_temp.child_ends(pg_temp.child_of(p9.id), 'COMPLETED', '{}', null, null) from p9;
select is(
    (select c.status from p9, pg_temp.cmd(p9.id) as c), 'cancelled',
    'a cancelled parent command is left alone'
);
update noetl.execution as x set parent_command_id = 424242
from p9
where x.execution_id = pg_temp.child_of(p9.id);
select lives_ok(
    $$select noetl.child_finished(x) from noetl.execution as x
      where x.parent_command_id = 424242$$,
    'a child whose parent command does not exist is ignored'
);

-- through finish_execution: the real end of a child reaches child_finished
create temporary table p10 as
select pg_temp.start_claimed('t/parent') as id;
select noetl.await_child(p10.id, 1, 't/child', null, '{}', null, null, 'w1') from p10;
select noetl.finish_execution(pg_temp.child_of(p10.id), 'COMPLETED', '{"end": 1}', null, null)
from p10;
select is(
    (
        select (c.status, r.result)::text
        from p10, pg_temp.cmd(p10.id) as c, noetl.step_result as r
        where r.execution_id = c.execution_id and r.step_name = 'call'
    ),
    '(done,"{""end"": 1}")', 'finish_execution of the child completes the parent command'
);
select is(
    (
        select c.claimed_by from p10, pg_temp.cmd(p10.id) as c
    ),
    (select 'child:' || pg_temp.child_of(p10.id) from p10),
    'claimed_by names the child that completed it'
);

select * from finish();
rollback;
