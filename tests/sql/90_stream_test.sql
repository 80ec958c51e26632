-- Streamed steps (sql/functions/stream.sql): record_partial_v1 writes one call.partial per
-- (command, attempt, chunk_index) and one command per chosen partial target, refuses a
-- lost claim and a target the plan does not name; stream_chunks_v1 lists what was recorded.
begin;
select plan(12);

select lives_ok(
    $$select * from noetl.register_playbook('tap/stream', '', '{
        "workflow": [
            {"step": "scan", "tool": {"kind": "postgres"},
             "plan": {"kind": "postgres", "route_mode": "none", "direct_targets": [],
                      "is_join": false, "has_loop": false, "reaches": ["each"],
                      "max_attempts": 1, "partial_targets": ["each"]}},
            {"step": "each", "tool": {"kind": "noop"},
             "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                      "is_join": false, "has_loop": false, "reaches": [],
                      "max_attempts": 2}}
        ]}'::jsonb)$$,
    'a playbook with a streamed step registers'
);

create temporary table t_stream as
select noetl.start_execution('tap/stream', '{}') as execution_id;
-- The entry step claimed as a worker would: claim generation 1.
select noetl.claim_command_ids('w1', array['postgres'], 1);
create temporary table t_scan as
select
    c.command_id,
    c.claim_gen
from noetl.command as c, t_stream as t
where c.execution_id = t.execution_id and c.step_name = 'scan';

select is(
    (select claim_gen from t_scan), 1, 'the stream is claimed once'
);
select is(
    (
        select noetl.record_partial_v1(
            s.command_id, 1, s.claim_gen, 0, true, 2, '["id"]', '[{"id": 1}, {"id": 2}]',
            '[{"step": "each", "set": {"seen": 0}}]'
        ) from t_scan as s
    ),
    'ok', 'the first chunk is recorded'
);
select is(
    (
        select noetl.record_partial_v1(
            s.command_id, 1, s.claim_gen, 0, true, 2, '["id"]', '[]',
            '[{"step": "each", "set": null}]'
        ) from t_scan as s
    ),
    'duplicate', 'the same chunk of the same attempt is not recorded twice'
);
select is(
    (
        select noetl.record_partial_v1(
            s.command_id, 1, s.claim_gen + 1, 1, false, 1, '["id"]', '[]', '[]'
        ) from t_scan as s
    ),
    'stale', 'a chunk from a claim that is no longer held is refused'
);
select throws_ok(
    $$select noetl.record_partial_v1(s.command_id, 1, s.claim_gen, 1, false, 1, '["id"]', '[]',
        '[{"step": "scan"}]') from t_scan as s$$,
    '22023', 'step "scan" has no on: call.partial arc to "scan"',
    'a target the plan does not name is refused'
);
select is(
    (
        select noetl.record_partial_v1(
            s.command_id, 1, null, 1, false, 1, '["id"]', '[{"id": 3}]',
            '[{"step": "each", "set": null}]'
        ) from t_scan as s
    ),
    'ok', 'the last chunk is recorded'
);
select is(
    (select noetl.stream_chunks_v1(s.command_id, 1) from t_scan as s),
    array[0, 1], 'stream_chunks lists the recorded chunks of the attempt'
);
select is(
    (
        select
            array_agg(
                (ev.meta ->> 'chunk_index') || ':' || (ev.meta ->> 'has_more')
                order by ev.event_id
            )
        from noetl.event as ev, t_scan as s
        where ev.command_id = s.command_id and ev.event_type = 'call.partial'
    ),
    array['0:true', '1:false'], 'one call.partial event per chunk, with its meta'
);
select is(
    (
        select array_agg(c.command_key order by c.command_id)
        from noetl.command as c, t_stream as t
        where c.execution_id = t.execution_id and c.step_name = 'each'
    ),
    array[
        'each@' || (select command_id from t_scan) || '/chunk/0',
        'each@' || (select command_id from t_scan) || '/chunk/1'
    ],
    'one command per chunk, keyed by the source command and the chunk index'
);
select is(
    (
        select c.input -> 'chunk' -> 'rows'
        from noetl.command as c
        where c.command_key = 'each@' || (select s.command_id from t_scan as s) || '/chunk/0'
    ),
    '[{"id": 1}, {"id": 2}]'::jsonb, 'a chunk command carries its chunk'
);
select noetl.cancel_execution((select execution_id from t_stream), 'test');
select is(
    (
        select noetl.record_partial_v1(
            s.command_id, 1, null, 2, false, 0, '[]', '[]', '[]'
        ) from t_scan as s
    ),
    'stale', 'nothing is recorded for a cancelled execution'
);

select * from finish();
rollback;
