-- The short path of a plain step's transition (sql/functions/plain_step.sql):
-- noetl.finish_plain_step, through finish_and_claim_v1, writes what the general path
-- (open_issue_claims, complete_command, close_issue_claims, describe_commands_v1) writes
-- for the same outcome, and declines, writing nothing, whatever it does not cover.
-- Which path ran is told by `noetl.locked_commands`: the general path's first call,
-- lock_command_rows, sets it; the short path never does.
begin;
select plan(63);
set local client_min_messages = warning;

-- A step's plan as registration writes it: `route` a route_mode, `targets` its arcs.
create function pg_temp.plan_step(
    p_step text, p_route text, p_targets text[], p_reads jsonb default '{}',
    p_is_join boolean default false, p_has_loop boolean default false
) returns jsonb
language sql
as $$
    select jsonb_build_object(
        'step', p_step, 'tool', jsonb_build_object('kind', 'noop'),
        'plan', jsonb_build_object(
            'kind', 'noop', 'route_mode', p_route, 'direct_targets', to_jsonb(p_targets),
            'is_join', p_is_join, 'has_loop', p_has_loop, 'successors', to_jsonb(p_targets),
            'max_attempts', 2, 'reads', p_reads, 'loop_reads', '{}'::jsonb
        )
    );
$$;

-- a -> b -> c, b reading a.k.
select * from noetl.register_playbook('t/plain', 'yaml', jsonb_build_object(
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'direct', array['b']),
        pg_temp.plan_step('b', 'direct', array['c'], '{"a": ["k"]}'),
        pg_temp.plan_step('c', 'none', '{}')
    )
));

-- Starts `path` and claims its entry command for w1: (execution_id, command_id, claim_gen).
create function pg_temp.start_claimed(
    p_path text, out execution_id bigint, out command_id bigint, out claim_gen integer
)
language plpgsql
as $$
begin
    execution_id := noetl.start_execution(p_path);
    select c.command_id, c.claim_gen into command_id, claim_gen
    from noetl.claim_commands_v1('w1', null, 1) as c
    where c.execution_id = start_claimed.execution_id;
end;
$$;

-- One `done` outcome through finish_and_claim_v1, with the path marker cleared first;
-- `targets` the conditional arcs the worker chose.
create function pg_temp.finish(
    p_command_id bigint, p_claim integer, p_kinds text[] default null,
    p_n integer default 5, p_ctx_set jsonb default null, p_targets jsonb default null
) returns setof noetl.claimed_command
language plpgsql
as $$
begin
    perform set_config('noetl.locked_commands', '', true);
    return query select * from noetl.finish_and_claim_v1('w1', jsonb_build_array(
        jsonb_build_object(
            'op', 'done', 'command_id', p_command_id, 'attempt', 1, 'claim', p_claim,
            'result', '{"k": 1, "x": 2}'::jsonb, 'ctx_set', p_ctx_set, 'targets', p_targets
        )
    ), p_kinds, p_n);
end;
$$;

-- The same outcome through the general path's functions, as finish_and_claim_v1 calls
-- them: open_issue_claims, complete_command, close_issue_claims, describe_commands_v1.
create function pg_temp.finish_general(
    p_command_id bigint, p_claim integer, p_ctx_set jsonb default null,
    p_targets jsonb default null
) returns setof noetl.claimed_command
language plpgsql
as $$
begin
    perform noetl.open_issue_claims('w1', null, 5);
    perform noetl.complete_command(
        p_command_id, 1, '{"k": 1, "x": 2}', p_ctx_set, 'w1', p_targets, p_claim
    );
    return query select * from noetl.describe_commands_v1(noetl.close_issue_claims());
end;
$$;

-- An execution's event types in order, of one step when `step` is given.
create function pg_temp.event_types(p_execution_id bigint, p_step text default null)
returns text[]
language sql
as $$
    select array_agg(e.event_type order by e.event_id) from noetl.event as e
    where e.execution_id = p_execution_id and (p_step is null or e.node_name = p_step);
$$;

create function pg_temp.took_short_path() returns boolean
language sql
as $$
    select coalesce(current_setting('noetl.locked_commands', true), '') = '';
$$;

-- An execution's events as comparable text: ids and the keys naming them left out.
create function pg_temp.events_of(p_execution_id bigint) returns text
language sql
as $$
    select string_agg(
        concat_ws(
            ' ', e.event_type, e.node_name, e.attempt, e.result, e.meta - 'command_key',
            e.loop_id, e.iter_index, e.result_ref
        ), '; ' order by e.event_id
    )
    from noetl.event as e
    where e.execution_id = p_execution_id;
$$;

create function pg_temp.command_of(p_execution_id bigint, p_step text) returns text
language sql
as $$
    select string_agg(
        concat_ws(
            ' ', c.kind, c.status, c.attempt, c.max_attempts, c.claimed_by, c.claim_gen,
            c.claimed_at is not null, c.input, c.loop_id, c.iter_index, c.priority
        ), '; ' order by c.command_id
    )
    from noetl.command as c
    where c.execution_id = p_execution_id and c.step_name = p_step;
$$;

-- The short path (x) beside the general path's functions (y), for the same outcome.
create temporary table x as select * from pg_temp.start_claimed('t/plain');
create temporary table x_next as
select * from pg_temp.finish(
    (select x.command_id from x), (select x.claim_gen from x), null, 5, '{"seen": true}'
);
select ok(pg_temp.took_short_path(), 'a plain step to a plain step takes the short path');

create temporary table y as select * from pg_temp.start_claimed('t/plain');
create temporary table y_next as
select * from pg_temp.finish_general(
    (select y.command_id from y), (select y.claim_gen from y), '{"seen": true}'
);

select is(
    (select count(*)::integer from x_next), 1, 'it returns the next step, claimed by us'
);
select is(
    (
        select (
            n.step_name, n.kind, n.attempt, n.loop_id, n.iter_index, n.input, n.item,
            n.context - 'execution_id', n.claim_gen
        )::text
        from x_next as n
    ),
    (
        select (
            n.step_name, n.kind, n.attempt, n.loop_id, n.iter_index, n.input, n.item,
            n.context - 'execution_id', n.claim_gen
        )::text
        from y_next as n
    ),
    'as the general path describes it'
);
select is(
    (select n.context -> 'results' from x_next as n), '{"a": {"k": 1}}'::jsonb,
    'its context holds what the next step reads'
);
select is(
    (select n.context ->> 'execution_id' from x_next as n),
    (select x.execution_id::text from x), 'of its own execution'
);
select is(
    pg_temp.events_of((select x.execution_id from x)),
    pg_temp.events_of((select y.execution_id from y)),
    'the same events, in the same order'
);
select is(
    (
        select e.meta ->> 'command_key' from noetl.event as e
        where
            e.execution_id = (select x.execution_id from x)
            and e.event_type = 'command.issued' and e.node_name = 'b'
    ),
    'b@' || (select x.command_id from x), 'the next command is keyed by its cause'
);
select is(
    pg_temp.command_of((select x.execution_id from x), 'a'),
    pg_temp.command_of((select y.execution_id from y), 'a'), 'the same finished command'
);
select is(
    pg_temp.command_of((select x.execution_id from x), 'b'),
    pg_temp.command_of((select y.execution_id from y), 'b'), 'the same next command'
);
select is(
    (
        select (r.result, r.command_id = x.command_id)::text from noetl.step_result as r
        inner join x on r.execution_id = x.execution_id
        where r.step_name = 'a'
    ),
    '("{""k"": 1, ""x"": 2}",t)', 'the step''s result is kept for later templates'
);
select is(
    (select e.ctx from noetl.execution as e inner join x on e.execution_id = x.execution_id),
    (select e.ctx from noetl.execution as e inner join y on e.execution_id = y.execution_id),
    'ctx_set is merged as the general path merges it'
);
select is(
    (
        select b.issued from noetl.execution_budget as b
        inner join x on b.execution_id = x.execution_id
    ),
    2::bigint, 'the next command counts against the budget'
);

-- The chain goes on: b -> c short, c (terminal) by the general path, which completes.
create temporary table x_c as
select * from pg_temp.finish(
    (select n.command_id from x_next as n), (select n.claim_gen from x_next as n)
);
select ok(pg_temp.took_short_path(), 'the next transition is short too');
select * from pg_temp.finish(
    (select c.command_id from x_c as c), (select c.claim_gen from x_c as c)
);
select ok(not pg_temp.took_short_path(), 'a terminal step takes the general path');
select is(
    (select e.status from noetl.execution as e inner join x on e.execution_id = x.execution_id),
    'COMPLETED', 'which completes the execution'
);

-- Declined: due work queued keeps its turn, and the next step is queued behind it.
create temporary table q as select * from pg_temp.start_claimed('t/plain');
select noetl.start_execution('t/plain');
select is(
    (
        select string_agg(n.step_name, ',' order by n.command_id) from pg_temp.finish(
            (select q.command_id from q), (select q.claim_gen from q)
        ) as n
    ),
    'a,b', 'with due work queued the worker is handed the oldest first'
);
select ok(not pg_temp.took_short_path(), 'through the general path');
select is(
    pg_temp.event_types((select q.execution_id from q), 'b'),
    array['command.issued', 'command.claimed'], 'the next step went through the queue'
);
update noetl.command set status = 'cancelled'
where status in ('queued', 'claimed');

-- Declined: a worker that does not serve the next step's kind, or claims nothing.
create temporary table k as select * from pg_temp.start_claimed('t/plain');
select * from pg_temp.finish(
    (select k.command_id from k), (select k.claim_gen from k), array['python']
);
select ok(not pg_temp.took_short_path(), 'a kind the worker does not serve: general path');
select is(
    pg_temp.command_of((select k.execution_id from k), 'b'),
    'noop queued 1 2 0 f 0', 'the next step is queued for a worker that serves it'
);
update noetl.command set status = 'cancelled'
where status = 'queued';
create temporary table z as select * from pg_temp.start_claimed('t/plain');
select * from pg_temp.finish((select z.command_id from z), (select z.claim_gen from z), null, 0);
select ok(not pg_temp.took_short_path(), 'a finish that claims nothing: general path');
update noetl.command set status = 'cancelled'
where status = 'queued';

-- Declined: a stale outcome; the general path records its refusal.
create temporary table s as select * from pg_temp.start_claimed('t/plain');
select is(
    (
        select count(*)::integer from pg_temp.finish(
            (select s.command_id from s), (select s.claim_gen + 1 from s)
        )
    ),
    0, 'a stale outcome claims nothing'
);
select ok(not pg_temp.took_short_path(), 'and takes the general path');
select is(
    (
        select array_agg(e.event_type order by e.event_id) from noetl.event as e
        where e.command_id = (select s.command_id from s)
    ),
    array['command.issued', 'command.claimed', 'command.outcome_refused'],
    'which records the refusal and nothing else'
);

-- Called directly: a declined outcome writes nothing; an applied one returns the claim.
create temporary table d as select * from pg_temp.start_claimed('t/plain');
select is(
    (
        select row(p.applied, (p.next_command).command_id is null)::text
        from noetl.finish_plain_step('w1', jsonb_build_object(
            'op', 'done', 'command_id', (select d.command_id from d), 'attempt', 1,
            'claim', (select d.claim_gen + 1 from d), 'result', '{}'::jsonb
        ), null) as p
    ),
    '(f,t)', 'finish_plain_step declines a stale claim generation'
);
select is(
    pg_temp.event_types((select d.execution_id from d)),
    array['playbook.started', 'command.issued', 'command.claimed'],
    'and writes no event'
);
select is(
    (
        select row(p.applied, (p.next_command).step_name, (p.next_command).kind)::text
        from noetl.finish_plain_step('w1', jsonb_build_object(
            'op', 'done', 'command_id', (select d.command_id from d), 'attempt', 1,
            'claim', (select d.claim_gen from d), 'result', '{"k": 1}'::jsonb
        ), array['noop']) as p
    ),
    '(t,b,noop)', 'finish_plain_step applies a current outcome and returns b'
);
select is(
    (
        select
            string_agg(
                concat_ws(' ', s.step_name, s.status, s.claimed_by), ', '
                order by s.command_id
            )
        from noetl.command as s
        where s.execution_id = (select d.execution_id from d)
    ),
    'a done w1, b claimed w1', 'having completed a and claimed b for w1'
);

-- A child execution: short too, its ancestors locked first (lock_executions).
create temporary table ch as select * from pg_temp.start_claimed('t/plain');
update noetl.execution set parent_execution_id = (select x.execution_id from x)
where execution_id = (select ch.execution_id from ch);
select is(
    (
        select string_agg(n.step_name, ',') from pg_temp.finish(
            (select ch.command_id from ch), (select ch.claim_gen from ch)
        ) as n
    ),
    'b', 'a child execution''s step issues its next'
);
select ok(pg_temp.took_short_path(), 'on the short path');
select ok(
    current_setting('noetl.locked_executions')::bigint[]
    @> array[(select x.execution_id from x), (select ch.execution_id from ch)],
    'having locked its parent with it'
);

-- Conditional arcs of which the worker chose one: short, as the general path applies them
-- (complete_command with the targets): route.applied marked fused, the arc's set merged.
select * from noetl.register_playbook('t/plain_pick', 'yaml', jsonb_build_object(
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'router', '{}'),
        pg_temp.plan_step('b', 'direct', array['c'], '{"a": ["k"]}'),
        pg_temp.plan_step('c', 'none', '{}')
    )
));
create temporary table px as select * from pg_temp.start_claimed('t/plain_pick');
create temporary table px_next as
select * from pg_temp.finish(
    (select px.command_id from px), (select px.claim_gen from px), null, 5, '{"seen": 1}',
    '[{"step": "b", "set": {"picked": "b", "seen": 2}}]'
);
select ok(pg_temp.took_short_path(), 'one arc the worker chose takes the short path');
create temporary table py as select * from pg_temp.start_claimed('t/plain_pick');
create temporary table py_next as
select * from pg_temp.finish_general(
    (select py.command_id from py), (select py.claim_gen from py), '{"seen": 1}',
    '[{"step": "b", "set": {"picked": "b", "seen": 2}}]'
);
select is(
    (
        select (n.step_name, n.kind, n.attempt, n.input, n.context - 'execution_id')::text
        from px_next as n
    ),
    (
        select (n.step_name, n.kind, n.attempt, n.input, n.context - 'execution_id')::text
        from py_next as n
    ),
    'it returns the chosen step as the general path describes it'
);
select is(
    pg_temp.events_of((select px.execution_id from px)),
    pg_temp.events_of((select py.execution_id from py)),
    'the same events, in the same order'
);
select is(
    pg_temp.event_types((select px.execution_id from px)),
    array[
        'playbook.started', 'command.issued', 'command.claimed', 'call.done',
        'route.applied', 'command.issued'
    ],
    'call.done, route.applied, command.issued'
);
select is(
    pg_temp.command_of((select px.execution_id from px), 'b'),
    pg_temp.command_of((select py.execution_id from py), 'b'), 'the same next command'
);
select is(
    (select e.ctx from noetl.execution as e inner join px on e.execution_id = px.execution_id),
    (select e.ctx from noetl.execution as e inner join py on e.execution_id = py.execution_id),
    'ctx_set then the arc''s set, as the general path merges them'
);
select is(
    (
        select e.ctx ->> 'seen' from noetl.execution as e
        inner join px on e.execution_id = px.execution_id
    ),
    '2', 'the arc''s set wins'
);
update noetl.command set status = 'cancelled'
where status = 'claimed';

-- Declined: no arc or two arcs chosen, or a worker that does not serve routes.
create temporary table p0 as select * from pg_temp.start_claimed('t/plain_pick');
select * from pg_temp.finish(
    (select p0.command_id from p0), (select p0.claim_gen from p0), null, 5, null, '[]'
);
select ok(not pg_temp.took_short_path(), 'no arc chosen: general path');
create temporary table p2 as select * from pg_temp.start_claimed('t/plain_pick');
select is(
    (
        select string_agg(n.step_name, ',' order by n.step_name) from pg_temp.finish(
            (select p2.command_id from p2), (select p2.claim_gen from p2), null, 5, null,
            '[{"step": "b"}, {"step": "c"}]'
        ) as n
    ),
    'b,c', 'two arcs chosen: both issued'
);
select ok(not pg_temp.took_short_path(), 'through the general path');
update noetl.command set status = 'cancelled'
where status in ('queued', 'claimed');
create temporary table pn as select * from pg_temp.start_claimed('t/plain_pick');
select * from pg_temp.finish(
    (select pn.command_id from pn), (select pn.claim_gen from pn), array['noop'], 5, null,
    '[{"step": "b"}]'
);
select ok(not pg_temp.took_short_path(), 'a worker that does not serve routes: general path');
select is(
    (
        select string_agg(c.kind || ' ' || c.status, ',') from noetl.command as c
        where
            c.execution_id = (select pn.execution_id from pn) and c.step_name = 'a'
            and c.kind = 'route'
    ),
    'route queued', 'which queues a route command instead of its choice'
);
update noetl.command set status = 'cancelled'
where status in ('queued', 'claimed');
create temporary table pu as select * from pg_temp.start_claimed('t/plain_pick');
select throws_ok(
    format(
        'select * from pg_temp.finish(%s, %s, null, 5, null, %L)',
        (select pu.command_id from pu), (select pu.claim_gen from pu), '[{"step": "nope"}]'
    ),
    '22023', null, 'an arc to no step: declined, and the general path refuses it'
);
update noetl.command set status = 'cancelled'
where status in ('queued', 'claimed');

-- Declined: router, join and loop plans.
select * from noetl.register_playbook('t/plain_router', 'yaml', jsonb_build_object(
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'router', '{}'), pg_temp.plan_step('b', 'none', '{}')
    )
));
create temporary table r as select * from pg_temp.start_claimed('t/plain_router');
select is(
    (
        select string_agg(n.kind, ',') from pg_temp.finish(
            (select r.command_id from r), (select r.claim_gen from r)
        ) as n
    ),
    'route', 'conditional arcs: the route command, claimed by us'
);
select ok(not pg_temp.took_short_path(), 'through the general path');
update noetl.command set status = 'cancelled'
where status = 'claimed';

select * from noetl.register_playbook('t/plain_join', 'yaml', jsonb_build_object(
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'direct', array['b']),
        pg_temp.plan_step('b', 'direct', array['j']),
        pg_temp.plan_step('j', 'none', '{}', '{}', true)
    )
));
-- A join elsewhere in the playbook, an arrival waiting for it (x's): an unconditional arc
-- to the step's only successor is short, and leaves the join waiting, as check_progress
-- on the general path does (what a could reach, b can).
create temporary table j as select * from pg_temp.start_claimed('t/plain_join');
create temporary table jy as select * from pg_temp.start_claimed('t/plain_join');
insert into noetl.join_arrival (execution_id, step_name, source_command_id)
values ((select j.execution_id from j), 'j', -1), ((select jy.execution_id from jy), 'j', -1);
select is(
    (
        select string_agg(n.step_name, ',') from pg_temp.finish(
            (select j.command_id from j), (select j.claim_gen from j)
        ) as n
    ),
    'b', 'a playbook with a join step issues the plain step'
);
select ok(pg_temp.took_short_path(), 'on the short path');
select count(*) from pg_temp.finish_general(
    (select jy.command_id from jy), (select jy.claim_gen from jy)
);
select is(
    pg_temp.events_of((select j.execution_id from j)),
    pg_temp.events_of((select jy.execution_id from jy)),
    'the same events as the general path'
);
select is(
    (
        select string_agg(c.step_name || ' ' || c.status, ',' order by c.command_id)
        from noetl.command as c
        where c.execution_id = (select j.execution_id from j)
    ),
    'a done,b claimed', 'and the join still waits'
);
update noetl.command set status = 'cancelled'
where status = 'claimed';
select * from noetl.register_playbook('t/plain_pick_join', 'yaml', jsonb_build_object(
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'router', '{}'),
        pg_temp.plan_step('b', 'direct', array['j']),
        pg_temp.plan_step('j', 'none', '{}', '{}', true)
    )
));
create temporary table jr as select * from pg_temp.start_claimed('t/plain_pick_join');
select * from pg_temp.finish(
    (select jr.command_id from jr), (select jr.claim_gen from jr), null, 5, null,
    '[{"step": "b"}]'
);
select ok(pg_temp.took_short_path(), 'a chosen arc, a join, no arrival waiting: short');
create temporary table jw as select * from pg_temp.start_claimed('t/plain_pick_join');
insert into noetl.join_arrival (execution_id, step_name, source_command_id)
values ((select jw.execution_id from jw), 'j', -1);
select * from pg_temp.finish(
    (select jw.command_id from jw), (select jw.claim_gen from jw), null, 5, null,
    '[{"step": "b"}]'
);
select ok(
    not pg_temp.took_short_path(),
    'an arrival waiting: general path (an arc not chosen may free its join)'
);
select is(
    pg_temp.event_types((select jw.execution_id from jw)),
    array[
        'playbook.started', 'command.issued', 'command.claimed', 'call.done',
        'route.applied', 'command.issued'
    ],
    'which applies the outcome once'
);
update noetl.command set status = 'cancelled'
where status = 'claimed';

select * from noetl.register_playbook('t/plain_loop', 'yaml', jsonb_build_object(
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'direct', array['l']),
        pg_temp.plan_step('l', 'none', '{}', '{}', false, true)
    )
));
create temporary table l as select * from pg_temp.start_claimed('t/plain_loop');
select is(
    (
        select string_agg(n.kind, ',') from pg_temp.finish(
            (select l.command_id from l), (select l.claim_gen from l)
        ) as n
    ),
    'loop', 'a loop step is issued as its loop command'
);
select ok(not pg_temp.took_short_path(), 'through the general path');
update noetl.command set status = 'cancelled'
where status = 'claimed';

-- Applied, nothing issued: the arc was taken already (check_progress runs).
create temporary table t as select * from pg_temp.start_claimed('t/plain');
select noetl.issue_command(
    (select t.execution_id from t), 'b@' || (select t.command_id from t), 'noop', 'b', 1,
    null, null, null, 'w9'
);
select is(
    (
        select count(*)::integer from pg_temp.finish(
            (select t.command_id from t), (select t.claim_gen from t)
        )
    ),
    0, 'an arc taken already issues nothing'
);
select is(
    pg_temp.event_types((select t.execution_id from t), 'b'),
    array['command.issued'], 'no second command.issued'
);
update noetl.command set status = 'cancelled'
where status = 'claimed';

-- Applied, nothing handed out: the next command takes the execution past its budget
-- (count_command fails it), as on the general path.
select * from noetl.register_playbook('t/plain_budget', 'yaml', jsonb_build_object(
    'executor', '{"spec": {"policy": {"limits": {"max_commands": 1}}}}'::jsonb,
    'entry_step', 'a', 'workflow', jsonb_build_array(
        pg_temp.plan_step('a', 'direct', array['b']), pg_temp.plan_step('b', 'none', '{}')
    )
));
create temporary table bx as select * from pg_temp.start_claimed('t/plain_budget');
select is(
    (
        select count(*)::integer from pg_temp.finish(
            (select bx.command_id from bx), (select bx.claim_gen from bx)
        )
    ),
    0, 'the command past the budget is not handed out'
);
select ok(pg_temp.took_short_path(), 'on the short path');
create temporary table by_ as select * from pg_temp.start_claimed('t/plain_budget');
select count(*) from pg_temp.finish_general(
    (select b.command_id from by_ as b), (select b.claim_gen from by_ as b)
);
select is(
    pg_temp.events_of((select bx.execution_id from bx)),
    pg_temp.events_of((select b.execution_id from by_ as b)),
    'the same events as the general path, in the same order'
);
select is(
    pg_temp.command_of((select bx.execution_id from bx), 'b'),
    pg_temp.command_of((select b.execution_id from by_ as b), 'b'),
    'the same cancelled command'
);
select is(
    pg_temp.command_of((select bx.execution_id from bx), 'b'),
    'noop cancelled 1 2 w1 0 t 0', 'cancelled'
);
select is(
    (select e.status from noetl.execution as e inner join bx on e.execution_id = bx.execution_id),
    'FAILED', 'and the execution failed'
);

select * from finish();
rollback;
