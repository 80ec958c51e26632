-- The projected state in its own table (migration 0025, sql/functions/projector_round.sql):
-- project_shard writes noetl.execution_state (never the execution row), creates a state
-- row only for an execution that exists, says has_more only for a full batch; an empty
-- shard moves its checkpoint past the other shards' events at once but writes nothing
-- when idle; rebuild_execution_state(store) creates the row it replaces; project_shards
-- folds the shards with events in one round and moves the idle ones together. Events get an
-- old tx_id ('3'::xid8) so this one transaction can fold them.
begin;
select plan(17);

insert into noetl.catalog (catalog_id, path, version, content, spec)
overriding system value values (910, 'test/execution_state', 1, '', '{}');
-- 9101 is in shard 13; 9117 (also shard 13) has events but no execution row.
insert into noetl.execution (execution_id, catalog_id, path, version)
values (9101, 910, 'test/execution_state', 1);

insert into noetl.event (
    execution_id, event_id, event_type, node_name, command_id, attempt, meta, tx_id
)
values
(9101, 1, 'playbook.started', null, null, null, null, '3'),
(9101, 2, 'command.issued', 'a', 10, 1, '{"kind": "python"}', '3'),
(9101, 3, 'command.claimed', 'a', 10, 1, null, '3'),
(9117, 4, 'playbook.started', null, null, null, null, '3'),
(9101, 5, 'call.done', 'a', 10, 1, null, '3');

select is(
    (
        select count(*)::integer from information_schema.columns
        where table_schema = 'noetl' and table_name = 'execution' and column_name = 'state'
    ),
    0,
    'the execution row holds no projected state'
);

select noetl.claim_projection_shards('solo', 30);
-- Both shards folded a moment ago: the once-a-second move of an idle checkpoint is not due.
update noetl.projection_shard set folded_at = noetl.now(), checkpoint_tx_id = '2'
where shard = 14;
update noetl.projection_shard set folded_at = noetl.now(), checkpoint_tx_id = '4'
where shard = 15;

select is(
    (select (folded, has_more)::text from noetl.project_shard(14, 'solo', 100)),
    '(0,f)',
    'an empty shard folds nothing'
);
select ok(
    (
        select checkpoint_tx_id > '3' from noetl.projection_shard
        where shard = 14
    ),
    'an empty shard moves its checkpoint past the other shards'' events at once'
);
select is(
    (select folded from noetl.project_shard(15, 'solo', 100)), 0,
    'an idle shard folds nothing'
);
select is(
    (
        select checkpoint_tx_id from noetl.projection_shard
        where shard = 15
    ), '4'::xid8,
    'an idle shard folded a moment ago keeps its checkpoint (no write per poll)'
);

select is(
    (select (folded, executions, has_more)::text from noetl.project_shard(13, 'solo', 4)),
    '(4,1,t)',
    'a full batch says has_more'
);
select is(
    (select (folded, executions, has_more)::text from noetl.project_shard(13, 'solo', 4)),
    '(1,1,f)',
    'the rest of the shard, then no more'
);
select is(
    (
        select state from noetl.execution_state
        where execution_id = 9101
    ),
    noetl.rebuild_execution_state(9101),
    'the folded state is in execution_state and equals the rebuild'
);
select is(
    (
        select count(*)::integer from noetl.execution_state
        where execution_id = 9117
    ),
    0,
    'no state row for events of an execution that does not exist'
);

delete from noetl.execution_state
where execution_id = 9101;
select is(
    noetl.rebuild_execution_state(9101, true) ->> 'status', 'RUNNING',
    'rebuild with store returns the state'
);
select is(
    (
        select state from noetl.execution_state
        where execution_id = 9101
    ),
    noetl.rebuild_execution_state(9101),
    'rebuild with store creates the missing state row'
);

-- One round over every shard, from the start again.
delete from noetl.execution_state;
update noetl.projection_shard
set checkpoint_tx_id = '0', checkpoint_event_id = 0, folded_at = noetl.now();
update noetl.projection_shard set lease_expires_at = noetl.now() - interval '1 second'
where shard = 0;
create temporary table round_one as
select * from noetl.project_shards('solo', 100);

select is(
    (select array_agg(r.shard order by r.shard) from round_one as r),
    array(select g from generate_series(1, 15) as g),
    'project_shards: a row per held shard, none for a shard whose lease ran out'
);
select is(
    (
        select array_agg((r.shard, r.folded, r.executions)::text) from round_one as r
        where r.folded > 0
    ),
    array['(13,5,1)'],
    'project_shards folds the shard with events'
);
select is(
    (
        select state from noetl.execution_state
        where execution_id = 9101
    ),
    noetl.rebuild_execution_state(9101),
    'project_shards: the folded state equals the rebuild'
);
select is(
    (
        select (count(*), bool_and(idle.checkpoint_tx_id > '3'))::text from (
            select distinct
                s.checkpoint_tx_id,
                s.checkpoint_event_id
            from noetl.projection_shard as s
            where s.shard between 1 and 15 and s.shard <> 13
        ) as idle
    ),
    '(1,t)',
    'the idle shards move past the events at once, to one checkpoint'
);
select is(
    (
        select checkpoint_tx_id from noetl.projection_shard
        where shard = 0
    ), '0'::xid8,
    'a shard whose lease ran out is not moved'
);
select is(
    (select sum(r.folded)::integer from noetl.project_shards('solo', 100) as r),
    0,
    'the next round folds nothing'
);

select * from finish(); -- noqa: AM04
rollback;
