-- Loop failure (sql/functions/fanin.sql close_loop): iterations that failed after their
-- retries fail the loop step with `call.error` unless the loop says on_error 'continue'.
-- `work` loops over python iterations and routes unconditionally to `after` (noop).

begin;
select plan(12);

select lives_ok(
    $$select * from noetl.register_playbook('tap/loopfail', '', '{
        "workflow": [
            {"step": "work", "tool": {"kind": "python", "code": "result = 1"},
             "loop": {"in": "{{ items }}", "iterator": "x"},
             "next": {"arcs": [{"step": "after"}]},
             "plan": {"kind": "python", "route_mode": "direct", "direct_targets": ["after"],
                      "is_join": false, "has_loop": true, "successors": ["after"],
                      "max_attempts": 1}},
            {"step": "after", "tool": {"kind": "noop"},
             "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                      "is_join": false, "has_loop": false, "successors": [],
                      "max_attempts": 1}}
        ]}'::jsonb)$$,
    'a playbook with a loop step registers'
);

-- Starts an execution, starts its loop over `items` with `spec`, then fails the
-- iterations whose index is in `failing` and completes the others. Returns the loop id.
create function pg_temp.run_loop(p_items jsonb, p_spec jsonb, p_failing integer[])
returns bigint
language plpgsql as $$
declare
    v_execution_id bigint := noetl.start_execution('tap/loopfail', '{}');
    v_cmd record;
    v_loop_id bigint;
begin
    select * into strict v_cmd from noetl.claim_commands('tap', array['loop'], 1);
    perform noetl.start_loop(v_cmd.command_id, v_cmd.attempt, p_items, p_spec, null);
    select l.loop_id into strict v_loop_id from noetl.loop as l
    where l.execution_id = v_execution_id;
    for v_cmd in select * from noetl.claim_commands('tap', array['python'], 1000) loop
        if v_cmd.iter_index = any(p_failing) then
            perform noetl.fail_command(
                v_cmd.command_id, v_cmd.attempt, 'boom ' || v_cmd.iter_index
            );
        else
            perform noetl.complete_command(
                v_cmd.command_id, v_cmd.attempt, to_jsonb(v_cmd.iter_index)
            );
        end if;
    end loop;
    return v_loop_id;
end;
$$;

create function pg_temp.execution_of(p_loop_id bigint) returns noetl.execution
language sql as $$
    select e.* from noetl.execution as e
    inner join noetl.loop as l on e.execution_id = l.execution_id
    where l.loop_id = p_loop_id;
$$;

create function pg_temp.issued(p_loop_id bigint, p_step text) returns bigint
language sql as $$
    select count(*) from noetl.command as c
    inner join noetl.loop as l on c.execution_id = l.execution_id
    where l.loop_id = p_loop_id and c.step_name = p_step;
$$;

-- Two of five iterations fail: the step fails, the execution fails, `after` never runs.
create temp table t_fail as
select pg_temp.run_loop(
    '[1, 2, 3, 4, 5]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 5}',
    array[1, 3]
) as loop_id;

select is(
    (select (e.status, e.failed_step)::text from t_fail, pg_temp.execution_of(t_fail.loop_id) as e),
    '(FAILED,work)', 'failed iterations fail the execution at the loop step'
);
select is(
    (select e.error from t_fail, pg_temp.execution_of(t_fail.loop_id) as e),
    'step "work": 2/5 iterations failed: [1] boom 1; [3] boom 3',
    'the error names the step, failed/total and each failed iteration with its error'
);
select is(
    (select pg_temp.issued(t_fail.loop_id, 'after') from t_fail), 0::bigint,
    'the step after the loop is not issued'
);
select is(
    (
        select (c.status, (
            select count(*) from noetl.event as ev
            where ev.command_id = c.command_id and ev.event_type = 'call.error'
        ))::text
        from t_fail, noetl.loop as l, noetl.command as c
        where l.loop_id = t_fail.loop_id and c.command_id = l.command_id
    ),
    '(failed,1)', 'the loop command fails with one call.error'
);
select is(
    (
        select r.result -> 'stats'
        from t_fail, pg_temp.execution_of(t_fail.loop_id) as e, noetl.step_result as r
        where r.execution_id = e.execution_id and r.step_name = 'work'
    ),
    '{"total": 5, "success": 3, "failed": 2}'::jsonb,
    'the step result keeps the stats'
);
select is(
    (
        select r.result ->> 'status'
        from t_fail, pg_temp.execution_of(t_fail.loop_id) as e, noetl.step_result as r
        where r.execution_id = e.execution_id and r.step_name = 'work'
    ),
    'error', 'the step result says error'
);
select is(
    (
        select count(*) from t_fail, noetl.event as ev
        where ev.loop_id = t_fail.loop_id and ev.event_type = 'loop.done'
    ),
    1::bigint, 'the loop still closes once with loop.done'
);

-- Five failures of six: only the first three errors are quoted.
create temp table t_many as
select pg_temp.run_loop(
    '[0, 1, 2, 3, 4, 5]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 6}',
    array[0, 2, 3, 4, 5]
) as loop_id;
select is(
    (select e.error from t_many, pg_temp.execution_of(t_many.loop_id) as e),
    'step "work": 5/6 iterations failed: [0] boom 0; [2] boom 2; [3] boom 3; ...',
    'only the first three failed iterations are quoted'
);

-- on_error continue: the loop routes with loop.done as if nothing failed.
create temp table t_cont as
select pg_temp.run_loop(
    '[1, 2, 3]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 3,
                   "on_error": "continue"}',
    array[0]
) as loop_id;
select is(
    (
        select (l.on_error, l.done, l.failed)::text from t_cont, noetl.loop as l
        where l.loop_id = t_cont.loop_id
    ),
    '(continue,2,1)', 'the loop counts the failure and keeps on_error'
);
select is(
    (select pg_temp.issued(t_cont.loop_id, 'after') from t_cont), 1::bigint,
    'on_error continue issues the next step'
);

-- A loop with no failure is unchanged.
create temp table t_ok as
select pg_temp.run_loop(
    '[1, 2]', '{"iterator": "x", "mode": "parallel"}', '{}'
) as loop_id;
select is(
    (
        select (e.status, pg_temp.issued(t_ok.loop_id, 'after'))::text
        from t_ok, pg_temp.execution_of(t_ok.loop_id) as e
    ),
    '(RUNNING,1)', 'a loop without failures routes to the next step'
);

select * from finish();
rollback;
