-- Worker protocol v1: the versioned worker API (claim_commands_v1, finish_and_claim_v1,
-- the registry and reaper calls, complete_command_v1 / fail_command_v1), the one row type
-- for claims (noetl.claimed_command), the one reap body (reap_commands), and the
-- unversioned wrappers older workers call.
begin;
select plan(23);
set local client_min_messages = warning;

select * from noetl.register_playbook('t/v1', 'yaml', '{"entry_step": "a", "workflow": [
  {"step": "a", "plan": {"route_mode": "none"}}
]}'::jsonb);

-- one row type for every claim
select is(
    (
        select array_agg(distinct p.prorettype::regtype::text)
        from pg_proc as p
        where
            p.pronamespace = 'noetl'::regnamespace
            and p.proretset
            and p.proname in (
                'claim_commands', 'claim_commands_v1', 'finish_and_claim',
                'finish_and_claim_v1', 'describe_commands', 'describe_commands_v1'
            )
    ),
    array['noetl.claimed_command'],
    'claims, finish-and-claim and describe_commands return noetl.claimed_command'
);

-- registry
select noetl.register_worker_v1('v1w', 'h', 1, 2, null);
select is(
    (
        select w.slots from noetl.worker as w
        where w.worker_id = 'v1w'
    ),
    2,
    'register_worker_v1 adds the worker'
);
select ok(noetl.worker_heartbeat_v1('v1w'), 'worker_heartbeat_v1 of a live worker');
select ok(not noetl.worker_heartbeat_v1('nobody'), 'worker_heartbeat_v1 of an unknown one');

-- claim, then complete or fail with the claim generation required
select noetl.start_execution('t/v1');
create temporary table v1_claim as
select * from noetl.claim_commands_v1('v1w', null, 1);
select is(
    (select count(*)::integer from v1_claim), 1, 'claim_commands_v1 claims one command'
);
select throws_ok(
    $$select * from noetl.complete_command_v1((select command_id from v1_claim), 1, null)$$,
    '22023', null, 'complete_command_v1 without a claim generation is refused'
);
select is(
    (
        select outcome from noetl.complete_command_v1(
            (select command_id from v1_claim), 1, (select claim_gen from v1_claim) + 1, '{}'
        )
    ),
    'stale', 'complete_command_v1 under another claim generation is stale'
);
select is(
    (
        select outcome from noetl.complete_command_v1(
            (select command_id from v1_claim), 1, (select claim_gen from v1_claim),
            '{"n": 1}'
        )
    ),
    'ok', 'complete_command_v1 under its claim completes'
);

select noetl.start_execution('t/v1');
create temporary table v1_fail as
select * from noetl.claim_commands('v1w', null, 1);
select throws_ok(
    $$select * from noetl.fail_command_v1((select command_id from v1_fail), 1, null, 'x')$$,
    '22023', null, 'fail_command_v1 without a claim generation is refused'
);
select is(
    (
        select outcome from noetl.fail_command_v1(
            (select command_id from v1_fail), 1, (select claim_gen from v1_fail), 'boom'
        )
    ),
    'failed', 'fail_command_v1 under its claim fails the command (the wrapper claimed it)'
);

-- finish_and_claim_v1: one outcome in, the next claim out
select noetl.start_execution('t/v1');
select noetl.start_execution('t/v1');
create temporary table v1_batch as
select * from noetl.claim_commands_v1('v1w', null, 1);
create temporary table v1_next as
select * from noetl.finish_and_claim_v1(
    'v1w',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', (select command_id from v1_batch), 'attempt', 1,
        'claim', (select claim_gen from v1_batch), 'result', '{}'::jsonb
    )),
    null, 1
);
select is(
    (
        select c.status
        from noetl.command as c
        inner join v1_batch as b on c.command_id = b.command_id
    ),
    'done', 'finish_and_claim_v1 applies the outcome'
);
select is(
    (select count(*)::integer from v1_next), 1, 'and claims the next command'
);

-- the reaper calls, all through reap_commands
select is(
    noetl.reap_orphan_claims_v1('v1w', '{}', 0), 1,
    'reap_orphan_claims_v1 takes back a claim no slot holds'
);
select is(
    (select count(*)::integer from noetl.claim_commands_v1('v1w', null, 1)), 1,
    'claimed again'
);
select is(
    noetl.reap_earlier_process_v1('v1w'), 1,
    'reap_earlier_process_v1 takes back what an earlier process left'
);
create temporary table v1_stop as
select * from noetl.claim_commands_v1('v1w', null, 1);
select is(noetl.stop_worker_v1('v1w'), 1, 'stop_worker_v1 releases its claim');

create temporary table v1_reap as
select * from noetl.claim_commands_v1('v1-other', null, 1);
select is(
    noetl.reap_commands(
        array[(select command_id from v1_reap)], array[(select claim_gen from v1_reap) + 1],
        array['test'], 5, true
    ),
    0, 'reap_commands leaves a claim held under another generation'
);
select is(
    noetl.reap_commands(
        array[(select command_id from v1_reap)], array[(select claim_gen from v1_reap)],
        array['test'], 5, true
    ),
    1, 'reap_commands takes back a claim under the generation it judged'
);
select is(noetl.reap_commands(null, null, null, 5, true), 0, 'reap_commands of nothing');

select noetl.claim_commands_v1('v1-silent', null, 1);
select set_config('noetl.clock', (now() + interval '1 hour')::text, true) as clock;
select is(
    noetl.reap_stale_claims_v1(60),
    (
        select count(*)::integer from noetl.command
        where status = 'claimed'
    ),
    'reap_stale_claims_v1 takes back every claim silent for longer than the timeout'
);
select is(
    noetl.reap_stale_claims(60), 0, 'the unversioned wrapper calls it too (nothing left)'
);
select set_config('noetl.clock', '', true) as clock;

-- the projector's leases run on the engine's clock: an hour later a silent owner's
-- shards are free for another
select set_config(
    'test.shards', (select count(*)::text from noetl.claim_projection_shards('p-a', 30)), true
) as shards;
select ok(current_setting('test.shards')::integer > 0, 'p-a holds every shard');
select set_config('noetl.clock', (now() + interval '1 hour')::text, true) as clock;
select is(
    (select count(*)::text from noetl.claim_projection_shards('p-b', 30)),
    current_setting('test.shards'),
    'with the clock an hour on, p-a is gone and p-b takes its shards'
);
select set_config('noetl.clock', '', true) as clock;

select * from finish();
rollback;
