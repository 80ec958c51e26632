-- Cursor loops (sql/functions/cursor_loop.sql), driven directly in SQL: slots, claims that
-- become items, the per-slot sequence, rows seen again, draining and closing once, a
-- failed claim, stale claims. `work` is a python step with a cursor loop, then `after`.

begin;
select plan(31);

select lives_ok(
    $$select * from noetl.register_playbook('tap/cursor', '', '{
        "workflow": [
            {"step": "work", "tool": {"kind": "python", "code": "result = 1"},
             "loop": {"cursor": {"kind": "postgres", "auth": "db", "claim": "select 1"},
                      "iterator": "r", "spec": {"mode": "cursor", "max_in_flight": 2}},
             "next": {"arcs": [{"step": "after"}]},
             "plan": {"kind": "python", "route_mode": "direct", "direct_targets": ["after"],
                      "is_join": false, "has_loop": true, "reaches": ["after"],
                      "max_attempts": 1}},
            {"step": "after", "tool": {"kind": "noop"},
             "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                      "is_join": false, "has_loop": false, "reaches": [],
                      "max_attempts": 1}}
        ]}'::jsonb)$$,
    'a playbook with a cursor loop registers'
);

create function pg_temp.claim(p_kinds text[])
returns table (command_id bigint, attempt integer, claim_gen integer, slot integer)
language sql as $$
    select c.command_id, c.attempt, c.claim_gen, (c.input ->> 'slot')::integer
    from noetl.claim_commands('tap', p_kinds, 1000) as c order by c.command_id;
$$;

-- Starts an execution and its cursor loop (2 slots, rows keyed by `id`); its loop_id.
create function pg_temp.start(p_on_error text) returns bigint
language plpgsql as $$
declare
    v_cmd record;
begin
    perform noetl.start_execution('tap/cursor', '{}');
    select * into strict v_cmd from pg_temp.claim(array['loop']);
    perform noetl.start_loop(v_cmd.command_id, v_cmd.attempt, '[]', jsonb_build_object(
        'iterator', 'r', 'mode', 'cursor', 'max_in_flight', 2, 'on_error', p_on_error,
        'cursor', jsonb_build_object('kind', 'postgres', 'auth', 'db', 'claim', 'select 1',
                                     'options', jsonb_build_object('key', array['id']))
    ), 'tap');
    return (select l.loop_id from noetl.loop as l where l.command_id = v_cmd.command_id);
end;
$$;

create function pg_temp.loop_row(p_loop_id bigint) returns noetl.loop
language sql as $$ select * from noetl.loop as l where l.loop_id = p_loop_id; $$;

create function pg_temp.finish(
    p_command_id bigint, p_attempt integer, p_claim_gen integer, p_rows jsonb,
    p_error text default null
) returns text
language sql as $$
    select f.outcome from noetl.finish_cursor_claim_v1(
        'tap', p_command_id, p_attempt, p_claim_gen, p_rows, p_error
    ) as f;
$$;

-- Completes the claimed iteration of item `p_index`.
create function pg_temp.complete(p_loop_id bigint, p_index integer) returns text
language sql as $$
    select (noetl.complete_command(c.command_id, c.attempt,
                                   jsonb_build_object('i', p_index))).outcome
    from noetl.command as c
    where c.loop_id = p_loop_id and c.iter_index = p_index and c.status = 'claimed';
$$;

create temp table t_loop as select pg_temp.start('fail') as loop_id;

select is(
    (
        select (l.mode, l.total, l.issued, l.max_in_flight)::text
        from t_loop, pg_temp.loop_row(t_loop.loop_id) as l
    ),
    '(cursor,0,0,2)', 'a cursor loop starts with no items and 2 slots'
);
select is(
    (
        select count(*)::integer from noetl.command as c, t_loop
        where c.loop_id = t_loop.loop_id and c.kind = 'cursor' and c.status = 'queued'
    ),
    2, 'one claim command per slot'
);

create temp table t_claims as select * from pg_temp.claim(array['cursor']);

select is(
    (
        select pg_temp.finish(c.command_id, c.attempt, c.claim_gen, '[{"id": 1}, {"id": 2}]')
        from t_claims as c
        where c.slot = 0
    ),
    'ok', 'slot 0 claims two rows'
);
select is(
    (
        select pg_temp.finish(c.command_id, c.attempt, c.claim_gen, '[{"id": 1}]')
        from t_claims as c
        where c.slot = 0
    ),
    'stale', 'the same claim applied twice is refused'
);
select is(
    (
        select
            pg_temp.finish(
                c.command_id, c.attempt, c.claim_gen, '[{"id": 2, "again": true}, {"id": 3}]'
            )
        from t_claims as c
        where c.slot = 1
    ),
    'ok', 'slot 1 claims a row slot 0 holds and a new one'
);
select is(
    (select (l.total, l.issued)::text from t_loop, pg_temp.loop_row(t_loop.loop_id) as l),
    '(3,2)', 'three items, one iteration in flight per slot'
);
select is(
    (
        select array_agg(li.cursor_slot order by li.iter_index)
        from noetl.loop_item as li, t_loop
        where li.loop_id = t_loop.loop_id
    ),
    array[0, 0, 1], 'items are numbered in claim order, with their slot'
);
select is(
    (
        select array_agg(c.iter_index order by c.iter_index)
        from noetl.command as c, t_loop
        where c.loop_id = t_loop.loop_id and c.kind = 'python'
    ),
    array[0, 2], 'each slot runs its first new item, created claimed by the claimer'
);

select is(pg_temp.complete(t_loop.loop_id, 0), 'ok', 'item 0 done') from t_loop;
select is(
    (
        select c.status from noetl.command as c, t_loop
        where c.loop_id = t_loop.loop_id and c.iter_index = 1
    ),
    'queued', 'slot 0 goes on with the next item of its claim'
);
select is(
    (select count(*)::integer from pg_temp.claim(array['python'])), 1, 'item 1 is claimed'
);
select is(pg_temp.complete(t_loop.loop_id, 1), 'ok', 'item 1 done') from t_loop;
select is(pg_temp.complete(t_loop.loop_id, 2), 'ok', 'item 2 done') from t_loop;
select is(
    (
        select count(*)::integer from noetl.command as c, t_loop
        where c.loop_id = t_loop.loop_id and c.kind = 'cursor' and c.status = 'queued'
    ),
    2, 'after the last item of its claim, each slot claims again'
);

delete from t_claims;
insert into t_claims select * from pg_temp.claim(array['cursor']);
select is(
    (
        select pg_temp.finish(c.command_id, c.attempt, c.claim_gen, '[]') from t_claims as c
        where c.slot = 0
    ),
    'drained', 'slot 0 drains'
);
select is(
    (select l.status from t_loop, pg_temp.loop_row(t_loop.loop_id) as l),
    'running', 'the loop waits for its other slot'
);
select is(
    (
        select pg_temp.finish(c.command_id, c.attempt, c.claim_gen, '[]') from t_claims as c
        where c.slot = 1
    ),
    'drained', 'slot 1 drains'
);
select is(
    (
        select (l.status, l.total, l.done, l.failed)::text
        from t_loop, pg_temp.loop_row(t_loop.loop_id) as l
    ),
    '(done,3,3,0)', 'the last drained slot closes the loop'
);
select is(
    (
        select count(*)::integer from noetl.event as e, t_loop
        where e.loop_id = t_loop.loop_id and e.event_type = 'loop.done'
    ),
    1, 'one loop.done'
);
select is(
    (
        select r.result -> 'results' from noetl.step_result as r, t_loop, noetl.loop as l
        where
            l.loop_id = t_loop.loop_id and r.execution_id = l.execution_id
            and r.step_name = 'work'
    ),
    '[{"i": 0}, {"i": 1}, {"i": 2}]'::jsonb, 'results in index order'
);
select is(
    (
        select count(*)::integer from noetl.command as c, t_loop, noetl.loop as l
        where
            l.loop_id = t_loop.loop_id and c.execution_id = l.execution_id
            and c.step_name = 'after'
    ),
    1, 'the step routes once'
);
select is(
    noetl.advance_cursor_loop(t_loop.loop_id, 1, 0, array[0]), '{}'::bigint[],
    'a closed loop is not advanced'
) from t_loop;

-- A claim that fails: a failed item, the slot drained; on_error fail fails the step.
create temp table t_fail as select pg_temp.start('fail') as loop_id;
delete from t_claims;
insert into t_claims select * from pg_temp.claim(array['cursor']);
select is(
    (
        select pg_temp.finish(c.command_id, c.attempt, c.claim_gen, null, 'boom') from t_claims as c
        where c.slot = 0
    ),
    'failed', 'a failed claim'
);
select is(
    (
        select pg_temp.finish(c.command_id, c.attempt, c.claim_gen, '[]') from t_claims as c
        where c.slot = 1
    ),
    'drained', 'the other slot drains'
);
select is(
    (
        select (l.status, l.total, l.failed, c.status)::text
        from t_fail, pg_temp.loop_row(t_fail.loop_id) as l
        inner join noetl.command as c on l.command_id = c.command_id
    ),
    '(done,1,1,failed)', 'the failed claim is a failed item and the loop step fails'
);

select throws_like(
    $$select noetl.resume_execution(l.execution_id) from t_fail, noetl.loop as l
      where l.loop_id = t_fail.loop_id$$,
    '%is a cursor loop, which cannot be resumed%',
    'a failed cursor loop is not resumed (rerun it)'
);

-- The building blocks, called directly.
select is(
    (
        select count(*)::integer from noetl.command as c, t_fail
        where c.loop_id = t_fail.loop_id and c.kind = 'cursor'
    ),
    2, 'two claim commands so far'
);
select lives_ok(
    $$select noetl.issue_cursor_claims(l, array[0, 1])
      from t_fail, pg_temp.loop_row(t_fail.loop_id) as l$$,
    'issue_cursor_claims issues claims for the slots given'
);
select throws_ok(
    $$select noetl.start_cursor_loop(c, c.attempt, '{"max_in_flight": 1}')
      from noetl.command as c, t_fail, noetl.loop as l
      where l.loop_id = t_fail.loop_id and c.command_id = l.command_id$$,
    '22023', null, 'start_cursor_loop needs loop.cursor'
);
select lives_ok(
    $$select noetl.cursor_claim_failed(c, 'late', null), noetl.drain_cursor_slot(l, null)
      from noetl.command as c, t_fail, noetl.loop as l
      where l.loop_id = t_fail.loop_id and c.loop_id = l.loop_id and c.kind = 'cursor'
      limit 1$$,
    'a failed claim or a drain after the loop closed changes nothing that raises'
);

select * from finish();
rollback;
