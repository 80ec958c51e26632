-- The short path of a loop batch (sql/functions/loop_batch.sql): noetl.finish_loop_batch,
-- through finish_and_claim_v1, writes what the general path (lock_command_rows,
-- finish_loop_iterations, open_issue_claims, close_issue_claims, describe_commands_v1)
-- writes for the same outcomes, and declines, writing nothing, whatever it does not cover.
-- Which path ran is told by `noetl.locked_commands`: the general path's first call,
-- lock_command_rows, sets it; the short path never does.
begin;
select plan(44);
set local client_min_messages = warning;

-- `work` loops over noop iterations reading their item, then `after`.
create temporary table registered as
select * from noetl.register_playbook('t/batch', 'yaml', '{
    "entry_step": "work",
    "workflow": [
        {"step": "work", "tool": {"kind": "noop"}, "loop": {"in": "{{ xs }}", "iterator": "x"},
         "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["after"],
                  "is_join": false, "has_loop": true, "successors": ["after"],
                  "max_attempts": 1, "reads": {}, "loop_reads": {}}},
        {"step": "after", "tool": {"kind": "noop"},
         "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                  "is_join": false, "has_loop": false, "successors": [],
                  "max_attempts": 1, "reads": {}, "loop_reads": {}}}
    ]}'::jsonb);

-- Starts a loop over `items` (width `width`) whose iterations w1 has claimed.
create function pg_temp.loop_claimed(
    p_items jsonb, p_width integer, out execution_id bigint, out loop_id bigint
)
language plpgsql
as $$
declare
    v_cmd record;
begin
    execution_id := noetl.start_execution('t/batch');
    select c.command_id, c.attempt into strict v_cmd
    from noetl.claim_commands_v1('w1', array['loop'], 1) as c
    where c.execution_id = loop_claimed.execution_id;
    perform noetl.start_loop(
        v_cmd.command_id, v_cmd.attempt, p_items,
        jsonb_build_object('iterator', 'x', 'mode', 'parallel', 'max_in_flight', p_width),
        'w1'
    );
    select l.loop_id into strict loop_id from noetl.loop as l
    where l.command_id = v_cmd.command_id;
    perform noetl.claim_commands_v1('w1', array['noop'], 100);
end;
$$;

-- `done` outcomes for the loop's claimed iterations at `indexes`, as a worker sends them.
create function pg_temp.outcomes(p_loop_id bigint, p_indexes integer[]) returns jsonb
language sql
as $$
    select jsonb_agg(jsonb_build_object(
        'op', 'done', 'command_id', c.command_id, 'attempt', c.attempt,
        'claim', c.claim_gen, 'result', jsonb_build_object('i', c.iter_index),
        'ctx_set', null, 'loop_id', c.loop_id
    ) order by c.iter_index)
    from noetl.command as c
    where c.loop_id = p_loop_id and c.iter_index = any(p_indexes) and c.status = 'claimed';
$$;

-- Outcomes through finish_and_claim_v1, with the path marker cleared first.
create function pg_temp.finish(
    p_outcomes jsonb, p_kinds text[] default null, p_n integer default 5
) returns setof noetl.claimed_command
language plpgsql
as $$
begin
    perform set_config('noetl.locked_commands', '', true);
    return query select * from noetl.finish_and_claim_v1('w1', p_outcomes, p_kinds, p_n);
end;
$$;

-- The same outcomes through the general path's functions, as finish_and_claim_v1 calls
-- them for a batch of iterations, its queue scan included.
create function pg_temp.finish_general(p_outcomes jsonb, p_n integer default 5)
returns setof noetl.claimed_command
language plpgsql
as $$
declare
    v_claimed bigint[];
begin
    perform noetl.lock_command_rows(array(
        select (o ->> 'command_id')::bigint from jsonb_array_elements(p_outcomes) as o
    ));
    select f.claimed into v_claimed
    from noetl.finish_loop_iterations('w1', p_outcomes, 'w1', null, p_n) as f;
    perform noetl.open_issue_claims('w1', null, p_n - cardinality(v_claimed));
    v_claimed := v_claimed || noetl.close_issue_claims();
    if p_n - cardinality(v_claimed) > 0 and (
        current_setting('noetl.issue_queue_empty', true) is distinct from 'on'
        or current_setting('noetl.notify_pending', true) = 'on'
    ) then
        v_claimed := v_claimed || noetl.claim_command_ids(
            'w1', null, p_n - cardinality(v_claimed)
        );
    end if;
    return query select * from noetl.describe_commands_v1(v_claimed);
end;
$$;

-- Claims as comparable text: ids and the execution named in the context left out.
create function pg_temp.claims_of(p_claims noetl.claimed_command[]) returns text
language sql
as $$
    select string_agg((
        n.step_name, n.kind, n.attempt, n.iter_index, n.input, n.item,
        n.context - 'execution_id', n.claim_gen
    )::text, '; ' order by n.command_id)
    from unnest(p_claims) as n;
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
            ' ', e.event_type, e.node_name, e.attempt, e.result,
            e.meta - 'command_key' - 'loop_id',
            e.iter_index, e.result_ref
        ), '; ' order by e.event_id
    )
    from noetl.event as e
    where e.execution_id = p_execution_id;
$$;

create function pg_temp.commands_of(p_execution_id bigint) returns text
language sql
as $$
    select string_agg(
        concat_ws(
            ' ', c.step_name, c.kind, c.status, c.attempt, c.claimed_by, c.claim_gen,
            c.input, c.iter_index
        ), '; ' order by c.command_id
    )
    from noetl.command as c
    where c.execution_id = p_execution_id;
$$;

create function pg_temp.loop_of(p_loop_id bigint) returns text
language sql
as $$
    select concat_ws(' ', l.status, l.total, l.issued, l.done, l.failed) || ': ' || (
        select string_agg(concat_ws(' ', li.iter_index, li.status, li.result), ', '
                          order by li.iter_index)
        from noetl.loop_item as li where li.loop_id = l.loop_id
    )
    from noetl.loop as l where l.loop_id = p_loop_id;
$$;

create function pg_temp.refused(p_execution_id bigint) returns bigint
language sql
as $$
    select count(*) from noetl.event as e
    where e.execution_id = p_execution_id and e.event_type = 'command.outcome_refused';
$$;

-- The short path (x) beside the general path's functions (y), for the same outcomes:
-- two of a six-item loop's four claimed iterations done.
create temporary table x as
select * from pg_temp.loop_claimed('[10, 20, 30, 40, 50, 60]', 4);
create temporary table x_next as
select * from pg_temp.finish(pg_temp.outcomes((select x.loop_id from x), '{0,1}'));
select ok(pg_temp.took_short_path(), 'a batch of iterations takes the short path');

create temporary table y as
select * from pg_temp.loop_claimed('[10, 20, 30, 40, 50, 60]', 4);
create temporary table y_next as
select * from pg_temp.finish_general(pg_temp.outcomes((select y.loop_id from y), '{0,1}'));

select is(
    (select array_agg(n.iter_index order by n.command_id) from x_next as n), '{4,5}',
    'it returns the next iterations, claimed by us'
);
select is(
    pg_temp.claims_of(array(select row(n.*)::noetl.claimed_command from x_next as n)),
    pg_temp.claims_of(array(select row(n.*)::noetl.claimed_command from y_next as n)),
    'as the general path describes them'
);
select is(
    (
        select array_agg(n.context is not null order by n.command_id)
        from x_next as n
    ),
    '{t,f}', 'the first claim carries the context they share'
);
select is(
    (
        select n.context ->> 'execution_id' from x_next as n
        where n.iter_index = 4
    ),
    (select x.execution_id::text from x), 'of its own execution'
);
select is(
    (
        select (n.loop_id = x.loop_id) from x_next as n, x
        where n.iter_index = 5
    ), true,
    'and its own loop'
);
select is(
    pg_temp.events_of((select x.execution_id from x)),
    pg_temp.events_of((select y.execution_id from y)),
    'the same events, in the same order'
);
select is(
    pg_temp.commands_of((select x.execution_id from x)),
    pg_temp.commands_of((select y.execution_id from y)),
    'the same commands'
);
select is(
    pg_temp.loop_of((select x.loop_id from x)),
    pg_temp.loop_of((select y.loop_id from y)),
    'the same loop counters and items'
);
select is(
    pg_temp.loop_of((select x.loop_id from x)),
    'running 6 6 2 0: 0 done {"i": 0}, 1 done {"i": 1}, 2 pending, 3 pending, 4 pending, '
    || '5 pending',
    'two done, two issued in their place'
);

-- The loop goes on: a batch that leaves no item to issue is short too; the batch that
-- finishes the loop takes the general path, which closes it and issues `after`.
create temporary table x_more as
select * from pg_temp.finish(pg_temp.outcomes((select x.loop_id from x), '{2,3}'));
select ok(pg_temp.took_short_path(), 'a batch that issues nothing is short too');
select is((select count(*)::integer from x_more), 0, 'and returns no claim');
create temporary table x_last as
select * from pg_temp.finish(pg_temp.outcomes((select x.loop_id from x), '{4,5}'));
select ok(not pg_temp.took_short_path(), 'the batch that finishes the loop is general');
select is(
    pg_temp.loop_of((select x.loop_id from x)),
    'done 6 6 6 0: 0 done {"i": 0}, 1 done {"i": 1}, 2 done {"i": 2}, 3 done {"i": 3}, '
    || '4 done {"i": 4}, 5 done {"i": 5}',
    'which closes the loop'
);
select is(
    (select array_agg(n.step_name) from x_last as n), '{after}',
    'and issues the next step to us'
);

-- Declined: an outcome of an earlier attempt is refused by the general path.
create temporary table s as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table finished_1 as
select * from pg_temp.finish(
    jsonb_set(pg_temp.outcomes((select s.loop_id from s), '{0,1}'), '{1,attempt}', '2')
);
select ok(not pg_temp.took_short_path(), 'a stale outcome in the batch: declined');
select is(
    pg_temp.refused((select s.execution_id from s)), 1::bigint,
    'the general path refuses it'
);
select is(
    pg_temp.loop_of((select s.loop_id from s)),
    'running 4 3 1 0: 0 done {"i": 0}, 1 pending, 2 pending, 3 pending',
    'and applies the rest'
);

-- Declined: an outcome from another claim generation.
create temporary table g as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table finished_2 as
select * from pg_temp.finish(
    jsonb_set(pg_temp.outcomes((select g.loop_id from g), '{0,1}'), '{0,claim}', '7')
);
select ok(not pg_temp.took_short_path(), 'an outcome of another claim: declined');
select is(pg_temp.refused((select g.execution_id from g)), 1::bigint, 'and refused');

-- Declined: a failure among the outcomes.
create temporary table f as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table finished_3 as
select * from pg_temp.finish(
    jsonb_set(
        pg_temp.outcomes((select f.loop_id from f), '{0,1}'), '{1}',
        (pg_temp.outcomes((select f.loop_id from f), '{1}') -> 0)
        || '{"op": "fail", "error": "boom", "retry_delay": null}'
    )
);
select ok(not pg_temp.took_short_path(), 'a failure in the batch: declined');
select is(
    pg_temp.loop_of((select f.loop_id from f)),
    'running 4 4 1 1: 0 done {"i": 0}, 1 failed {"error": "boom", "status": "error"}, '
    || '2 pending, 3 pending',
    'the general path counts both'
);

-- Declined: the same outcome twice.
create temporary table d as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table finished_4 as
select * from pg_temp.finish(
    pg_temp.outcomes((select d.loop_id from d), '{0}')
    || pg_temp.outcomes((select d.loop_id from d), '{0}')
);
select ok(not pg_temp.took_short_path(), 'an outcome sent twice: declined');
select is(
    pg_temp.loop_of((select d.loop_id from d)),
    'running 4 3 1 0: 0 done {"i": 0}, 1 pending, 2 pending, 3 pending',
    'the general path applies it once'
);

-- Declined: iterations of two loops in one batch.
create temporary table two_a as select * from pg_temp.loop_claimed('[1, 2, 3]', 2);
create temporary table two_b as select * from pg_temp.loop_claimed('[1, 2, 3]', 2);
create temporary table finished_5 as
select * from pg_temp.finish(
    pg_temp.outcomes((select two_a.loop_id from two_a), '{0}')
    || pg_temp.outcomes((select two_b.loop_id from two_b), '{0}')
);
select ok(not pg_temp.took_short_path(), 'iterations of two loops: declined');
select is(
    (
        select pg_temp.loop_of(two_a.loop_id) || ' / ' || pg_temp.loop_of(two_b.loop_id)
        from two_a, two_b
    ),
    'running 3 3 1 0: 0 done {"i": 0}, 1 pending, 2 pending'
    || ' / running 3 3 1 0: 0 done {"i": 0}, 1 pending, 2 pending',
    'the general path counts each loop'
);

-- Applied with due work of our kinds queued: it is claimed beside the next iteration, as
-- the general path's queue scan claims it (each side with a queued execution of its own).
create temporary table qx as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table qx_queued as
select noetl.start_execution('t/batch') as execution_id;
create temporary table qx_next as
select * from pg_temp.finish(pg_temp.outcomes((select qx.loop_id from qx), '{0}'));
select ok(pg_temp.took_short_path(), 'due work queued: the short path');
create temporary table qy as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table qy_queued as
select noetl.start_execution('t/batch') as execution_id;
create temporary table qy_next as
select * from pg_temp.finish_general(pg_temp.outcomes((select qy.loop_id from qy), '{0}'));
select is(
    (select array_agg(n.kind order by n.command_id) from qx_next as n), '{loop,noop}',
    'claims the queued command beside the next iteration'
);
select is(
    pg_temp.claims_of(array(select row(n.*)::noetl.claimed_command from qx_next as n)),
    pg_temp.claims_of(array(select row(n.*)::noetl.claimed_command from qy_next as n)),
    'as the general path claims and describes them'
);
select is(
    pg_temp.events_of((select q.execution_id from qx_queued as q)),
    pg_temp.events_of((select q.execution_id from qy_queued as q)),
    'the queued execution''s events as the general path writes them'
);
select is(
    pg_temp.events_of((select qx.execution_id from qx)),
    pg_temp.events_of((select qy.execution_id from qy)),
    'and the loop''s'
);

-- Declined: a fan-out loop (its shards have events of their own), a cursor loop.
create temporary table fo as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
update noetl.loop as l set is_fanout = true from fo
where l.loop_id = fo.loop_id;
create temporary table finished_6 as
select * from pg_temp.finish(pg_temp.outcomes((select fo.loop_id from fo), '{0}'));
select ok(not pg_temp.took_short_path(), 'a fan-out: declined');
select is(
    (
        select count(*) from noetl.event as e, fo
        where e.execution_id = fo.execution_id and e.event_type = 'loop.shard.done'
    ),
    1::bigint, 'the general path writes its shard event'
);
create temporary table cu as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
update noetl.loop as l set mode = 'cursor' from cu
where l.loop_id = cu.loop_id;
select is(
    (
        select (f.applied, f.claimed)::text
        from cu, noetl.finish_loop_batch('w1', pg_temp.outcomes(cu.loop_id, '{0}'), null, 5)
            as f
    ),
    '(f,)', 'a cursor loop: declined, nothing written'
);
select is(
    pg_temp.loop_of((select cu.loop_id from cu)),
    'running 4 2 0 0: 0 pending, 1 pending, 2 pending, 3 pending', 'the loop untouched'
);

-- Declined: an execution that is no longer running.
create temporary table nr as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
update noetl.execution as e set status = 'FAILED' from nr
where e.execution_id = nr.execution_id;
select is(
    (
        select (f.applied, f.claimed)::text
        from nr, noetl.finish_loop_batch('w1', pg_temp.outcomes(nr.loop_id, '{0}'), null, 5)
            as f
    ),
    '(f,)', 'a failed execution: declined'
);

-- Applied: a worker of other kinds gets no claim; the next iterations are queued.
create temporary table k as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create temporary table k_next as
select * from pg_temp.finish(pg_temp.outcomes((select k.loop_id from k), '{0}'), '{noop_x}');
select ok(pg_temp.took_short_path(), 'a worker of other kinds takes the short path');
select is((select count(*)::integer from k_next), 0, 'and is handed no iteration');
select is(
    (
        select c.status from noetl.command as c, k
        where c.loop_id = k.loop_id and c.iter_index = 2
    ),
    'queued', 'the next iteration is queued for a worker of its kind'
);

-- Applied: a child execution's batch, its ancestors locked first.
create temporary table ch as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
update noetl.execution as e set parent_execution_id = (select x.execution_id from x)
from ch
where e.execution_id = ch.execution_id;
create temporary table ch_next as
select * from pg_temp.finish(pg_temp.outcomes((select ch.loop_id from ch), '{0}'));
select ok(pg_temp.took_short_path(), 'a child execution''s batch takes the short path');
select is(
    (select array_agg(n.iter_index) from ch_next as n), '{2}', 'and gets its next iteration'
);
select ok(
    (select x.execution_id from x)::text = any(
        string_to_array(trim(both '{}' from current_setting('noetl.locked_executions')), ',')
    ),
    'with its parent locked'
);

-- The fence under the locks: an outcome's command that changes between the check and the
-- update (here a trigger skips its update, as a writer without the execution's lock
-- would have changed it) rolls the call back as a serialization failure, to be retried.
create temporary table fence as select * from pg_temp.loop_claimed('[1, 2, 3, 4]', 2);
create function pg_temp.skip_one() returns trigger
language plpgsql
as $$
begin
    if new.iter_index = 1 and new.loop_id = current_setting('test.fence_loop')::bigint then
        return null;
    end if;
    return new;
end;
$$;
do $$
begin
    perform set_config('test.fence_loop', (select fence.loop_id::text from fence), true);
end;
$$;
create trigger skip_one before update on noetl.command
for each row execute function pg_temp.skip_one();
select throws_ok(
    format(
        'select * from pg_temp.finish(%L)',
        pg_temp.outcomes((select fence.loop_id from fence), '{0,1}')
    ),
    '40001', null, 'a command changed under the locks: serialization failure'
);
drop trigger skip_one on noetl.command;
select is(
    pg_temp.loop_of((select fence.loop_id from fence)),
    'running 4 2 0 0: 0 pending, 1 pending, 2 pending, 3 pending',
    'and nothing of the batch is kept'
);

select * from finish();
rollback;
