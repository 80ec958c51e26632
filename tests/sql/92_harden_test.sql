-- The hardened worker protocol: credentials bound to a held command
-- (command_credential_v1).
begin;
select plan(17);
set local client_min_messages = warning;

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workload": {"api": "cred_a"}, "workflow": [
      {"step": "a", "tool": {"kind": "http", "auth": "{{ api }}"},
       "plan": {"kind": "http", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [],
                "max_attempts": 1}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/harden', 'yaml', (select spec from spec_fixture));
select noetl.put_credential('cred_a', 'http', '{"url": "a"}', null, null);
select noetl.put_credential('cred_b', 'http', '{"url": "b"}', null, null);

-- command_credential_v1
select set_config('test.e1', noetl.start_execution('t/harden')::text, true) as e1;
create temporary table claim_a as
select * from noetl.claim_commands('w1', null, 1);
select set_config(
    'test.e2', noetl.start_execution('t/harden', '{"api": "cred_b"}')::text, true
) as e2;
create temporary table claim_b as
select * from noetl.claim_commands('w2', null, 1);
select is(
    (
        select public_data from noetl.command_credential_v1(
            'w1', (select command_id from claim_a), (select claim_gen from claim_a), 'cred_a'
        )
    ),
    '{"url": "a"}'::jsonb, 'a held command reads the credential its workload names'
);
select throws_like(
    $$select * from noetl.command_credential_v1(
        'w1', (select command_id from claim_a), (select claim_gen from claim_a), 'cred_b')$$,
    '%not referenced by step "a"%',
    'a credential only another execution names is refused'
);
select throws_like(
    $$select * from noetl.command_credential_v1(
        'w1', (select command_id from claim_b), (select claim_gen from claim_b), 'cred_b')$$,
    '%is not held by worker w1%', 'another worker''s command is refused'
);
select is(
    (
        select public_data from noetl.command_credential_v1(
            'w2', (select command_id from claim_b), (select claim_gen from claim_b), 'cred_b'
        )
    ),
    '{"url": "b"}'::jsonb, 'the payload names the credential of execution 2'
);
select noetl.reap_command((select command_id from claim_a), 'test');
select throws_like(
    $$select * from noetl.command_credential_v1(
        'w1', (select command_id from claim_a), (select claim_gen from claim_a), 'cred_a')$$,
    '%is not held by worker w1 under claim%', 'a reaped claim reads nothing'
);
select throws_ok(
    $$select * from noetl.command_credential_v1(
        'w2', (select command_id from claim_b), (select claim_gen from claim_b), 'nope')$$,
    '42501', null, 'a credential the command does not name is refused before its existence'
);

-- reachable_steps: one or more arcs, cycles included, from several steps at once
select * from noetl.register_playbook('t/graph', 'yaml', '{"entry_step": "a", "workflow": [
  {"step": "a", "plan": {"route_mode": "direct", "direct_targets": ["b"], "successors": ["b"]}},
  {"step": "b", "plan": {"route_mode": "router", "successors": ["c"]}},
  {"step": "c", "plan": {"route_mode": "router", "successors": ["b", "e"]}},
  {"step": "d", "plan": {"route_mode": "direct", "direct_targets": ["e"], "successors": ["e"]}},
  {"step": "e", "plan": {"route_mode": "none"}}
]}'::jsonb);
create temporary table graph as
select catalog_id from noetl.catalog
where path = 't/graph';
select is(
    noetl.reachable_steps((select catalog_id from graph), array['a']),
    array['b', 'c', 'e'], 'a reaches b, c and e through b and c'
);
select is(
    noetl.reachable_steps((select catalog_id from graph), array['b']),
    array['b', 'c', 'e'], 'b reaches itself through the cycle b -> c -> b'
);
select is(
    noetl.reachable_steps((select catalog_id from graph), array['d', 'e']),
    array['e'], 'from several steps: the union (e, a terminal, reaches nothing)'
);
select is(
    noetl.reachable_steps((select catalog_id from graph), array['nope']),
    array[]::text[], 'an unknown step reaches nothing'
);

-- complete_command / fail_command fence by claim generation: a claim reaped and taken
-- again at the same attempt refuses the old claim's late outcome
select * from noetl.register_playbook('t/fence', 'yaml', '{"entry_step": "a", "workflow": [
  {"step": "a", "plan": {"route_mode": "none"}}
]}'::jsonb);
select noetl.start_execution('t/fence');
create temporary table fence_old as
select * from noetl.claim_commands('w-old', null, 1);
select noetl.reap_command((select command_id from fence_old), 'test: worker lost');
create temporary table fence_new as
select * from noetl.claim_commands('w-new', null, 1);
select is(
    (select array[attempt, claim_gen] from fence_new),
    (select array[attempt, claim_gen + 1] from fence_old),
    'claimed again at the same attempt under the next claim generation'
);
select is(
    (
        select outcome from noetl.complete_command(
            (select command_id from fence_old), 1, '{"late": true}', null, null, null,
            (select claim_gen from fence_old)
        )
    ),
    'stale', 'complete_command of the old claim is refused'
);
select is(
    (
        select outcome from noetl.fail_command(
            (select command_id from fence_old), 1, 'late', null, null, null,
            (select claim_gen from fence_old)
        )
    ),
    'stale', 'fail_command of the old claim is refused'
);
select is(
    (
        select array_agg(e.meta ->> 'op' order by e.event_id)
        from noetl.event as e
        inner join fence_old as o on e.command_id = o.command_id
        cross join fence_new as n
        where
            e.event_type = 'command.outcome_refused'
            and (e.meta ->> 'claim')::integer = o.claim_gen
            and (e.meta ->> 'current_claim')::integer = n.claim_gen
    ),
    array['done', 'fail'], 'each refusal leaves command.outcome_refused naming the old claim'
);
select is(
    (
        select array[c.status, c.claimed_by]
        from noetl.command as c
        inner join fence_old as o on c.command_id = o.command_id
    ),
    array['claimed', 'w-new'], 'the refused outcomes changed nothing: w-new still holds it'
);
select is(
    (
        select count(*)::integer
        from noetl.event as e
        inner join fence_old as o on e.command_id = o.command_id
        where e.event_type in ('call.done', 'call.error')
    ),
    0, 'no call.done or call.error was recorded for the old claim'
);
select is(
    (
        select outcome from noetl.complete_command(
            (select command_id from fence_new), 1, '{"ok": true}', null, null, null,
            (select claim_gen from fence_new)
        )
    ),
    'ok', 'the current claim completes'
);

select * from finish();
rollback;
