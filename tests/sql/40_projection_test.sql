-- Projection: fold, rebuild, leases, checkpoints, lag, reshard (sql/functions/projection.sql,
-- sql/functions/projector.sql). Events get an explicit old tx_id ('3'::xid8: finished long
-- ago) so this one transaction can fold them; events it writes itself (default tx_id, still
-- running) must not be folded.
begin;
select plan(14);

insert into noetl.catalog (catalog_id, path, version, content, spec)
overriding system value values (900, 'test/projection', 1, '', '{}');
insert into noetl.execution (execution_id, catalog_id, path, version)
values (9001, 900, 'test/projection', 1);

insert into noetl.event (
    execution_id, event_id, event_type, node_name, command_id, loop_id, iter_index,
    attempt, meta, error, tx_id
)
values
(9001, 1, 'playbook.started', null, null, null, null, null, null, null, '3'),
(9001, 2, 'command.issued', 'a', 10, null, null, 1, '{"kind": "python"}', null, '3'),
(9001, 3, 'command.claimed', 'a', 10, null, null, 1, null, null, '3'),
(9001, 4, 'call.error', 'a', 10, null, null, 1, null, 'boom', '3'),
(9001, 5, 'command.retried', 'a', 10, null, null, 2, null, null, '3'),
(9001, 6, 'command.claimed', 'a', 10, null, null, 2, null, null, '3'),
(9001, 7, 'call.done', 'a', 10, null, null, 2, null, null, '3'),
(9001, 8, 'command.issued', 'a', 11, null, null, 1, '{"kind": "route"}', null, '3'),
(9001, 9, 'command.issued', 'b', 12, null, null, 1, '{"kind": "loop"}', null, '3'),
(
    9001, 10, 'loop.started', 'b', 12, 5, null, 1,
    '{"loop_id": 5, "collection_size": 3}', null, '3'
),
(9001, 11, 'call.done', 'b', 13, 5, 0, 1, null, null, '3'),
(9001, 12, 'command.failed', 'b', 14, 5, 1, 1, null, 'x', '3'),
(9001, 13, 'call.done', 'b', 15, 5, 2, 1, null, null, '3'),
(9001, 14, 'loop.done', 'b', 12, 5, null, null, '{"loop_id": 5}', null, '3'),
(9001, 15, 'playbook.completed', null, null, null, null, null, null, null, '3');
-- The ids above are explicit: record_event below takes the next one from the sequence.
select setval('noetl.event_id_seq', 100);

select is(
    (noetl.rebuild_execution_state(9001) #> '{steps,a}') - 'started' - 'finished',
    '{"status": "done", "attempts": 2, "runs": 1, "command_id": 10}'::jsonb,
    'rebuild: a retried step is done after 2 attempts, without the first attempt''s error; '
    || 'its route command is not the step'
);
select is(
    noetl.rebuild_execution_state(9001) #> '{loop,b}',
    '{"loop_id": 5, "total": 3, "done": 2, "failed": 1, "completed": true}'::jsonb,
    'rebuild: loop counters'
);
select is(
    noetl.rebuild_execution_state(9001) ->> 'status', 'COMPLETED', 'rebuild: status'
);
select is(
    noetl.fold_event(
        noetl.rebuild_execution_state(9001),
        (
            select
                row(
                    e.event_id, e.tx_id, e.event_type, e.node_name, e.command_id, e.loop_id,
                    e.iter_index, e.attempt, e.meta, e.error, e.created_at
                )::noetl.projection_event
            from noetl.event as e
            where e.execution_id = 9001 and e.event_id = 11
        )
    ),
    noetl.rebuild_execution_state(9001),
    'folding an already folded event changes nothing'
);

select is(
    (select folded from noetl.project_shard(9001 % 16, 'nobody', 100)), 0,
    'project_shard without the lease folds nothing'
);
select is(
    (select count(*) from noetl.claim_projection_shards('solo', 30))::integer, 16,
    'a lone projector holds every shard'
);
select is(
    (select folded from noetl.project_shard(9001 % 16, 'solo', 100)), 15,
    'project_shard folds the shard''s committed events'
);
select is(
    (
        select state from noetl.execution_state
        where execution_id = 9001
    ),
    noetl.rebuild_execution_state(9001),
    'live state equals the rebuild'
);
select is(
    (
        select pending_events from noetl.projection_lag
        where shard = 9001 % 16
    ), 0::bigint,
    'projection_lag: nothing pending after the fold'
);

select noetl.record_event(9001, 'command.issued', 'c', 20, 1, null, null, '{"kind": "noop"}');
select is(
    (select folded from noetl.project_shard(9001 % 16, 'solo', 100)), 0,
    'an event of a still running transaction is not folded'
);
select is(
    (
        select pending_events from noetl.projection_lag
        where shard = 9001 % 16
    ), 1::bigint,
    'projection_lag counts it as pending'
);

select is(noetl.set_projection_shard_count(4), 4, 'reshard to 4 shards');
select is(
    (select array_agg(checkpoint_event_id order by shard) from noetl.projection_shard),
    array[0, 0, 0, 0]::bigint[],
    'new shards start from the oldest old checkpoint'
);
select noetl.claim_projection_shards('solo', 30);
select noetl.project_shard(9001 % 4, 'solo', 100);
select is(
    (
        select state from noetl.execution_state
        where execution_id = 9001
    ),
    noetl.rebuild_execution_state(9001),
    'refolding after a reshard leaves the state as it was'
);

select * from finish();
rollback;
