-- Resume and rerun (sql/functions/resume.sql). `work` loops over python iterations and
-- routes to `after` (python); a failed loop is resumed and runs only its failed iterations,
-- a failed plain step is resumed alone, a rerun from `after` reuses `work`'s result.

begin;
select plan(16);

select lives_ok(
    $$select * from noetl.register_playbook('tap/resume', '', '{
        "workflow": [
            {"step": "work", "tool": {"kind": "python", "code": "result = 1"},
             "loop": {"in": "{{ items }}", "iterator": "x"},
             "next": {"arcs": [{"step": "after"}]},
             "plan": {"kind": "python", "route_mode": "direct", "direct_targets": ["after"],
                      "is_join": false, "has_loop": true, "successors": ["after"],
                      "max_attempts": 1}},
            {"step": "after", "tool": {"kind": "python", "code": "result = 2"},
             "plan": {"kind": "python", "route_mode": "none", "direct_targets": [],
                      "is_join": false, "has_loop": false, "successors": [],
                      "max_attempts": 1}}
        ]}'::jsonb)$$,
    'a playbook with a loop step registers'
);

-- Claims every due python command of the execution; fails those whose iteration index is in
-- `failing` (or every non-loop one when `fail_steps`), completes the others. Returns how
-- many it handled.
create function pg_temp.work_off(
    p_execution_id bigint, p_failing integer[], p_fail_steps boolean default false
) returns integer
language plpgsql as $$
declare
    v_cmd record;
    v_handled integer := 0;
begin
    for v_cmd in select * from noetl.claim_commands('tap', array['python'], 1000) loop
        continue when v_cmd.execution_id <> p_execution_id;
        v_handled := v_handled + 1;
        if v_cmd.iter_index = any(p_failing) or (v_cmd.iter_index is null and p_fail_steps) then
            perform noetl.fail_command(v_cmd.command_id, v_cmd.attempt, 'boom');
        else
            perform noetl.complete_command(
                v_cmd.command_id, v_cmd.attempt,
                coalesce(to_jsonb(v_cmd.iter_index), '"after"'::jsonb)
            );
        end if;
    end loop;
    return v_handled;
end;
$$;

create temp table t_run as
select noetl.start_execution('tap/resume', '{}') as execution_id;

select lives_ok(
    $$select noetl.start_loop(c.command_id, c.attempt, '[10, 11, 12, 13, 14, 15]',
        '{"iterator": "x", "mode": "parallel", "max_in_flight": 6}', null)
      from noetl.claim_commands('tap', array['loop'], 1) as c$$,
    'the loop starts with six iterations'
);
select is(
    pg_temp.work_off((select execution_id from t_run), array[1, 4]), 6,
    'six iterations ran, two failed'
);
select is((
    select (e.status, e.failed_step)::text from noetl.execution as e, t_run
    where e.execution_id = t_run.execution_id
), '(FAILED,work)',
'the failed iterations failed the execution at the loop step');

select throws_ok(
    $$select noetl.resume_execution(-1)$$, 'P0002', 'execution -1 does not exist',
    'an unknown execution cannot be resumed'
);
select is(
    (select noetl.resume_execution(execution_id) from t_run), 2,
    'resume issues the two failed iterations again'
);
select is(
    (
        select array_agg((c.iter_index, c.status, c.attempt)::text order by c.iter_index)
        from noetl.command as c, t_run
        where
            c.execution_id = t_run.execution_id and c.loop_id is not null
            and c.status <> 'done'
    ),
    array['(1,queued,2)', '(4,queued,2)'],
    'only the failed iterations are queued, each as attempt 2'
);
select is((
    select e.status from noetl.execution as e, t_run
    where e.execution_id = t_run.execution_id
), 'RUNNING',
'the execution runs again');
select is(
    pg_temp.work_off((select execution_id from t_run), '{}'), 2,
    'a worker runs exactly the two iterations'
);
select is(
    pg_temp.work_off((select execution_id from t_run), '{}'), 1,
    'the loop closed and its successor ran once'
);
select is(
    (
        select (e.status, e.result, l.done, l.failed)::text
        from noetl.execution as e, noetl.loop as l, t_run
        where e.execution_id = t_run.execution_id and l.execution_id = e.execution_id
    ),
    '(COMPLETED,"""after""",6,0)',
    'the resumed execution completes with every iteration done'
);
select throws_ok(
    $$select noetl.resume_execution(execution_id) from t_run$$, '22023',
    'execution ' || (select execution_id from t_run)
    || ' is COMPLETED: only a FAILED or CANCELLED execution can be resumed',
    'a completed execution cannot be resumed'
);

-- Rerun from `after`: a new execution linked to the old one reuses `work`'s result.
create temp table t_rerun as
select noetl.rerun_execution(execution_id, 'after') as execution_id from t_run;
select is(
    (
        select (e.status, e.rerun_of = t_run.execution_id)::text
        from noetl.execution as e, t_rerun, t_run
        where e.execution_id = t_rerun.execution_id
    ),
    '(RUNNING,t)', 'the rerun is a new running execution linked to the old one'
);
select is(
    (
        select r.result -> 'stats' from noetl.step_result as r, t_rerun
        where r.execution_id = t_rerun.execution_id and r.step_name = 'work'
    ),
    '{"total": 6, "failed": 0, "success": 6}'::jsonb,
    'the rerun reuses the old result of the step before `after`'
);
select is(
    (
        select array_agg(c.step_name) from noetl.command as c, t_rerun
        where c.execution_id = t_rerun.execution_id
    ),
    array['after'], 'the rerun issues only the step it starts from'
);
select throws_ok(
    $$select noetl.rerun_execution(execution_id, 'nope') from t_run$$, '22023',
    'playbook tap/resume: step "nope" does not exist (rerun of execution '
    || (select execution_id from t_run) || ')',
    'a rerun from an unknown step is refused naming it'
);

select * from finish();
rollback;
