-- The parts the projector folds a batch with give what fold_event gives one by one:
-- fold_iteration_counts for a run of loop-iteration events (plain loop and fan-out,
-- another loop's events, counters not counted left absent), fold_position for the
-- bookkeeping, fold_content and merge_steps.
begin;
select plan(13);

create temporary table fold_event_fixture (
    seq integer primary key,
    event noetl.projection_event
);
-- (event_id, tx_id, event_type, node_name, command_id, loop_id, iter_index, attempt, meta,
--  error, created_at)
insert into fold_event_fixture values
(-1, row(
    -1, '99'::xid8, 'command.issued', 'w', 1, null, null, 1, '{"kind": "loop"}', null,
    '2031-01-01 00:00:00+00'
)::noetl.projection_event),
(0, row(
    0, '99'::xid8, 'command.issued', 'f', 2, null, null, 1, '{"kind": "loop"}', null,
    '2031-01-01 00:00:00+00'
)::noetl.projection_event),
(1, row(
    1, '100'::xid8, 'loop.started', 'w', 1, 7, null, 1, '{"collection_size": 3}', null,
    '2031-01-01 00:00:01+00'
)::noetl.projection_event),
(2, row(
    2, '100'::xid8, 'loop.fanout.started', 'f', 2, 8, null, 1,
    '{"collection_size": 2, "total_shards": 2}', null, '2031-01-01 00:00:01+00'
)::noetl.projection_event),
(3, row(
    3, '101'::xid8, 'command.issued', 'w', 10, 7, 0, 1, '{"kind": "python"}', null,
    '2031-01-01 00:00:02+00'
)::noetl.projection_event),
(4, row(
    4, '101'::xid8, 'command.claimed', 'w', 10, 7, 0, 1, '{}', null,
    '2031-01-01 00:00:02+00'
)::noetl.projection_event),
(5, row(
    6, '102'::xid8, 'call.done', 'w', 10, 7, 0, 1, null, null, '2031-01-01 00:00:03+00'
)::noetl.projection_event),
(6, row(
    5, '103'::xid8, 'command.failed', 'w', 11, 7, 1, 1, null, 'boom',
    '2031-01-01 00:00:04+00'
)::noetl.projection_event),
(7, row(
    7, '103'::xid8, 'call.done', 'w', 12, 99, 2, 1, null, null, '2031-01-01 00:00:04+00'
)::noetl.projection_event),
(8, row(
    8, '104'::xid8, 'loop.shard.done', 'f', 20, 8, 0, 1, '{}', null,
    '2031-01-01 00:00:05+00'
)::noetl.projection_event),
(9, row(
    9, '104'::xid8, 'loop.shard.failed', 'f', 21, 8, 1, 1, '{"retry": true}', null,
    '2031-01-01 00:00:05+00'
)::noetl.projection_event),
(10, row(
    10, '105'::xid8, 'loop.shard.failed', 'f', 21, 8, 1, 2, '{"retry": false}', 'x',
    '2031-01-01 00:00:06+00'
)::noetl.projection_event),
(11, row(
    11, '105'::xid8, 'call.done', 'f', 22, 8, 0, 1, null, null, '2031-01-01 00:00:06+00'
)::noetl.projection_event);

create function pg_temp.fold_seq(p_from integer, p_to integer, p_state jsonb)
returns jsonb
language plpgsql
as $$
declare
    v_state jsonb := p_state;
    v_event noetl.projection_event;
begin
    for v_event in
        select (f.event).* from fold_event_fixture as f
        where f.seq between p_from and p_to order by f.seq
    loop
        v_state := noetl.fold_event(v_state, v_event);
    end loop;
    return v_state;
end;
$$;

-- the run's inputs as the projector computes them (project_shard)
create function pg_temp.fold_run(p_from integer, p_to integer, p_state jsonb)
returns jsonb
language sql
as $$
    select noetl.fold_position(
        noetl.fold_iteration_counts(p_state, (
            select jsonb_agg(c.counts) from (
                select jsonb_build_object(
                    'step', (f.event).node_name, 'loop_id', (f.event).loop_id,
                    'done', count(*) filter (where (f.event).event_type = 'call.done'),
                    'failed', count(*) filter (where (f.event).event_type = 'command.failed'),
                    'shard_done', count(*) filter (
                        where (f.event).event_type = 'loop.shard.done'
                    ),
                    'shard_failed', count(*) filter (
                        where (f.event).event_type = 'loop.shard.failed'
                        and not coalesce(((f.event).meta ->> 'retry')::boolean, false)
                    ),
                    'shard_retries', count(*) filter (
                        where (f.event).event_type = 'loop.shard.failed'
                        and coalesce(((f.event).meta ->> 'retry')::boolean, false)
                    )
                ) as counts
                from fold_event_fixture as f
                where f.seq between p_from and p_to
                group by (f.event).node_name, (f.event).loop_id
            ) as c
        )),
        (select count(*)::integer from fold_event_fixture as f where f.seq between p_from and p_to),
        (select (f.event).tx_id from fold_event_fixture as f
         where f.seq between p_from and p_to order by f.seq desc limit 1),
        (select (f.event).event_id from fold_event_fixture as f
         where f.seq between p_from and p_to order by f.seq desc limit 1),
        (select f.event from fold_event_fixture as f
         where f.seq between p_from and p_to order by (f.event).event_id desc limit 1)
    );
$$;

select is(
    pg_temp.fold_run(3, 11, pg_temp.fold_seq(-1, 2, '{}')),
    pg_temp.fold_seq(-1, 11, '{}'),
    'a run of iteration events folds as they fold one by one'
);
select is(
    pg_temp.fold_run(3, 11, pg_temp.fold_seq(-1, 2, '{}')) -> 'loop' -> 'w',
    '{"loop_id": 7, "total": 3, "done": 1, "failed": 1, "completed": false}'::jsonb,
    'the plain loop counts its call.done and command.failed, not another loop''s'
);
select is(
    pg_temp.fold_run(3, 11, pg_temp.fold_seq(-1, 2, '{}')) -> 'fanout' -> 'f',
    '{"total_shards": 2, "done": 1, "failed": 1, "retries": 1, "status": "running"}'::jsonb,
    'the fan-out counts its shard outcomes, a retried failure as a retry'
);
select is(
    pg_temp.fold_run(3, 11, pg_temp.fold_seq(-1, 2, '{}')) -> 'last_event' ->> 'id',
    '11', 'last_event is the highest event id of the run'
);
select is(
    pg_temp.fold_run(3, 4, pg_temp.fold_seq(-1, 2, '{}')),
    pg_temp.fold_seq(-1, 4, '{}'),
    'a run that counts nothing only moves position, events and last_event'
);

select is(
    noetl.fold_content(
        pg_temp.fold_seq(
            -1, 0, '{}'), (
            select f.event from fold_event_fixture as f
            where f.seq = 1
        )
    ) - 'position' - 'events' - 'last_event',
    pg_temp.fold_seq(-1, 1, '{}') - 'position' - 'events' - 'last_event',
    'fold_content is fold_event without the bookkeeping'
);
select is(
    noetl.merge_steps(
        '{"steps": {"a": {"status": "queued"}}, "x": 1}', '{"b": {"status": "done"}}'
    ),
    '{"steps": {"a": {"status": "queued"}, "b": {"status": "done"}}, "x": 1}'::jsonb,
    'merge_steps writes the steps into state.steps'
);
select is(
    noetl.merge_steps('{"x": 1}', '{}'), '{"x": 1}'::jsonb,
    'merge_steps with no steps leaves the state as it is'
);

select ok(
    noetl.is_folded('{"position": [101, 4]}', '101'::xid8, 4)
    and noetl.is_folded('{"position": [101, 4]}', '100'::xid8, 9),
    'is_folded: an event at or before the position is folded'
);
select ok(
    not noetl.is_folded('{"position": [101, 4]}', '101'::xid8, 5),
    'is_folded: a later event is not'
);
select ok(
    not noetl.is_folded('{}', '1'::xid8, 1), 'is_folded: nothing is folded without a position'
);
select ok(
    noetl.is_folded_at('[101, 4]', '101'::xid8, 4)
    and noetl.is_folded_at('[101, 4]', '100'::xid8, 9)
    and not noetl.is_folded_at('[101, 4]', '101'::xid8, 5)
    and not noetl.is_folded_at('[101, 4]', '102'::xid8, 1),
    'is_folded_at: an event at or before the position is folded, a later one is not'
);
select ok(
    not noetl.is_folded_at(null, '1'::xid8, 1),
    'is_folded_at: nothing is folded without a position'
);

select * from finish(); -- noqa: AM04
rollback;
