-- Worker protocol v1, the rest of what a worker calls: the cursor loop's claim, a stream's
-- chunks, the capacity reports, the wake-up counts and the store fallbacks have a _v1 name
-- (granted to noetl_worker), and their unversioned names, which workers of the previous
-- release call, are thin wrappers with the same arguments and result that answer alike.
begin;
select plan(20);
set local client_min_messages = warning;

create temporary table compat_pair as
select
    v.name,
    v.name || '_v1' as versioned
from unnest(array[
    'claim_commands', 'finish_and_claim', 'register_worker', 'worker_heartbeat',
    'stop_worker', 'reap_stale_claims', 'reap_orphan_claims', 'reap_earlier_process',
    'finish_cursor_claim', 'record_partial', 'stream_chunks', 'report_worker',
    'apply_worker_reports', 'take_wake_counts', 'record_store_fallbacks',
    'describe_commands'
]) as v (name);

create function pg_temp.signature(p_name text) returns text
language sql as $$
    select string_agg(
        pg_get_function_identity_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid),
        '; '
    )
    from pg_proc as p
    where p.pronamespace = 'noetl'::regnamespace and p.proname = p_name;
$$;

select is(
    (
        select array_agg(p.name order by p.name) from compat_pair as p
        where
            pg_temp.signature(p.name) is distinct from pg_temp.signature(p.versioned)
            or pg_temp.signature(p.name) is null
    ),
    null, 'every unversioned worker function has its _v1 twin''s arguments and result'
);
select is(
    (
        select array_agg(p.name order by p.name)
        from compat_pair as p
        inner join pg_proc as f
            on f.pronamespace = 'noetl'::regnamespace and p.name = f.proname
        where f.prosrc not like '%noetl.' || p.versioned || '(%'
    ),
    null, 'and is a wrapper that calls it'
);
select is(
    (
        select array_agg(p.versioned order by p.versioned)
        from compat_pair as p
        inner join pg_proc as f
            on f.pronamespace = 'noetl'::regnamespace and p.versioned = f.proname
        where
            exists (
                select 1 from pg_roles as r
                where r.rolname = 'noetl_worker'
            )
            and not has_function_privilege('noetl_worker', f.oid, 'execute')
    ),
    null, 'noetl_worker may call every _v1 function'
);
select is(
    (
        select array_agg(q.name order by q.name)
        from
            unnest(array[
                'finish_cursor_claim_v1', 'record_partial_v1', 'stream_chunks_v1',
                'report_worker_v1', 'apply_worker_reports_v1', 'take_wake_counts_v1',
                'record_store_fallbacks_v1'
            ]) as q (name)
        where to_regproc('noetl.' || q.name) is null
    ),
    null, 'the new _v1 functions exist'
);

select * from noetl.register_playbook('t/compat', 'yaml', '{"entry_step": "a", "workflow": [
  {"step": "a", "plan": {"route_mode": "none"}}
]}'::jsonb);
create temporary table compat_run as
select noetl.start_execution('t/compat') as execution_id;
create temporary table compat_cmd as
select c.command_id
from noetl.command as c, compat_run as r
where c.execution_id = r.execution_id;

-- a stream's chunk for a command nobody holds: stale both ways
select is(
    (
        select noetl.record_partial_v1(
            command_id, 1, null, 0, false, 0, '[]', '[]', '[]'
        ) from compat_cmd
    ),
    'stale', 'record_partial_v1 of a command not claimed is stale'
);
select is(
    (
        select noetl.record_partial(command_id, 1, null, 0, false, 0, '[]', '[]', '[]')
        from compat_cmd
    ),
    'stale', 'record_partial answers alike'
);
select is(
    (select noetl.stream_chunks_v1(command_id, 1) from compat_cmd), '{}'::integer[],
    'stream_chunks_v1: no chunk recorded'
);
select is(
    (select noetl.stream_chunks(command_id, 1) from compat_cmd), '{}'::integer[],
    'stream_chunks answers alike'
);

-- a claim's payload
select is(
    (
        select (d.step_name, d.kind, d.context ->> 'execution_id')::text
        from noetl.describe_commands_v1((select array_agg(command_id) from compat_cmd)) as d
    ),
    (select ('a', 'noop', execution_id)::text from compat_run),
    'describe_commands_v1 describes the command with its context'
);
select is(
    (
        select array_agg(d::text)
        from noetl.describe_commands((select array_agg(command_id) from compat_cmd)) as d
    ),
    (
        select array_agg(d::text)
        from noetl.describe_commands_v1((select array_agg(command_id) from compat_cmd)) as d
    ),
    'describe_commands answers alike'
);

-- a cursor claim for a command that is no claim command: refused both ways
select throws_ok(
    $$select * from noetl.finish_cursor_claim_v1(
        'w', (select command_id from compat_cmd), 1, 1, '[]')$$,
    '22023', null, 'finish_cursor_claim_v1 refuses a command that is no cursor claim'
);
select throws_ok(
    $$select * from noetl.finish_cursor_claim(
        'w', (select command_id from compat_cmd), 1, 1, '[]')$$,
    '22023', null, 'finish_cursor_claim refuses it alike'
);

-- capacity reports: the wrapper applies a newer report, neither applies an older one
select ok(
    noetl.report_worker_v1('{"worker_id": "cw", "slots": 2, "available_slots": 1,
        "sent_at": "2020-01-01T00:00:02Z"}'),
    'report_worker_v1 registers a worker'
);
select ok(
    noetl.report_worker('{"worker_id": "cw", "slots": 2, "available_slots": 2,
        "sent_at": "2020-01-01T00:00:03Z"}'),
    'report_worker applies a newer report'
);
select is(
    noetl.apply_worker_reports_v1('[{"worker_id": "cw", "slots": 2,
        "sent_at": "2020-01-01T00:00:01Z"}]'),
    0, 'apply_worker_reports_v1 skips an older report'
);
select is(
    noetl.apply_worker_reports('[{"worker_id": "cw", "slots": 2,
        "sent_at": "2020-01-01T00:00:01Z"}]', 'nats'),
    0, 'apply_worker_reports skips it alike'
);
select is(
    (
        select w.available_slots from noetl.worker as w
        where w.worker_id = 'cw'
    ), 2,
    'the newest report is the one kept'
);

-- wake-up counts and store fallbacks
select set_config('noetl.wakeup', 'nats', true) as wakeup;
select noetl.notify_queue('noop', 2);
select is(noetl.take_wake_counts(), '{"noop": 2}'::jsonb, 'take_wake_counts hands them out');
select is(noetl.take_wake_counts_v1(), '{}'::jsonb, 'and take_wake_counts_v1 finds them taken');
select set_config('noetl.wakeup', '', true) as wakeup;
select is(
    noetl.record_store_fallbacks_v1('[]') + noetl.record_store_fallbacks(null), 0,
    'record_store_fallbacks_v1 and record_store_fallbacks of nothing write nothing'
);

select * from finish();
rollback;
