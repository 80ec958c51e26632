-- Direct tests of routing (sql/functions/routing.sql): route_after (direct arcs, router
-- steps with and without fused targets, call.error, finished runs), arrive (plain and join
-- targets, arc sets, idempotence) and check_progress (join readiness, arc sets in source
-- order, completion with the last step's result). Commands are marked done by hand before
-- routing, as the outcome functions do. Plans give both "successors" (arc targets) and
-- "reaches" (their closure): the join rule reads one or the other, depending on the
-- schema version.
begin;
select plan(41);

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "start", "workflow": [
      {"step": "start", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["a", "b"],
                "is_join": false, "has_loop": false, "successors": ["a", "b"],
                "reaches": ["a", "b", "j", "z"], "max_attempts": 1}},
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["j"],
                "is_join": false, "has_loop": false, "successors": ["j"],
                "reaches": ["j", "z"], "max_attempts": 1}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["j"],
                "is_join": false, "has_loop": false, "successors": ["j"],
                "reaches": ["j", "z"], "max_attempts": 1}},
      {"step": "j", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["z"],
                "is_join": true, "has_loop": false, "successors": ["z"],
                "reaches": ["z"], "max_attempts": 1}},
      {"step": "r", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "router", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": ["z"],
                "reaches": ["z"], "max_attempts": 1}},
      {"step": "z", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [],
                "reaches": [], "max_attempts": 1}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/r81', 'yaml', (select spec from spec_fixture));
select * from noetl.register_playbook(
    't/r81r', 'yaml', jsonb_set((select spec from spec_fixture), '{entry_step}', '"r"')
);

-- Marks the active command of `p_step` done (as an outcome function would) and returns it.
create function pg_temp.done(p_execution_id bigint, p_step text) returns noetl.command
language plpgsql as $$
declare
    v_cmd noetl.command;
begin
    update noetl.command as c set status = 'done', finished_at = now()
    where c.execution_id = p_execution_id and c.step_name = p_step
        and c.status in ('queued', 'claimed')
    returning * into strict v_cmd;
    return v_cmd;
end;
$$;

-- The commands of an execution: step:kind:status, oldest first.
create function pg_temp.commands(p_execution_id bigint) returns text[]
language sql as $$
    select array_agg(c.step_name || ':' || c.kind || ':' || c.status order by c.command_id)
    from noetl.command as c where c.execution_id = p_execution_id;
$$;

create function pg_temp.catalog_id(p_execution_id bigint) returns bigint
language sql as $$
    select e.catalog_id from noetl.execution as e where e.execution_id = p_execution_id;
$$;

create function pg_temp.command_id(p_execution_id bigint, p_step text) returns bigint
language sql as $$
    select max(c.command_id) from noetl.command as c
    where c.execution_id = p_execution_id and c.step_name = p_step and c.kind <> 'route';
$$;

-- route_after, direct arcs, then a join, then completion
create temporary table x1 as
select noetl.start_execution('t/r81') as id;
create temporary table start1 as
select c.* from x1, pg_temp.done(x1.id, 'start') as c;
select is(
    (
        select noetl.route_after(c, 'call.done', null, null)
        from noetl.command as c
        inner join start1 on c.command_id = start1.command_id
    ),
    null::bigint, 'direct arcs return no route command'
);
select is(
    (select pg_temp.commands(x1.id) from x1),
    array['start:noop:done', 'a:noop:queued', 'b:noop:queued'],
    'route_after issues every direct target'
);
select is(
    (
        select array_agg(c.command_key order by c.command_id)
        from noetl.command as c, x1, start1
        where c.execution_id = x1.id and c.step_name in ('a', 'b')
    ),
    (select array['a@' || s.command_id, 'b@' || s.command_id] from start1 as s),
    'each target is keyed by its source command'
);
select noetl.route_after(c, 'call.done', null, null)
from noetl.command as c
inner join start1 on c.command_id = start1.command_id;
select is(
    (select cardinality(pg_temp.commands(x1.id)) from x1),
    3, 'routing the same command again issues nothing twice'
);

create temporary table a1 as
select c.* from x1, pg_temp.done(x1.id, 'a') as c;
select noetl.route_after(c, 'call.done', null, null)
from noetl.command as c
inner join a1 on c.command_id = a1.command_id;
select is(
    (
        select array_agg(ja.source_command_id::text || ':' || (ja.consumed_by is null)::text)
        from noetl.join_arrival as ja, x1
        where ja.execution_id = x1.id and ja.step_name = 'j'
    ),
    (select array[a1.command_id::text || ':true'] from a1),
    'a branch reaching the join only records its arrival'
);
select is(
    (select pg_temp.commands(x1.id) from x1),
    array['start:noop:done', 'a:noop:done', 'b:noop:queued'],
    'the join waits while b, which reaches it, is queued'
);

create temporary table b1 as
select c.* from x1, pg_temp.done(x1.id, 'b') as c;
select noetl.route_after(c, 'call.done', null, null)
from noetl.command as c
inner join b1 on c.command_id = b1.command_id;
select is(
    (
        select c.command_key from noetl.command as c, x1
        where c.execution_id = x1.id and c.step_name = 'j'
    ),
    (select 'j@join:' || least(a1.command_id, b1.command_id) from a1, b1),
    'the last branch issues the join once, keyed by its first arrival'
);
select is(
    (
        select array_agg(distinct ja.consumed_by)
        from noetl.join_arrival as ja, x1
        where ja.execution_id = x1.id
    ),
    (select array[pg_temp.command_id(x1.id, 'j')] from x1),
    'both arrivals are consumed by the join command'
);

create temporary table j1 as
select c.* from x1, pg_temp.done(x1.id, 'j') as c;
select noetl.route_after(c, 'call.done', null, null)
from noetl.command as c
inner join j1 on c.command_id = j1.command_id;
create temporary table z1 as
select c.* from x1, pg_temp.done(x1.id, 'z') as c;
select noetl.store_step_result(x1.id, 'z', z1.command_id, '{"last": true}')
from x1, z1;
select is(
    (
        select noetl.route_after(c, 'call.done', null, null)
        from noetl.command as c
        inner join z1 on c.command_id = z1.command_id
    ),
    null::bigint, 'a terminal step routes nowhere'
);
select is(
    (
        select (e.status, e.result)::text from noetl.execution as e, x1
        where e.execution_id = x1.id
    ),
    '(COMPLETED,"{""last"": true}")',
    'with nothing active the execution completes with the last step''s result'
);
select is(
    (
        select count(*)::integer from noetl.event as e, x1
        where e.execution_id = x1.id and e.event_type = 'playbook.completed'
    ),
    1, 'one playbook.completed'
);
select is(
    (
        select noetl.route_after(c, 'call.done', null, null)
        from noetl.command as c
        inner join start1 on c.command_id = start1.command_id
    ),
    null::bigint, 'a finished execution routes nothing'
);
select is(
    (select cardinality(pg_temp.commands(x1.id)) from x1),
    5, 'no command is issued after the end'
);

-- route_after, a router step: a route command, claimed by the worker when it asks
create temporary table x2 as
select noetl.start_execution('t/r81r') as id;
create temporary table r2 as
select c.* from x2, pg_temp.done(x2.id, 'r') as c;
create temporary table route2 as
select noetl.route_after(c, 'call.done', null, 'w1') as id
from noetl.command as c inner join r2 on c.command_id = r2.command_id;
select is(
    (
        select (c.kind, c.status, c.claimed_by, c.command_key = 'route@' || r2.command_id)::text
        from noetl.command as c, route2, r2
        where c.command_id = route2.id
    ),
    '(route,claimed,w1,t)', 'with a worker id the route command is returned claimed by it'
);
select is(
    (
        select c.input from noetl.command as c, route2
        where c.command_id = route2.id
    ),
    (
        select
            jsonb_build_object(
                'event', 'call.done', 'source_command_id', r2.command_id, 'error', null
            )
        from r2
    ),
    'the route command names the event and its source'
);
select is(
    (
        select e.status from noetl.execution as e, x2
        where e.execution_id = x2.id
    ),
    'RUNNING', 'the execution waits for its route'
);

create temporary table x3 as
select noetl.start_execution('t/r81r') as id;
create temporary table r3 as
select c.* from x3, pg_temp.done(x3.id, 'r') as c;
select is(
    (
        select noetl.route_after(c, 'call.error', 'tool broke', null)
        from noetl.command as c
        inner join r3 on c.command_id = r3.command_id
    ),
    null::bigint, 'without a worker id no route command is returned'
);
select is(
    (
        select (c.status, c.claimed_by, c.input ->> 'event', c.input ->> 'error')::text
        from noetl.command as c, x3
        where c.execution_id = x3.id and c.kind = 'route'
    ),
    '(queued,,call.error,"tool broke")',
    'a call.error of a router step is queued for a router with its error'
);

-- route_after, fused: the worker's targets are applied at once
create temporary table x4 as
select noetl.start_execution('t/r81r') as id;
create temporary table r4 as
select c.* from x4, pg_temp.done(x4.id, 'r') as c;
select is(
    (
        select
            noetl.route_after(
                c, 'call.done', null, 'w1', '[{"step": "z", "set": {"k": 1}}]'
            )
        from noetl.command as c inner join r4 on c.command_id = r4.command_id
    ),
    null::bigint, 'fused targets need no route command'
);
select is(
    (select pg_temp.commands(x4.id) from x4),
    array['r:noop:done', 'z:noop:queued'], 'the chosen target is issued, no route command'
);
select is(
    (
        select c.command_key from noetl.command as c, x4
        where c.execution_id = x4.id and c.step_name = 'z'
    ),
    (select 'z@' || r4.command_id from r4),
    'the target is keyed by the source command'
);
select is(
    (
        select e.ctx from noetl.execution as e, x4
        where e.execution_id = x4.id
    ),
    '{"k": 1}'::jsonb, 'the arc''s set reaches ctx'
);
select results_eq(
    $$select e.command_id, e.meta from noetl.event as e, x4
      where e.execution_id = x4.id and e.event_type = 'route.applied'$$,
    $$select r4.command_id, '{"event": "call.done", "targets": [{"step": "z", "set": {"k": 1}}],
                              "fused": true}'::jsonb from r4$$,
    'route.applied is written on the source command, marked fused'
);

-- route_after, call.error of a step without conditional arcs: the execution fails
create temporary table x5 as
select noetl.start_execution('t/r81') as id;
select is(
    (
        select noetl.route_after(c, 'call.error', 'exploded', 'w1')
        from x5, pg_temp.done(x5.id, 'start') as c
    ),
    null::bigint, 'an unhandled error returns no route'
);
select is(
    (
        select (e.status, e.failed_step, e.error, pg_temp.commands(e.execution_id))::text
        from noetl.execution as e, x5
        where e.execution_id = x5.id
    ),
    '(FAILED,start,exploded,{start:noop:done})',
    'it fails the execution with the step and error; the direct targets are not issued'
);

-- arrive
create temporary table x6 as
select noetl.start_execution('t/r81') as id;
select throws_ok(
    format(
        $$select noetl.arrive(%s, %s, 'nope', 1, null)$$,
        (select x6.id from x6), (select pg_temp.catalog_id(x6.id) from x6)
    ),
    '22023',
    format('execution %s: arc target "nope" is not a step', (select x6.id from x6)),
    'an arc to an unknown step is refused, naming the execution and the target'
);
create temporary table arrivals as
select
    1 as n,
    noetl.arrive(x6.id, pg_temp.catalog_id(x6.id), 'z', 777, '{"x": 1}') as command_id
from x6;
insert into arrivals
select
    2 as n,
    noetl.arrive(x6.id, pg_temp.catalog_id(x6.id), 'z', 777, '{"x": 2}') as command_id
from x6;
select is(
    (select array_agg(a.command_id order by a.n) from arrivals as a),
    array[(select pg_temp.command_id(x6.id, 'z') from x6), null],
    'arrive returns the plain step it issued, and NULL for the arc taken again'
);
select is(
    (
        select array_agg(c.command_key) from noetl.command as c, x6
        where c.execution_id = x6.id and c.step_name = 'z'
    ),
    array['z@777'], 'arrive issues a plain target once per source'
);
select is(
    (
        select e.ctx from noetl.execution as e, x6
        where e.execution_id = x6.id
    ),
    '{"x": 2}'::jsonb, 'each arrival merges its arc set into ctx'
);
select is(
    (select noetl.arrive(x6.id, pg_temp.catalog_id(x6.id), 'j', 200, '{"o": 1}') from x6),
    null::bigint, 'an arrival at a join returns NULL: nothing is issued'
);
select noetl.arrive(x6.id, pg_temp.catalog_id(x6.id), 'j', 100, '{"o": 2}')
from x6;
select noetl.arrive(x6.id, pg_temp.catalog_id(x6.id), 'j', 100, '{"o": 3}')
from x6;
select results_eq(
    $$select ja.source_command_id, ja.arc_set, ja.consumed_by from noetl.join_arrival as ja, x6
      where ja.execution_id = x6.id order by ja.source_command_id$$,
    $$values (100::bigint, '{"o": 2}'::jsonb, null::bigint), (200, '{"o": 1}', null)$$,
    'a join target records each source''s first arrival with its arc set'
);
select is(
    (
        select count(*)::integer from noetl.command as c, x6
        where c.execution_id = x6.id and c.step_name = 'j'
    ),
    0, 'arriving at a join issues nothing'
);
select is(
    (
        select e.ctx from noetl.execution as e, x6
        where e.execution_id = x6.id
    ),
    '{"x": 2}'::jsonb, 'a join''s arc sets wait for the join'
);

-- check_progress: the join waits for every command that can reach it
select noetl.check_progress(x6.id, 'start') from x6;
select is(
    (
        select count(*)::integer from noetl.command as c, x6
        where c.execution_id = x6.id and c.step_name = 'j'
    ),
    0, 'check_progress does not issue a join that the queued start can still reach'
);
select d.command_id as done_id from x6, pg_temp.done(x6.id, 'start') as d;
select noetl.check_progress(x6.id, 'start') from x6;
select is(
    (
        select array_agg(c.command_key) from noetl.command as c, x6
        where c.execution_id = x6.id and c.step_name = 'j'
    ),
    array['j@join:100'],
    'with no reaching command left the join is issued, keyed by the first source'
);
select is(
    (
        select e.ctx from noetl.execution as e, x6
        where e.execution_id = x6.id
    ),
    '{"x": 2, "o": 1}'::jsonb, 'the arrivals'' arc sets are merged in source order'
);
select d.command_id as done_id from x6, pg_temp.done(x6.id, 'j') as d;
select noetl.check_progress(x6.id, 'j') from x6;
select is(
    (
        select e.status from noetl.execution as e, x6
        where e.execution_id = x6.id
    ),
    'RUNNING', 'a queued command keeps the execution running'
);
select d.command_id as done_id from x6, pg_temp.done(x6.id, 'z') as d;
select noetl.check_progress(x6.id, 'nothing ran') from x6;
select is(
    (
        select (e.status, e.result is null)::text
        from noetl.execution as e, x6
        where e.execution_id = x6.id
    ),
    '(COMPLETED,t)',
    'with nothing active it completes; a last step without result gives a NULL result'
);
-- a failed execution is left alone
insert into noetl.join_arrival (execution_id, step_name, source_command_id)
select
    x5.id,
    'j' as step_name,
    1 as source_command_id
from x5;
select noetl.check_progress(x5.id, 'start') from x5;
select is(
    (select pg_temp.commands(x5.id) from x5),
    array['start:noop:done'], 'check_progress does nothing for an execution that is not running'
);

-- check_progress after route_after: skipped where it would find nothing to do (a plain
-- step was issued in a playbook without joins), called everywhere else
select * from noetl.register_playbook(
    't/r81_nojoin', 'yaml',
    '{"entry_step": "start", "workflow": [
      {"step": "start", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["z"],
                "is_join": false, "has_loop": false, "successors": ["z"],
                "reaches": ["z"], "max_attempts": 1}},
      {"step": "z", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [],
                "reaches": [], "max_attempts": 1}}
    ]}'::jsonb
);
set local track_functions = 'all';
create function pg_temp.progress_checks() returns bigint
language sql as $$
    select coalesce(pg_stat_get_xact_function_calls(
        'noetl.check_progress(bigint, text)'::regprocedure
    ), 0);
$$;
create temporary table checks (label text, calls bigint);
create temporary table x9 as
select noetl.start_execution('t/r81_nojoin') as id;
insert into checks values ('before', pg_temp.progress_checks());
select noetl.route_after(c, 'call.done', null, null)
from x9, pg_temp.done(x9.id, 'start') as c;
insert into checks values ('start', pg_temp.progress_checks());
select noetl.route_after(c, 'call.done', null, null)
from x9, pg_temp.done(x9.id, 'z') as c;
insert into checks values ('z', pg_temp.progress_checks());
create temporary table x10 as
select noetl.start_execution('t/r81') as id;
select noetl.route_after(c, 'call.done', null, null)
from x10, pg_temp.done(x10.id, 'start') as c;
insert into checks values ('join playbook', pg_temp.progress_checks());
select is(
    (
        select
            array[
                max(ch.calls) filter (where ch.label = 'start')
                - max(ch.calls) filter (where ch.label = 'before'),
                max(ch.calls) filter (where ch.label = 'z')
                - max(ch.calls) filter (where ch.label = 'start'),
                max(ch.calls) filter (where ch.label = 'join playbook')
                - max(ch.calls) filter (where ch.label = 'z')
            ]
        from checks as ch
    ),
    array[0::bigint, 1, 1],
    'no check after a plain step issued without joins; one after a step that issued '
    'nothing (the end) and one in a playbook with a join'
);
select is(
    (
        select e.status from noetl.execution as e, x9
        where e.execution_id = x9.id
    ),
    'COMPLETED', 'the playbook without joins still completes at its last step'
);

select * from finish();
rollback;
