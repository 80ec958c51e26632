-- What a claim carries: noetl.command_context with a step's reads, noetl.command_reads per
-- command kind, and describe_commands sending each group's context once.
begin;
select plan(10);

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "direct", "direct_targets": ["b"],
                "is_join": false, "has_loop": false, "successors": ["b"], "max_attempts": 1,
                "reads": {}, "loop_reads": {}}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 1,
                "reads": {"a": ["small"]}, "loop_reads": {}}},
      {"step": "c", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 1,
                "reads": null, "loop_reads": null}}
    ]}'::jsonb as spec;

select * from noetl.register_playbook('t/context', 'yaml', (select spec from spec_fixture));
select
    set_config('test.execution_id', noetl.start_execution('t/context')::text, true)
        as started;
select noetl.store_step_result(
    current_setting('test.execution_id')::bigint, 'a',
    (
        select c.command_id from noetl.command as c
        where c.execution_id = current_setting('test.execution_id')::bigint
    ),
    jsonb_build_object('small', 1, 'big', repeat('x', 100000))
);

select is(
    (
        select reads from noetl.catalog_step
        where step_name = 'b'
    ),
    '{"a": ["small"]}'::jsonb, 'registration stores the plan''s reads'
);
select is(
    (
        select reads from noetl.catalog_step
        where step_name = 'c'
    ),
    null, 'reads null in the plan (not known) is stored as NULL'
);
select is(
    noetl.command_context(current_setting('test.execution_id')::bigint, '{"a": ["small"]}')
    -> 'results',
    '{"a": {"small": 1}}'::jsonb, 'a key list sends only those keys of the result'
);
select is(
    noetl.command_context(current_setting('test.execution_id')::bigint, '{"a": ["nope"]}')
    -> 'results',
    '{"a": {}}'::jsonb, 'a key the result lacks is absent (the template reports it)'
);
select is(
    noetl.command_context(current_setting('test.execution_id')::bigint, '{}') -> 'results',
    '{}'::jsonb, 'a step that reads no result gets none'
);
select ok(
    octet_length((noetl.command_context(
        current_setting('test.execution_id')::bigint, '{"a": true}'
    ) -> 'results')::text) > 100000,
    'true sends the whole result'
);
select is(
    noetl.command_context(current_setting('test.execution_id')::bigint, null) -> 'results',
    noetl.command_context(current_setting('test.execution_id')::bigint) -> 'results',
    'NULL reads (unknown) sends every result, as the one-argument form'
);
select is(
    noetl.command_reads('route', 'b', '{"a": ["small"]}', '{}'),
    '{"a": ["small"], "b": true}'::jsonb, 'a route command also reads its own result whole'
);
select is(
    noetl.command_reads('loop', 'b', '{"a": true}', '{"a": ["xs"]}'),
    '{"a": ["xs"]}'::jsonb, 'a loop command reads what its collection reads'
);

-- b's command: its claim context holds a.small only.
select noetl.issue_step(
    current_setting('test.execution_id')::bigint,
    (
        select catalog_id from noetl.execution
        where execution_id = current_setting('test.execution_id')::bigint
    ),
    'b', 'test'
);
select is(
    (
        select d.context -> 'results'
        from noetl.claim_commands('w1', null, 10) as d
        where d.step_name = 'b'
    ),
    '{"a": {"small": 1}}'::jsonb, 'a claim carries only what its step reads'
);

select * from finish();  -- noqa: AM04
rollback;
