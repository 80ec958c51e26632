-- Direct tests of the result store's SQL API (sql/functions/result_store.sql): refs
-- (put, replace, get, list, the ref of a value), db-tier blobs in chunks (write, read,
-- delete, the blob id of a URI), the cleanups by execution and by expiry, and the
-- fallback warnings of a worker's outcome. Executions 9851-9853 exist only as ids: the
-- store has no foreign key to noetl.execution.
begin;
select plan(37);

create temporary table blob as
select
    '00000000-0000-0000-0000-000000000001'::uuid as b1,
    '00000000-0000-0000-0000-000000000002'::uuid as b2,
    '00000000-0000-0000-0000-000000000003'::uuid as b3;

-- result_ref_put: a new ref
select results_eq(
    $$select * from noetl.result_ref_put(
        9851, 's1', 'r1', 'fs', 'file:///store/1', 'application/json', 10, 'abc')$$,
    $$values ('noetl://execution/9851/result/s1/r1'::text, null::text, null::text)$$,
    'a new ref returns its URI and nothing replaced'
);
select is(
    (
        select (r.store_tier, r.physical_uri, r.content_type, r.bytes_size, r.sha256)::text
        from noetl.result_ref as r
        where r.ref = 'noetl://execution/9851/result/s1/r1'
    ),
    '(fs,file:///store/1,application/json,10,abc)', 'the ref row holds what was put'
);

-- result_ref_put: replacing an fs ref hands its object back
select results_eq(
    $$select * from noetl.result_ref_put(
        9851, 's1', 'r1', 's3', 's3://bucket/1', 'application/json', 20, 'def', 'gzip')$$,
    $$values ('noetl://execution/9851/result/s1/r1'::text, 'fs'::text, 'file:///store/1'::text)$$,
    'replacing a ref returns the replaced object''s tier and URI for the caller to delete'
);
select is(
    (
        select array_agg((r.store_tier, r.physical_uri, r.bytes_size, r.compression)::text)
        from noetl.result_ref as r
        where r.ref = 'noetl://execution/9851/result/s1/r1'
    ),
    array['(s3,s3://bucket/1,20,gzip)'], 'one row, now pointing at the new object'
);

-- db-tier blobs
select is(
    noetl.result_blob_id('db://result_blob/9851/00000000-0000-0000-0000-000000000001'),
    '00000000-0000-0000-0000-000000000001'::uuid, 'result_blob_id reads the blob id of a URI'
);
select throws_ok(
    $$select noetl.result_blob_id('db://result_blob/9851/not-a-uuid')$$,
    '22P02', null, 'a URI without a uuid is refused'
);
select noetl.result_blob_write_chunk(9851, blob.b1, 0, '\x0102'::bytea) from blob;
select noetl.result_blob_write_chunk(9851, blob.b1, 1, '\x03'::bytea) from blob;
select is(
    (
        select
            array[
                noetl.result_blob_read_chunk(9851, blob.b1, 0),
                noetl.result_blob_read_chunk(9851, blob.b1, 1)
            ]
        from blob
    ),
    array['\x0102'::bytea, '\x03'::bytea], 'chunks read back as written'
);
select is(
    (select noetl.result_blob_read_chunk(9851, blob.b1, 2) from blob), null::bytea,
    'past the last chunk: NULL'
);
select is(
    (select noetl.result_blob_read_chunk(9852, blob.b1, 0) from blob), null::bytea,
    'a blob id of another execution: NULL'
);
select throws_ok(
    $$select noetl.result_blob_write_chunk(
        9851, '00000000-0000-0000-0000-000000000001', 0, '\x09')$$,
    '23505', null, 'a chunk cannot be written twice'
);

-- result_ref_put: replacing a db ref deletes its blob here
select
    noetl.result_ref_put(
        9851, 's1', 'r2', 'db', 'db://result_blob/9851/' || blob.b1, 'application/json', 3, 'x'
    )
from blob;
select noetl.result_blob_write_chunk(9851, blob.b2, 0, '\x04'::bytea) from blob;
select is(
    (
        select (p.replaced_store_tier, p.replaced_physical_uri)::text
        from blob, noetl.result_ref_put(
            9851, 's1', 'r2', 'db', 'db://result_blob/9851/' || blob.b2, 'application/json', 1, 'y'
        ) as p
    ),
    '(,)', 'replacing a db ref hands back nothing to delete'
);
select is(
    (
        select array_agg(distinct b.blob_id) from noetl.result_blob as b
        where b.execution_id = 9851
    ),
    (select array[blob.b2] from blob), 'the replaced ref''s blob is deleted with it'
);

-- result_ref_put: bad input
select throws_ok(
    $$select * from noetl.result_ref_put(9851, '', 'r', 'fs', 'u', 'c', 1, 's')$$,
    '22023', null, 'an empty step name is refused'
);
select throws_ok(
    $$select * from noetl.result_ref_put(9851, 's', 'a/b', 'fs', 'u', 'c', 1, 's')$$,
    '22023', null, 'a name with "/" is refused'
);
select throws_ok(
    $$select * from noetl.result_ref_put(9851, 's', 'r', 'tape', 'u', 'c', 1, 's')$$,
    '23514', null, 'an unknown tier is refused'
);

-- result_blob_delete
select noetl.result_blob_write_chunk(9851, blob.b3, 0, '\x05'::bytea) from blob;
select noetl.result_blob_write_chunk(9851, blob.b3, 1, '\x06'::bytea) from blob;
select is(
    (select noetl.result_blob_delete(9851, blob.b3) from blob), 2::bigint,
    'result_blob_delete returns how many chunks it deleted'
);
select is(
    (select noetl.result_blob_delete(9851, blob.b3) from blob), 0::bigint,
    'deleting it again deletes nothing'
);
select is(
    (select noetl.result_blob_read_chunk(9851, blob.b2, 0) from blob), '\x04'::bytea,
    'another blob is untouched'
);

-- result_ref_get and result_ref_list
select noetl.result_ref_put(9852, 's2', 'r1', 'pvc', 'file:///pvc/1', 'text/plain', 5, 'p');
select results_eq(
    $$select r.execution_id, r.step_name, r.result_name, r.store_tier, r.content_type
      from noetl.result_ref_get('noetl://execution/9852/result/s2/r1') as r$$,
    $$values (9852::bigint, 's2'::text, 'r1'::text, 'pvc'::text, 'text/plain'::text)$$,
    'result_ref_get returns the ref row by its URI'
);
select is(
    (select count(*)::integer from noetl.result_ref_get('noetl://execution/9852/result/s2/no')),
    0, 'an unknown ref: no row'
);
select is(
    (select array_agg(r.result_name) from noetl.result_ref_list(9851) as r),
    array['r1', 'r2'], 'result_ref_list lists one execution''s refs, oldest first'
);
select is(
    (select count(*)::integer from noetl.result_ref_list(424242)), 0,
    'an execution without refs lists nothing'
);

-- cleanup_execution_results
select noetl.result_blob_write_chunk(9851, blob.b3, 0, '\x07'::bytea) from blob;
select results_eq(
    $$select * from noetl.cleanup_execution_results(9851) order by 1$$,
    $$values ('db'::text, 'db://result_blob/9851/00000000-0000-0000-0000-000000000002'::text),
             ('s3', 's3://bucket/1')$$,
    'cleanup_execution_results returns every deleted ref''s tier and URI'
);
select is(
    (
        select (
            (
                select count(*) from noetl.result_ref as r
                where r.execution_id = 9851
            ),
            (
                select count(*) from noetl.result_blob as b
                where b.execution_id = 9851
            )
        )::text
    ),
    '(0,0)', 'its refs and all its blobs are gone, a blob without a ref too'
);
select is(
    (select count(*)::integer from noetl.cleanup_execution_results(9851)), 0,
    'a second cleanup returns nothing'
);
select is(
    (select count(*)::integer from noetl.result_ref_list(9852)), 1,
    'another execution''s refs stay'
);

-- cleanup_expired_results
select
    noetl.result_ref_put(
        9853, 's', 'e1', 'db', 'db://result_blob/9853/' || blob.b1, 'c', 1, 'h', null,
        now() - interval '2 hours'
    )
from blob;
select noetl.result_blob_write_chunk(9853, blob.b1, 0, '\x08'::bytea) from blob;
select noetl.result_ref_put(
    9853, 's', 'e2', 'fs', 'file:///e2', 'c', 1, 'h', null, now() - interval '1 hour'
);
select noetl.result_ref_put(
    9853, 's', 'e3', 'fs', 'file:///e3', 'c', 1, 'h', null, now() + interval '1 day'
);
select noetl.result_ref_put(9853, 's', 'e4', 'fs', 'file:///e4', 'c', 1, 'h');
select results_eq(
    $$select * from noetl.cleanup_expired_results(1)$$,
    $$values (9853::bigint, 'db'::text,
              'db://result_blob/9853/00000000-0000-0000-0000-000000000001'::text)$$,
    'with limit 1 the ref that expired first goes first'
);
select is(
    (
        select count(*)::integer from noetl.result_blob as b
        where b.execution_id = 9853
    ), 0,
    'its db-tier blob goes with it'
);
select results_eq(
    $$select * from noetl.cleanup_expired_results(10)$$,
    $$values (9853::bigint, 'fs'::text, 'file:///e2'::text)$$,
    'the next call takes the other expired ref'
);
select is(
    (select count(*)::integer from noetl.cleanup_expired_results(10)), 0,
    'nothing else has expired'
);
select set_config('noetl.clock', (now() + interval '2 days')::text, true) as clock;
select is(
    (select array_agg(c.physical_uri) from noetl.cleanup_expired_results(10) as c),
    array['file:///e3'], 'expiry follows the engine clock; a ref without expiry never expires'
);
select set_config('noetl.clock', '', true) as clock;

-- result_ref_of
select is(
    noetl.result_ref_of(
        '{"result_ref": "noetl://execution/1/result/s/r", "store_tier": "db", "sha256": "x",
          "bytes_size": 1}'
    ),
    'noetl://execution/1/result/s/r', 'a ref dict gives its URI'
);
select is(
    (select array[
        noetl.result_ref_of('{"result_ref": "noetl://execution/1/result/s/r", "sha256": "x"}'),
        noetl.result_ref_of(
            '{"result_ref": "http://elsewhere", "store_tier": "db", "sha256": "x"}'
        ),
        noetl.result_ref_of('"noetl://execution/1/result/s/r"'),
        noetl.result_ref_of(null)
    ]),
    array[null, null, null, null]::text[],
    'a dict missing a key, a foreign URI, a bare string or NULL is no ref'
);

-- record_store_fallbacks
select * from noetl.register_playbook('t/fb', 'yaml', '{"workflow": [
      {"step": "s", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}');
create temporary table fb_run as
select noetl.start_execution('t/fb') as execution_id;
create temporary table fb as
select c.command_id
from noetl.command as c, fb_run
where c.execution_id = fb_run.execution_id;
update noetl.command as c set status = 'claimed', claimed_by = 'w1'
from fb
where c.command_id = fb.command_id;
select is(
    (
        select
            noetl.record_store_fallbacks_v1(jsonb_build_array(
                jsonb_build_object('command_id', fb.command_id, 'attempt', 1, 'fallbacks', '[
                {"tier_from": "s3", "tier_to": "db", "error": "s3 down"},
                {"tier_from": "db", "tier_to": "event", "error": "too big"}]'::jsonb),
                jsonb_build_object('command_id', fb.command_id, 'attempt', 2, 'fallbacks', '[
                {"tier_from": "s3", "tier_to": "db", "error": "stale"}]'::jsonb)
            ))
        from fb
    ),
    2, 'one event per step down of the claimed attempt; a stale attempt writes none'
);
select results_eq(
    $$select e.node_name, e.attempt, e.meta from noetl.event as e, fb
      where e.command_id = fb.command_id and e.event_type = 'result.store.fallback'
      order by e.event_id$$,
    $$values ('s'::text, 1, '{"tier_from": "s3", "tier_to": "db", "error": "s3 down"}'::jsonb),
             ('s', 1, '{"tier_from": "db", "tier_to": "event", "error": "too big"}')$$,
    'result.store.fallback names the step and attempt, with the fallback as meta'
);
update noetl.command as c set status = 'done'
from fb
where c.command_id = fb.command_id;
select is(
    (
        select
            noetl.record_store_fallbacks_v1(jsonb_build_array(jsonb_build_object(
                'command_id', fb.command_id, 'attempt', 1,
                'fallbacks', '[{"tier_from": "s3", "tier_to": "db"}]'::jsonb
            )))
        from fb
    ),
    0, 'a command no longer claimed (the outcome sent again) writes nothing'
);
select is(noetl.record_store_fallbacks_v1(null), 0, 'no fallbacks: nothing');

select * from finish();
rollback;
