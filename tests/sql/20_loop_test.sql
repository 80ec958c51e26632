-- Loop functions (sql/functions/loop.sql): counters, the in-flight bound, closing once,
-- the empty loop, batched completion and fan-out shard retries, driven directly in SQL
-- with a hand-written spec: `work` loops over python iterations, then `after` (noop).

begin;
select plan(44);

select lives_ok(
    $$select * from noetl.register_playbook('tap/loop', '', '{
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

-- Claims every due command of `kinds` for the test worker; returns (command_id, attempt).
create function pg_temp.claim(p_kinds text[])
returns table (command_id bigint, attempt integer, loop_id bigint, iter_index integer)
language sql as $$
    select c.command_id, c.attempt, c.loop_id, c.iter_index
    from noetl.claim_commands('tap', p_kinds, 1000) as c;
$$;

-- Starts an execution, claims its loop command and starts the loop over `items`.
create function pg_temp.loop_over(p_items jsonb, p_spec jsonb) returns bigint
language plpgsql as $$
declare
    v_execution_id bigint := noetl.start_execution('tap/loop', '{}');
    v_cmd record;
begin
    select * into strict v_cmd from pg_temp.claim(array['loop']);
    perform noetl.start_loop(v_cmd.command_id, v_cmd.attempt, p_items, p_spec, 'tap');
    return (select l.loop_id from noetl.loop as l where l.command_id = v_cmd.command_id);
end;
$$;

create function pg_temp.loop_row(p_loop_id bigint) returns noetl.loop
language sql as $$ select * from noetl.loop as l where l.loop_id = p_loop_id; $$;

create function pg_temp.active(p_loop_id bigint) returns bigint
language sql as $$
    select count(*) from noetl.command as c
    where c.loop_id = p_loop_id and c.status in ('queued', 'claimed');
$$;

create function pg_temp.events(p_loop_id bigint, p_type text) returns bigint
language sql as $$
    select count(*) from noetl.event as e
    where e.loop_id = p_loop_id and e.event_type = p_type;
$$;

-- Completes every claimed iteration of the loop (one complete_command call each).
create function pg_temp.complete_claimed(p_loop_id bigint) returns bigint
language sql as $$
    select count(noetl.complete_command(c.command_id, c.attempt,
                                        jsonb_build_object('i', c.iter_index)))
    from noetl.command as c
    where c.loop_id = p_loop_id and c.status = 'claimed';
$$;

-- Parallel loop of 5 items, max_in_flight 2.
create temp table t_par as
select pg_temp.loop_over(
    '[10, 20, 30, 40, 50]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 2}'
) as loop_id;

select is(
    (
        select (l.total, l.issued, l.done, l.failed, l.max_in_flight)::text
        from t_par, pg_temp.loop_row(t_par.loop_id) as l
    ),
    '(5,2,0,0,2)', 'start_loop stores 5 items and issues max_in_flight = 2'
);
select is(
    (
        select count(*) from noetl.loop_item as li, t_par
        where li.loop_id = t_par.loop_id
    ),
    5::bigint, 'every item is a loop_item row'
);
select is(
    (
        select e.meta ->> 'collection_size' from noetl.event as e, t_par
        where e.loop_id = t_par.loop_id and e.event_type = 'loop.started'
    ),
    '5', 'loop.started carries collection_size'
);
select is(
    (select count(*) from pg_temp.claim(array['python'])), 2::bigint,
    'only max_in_flight iterations can be claimed'
);
select is(
    (
        select array_agg(c.iter_index order by c.iter_index) from noetl.command as c, t_par
        where c.loop_id = t_par.loop_id
    ),
    array[0, 1], 'the first items are issued first'
);

create temp table t_first as
select
    c.command_id,
    c.attempt
from noetl.command as c, t_par
where c.loop_id = t_par.loop_id and c.iter_index = 0;
select is(
    (
        select r.outcome from t_first,
            noetl.complete_command(t_first.command_id, t_first.attempt, '{"i": 0}') as r
    ),
    'ok', 'completing an iteration succeeds'
);
select is(
    (select (l.issued, l.done)::text from t_par, pg_temp.loop_row(t_par.loop_id) as l),
    '(3,1)', 'a completion counts itself and issues the next item'
);
select is(
    (
        select r.outcome from t_first,
            noetl.complete_command(t_first.command_id, t_first.attempt, '{"i": 0}') as r
    ),
    'stale', 'a duplicate completion is stale'
);
select is(
    (select (l.issued, l.done)::text from t_par, pg_temp.loop_row(t_par.loop_id) as l),
    '(3,1)', 'a duplicate completion changes no counter'
);
select is(
    pg_temp.active((select loop_id from t_par)), 2::bigint,
    'in flight stays at max_in_flight'
);
select throws_ok(
    'update noetl.loop set issued = issued + 1 where loop_id = '
    || (select loop_id from t_par),
    '23514', null, 'the table refuses counters over the in-flight bound'
);
select throws_ok(
    'update noetl.loop set done = issued + 1 where loop_id = '
    || (select loop_id from t_par),
    '23514', null, 'the table refuses more finished than issued'
);

-- Finish the rest: claim and complete, round after round.
select is(
    (select array[
        (select count(*) from pg_temp.claim(array['python'])),
        pg_temp.complete_claimed(t_par.loop_id),
        (select count(*) from pg_temp.claim(array['python'])),
        pg_temp.complete_claimed(t_par.loop_id),
        (select count(*) from pg_temp.claim(array['python'])),
        pg_temp.complete_claimed(t_par.loop_id)
    ] from t_par),
    array[1, 2, 2, 2, 0, 0]::bigint[], 'each round claims what the bound let through'
);

select is(
    (
        select (l.status, l.done, l.failed, l.issued)::text
        from t_par, pg_temp.loop_row(t_par.loop_id) as l
    ),
    '(done,5,0,5)', 'the loop is done when every item is counted'
);
select is(
    pg_temp.events((select loop_id from t_par), 'loop.done'), 1::bigint,
    'exactly one loop.done'
);
select is(
    (
        select e.meta -> 'stats' from noetl.event as e, t_par
        where e.loop_id = t_par.loop_id and e.event_type = 'loop.done'
    ),
    '{"total": 5, "success": 5, "failed": 0}'::jsonb, 'loop.done carries the stats'
);
select is(
    (
        select r.result from noetl.step_result as r, noetl.loop as l, t_par
        where
            l.loop_id = t_par.loop_id and r.execution_id = l.execution_id
            and r.step_name = 'work'
    ),
    '{"results": [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}, {"i": 4}],
      "stats": {"total": 5, "success": 5, "failed": 0}}'::jsonb,
    'the step result lists every iteration in index order, with stats'
);
select is(
    (
        select count(*) from noetl.command as c, noetl.loop as l, t_par
        where
            l.loop_id = t_par.loop_id and c.execution_id = l.execution_id
            and c.step_name = 'after'
    ),
    1::bigint, 'the next step is issued once'
);
select is(
    (
        select c.status from noetl.command as c, noetl.loop as l, t_par
        where l.loop_id = t_par.loop_id and c.command_id = l.command_id
    ),
    'done', 'the loop command is done'
);
select is(
    noetl.close_loop((select loop_id from t_par), 'tap'), null::bigint,
    'closing a closed loop does nothing'
);
select is(
    pg_temp.events((select loop_id from t_par), 'loop.done'), 1::bigint,
    'still exactly one loop.done'
);
select throws_ok(
    $$insert into noetl.event (execution_id, event_type, loop_id)
      select l.execution_id, 'loop.done', l.loop_id from noetl.loop as l, t_par
      where l.loop_id = t_par.loop_id$$,
    '23505', null, 'a second loop.done row is refused by the unique index'
);

-- Empty collection: the loop closes at once and routes.
create temp table t_empty as
select pg_temp.loop_over('[]', '{"iterator": "x", "mode": "parallel"}') as loop_id;
select is(
    (
        select (l.status, l.total, l.issued)::text
        from t_empty, pg_temp.loop_row(t_empty.loop_id) as l
    ),
    '(done,0,0)', 'an empty loop is done at once'
);
select is(
    pg_temp.events((select loop_id from t_empty), 'loop.done'), 1::bigint,
    'an empty loop writes one loop.done'
);
select is(
    (
        select r.result from noetl.step_result as r, noetl.loop as l, t_empty
        where
            l.loop_id = t_empty.loop_id and r.execution_id = l.execution_id
            and r.step_name = 'work'
    ),
    '{"results": [], "stats": {"total": 0, "success": 0, "failed": 0}}'::jsonb,
    'an empty loop has an empty result list'
);

-- Sequential: one in flight, whatever max_in_flight says.
create temp table t_seq as
select pg_temp.loop_over(
    '["a", "b", "c"]', '{"iterator": "x", "mode": "sequential", "max_in_flight": 9}'
) as loop_id;
select is(
    (
        select (l.max_in_flight, l.issued)::text
        from t_seq, pg_temp.loop_row(t_seq.loop_id) as l
    ),
    '(1,1)', 'a sequential loop has one item in flight'
);

-- Batched completion: finish_loop_iterations counts a batch once per loop.
create temp table t_batch as
select pg_temp.loop_over(
    '[1, 2, 3, 4, 5, 6]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 4}'
) as loop_id;
create temp table t_batch_claim as
select c.* from pg_temp.claim(array['python']) as c, t_batch
where c.loop_id = t_batch.loop_id;
select is(
    (
        select cardinality(f.handled)
        from noetl.finish_loop_iterations('tap', (
            select
                jsonb_agg(jsonb_build_object(
                    'op', 'done', 'command_id', c.command_id, 'attempt', c.attempt,
                    'result', c.iter_index
                ))
            from t_batch_claim as c
            where c.iter_index in (0, 1, 2)
        )) as f
    ),
    3, 'finish_loop_iterations completes the batch'
);
select is(
    (select (l.issued, l.done)::text from t_batch, pg_temp.loop_row(t_batch.loop_id) as l),
    '(6,3)', 'one update counts the batch and issues up to the bound'
);
select is(
    pg_temp.active((select loop_id from t_batch)), 3::bigint,
    'in flight never exceeds max_in_flight after a batch'
);
select is(
    (
        select cardinality(f.handled)
        from noetl.finish_loop_iterations('tap', (
            select
                jsonb_agg(jsonb_build_object(
                    'op', 'done', 'command_id', c.command_id, 'attempt', c.attempt, 'result', 0
                ))
            from t_batch_claim as c
            where c.iter_index in (0, 1, 2)
        )) as f
    ),
    0, 'replaying the batch completes nothing'
);

-- A worker finishing iterations with free claim capacity gets the next ones claimed.
create temp table t_pre as
select pg_temp.loop_over(
    '[1, 2, 3, 4, 5]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 2}'
) as loop_id;
create temp table t_pre_claim as
select c.* from pg_temp.claim(array['python']) as c, t_pre
where c.loop_id = t_pre.loop_id;
select is(
    (
        select cardinality(f.claimed)
        from noetl.finish_loop_iterations('tap', (
            select
                jsonb_agg(jsonb_build_object(
                    'op', 'done', 'command_id', c.command_id, 'attempt', c.attempt,
                    'result', 0
                ))
            from t_pre_claim as c
            where c.iter_index = 0
        ), 'tap', array['python'], 5) as f
    ),
    1, 'the freed slot is issued already claimed by the finishing worker'
);
select is(
    (
        select array_agg(c.status || ':' || c.claimed_by order by c.iter_index)
        from noetl.command as c, t_pre
        where c.loop_id = t_pre.loop_id and c.status <> 'done'
    ),
    array['claimed:tap', 'claimed:tap'], 'in flight are claimed, none queued past the bound'
);

-- Retries and reaped claims re-queue the same command: counters and bound unchanged.
update noetl.command as c set max_attempts = 3
from t_pre
where c.loop_id = t_pre.loop_id;
select is(
    (
        select array_agg(r.outcome)
        from noetl.command as c, t_pre,
            noetl.fail_command(c.command_id, c.attempt, 'flaky', 0) as r
        where c.loop_id = t_pre.loop_id and c.iter_index = 1
    ),
    array['retried'], 'a policy retry re-queues the iteration'
);
select lives_ok(
    $$select noetl.reap_command(c.command_id, 'test')
      from noetl.command as c, t_pre
      where c.loop_id = t_pre.loop_id and c.iter_index = 2$$,
    'a claim can be reaped'
);
select is(
    (
        select array[l.issued, l.done, l.failed, pg_temp.active(l.loop_id)]
        from t_pre, pg_temp.loop_row(t_pre.loop_id) as l
    ),
    array[3, 1, 0, 2]::bigint[], 'after a retry and a reap: same counters, still 2 in flight'
);

-- A failed execution issues no more iterations: its loop counts and is cancelled.
create temp table t_fail as
select pg_temp.loop_over(
    '[1, 2, 3, 4]', '{"iterator": "x", "mode": "parallel", "max_in_flight": 1}'
) as loop_id;
create temp table t_fail_claim as
select c.* from pg_temp.claim(array['python']) as c, t_fail
where c.loop_id = t_fail.loop_id;
select lives_ok(
    $$select noetl.fail_execution(l.execution_id, 'other', 'boom')
      from noetl.loop as l, t_fail where l.loop_id = t_fail.loop_id$$,
    'the execution fails mid-loop'
);
select is(
    (
        select r.outcome
        from t_fail_claim as c, noetl.complete_command(c.command_id, c.attempt, '1') as r
    ),
    'ok', 'the iteration that was running still completes'
);
select is(
    (
        select (l.status, l.issued, l.done)::text
        from t_fail, pg_temp.loop_row(t_fail.loop_id) as l
    ),
    '(cancelled,1,1)', 'nothing more is issued and the loop is cancelled'
);

-- Fan-out: a failed shard is retried on the same command, then counted failed.
create temp table t_fan as
select pg_temp.loop_over(
    '["s0", "s1"]',
    '{"iterator": "x", "mode": "parallel", "max_in_flight": 2, "is_fanout": true,
      "max_shard_retries": 1}'
) as loop_id;
create temp table t_fan_claim as select * from pg_temp.claim(array['python']);
select is(
    (
        select r.outcome
        from t_fan_claim as c, noetl.fail_command(c.command_id, c.attempt, 'boom') as r
        where c.iter_index = 0
    ),
    'failed', 'a shard fails'
);
select is(
    (
        select (c.status, c.attempt)::text from noetl.command as c, t_fan_claim as f
        where c.command_id = f.command_id and f.iter_index = 0
    ),
    '(queued,2)', 'a failed shard with retries left is re-queued on the same command'
);
select is(
    (select array[
        (select count(*) from pg_temp.claim(array['python'])),
        (select count(*) from noetl.command as c, t_fan_claim as f,
            noetl.fail_command(c.command_id, c.attempt, 'boom again')
        where c.command_id = f.command_id and f.iter_index = 0),
        pg_temp.complete_claimed(t_fan.loop_id),
        pg_temp.events(t_fan.loop_id, 'loop.shard.failed'),
        pg_temp.events(t_fan.loop_id, 'loop.shard.done')
    ] from t_fan),
    array[1, 1, 1, 2, 1]::bigint[], 'the retry runs and fails again; the other shard is done'
);
select is(
    (
        select e.meta ->> 'status' from noetl.event as e, t_fan
        where e.loop_id = t_fan.loop_id and e.event_type = 'loop.fanin.completed'
    ),
    'partial', 'a shard failing past its retries makes the fan-in partial'
);
select is(
    (select (l.done, l.failed)::text from t_fan, pg_temp.loop_row(t_fan.loop_id) as l),
    '(1,1)', 'the retried shard is counted once, as failed'
);

select * from finish();
rollback;
