-- finish_and_claim_v1 on a worker's first transitions: its check of the outcomes' claims
-- looks each command up by key (a lateral subquery kept from being flattened into a join,
-- whose plan, made while noetl.command was a few pages, hashed the whole table). The
-- answers are the same once the plans are settled (more than five calls: plpgsql's plan
-- cache may then keep a generic plan): outcomes applied, a stale one refused, an unknown
-- command raised.
begin;
select plan(7);
set local client_min_messages = warning;

select * from noetl.register_playbook(
    't/first_run_plans', 'yaml',
    '{"entry_step": "a", "workflow": [{"step": "a", "plan": {"route_mode": "none"}}]}'::jsonb
);

-- Seven executions; each call finishes the command claimed before and claims the next.
select noetl.start_execution('t/first_run_plans') from generate_series(1, 7);
create temporary table claimed as
select
    0 as call,
    c.*
from noetl.claim_commands_v1('w1', null, 1) as c;
select set_config('test.first', (select c.command_id::text from claimed as c), true) as first;
select set_config('test.claim', (select c.claim_gen::text from claimed as c), true) as claim;

do $$
declare
    v_last claimed;
begin
    for v_call in 1..6 loop
        select * into v_last from claimed as c order by c.call desc limit 1;
        insert into claimed
        select v_call, n.* from noetl.finish_and_claim_v1(
            'w1',
            jsonb_build_array(jsonb_build_object(
                'op', 'done', 'command_id', v_last.command_id, 'attempt', 1,
                'claim', v_last.claim_gen, 'result', jsonb_build_object('call', v_call)
            )),
            null, 1
        ) as n;
    end loop;
end;
$$;

select is(
    (select count(distinct c.command_id)::integer from claimed as c), 7,
    'every call claims one new command'
);
select is(
    (
        select count(*)::integer from noetl.command as c
        where
            c.status = 'done'
            and c.command_id in (
                select cl.command_id from claimed as cl
                where cl.call < 6
            )
    ),
    6, 'and each outcome is applied'
);
select is(
    (
        select array_agg(r.result order by r.command_id) from noetl.step_result as r
        where r.command_id in (select cl.command_id from claimed as cl)
    ),
    array(select jsonb_build_object('call', n) from generate_series(1, 6) as n),
    'with its result'
);

-- An outcome for a claim already finished, after the plans are settled: refused
create temporary table refused as
select * from noetl.finish_and_claim_v1(
    'w1',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', current_setting('test.first')::bigint, 'attempt', 1,
        'claim', current_setting('test.claim')::integer, 'result', '{}'::jsonb
    )),
    null, 0
);
select is((select count(*)::integer from refused), 0, 'a stale outcome claims nothing');
select is(
    (
        select count(*)::integer from noetl.event as e
        where
            e.command_id = current_setting('test.first')::bigint
            and e.event_type = 'command.outcome_refused'
    ),
    1, 'and is refused'
);
select is(
    (
        select r.result from noetl.step_result as r
        where r.command_id = current_setting('test.first')::bigint
    ),
    '{"call": 1}'::jsonb,
    'the result stored stays'
);
select throws_ok(
    $$select * from noetl.finish_and_claim_v1(
        'w1', '[{"op": "done", "command_id": 424242, "attempt": 1}]', null, 0
    )$$,
    'P0002', null, 'an unknown command id still raises'
);

select * from finish();
rollback;
