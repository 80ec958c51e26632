-- Direct tests of the parts of the projection (sql/functions/projection.sql,
-- sql/functions/projector.sql): fold_step and fold_iteration event by event,
-- projection_shard_lag against hand-made events and checkpoints, and
-- release_projection_shards with one and two projectors. The folds are pure: events are
-- built in memory (pg_temp.ev) with a fixed time per event id.
begin;
select plan(41);

-- An event as the fold reads it; created_at is 2030-01-01 plus event_id seconds.
create function pg_temp.ev(
    p_id bigint, p_type text, p_node text, p_command bigint, p_attempt integer default 1,
    p_meta jsonb default null, p_error text default null, p_loop bigint default null,
    p_iter integer default null
) returns noetl.projection_event
language sql as $$
    select row(
        p_id, '3'::xid8, p_type, p_node, p_command, p_loop, p_iter, p_attempt, p_meta,
        p_error, '2030-01-01 00:00:00+00'::timestamptz + make_interval(secs => p_id)
    )::noetl.projection_event;
$$;

create function pg_temp.at(p_id bigint) returns jsonb
language sql as $$
    select to_jsonb('2030-01-01 00:00:00+00'::timestamptz + make_interval(secs => p_id));
$$;

-- fold_step, one step through its life
create temporary table s (state jsonb);
insert into s
values (noetl.fold_step('{}', pg_temp.ev(1, 'command.issued', 'a', 10, 1, '{"kind": "python"}')));
select is(
    (select s.state -> 'steps' -> 'a' from s),
    jsonb_build_object(
        'status', 'queued', 'command_id', 10, 'attempts', 0, 'runs', 1,
        'started', pg_temp.at(1), 'finished', null
    ),
    'command.issued starts the step queued, one run'
);
select is(
    noetl.fold_step(
        '{}', pg_temp.ev(1, 'command.issued', 'b', 20, 1, '{"kind": "python", "worker_id": "w1"}')
    ) -> 'steps' -> 'b',
    jsonb_build_object(
        'status', 'running', 'command_id', 20, 'attempts', 1, 'runs', 1,
        'started', pg_temp.at(1), 'finished', null
    ),
    'a command.issued naming its worker (created claimed) starts the step running, attempt 1'
);
select is(
    (
        select
            noetl.fold_step(
                s.state, pg_temp.ev(2, 'command.issued', 'a', 11, 1, '{"kind": "route"}')
            )
        from s
    ),
    (select s.state from s), 'a route command issued for the step leaves it alone'
);
update s set state = noetl.fold_step(state, pg_temp.ev(3, 'command.claimed', 'a', 10, 1));
select is(
    (select s.state #> '{steps,a}' ->> 'status' || ' ' || (s.state #>> '{steps,a,attempts}') from s
    ),
    'running 1', 'command.claimed: running, attempt 1'
);
select is(
    (select noetl.fold_step(s.state, pg_temp.ev(4, 'call.done', 'a', 99, 1)) from s),
    (select s.state from s), 'an event of another command leaves the step alone'
);
update s set
    state = noetl.fold_step(state, pg_temp.ev(5, 'call.error', 'a', 10, 1, null, repeat('e', 600)));
select is(
    (
        select (s.state #>> '{steps,a,status}', length(s.state #>> '{steps,a,error}'))::text
        from s
    ),
    '(running,500)', 'call.error keeps the step running and its error cut to 500 characters'
);
update s set state = noetl.fold_step(state, pg_temp.ev(6, 'command.retried', 'a', 10, 2));
select is(
    (select s.state #>> '{steps,a,status}' from s), 'retrying', 'command.retried: retrying'
);
update s set state = noetl.fold_step(state, pg_temp.ev(7, 'command.claimed', 'a', 10, 2));
select is(
    (select s.state #>> '{steps,a,status}' || ' ' || (s.state #>> '{steps,a,attempts}') from s),
    'running 2', 'claimed again: running, attempt 2'
);
update s set state = noetl.fold_step(state, pg_temp.ev(8, 'command.reaped', 'a', 10, 2));
select is(
    (select s.state #>> '{steps,a,status}' from s), 'queued', 'command.reaped: queued again'
);
update s set state = noetl.fold_step(state, pg_temp.ev(9, 'command.claimed', 'a', 10, 2));
update s set state = noetl.fold_step(state, pg_temp.ev(10, 'call.done', 'a', 10, 2));
select is(
    (select s.state -> 'steps' -> 'a' from s),
    jsonb_build_object(
        'status', 'done', 'command_id', 10, 'attempts', 2, 'runs', 1,
        'started', pg_temp.at(1), 'finished', pg_temp.at(10)
    ),
    'call.done: done and finished; the earlier attempt''s error is dropped'
);
select is(
    (select noetl.fold_step(s.state, pg_temp.ev(11, 'command.retried', 'a', 10, 3)) from s),
    (select s.state from s), 'a late command.retried does not reopen a done step'
);
select is(
    (
        select
            noetl.fold_step(
                s.state, pg_temp.ev(12, 'command.issued', 'a', 5, 1, '{"kind": "python"}')
            )
        from s
    ),
    (select s.state from s), 'an older command issued late is not the step''s command'
);
select is(
    (select noetl.fold_step(s.state, pg_temp.ev(13, 'call.partial', 'a', 10, 2)) from s),
    (select s.state from s), 'an event the fold does not know changes nothing'
);
update s set state = noetl.fold_step(
    state, pg_temp.ev(14, 'command.issued', 'a', 20, 1, '{"kind": "python"}')
);
select is(
    (select s.state -> 'steps' -> 'a' from s),
    jsonb_build_object(
        'status', 'queued', 'command_id', 20, 'attempts', 0, 'runs', 2,
        'started', pg_temp.at(1), 'finished', null
    ),
    'a second activation: a new command, two runs, the first start kept'
);
update s set
    state = noetl.fold_step(state, pg_temp.ev(15, 'command.failed', 'a', 20, 1, null, 'bad'));
select is(
    (
        select (
            s.state #>> '{steps,a,status}', s.state #>> '{steps,a,error}',
            s.state #> '{steps,a,finished}' = pg_temp.at(15)
        )::text
        from s
    ),
    '(failed,bad,t)', 'command.failed: failed, with its error, finished'
);

-- fold_step, loops and fan-outs
update s set
    state
    = noetl.fold_step(state, pg_temp.ev(20, 'command.issued', 'b', 30, 1, '{"kind": "loop"}'));
update s set state = noetl.fold_step(
    state,
    pg_temp.ev(21, 'loop.started', 'b', 30, 1, '{"loop_id": 5, "collection_size": 3}', null, 5)
);
select is(
    (select (s.state #>> '{steps,b,status}', s.state #> '{loop,b}')::text from s),
    '(running,"{""done"": 0, ""total"": 3, ""failed"": 0, ""loop_id"": 5, ""completed"": false}")',
    'loop.started: the step runs and its loop is counted from zero'
);
update s set
    state
    = noetl.fold_step(state, pg_temp.ev(22, 'command.issued', 'f', 40, 1, '{"kind": "loop"}'));
update s set state = noetl.fold_step(
    state,
    pg_temp.ev(
        23, 'loop.fanout.started', 'f', 40, 1,
        '{"loop_id": 6, "collection_size": 2, "total_shards": 2}', null, 6
    )
);
select is(
    (select s.state #> '{fanout,f}' from s),
    '{"total_shards": 2, "done": 0, "failed": 0, "retries": 0, "status": "running"}'::jsonb,
    'loop.fanout.started also starts the fan-out counters'
);

-- fold_iteration
create temporary table i (state jsonb);
insert into i select s.state from s;
select is(
    (
        select
            noetl.fold_iteration(i.state, pg_temp.ev(30, 'call.done', 'b', 31, 1, null, null, 5, 0))
            #> '{loop,b}'
        from i
    ),
    '{"loop_id": 5, "total": 3, "done": 1, "failed": 0, "completed": false}'::jsonb,
    'an iteration''s call.done counts done'
);
select is(
    (
        select
            noetl.fold_iteration(
                i.state, pg_temp.ev(31, 'command.failed', 'b', 32, 1, null, 'x', 5, 1)
            )
            #>> '{loop,b,failed}'
        from i
    ),
    '1', 'an iteration''s command.failed counts failed'
);
select is(
    (
        select
            noetl.fold_iteration(
                i.state, pg_temp.ev(32, 'command.claimed', 'b', 31, 1, null, null, 5, 0)
            )
        from i
    ),
    (select i.state from i), 'other iteration events count nothing'
);
select is(
    (
        select
            noetl.fold_iteration(
                i.state, pg_temp.ev(33, 'call.done', 'b', 31, 1, null, null, 4, 0)
            )
        from i
    ),
    (select i.state from i), 'an iteration of an earlier loop of the step counts nothing'
);
select is(
    (
        select
            noetl.fold_iteration(
                i.state, pg_temp.ev(34, 'call.done', 'zz', 31, 1, null, null, 5, 0)
            )
        from i
    ),
    (select i.state from i), 'an iteration of a step without a loop counts nothing'
);
update i set state = noetl.fold_iteration(
    state,
    pg_temp.ev(35, 'loop.shard.failed', 'f', 41, 1, '{"shard_id": 0, "retry": true}', 'x', 6, 0)
);
select is(
    (select jsonb_build_array(i.state #> '{fanout,f}', i.state #> '{loop,f,failed}') from i),
    '[{"done": 0, "failed": 0, "status": "running", "retries": 1, "total_shards": 2}, 0]'::jsonb,
    'a retried shard counts a retry, not a failure'
);
update i set state = noetl.fold_iteration(
    state,
    pg_temp.ev(36, 'loop.shard.failed', 'f', 41, 2, '{"shard_id": 0, "retry": false}', 'x', 6, 0)
);
update i set state = noetl.fold_iteration(
    state, pg_temp.ev(37, 'loop.shard.done', 'f', 42, 1, '{"shard_id": 1}', null, 6, 1)
);
select is(
    (
        select
            jsonb_build_object(
                'loop', (i.state #> '{loop,f}') - 'loop_id' - 'total' - 'completed',
                'fanout', (i.state #> '{fanout,f}') - 'total_shards' - 'status'
            )
        from i
    ),
    '{"loop": {"done": 1, "failed": 1}, "fanout": {"done": 1, "failed": 1, "retries": 1}}'::jsonb,
    'shard outcomes count in both the loop and the fan-out'
);
select is(
    (
        select
            noetl.fold_iteration(
                i.state, pg_temp.ev(38, 'call.done', 'f', 42, 1, null, null, 6, 1)
            )
        from i
    ),
    (select i.state from i), 'a fan-out counts its shard events, not call.done'
);
select is(
    (
        select
            noetl.fold_iteration(
                noetl.fold_iteration(
                    s.state, pg_temp.ev(30, 'call.done', 'b', 31, 1, null, null, 5, 0)
                ),
                pg_temp.ev(31, 'command.failed', 'b', 32, 1, null, 'x', 5, 1)
            )
        from s
    ),
    (
        select
            noetl.fold_iteration(
                noetl.fold_iteration(
                    s.state, pg_temp.ev(31, 'command.failed', 'b', 32, 1, null, 'x', 5, 1)
                ),
                pg_temp.ev(30, 'call.done', 'b', 31, 1, null, null, 5, 0)
            )
        from s
    ),
    'iterations of one loop fold to the same counts in any order'
);

-- fold_step: the end of loops and fan-outs
update s set state = noetl.fold_step(
    state, pg_temp.ev(40, 'loop.fanin.completed', 'f', 40, null, '{"status": "partial"}', null, 6)
);
select is(
    (select (s.state #>> '{fanout,f,status}', s.state #>> '{steps,f,status}')::text from s),
    '(partial,running)', 'loop.fanin.completed sets the fan-in status only'
);
update s set
    state = noetl.fold_step(state, pg_temp.ev(41, 'loop.done', 'b', 30, null, null, null, 5));
select is(
    (select (s.state #>> '{steps,b,status}', s.state #>> '{loop,b,completed}')::text from s),
    '(done,true)', 'loop.done: the step is done and its loop completed'
);
update s set
    state = noetl.fold_step(state, pg_temp.ev(42, 'loop.done', 'f', 40, null, null, null, 99));
select is(
    (select (s.state #>> '{steps,f,status}', s.state #>> '{loop,f,completed}')::text from s),
    '(done,false)', 'a loop.done of another loop does not complete the step''s current loop'
);

-- projection_shard_lag
create function pg_temp.lag(p_shard integer) returns text
language sql as $$
    select (l.oldest_pending_event_id, l.seconds_behind > 3599, l.seconds_behind = 0)::text
    from noetl.projection_shard as s, noetl.projection_shard_lag(s) as l
    where s.shard = p_shard;
$$;
select is(pg_temp.lag(1), '(,f,t)', 'a shard with nothing pending is 0 s behind');
insert into noetl.event (execution_id, event_id, event_type, tx_id, created_at)
values
(9841, 2, 'playbook.started', '5', now() - interval '1 hour'),
(9857, 1, 'playbook.started', '7', now()),
(9842, 3, 'playbook.started', '5', now() - interval '2 hours');
select is(
    pg_temp.lag(1), '(2,t,f)',
    'the oldest pending event is the first by (tx_id, event_id), with its age'
);
update noetl.projection_shard set checkpoint_tx_id = '5', checkpoint_event_id = 2
where shard = 1;
select is(
    (
        select (l.oldest_pending_event_id, l.oldest_pending_at <= clock_timestamp())::text
        from noetl.projection_shard as s, noetl.projection_shard_lag(s) as l
        where s.shard = 1
    ),
    '(1,t)', 'events at or before the checkpoint are not pending'
);
update noetl.projection_shard set checkpoint_tx_id = '7', checkpoint_event_id = 1
where shard = 1;
select is(pg_temp.lag(1), '(,f,t)', 'a caught-up shard is 0 s behind');
select is(pg_temp.lag(2), '(3,t,f)', 'each shard sees only its executions');

-- release_projection_shards
select is(
    (select count(*)::integer from noetl.claim_projection_shards('p1', 30)), 16,
    'a lone projector holds every shard'
);
select is(noetl.release_projection_shards('p1'), 16, 'release returns how many it gave up');
select is(
    (
        select (
            count(*) filter (where ps.owner is not null or ps.lease_expires_at is not null),
            (
                select count(*) from noetl.projector as p
                where p.owner = 'p1'
            )
        )::text
        from noetl.projection_shard as ps
    ),
    '(0,0)', 'every lease is free at once and the projector is forgotten'
);
select is(noetl.release_projection_shards('nobody'), 0, 'an unknown owner releases nothing');
-- p1 takes all, p2 none, p1 gives up the excess over its share, p2 takes it.
select count(*) as held from noetl.claim_projection_shards('p1', 30);
select count(*) as held from noetl.claim_projection_shards('p2', 30);
select count(*) as held from noetl.claim_projection_shards('p1', 30);
select count(*) as held from noetl.claim_projection_shards('p2', 30);
select is(
    (select array_agg(ps.owner || ':' || ps.n order by ps.owner) from (
        select
            s.owner,
            count(*) as n
        from noetl.projection_shard as s
        group by s.owner
    ) as ps),
    array['p1:8', 'p2:8'], 'two projectors share the shards'
);
select is(noetl.release_projection_shards('p1'), 8, 'p1 releases its 8');
select is(
    (
        select (
            count(*) filter (where ps.owner = 'p2'), count(*) filter (where ps.owner is null),
            (select array_agg(p.owner) from noetl.projector as p)
        )::text
        from noetl.projection_shard as ps
    ),
    '(8,8,{p2})', 'the other projector keeps its shards and stays registered'
);

select * from finish();
rollback;
