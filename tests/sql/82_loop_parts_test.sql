-- Direct tests of the parts of a loop (sql/functions/loop.sql, sql/functions/fanin.sql):
-- issue_loop_items (keys, skipping, claimed-at-birth, kinds), advance_loop (counting, the
-- in-flight bound, closing, a closed loop, a run no longer RUNNING, the route of a router
-- step), finish_loop_item (plain items, fan-out shard retries) and loop_failure_message.
-- Iteration commands are marked done by hand where the caller of the function would have.
begin;
select plan(39);

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "work", "workflow": [
      {"step": "work", "tool": {"kind": "python", "code": "result = 1"},
       "loop": {"in": "{{ items }}", "iterator": "x"},
       "plan": {"kind": "python", "route_mode": "direct", "direct_targets": ["after"],
                "is_join": false, "has_loop": true, "reaches": ["after"],
                "max_attempts": 3}},
      {"step": "after", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/l82', 'yaml', (select spec from spec_fixture));
select * from noetl.register_playbook(
    't/l82r', 'yaml',
    jsonb_set((select spec from spec_fixture), '{workflow,0,plan,route_mode}', '"router"')
);

-- Starts a run of `p_path`, claims its loop command and starts the loop over `p_items`.
create function pg_temp.loop_over(p_path text, p_items jsonb, p_spec jsonb) returns bigint
language plpgsql as $$
declare
    v_execution_id bigint := noetl.start_execution(p_path);
    v_command_id bigint;
begin
    update noetl.command as c set status = 'claimed', claimed_by = 'tap', claimed_at = now()
    where c.execution_id = v_execution_id and c.kind = 'loop'
    returning c.command_id into strict v_command_id;
    perform noetl.start_loop(v_command_id, 1, p_items, p_spec, 'tap');
    return (select l.loop_id from noetl.loop as l where l.command_id = v_command_id);
end;
$$;

create function pg_temp.counters(p_loop_id bigint) returns text
language sql as $$
    select (l.status, l.issued, l.done, l.failed)::text
    from noetl.loop as l where l.loop_id = p_loop_id;
$$;

-- The iteration commands of a loop: index:status[:holder], by index.
create function pg_temp.iterations(p_loop_id bigint) returns text[]
language sql as $$
    select array_agg(
        c.iter_index || ':' || c.status || coalesce(':' || c.claimed_by, '')
        order by c.iter_index
    )
    from noetl.command as c where c.loop_id = p_loop_id;
$$;

-- Marks iteration `p_index` done as its completion would (command and item) and returns
-- the command.
create function pg_temp.iteration_done(p_loop_id bigint, p_index integer)
returns noetl.command
language plpgsql as $$
declare
    v_cmd noetl.command;
begin
    update noetl.command as c set status = 'done', finished_at = now()
    where c.loop_id = p_loop_id and c.iter_index = p_index
    returning * into strict v_cmd;
    update noetl.loop_item as li set status = 'done', result = to_jsonb(p_index)
    where li.loop_id = p_loop_id and li.iter_index = p_index;
    return v_cmd;
end;
$$;

create function pg_temp.iteration(p_loop_id bigint, p_index integer) returns noetl.command
language sql as $$
    select * from noetl.command as c where c.loop_id = p_loop_id and c.iter_index = p_index;
$$;

create function pg_temp.events(p_loop_id bigint, p_type text) returns bigint
language sql as $$
    select count(*) from noetl.event as e
    where e.loop_id = p_loop_id and e.event_type = p_type;
$$;

-- issue_loop_items
create temporary table l1 as
select pg_temp.loop_over(
    't/l82', '[10, 20, 30, 40, 50, 60]',
    '{"iterator": "x", "mode": "parallel", "max_in_flight": 2}'
) as id;
select is(
    (
        select noetl.issue_loop_items(l, 0, 0) from noetl.loop as l, l1
        where l.loop_id = l1.id
    ),
    '{}'::bigint[], 'issuing no item issues nothing'
);
select is(
    (
        select noetl.issue_loop_items(l, 2, 2) from noetl.loop as l, l1
        where l.loop_id = l1.id
    ),
    '{}'::bigint[], 'without a claimer nothing is returned'
);
select is(
    (select pg_temp.iterations(l1.id) from l1),
    array['0:queued', '1:queued', '2:queued', '3:queued'],
    'the items [from, from + n) are issued queued'
);
select is(
    (
        select
            array_agg(
                (c.command_key = 'iter:' || l1.id || ':' || c.iter_index)::text
                || ' ' || c.max_attempts || ' ' || c.input::text
                order by c.iter_index
            )
        from noetl.command as c, l1
        where c.loop_id = l1.id and c.iter_index in (2, 3)
    ),
    array['true 3 {"loop_total": 6}', 'true 3 {"loop_total": 6}'],
    'keyed iter:<loop>:<index>, with the step''s max_attempts and the loop total'
);
select is(
    pg_temp.counters((select l1.id from l1)), '(running,2,0,0)',
    'issue_loop_items does not touch the loop row'
);
create temporary table claimed1 as
select noetl.issue_loop_items(l, 3, 2, 'w9', 5) as ids
from noetl.loop as l, l1
where l.loop_id = l1.id;
select is(
    (select claimed1.ids from claimed1),
    array[(select (pg_temp.iteration(l1.id, 4)).command_id from l1)],
    'an already issued index is skipped; the new one is returned claimed'
);
select is(
    (select pg_temp.iterations(l1.id) from l1),
    array['0:queued', '1:queued', '2:queued', '3:queued', '4:claimed:w9'],
    'only the new item is created claimed by the claimer'
);
select is(
    (
        select
            array[
                pg_temp.events(l1.id, 'command.issued'),
                pg_temp.events(l1.id, 'command.claimed')
            ]
        from l1
    ),
    array[5, 0]::bigint[],
    'one command.issued per new command, no command.claimed for the one created claimed'
);
select is(
    (
        select array_agg(e.meta ->> 'worker_id' order by e.iter_index)
        from noetl.event as e, l1
        where e.loop_id = l1.id and e.event_type = 'command.issued'
    ),
    array[null, null, null, null, 'w9'],
    'the command.issued of the one created claimed names the claimer, the others none'
);
select is(
    (
        select noetl.issue_loop_items(l, 5, 1, 'w9', 1, array['http'])
        from noetl.loop as l, l1
        where l.loop_id = l1.id
    ),
    '{}'::bigint[], 'a claimer that does not serve the kind gets nothing claimed'
);
select is(
    (select (pg_temp.iteration(l1.id, 5)).status from l1), 'queued',
    'the item is queued for another worker'
);

-- advance_loop
create temporary table l2 as
select pg_temp.loop_over(
    't/l82', '[1, 2, 3, 4, 5]',
    '{"iterator": "x", "mode": "parallel", "max_in_flight": 2, "on_error": "continue"}'
) as id;
select d.command_id as done_id from l2, pg_temp.iteration_done(l2.id, 0) as d;
select is(
    (
        select (a.route_command_id, a.claimed)::text
        from l2, noetl.advance_loop(l2.id, 1, 0, null) as a
    ),
    '(,{})', 'counting one done iteration returns no route and nothing claimed'
);
select is(
    (select array[pg_temp.counters(l2.id)] || pg_temp.iterations(l2.id) from l2),
    array['(running,3,1,0)', '0:done', '1:queued', '2:queued'],
    'it counts the done iteration and issues the next item into the freed slot'
);
select d.command_id as done_id from l2, pg_temp.iteration_done(l2.id, 1) as d;
select is(
    (
        select a.claimed
        from l2, noetl.advance_loop(l2.id, 1, 0, null, 'w9', 1, array['python']) as a
    ),
    array[(select (pg_temp.iteration(l2.id, 3)).command_id from l2)],
    'with a claimer the next item is returned claimed'
);
select is(
    (select array[pg_temp.counters(l2.id)] || pg_temp.iterations(l2.id) from l2),
    array['(running,4,2,0)', '0:done', '1:done', '2:queued', '3:claimed:w9'],
    'the claimed item is in flight under the bound'
);
update noetl.command as c set status = 'failed'
from l2
where c.loop_id = l2.id and c.iter_index = 2;
select noetl.advance_loop(l2.id, 0, 1, null) from l2;
select is(
    pg_temp.counters((select l2.id from l2)), '(running,5,2,1)',
    'a failed iteration is counted failed and frees a slot too'
);
select d.command_id as done_id from l2, pg_temp.iteration_done(l2.id, 3) as d;
select d.command_id as done_id from l2, pg_temp.iteration_done(l2.id, 4) as d;
select noetl.advance_loop(l2.id, 2, 0, null) from l2;
select is(
    pg_temp.counters((select l2.id from l2)), '(done,5,4,1)',
    'the call that counts the last iteration closes the loop'
);
select is(
    (
        select array[pg_temp.events(l2.id, 'loop.done')::text, c.status, c.command_key]
        from l2, noetl.loop as l, noetl.command as c
        where l.loop_id = l2.id and c.execution_id = l.execution_id and c.step_name = 'after'
    ),
    (
        select array['1', 'queued', 'after@' || l.command_id]
        from l2, noetl.loop as l
        where l.loop_id = l2.id
    ),
    'with on_error continue the closed loop routes to the next step once'
);
select noetl.advance_loop(l2.id, 1, 0, null) from l2;
select is(
    pg_temp.counters((select l2.id from l2)), '(done,5,4,1)',
    'a loop no longer running is left as it is'
);
select is(
    (select (a.route_command_id, a.claimed)::text from noetl.advance_loop(424242, 1, 0, null) as a),
    '(,{})', 'an unknown loop is left alone'
);

-- advance_loop, the run failed meanwhile: count, issue nothing, cancel the loop
create temporary table l3 as
select pg_temp.loop_over(
    't/l82', '[1, 2, 3]', '{"iterator": "x", "mode": "sequential"}'
) as id;
select noetl.fail_execution(l.execution_id, 'other', 'boom')
from noetl.loop as l, l3
where l.loop_id = l3.id;
select d.command_id as done_id from l3, pg_temp.iteration_done(l3.id, 0) as d;
select noetl.advance_loop(l3.id, 1, 0, null) from l3;
select is(
    (select array[pg_temp.counters(l3.id)] || pg_temp.iterations(l3.id) from l3),
    array['(cancelled,1,1,0)', '0:done'],
    'a loop of a failed run counts the iteration, issues nothing and is cancelled'
);
select is(
    (
        select l.finished_at is not null from noetl.loop as l, l3
        where l.loop_id = l3.id
    ),
    true, 'the cancelled loop is finished'
);

-- advance_loop, a router step: the closing call hands back the claimed route command
create temporary table l4 as
select pg_temp.loop_over(
    't/l82r', '["only"]', '{"iterator": "x", "mode": "parallel"}'
) as id;
select d.command_id as done_id from l4, pg_temp.iteration_done(l4.id, 0) as d;
create temporary table route4 as
select a.route_command_id from l4, noetl.advance_loop(l4.id, 1, 0, 'w1') as a;
select is(
    (
        select (c.kind, c.status, c.claimed_by, c.input ->> 'event')::text
        from noetl.command as c, route4
        where c.command_id = route4.route_command_id
    ),
    '(route,claimed,w1,loop.done)',
    'closing a router step''s loop returns its route command claimed by the worker'
);

-- finish_loop_item, a plain loop
create temporary table l5 as
select pg_temp.loop_over(
    't/l82', '["a", "b"]',
    '{"iterator": "x", "mode": "parallel", "max_in_flight": 2, "on_error": "continue"}'
) as id;
update noetl.command as c set status = 'done'
from l5
where c.loop_id = l5.id and c.iter_index = 0;
select is(
    (select noetl.finish_loop_item(pg_temp.iteration(l5.id, 0), 'done', '{"r": 0}', null) from l5),
    null::bigint, 'finishing an item of an open loop returns no route'
);
select is(
    (
        select (li.status, li.result)::text from noetl.loop_item as li, l5
        where li.loop_id = l5.id and li.iter_index = 0
    ),
    '(done,"{""r"": 0}")', 'the item stores its status and result'
);
select is(
    pg_temp.counters((select l5.id from l5)), '(running,2,1,0)', 'its loop counts it'
);
select is(
    pg_temp.events((select l5.id from l5), 'loop.shard.done'), 0::bigint,
    'a plain loop writes no shard events'
);

-- finish_loop_item, a fan-out: a failed shard is retried once on the same command
create temporary table l6 as
select pg_temp.loop_over(
    't/l82', '["s0", "s1"]',
    '{"iterator": "x", "mode": "parallel", "max_in_flight": 2, "is_fanout": true,
      "max_shard_retries": 1, "on_error": "continue"}'
) as id;
update noetl.command as c set status = 'failed'
from l6
where c.loop_id = l6.id and c.iter_index = 0;
select
    noetl.finish_loop_item(
        pg_temp.iteration(l6.id, 0), 'failed', '{"status": "error", "error": "shard boom"}', null
    )
from l6;
select is(
    (
        select (c.status, c.attempt, c.claimed_by is null)::text
        from l6, pg_temp.iteration(l6.id, 0) as c
    ),
    '(queued,2,t)', 'a failed shard with retries left is queued again at the next attempt'
);
select is(
    (
        select (li.status, li.shard_attempts)::text from noetl.loop_item as li, l6
        where li.loop_id = l6.id and li.iter_index = 0
    ),
    '(pending,1)', 'the item stays pending and counts the shard attempt'
);
select is(
    pg_temp.counters((select l6.id from l6)), '(running,2,0,0)',
    'a retried shard is not counted by its loop'
);
select results_eq(
    $$select e.event_type, e.attempt, e.error, e.meta from noetl.event as e, l6
      where e.loop_id = l6.id and e.event_type in ('loop.shard.failed', 'command.retried')
      order by e.event_id$$,
    $$values
        ('loop.shard.failed'::text, 1, 'shard boom'::text,
         '{"shard_id": 0, "retry": true, "shard_retry": 1}'::jsonb),
        ('command.retried', 2, null, '{"reason": "shard retry"}')$$,
    'loop.shard.failed (retry) and command.retried record the shard retry'
);
update noetl.command as c set status = 'failed'
from l6
where c.loop_id = l6.id and c.iter_index = 0;
select
    noetl.finish_loop_item(
        pg_temp.iteration(l6.id, 0), 'failed', '{"status": "error", "error": "again"}', null
    )
from l6;
select is(
    (
        select (li.status, li.shard_attempts, pg_temp.counters(l6.id))::text
        from noetl.loop_item as li, l6
        where li.loop_id = l6.id and li.iter_index = 0
    ),
    '(failed,1,"(running,2,0,1)")', 'past its retries the shard is counted failed'
);
select is(
    (
        select e.meta from noetl.event as e, l6
        where e.loop_id = l6.id and e.event_type = 'loop.shard.failed' and e.error = 'again'
    ),
    '{"shard_id": 0, "retry": false}'::jsonb, 'its loop.shard.failed says no retry'
);
update noetl.command as c set status = 'done'
from l6
where c.loop_id = l6.id and c.iter_index = 1;
select noetl.finish_loop_item(pg_temp.iteration(l6.id, 1), 'done', '"s1 ok"', null)
from l6;
select is(
    (
        select
            array[
                pg_temp.counters(l6.id), pg_temp.events(l6.id, 'loop.shard.done')::text,
                (
                    select e.meta ->> 'status' from noetl.event as e
                    where e.loop_id = l6.id and e.event_type = 'loop.fanin.completed'
                )
            ]
        from l6
    ),
    array['(done,2,1,1)', '1', 'partial'],
    'the last shard is counted done and closes a partial fan-in'
);
select is(
    (select noetl.finish_loop_item(pg_temp.iteration(l6.id, 1), 'done', '"late"', null) from l6),
    null::bigint, 'an item of a closed loop returns nothing'
);
select is(
    (
        select li.result from noetl.loop_item as li, l6
        where li.loop_id = l6.id and li.iter_index = 1
    ),
    '"s1 ok"'::jsonb, 'and changes nothing'
);

-- loop_failure_message
insert into noetl.loop (
    loop_id, execution_id, step_name, command_id, iterator, mode, max_in_flight, total,
    issued, done, failed
)
values
(98201, 9821, 'w', 1, 'x', 'parallel', 1, 5, 5, 1, 4),
(98202, 9821, 'v', 2, 'x', 'parallel', 1, 2, 2, 0, 2),
(98203, 9821, 'u', 3, 'x', 'parallel', 1, 3, 3, 0, 3);
insert into noetl.loop_item (loop_id, iter_index, execution_id, status, result)
values
(98201, 0, 9821, 'failed', '{"error": "e0"}'),
(98201, 1, 9821, 'done', '1'),
(98201, 2, 9821, 'failed', jsonb_build_object('error', repeat('x', 600))),
(98201, 3, 9821, 'failed', '{"status": "error"}'),
(98201, 4, 9821, 'failed', '{"error": "e4"}'),
(98202, 0, 9821, 'pending', null),
(98202, 1, 9821, 'pending', null),
(98203, 0, 9821, 'failed', '{"error": "a"}'),
(98203, 1, 9821, 'failed', '{"error": "b"}'),
(98203, 2, 9821, 'failed', '{"error": "c"}');
select is(
    (
        select noetl.loop_failure_message(l) from noetl.loop as l
        where l.loop_id = 98201
    ),
    'step "w": 4/5 iterations failed: [0] e0; [2] ' || repeat('x', 500) || '; [3] failed; ...',
    'the first three failures in index order, errors cut to 500 characters, then "..."'
);
select is(
    (
        select noetl.loop_failure_message(l) from noetl.loop as l
        where l.loop_id = 98202
    ),
    'step "v": 2/2 iterations failed: (no error recorded)',
    'failures without a failed item say no error was recorded'
);
select is(
    (
        select noetl.loop_failure_message(l) from noetl.loop as l
        where l.loop_id = 98203
    ),
    'step "u": 3/3 iterations failed: [0] a; [1] b; [2] c',
    'three failures are all named, without "..."'
);

select * from finish();
rollback;
