-- A chain step's transition without work it does not need (issue 13): lock_command_rows
-- remembers the commands it locked, so finish_and_claim's outcomes do not lock them
-- again; lock_executions, lock_command_rows and describe_commands_v1 keep one generic
-- plan instead of planning their `= any(ids)` statements on every call; command_context
-- looks up the results a step reads by key.
--
-- A row this transaction locked FOR UPDATE carries its transaction id in xmax (see
-- 80_completion_test.sql): pg_temp.locked() says whether a command row is locked.
begin;
select plan(19);
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
                "reads": {"a": true}, "loop_reads": {}}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/transition_cost', 'yaml', (select spec from spec_fixture));
select set_config(
    'test.e1', noetl.start_execution('t/transition_cost')::text, true
) as e1;
select set_config(
    'test.e2', noetl.start_execution('t/transition_cost')::text, true
) as e2;
select set_config('test.c1', (
    select c.command_id::text from noetl.command as c
    where c.execution_id = current_setting('test.e1')::bigint
), true) as c1;
select set_config('test.c2', noetl.issue_command(
    current_setting('test.e1')::bigint, 'b@t1', 'noop', 'b'
)::text, true) as c2;
select set_config('test.c3', noetl.issue_command(
    current_setting('test.e1')::bigint, 'b@t2', 'noop', 'b'
)::text, true) as c3;

create function pg_temp.locked(p_command_id bigint) returns boolean
language sql as $$
    select c.xmax::text <> '0' from noetl.command as c where c.command_id = p_command_id;
$$;

create function pg_temp.held_commands() returns bigint[]
language sql as $$
    select coalesce(
        nullif(current_setting('noetl.locked_commands', true), '')::bigint[], '{}'
    );
$$;

-- lock_command_rows: what it locked is remembered for the transaction
select noetl.lock_command_rows(array[current_setting('test.c1')::bigint]);
select ok(pg_temp.locked(current_setting('test.c1')::bigint), 'the command row is locked');
select is(
    pg_temp.held_commands(), array[current_setting('test.c1')::bigint],
    'lock_command_rows records the command rows it locked'
);

-- A command moved to another execution (never done by the engine: an execution_id does
-- not change) shows whether a second call reads the command again.
update noetl.command set execution_id = current_setting('test.e2')::bigint, command_key = 'moved'
where command_id = current_setting('test.c1')::bigint;
select noetl.lock_command_rows(array[current_setting('test.c1')::bigint]);
select ok(
    not array[current_setting('test.e2')::bigint]
    <@ current_setting('noetl.locked_executions')::bigint[],
    'a call for commands already held returns at once'
);
update noetl.command set execution_id = current_setting('test.e1')::bigint, command_key = 'a@start'
where command_id = current_setting('test.c1')::bigint;

select noetl.lock_command_rows(
    array[current_setting('test.c1')::bigint, current_setting('test.c2')::bigint, 424242]
);
select ok(
    pg_temp.locked(current_setting('test.c2')::bigint),
    'a call naming a command not held yet locks it'
);
select is(
    pg_temp.held_commands(),
    array[current_setting('test.c1')::bigint, current_setting('test.c2')::bigint],
    'and records it beside the others; an unknown id is not recorded'
);

-- A rolled-back subtransaction drops its row locks, and with them what it recorded. (The
-- block's exception rolls it back; its message carries what was recorded inside.)
do $$
begin
    perform noetl.lock_command_rows(array[current_setting('test.c3')::bigint]);
    raise exception '%', pg_temp.held_commands();
exception when raise_exception then
    perform set_config('test.held_inside', sqlerrm, true);
end;
$$;
select ok(
    current_setting('test.c3')::bigint = any(current_setting('test.held_inside')::bigint[]),
    'inside the subtransaction the command is recorded'
);
select ok(
    not current_setting('test.c3')::bigint = any(pg_temp.held_commands()),
    'after its rollback it is not'
);
select noetl.lock_command_rows(array[current_setting('test.c3')::bigint]);
select ok(
    current_setting('test.c3')::bigint = any(pg_temp.held_commands()),
    'so the next call locks it again'
);

-- Generic plans: planned once per session, not on every call
select is(
    (
        select p.proconfig from pg_proc as p
        where p.oid = 'noetl.lock_executions(bigint[])'::regprocedure
    ),
    array['plan_cache_mode=force_generic_plan', 'enable_seqscan=off'],
    'lock_executions keeps a generic plan of index scans'
);
select is(
    (
        select p.proconfig from pg_proc as p
        where p.oid = 'noetl.lock_command_rows(bigint[])'::regprocedure
    ),
    array['plan_cache_mode=force_generic_plan', 'enable_seqscan=off'],
    'lock_command_rows keeps a generic plan of index scans'
);
select ok(
    (
        select p.proconfig from pg_proc as p
        where p.oid = 'noetl.describe_commands_v1(bigint[])'::regprocedure
    ) @> array[
        'plan_cache_mode=force_generic_plan', 'enable_seqscan=off', 'enable_hashjoin=off',
        'enable_mergejoin=off'
    ],
    'describe_commands_v1 keeps a generic plan of nested loops of index scans'
);

-- describe_commands_v1 under its generic plan: the same payload on every call
insert into noetl.step_result (execution_id, step_name, result, command_id)
values (current_setting('test.e1')::bigint, 'a', '{"n": 1}', current_setting('test.c1')::bigint);
create temporary table described as
select * from noetl.describe_commands_v1(
    array[current_setting('test.c3')::bigint, current_setting('test.c2')::bigint]
);
select noetl.describe_commands_v1(array[current_setting('test.c2')::bigint])
from generate_series(1, 6);
select results_eq(
    $$select * from noetl.describe_commands_v1(
        array[current_setting('test.c3')::bigint, current_setting('test.c2')::bigint]
    )$$,
    $$select * from described$$,
    'after the calls that settle the generic plan the payload is the same'
);
select is(
    (select array_agg(d.command_id order by d.command_id) from described as d),
    array[current_setting('test.c2')::bigint, current_setting('test.c3')::bigint],
    'ordered by command_id'
);
select is(
    (select array_agg(d.context -> 'results' order by d.command_id) from described as d),
    array['{"a": {"n": 1}}'::jsonb, null],
    'the context, with what step b reads, on the first row of the group only'
);

-- command_context: the results `reads` names, looked up by key
insert into noetl.step_result (execution_id, step_name, result, command_id)
values
(current_setting('test.e1')::bigint, 'b', '{"x": 2}', current_setting('test.c2')::bigint),
(current_setting('test.e1')::bigint, 'c', '3', current_setting('test.c3')::bigint);
select is(
    noetl.command_context(current_setting('test.e1')::bigint, '{"a": true}') -> 'results',
    '{"a": {"n": 1}}'::jsonb,
    'an object reads sends the steps it names'
);
select is(
    noetl.command_context(
        current_setting('test.e1')::bigint, '{"b": ["x", "y"], "c": ["z"], "none": true}'
    ) -> 'results',
    '{"b": {"x": 2}, "c": 3}'::jsonb,
    'the keys it names of an object result, a result that is not an object whole; '
    || 'a step without a result is absent'
);
select is(
    noetl.command_context(current_setting('test.e1')::bigint, null) -> 'results',
    '{"a": {"n": 1}, "b": {"x": 2}, "c": 3}'::jsonb,
    'reads NULL sends every result'
);
select is(
    noetl.command_context(current_setting('test.e1')::bigint, '{}') -> 'results',
    '{}'::jsonb,
    'reads {} sends none'
);
select is(
    noetl.command_context(current_setting('test.e1')::bigint, 'null') -> 'results',
    '{}'::jsonb,
    'a reads that is not an object names no step'
);

select * from finish(); -- noqa: AM04
rollback;
