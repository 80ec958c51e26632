-- Direct tests of engine limits and the command budget (sql/functions/budget.sql,
-- max_payload_bytes in sql/functions/api.sql): engine_limit, max_payload_bytes (also as
-- noetl_reader, which may call it but not change the limit) and the count_command trigger
-- (the playbook's budget, the engine default, the command that crosses it, loop
-- iterations not counted, pending counts folded in).
begin;
select plan(23);

-- engine_limit
select is(
    noetl.engine_limit('max_commands'), 10000::bigint, 'the default command budget is 10000'
);
select throws_ok(
    $$select noetl.engine_limit('nope')$$,
    'P0002', 'engine limit "nope" is not defined', 'an unknown limit is named in the error'
);
update noetl.engine_limit set value = 7
where name = 'max_commands';
select is(noetl.engine_limit('max_commands'), 7::bigint, 'it reads the table as it is');
update noetl.engine_limit set value = 10000
where name = 'max_commands';

-- max_payload_bytes
select is(noetl.max_payload_bytes(), 1048576, 'the default payload limit is 1 MiB');
select * from noetl.register_playbook('t/budget', 'yaml', '{
    "executor": {"spec": {"policy": {"limits": {"max_commands": 3}}}},
    "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}');
update noetl.engine_limit set value = 100
where name = 'max_payload_bytes';
select is(noetl.max_payload_bytes(), 100, 'max_payload_bytes follows engine_limit');
select throws_ok(
    format(
        $$select noetl.start_execution('t/budget', '{"big": "%s"}')$$, repeat('x', 100)
    ),
    '54000', 'playbook t/budget: payload is 111 bytes, over the limit of 100 bytes',
    'a payload over the limit is refused, with its size and the limit'
);
select lives_ok(
    $$select noetl.start_execution('t/budget', '{"small": 1}')$$,
    'a payload under the limit starts'
);

-- Runs `p_sql` as `p_role` and returns its one value, or the error.
create function pg_temp.as_role(p_role text, p_sql text) returns text
language plpgsql as $$
declare
    v_out text;
begin
    execute format('set local role %I', p_role);
    begin
        execute p_sql into v_out;
    exception when others then
        v_out := sqlstate;
    end;
    reset role;
    return v_out;
end;
$$;
select is(
    pg_temp.as_role('noetl_reader', 'select noetl.max_payload_bytes()::text'), '100',
    'noetl_reader may read the payload limit'
);
select is(
    pg_temp.as_role(
        'noetl_reader', $$update noetl.engine_limit set value = 1 where name = 'max_payload_bytes'$$
    ),
    '42501', 'but not change it'
);
update noetl.engine_limit set value = 1048576
where name = 'max_payload_bytes';

-- count_command: the trigger
select is(
    (
        select t.tgfoid::regprocedure::text from pg_trigger as t
        where t.tgrelid = 'noetl.command'::regclass and t.tgname = 'command_budget'
    ),
    'noetl.count_command()'::regprocedure::text,
    'every command insert runs noetl.count_command()'
);
create temporary table b1 as
select noetl.start_execution('t/budget') as id;
select is(
    (
        select (b.max_commands, b.issued)::text from noetl.execution_budget as b, b1
        where b.execution_id = b1.id
    ),
    '(3,1)', 'the first command fixes the playbook''s budget and counts itself'
);
select noetl.issue_command(b1.id, 'k2', 'noop', 'a') from b1;
select noetl.issue_command(b1.id, 'k3', 'noop', 'a') from b1;
select is(
    (
        select (b.issued, x.status)::text
        from noetl.execution_budget as b, noetl.execution as x, b1
        where b.execution_id = b1.id and x.execution_id = b1.id
    ),
    '(3,RUNNING)', 'up to the budget the execution runs'
);
select noetl.issue_command(b1.id, 'k4', 'noop', 'a') from b1;
select is(
    (
        select (x.status, x.failed_step, x.error)::text from noetl.execution as x, b1
        where x.execution_id = b1.id
    ),
    '(FAILED,a,"playbook t/budget: the execution issued more than 3 commands, its budget '
    || '(executor.spec.policy.limits.max_commands); does a cycle never end?")',
    'the command past the budget fails the execution, naming the playbook and the limit'
);
select is(
    (
        select array_agg(c.status order by c.command_id) from noetl.command as c, b1
        where c.execution_id = b1.id
    ),
    array['cancelled', 'cancelled', 'cancelled', 'cancelled'],
    'every queued command, the one past the budget too, is cancelled'
);
select noetl.issue_command(b1.id, 'k5', 'noop', 'a') from b1;
select is(
    (
        select (
            b.issued,
            (
                select count(*) from noetl.event as e
                where e.execution_id = b1.id and e.event_type = 'playbook.failed'
            )
        )::text
        from noetl.execution_budget as b, b1
        where b.execution_id = b1.id
    ),
    '(5,1)', 'later commands are counted; only the one crossing the budget fails the run'
);

-- count_command: loop iterations are not counted
create temporary table b2 as
select noetl.start_execution('t/budget') as id;
insert into noetl.command (execution_id, command_key, kind, step_name, loop_id, iter_index)
select
    b2.id as execution_id,
    'iter:1:' || i.n as command_key,
    'noop' as kind,
    'a' as step_name,
    1 as loop_id,
    i.n as iter_index
from b2, generate_series(0, 9) as i (n);
select is(
    (
        select (b.issued, x.status)::text
        from noetl.execution_budget as b, noetl.execution as x, b2
        where b.execution_id = b2.id and x.execution_id = b2.id
    ),
    '(1,RUNNING)', 'ten loop iterations leave the budget as it was'
);

-- count_command: pending counts are folded into the next count
insert into noetl.execution_budget_pending (execution_id)
select b2.id from b2, generate_series(1, 2);
select noetl.issue_command(b2.id, 'k2', 'noop', 'a') from b2;
select is(
    (
        select (
            b.issued,
            (
                select count(*) from noetl.execution_budget_pending as p
                where p.execution_id = b2.id
            )
        )::text
        from noetl.execution_budget as b, b2
        where b.execution_id = b2.id
    ),
    '(4,0)', 'the next command counts itself and the two pending ones, and clears them'
);
select is(
    (
        select x.status from noetl.execution as x, b2
        where x.execution_id = b2.id
    ),
    'FAILED', 'folded pending counts can take the execution past its budget'
);

-- count_command: the engine default when the playbook sets none
select * from noetl.register_playbook('t/nobudget', 'yaml', '{"workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}');
update noetl.engine_limit set value = 2
where name = 'max_commands';
create temporary table b3 as
select noetl.start_execution('t/nobudget') as id;
select is(
    (
        select b.max_commands from noetl.execution_budget as b, b3
        where b.execution_id = b3.id
    ),
    2::bigint, 'without a playbook budget the engine limit applies'
);
update noetl.engine_limit set value = 10000
where name = 'max_commands';
select noetl.issue_command(b3.id, 'k2', 'noop', 'a') from b3;
select is(
    (
        select x.status from noetl.execution as x, b3
        where x.execution_id = b3.id
    ),
    'RUNNING', 'the budget was fixed by the first command: a later change does not move it'
);
select noetl.issue_command(b3.id, 'k3', 'noop', 'a') from b3;
select is(
    (
        select x.status from noetl.execution as x, b3
        where x.execution_id = b3.id
    ),
    'FAILED', 'its third command fails it'
);
select is(
    (
        select x.error like 'playbook t/nobudget: the execution issued more than 2 commands%'
        from noetl.execution as x, b3
        where x.execution_id = b3.id
    ),
    true, 'the error names that playbook and its limit'
);
select is(
    (
        select count(*)::integer from noetl.execution_budget as b, b1
        where b.execution_id = b1.id
    ),
    1, 'one budget row per execution'
);

select * from finish();
rollback;
