-- The reaper: claims of silent, stopped or unregistered workers are taken back at the SAME
-- attempt (a crash spends no attempt), counted as reclaims, and fail as poison past the
-- bound; a late outcome of a taken-back claim is refused by claim generation and leaves a
-- command.outcome_refused event; lost replies go back without counting; route commands and
-- finished executions are handled; cancel_execution stops an execution and its children.
begin;
select plan(47);
-- Refusals of a worker's outcome also raise a NOTICE for the worker's log: not needed here.
set local client_min_messages = warning;

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "router", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": ["b"], "max_attempts": 1}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 1}}
    ]}'::jsonb as spec;

select lives_ok(
    $$select * from noetl.register_playbook('t/reap', 'yaml', (select spec from spec_fixture))$$,
    'playbook registered'
);
select set_config('test.exec', noetl.start_execution('t/reap')::text, true) as started;
select set_config(
    'test.a',
    (
        select command_id::text from noetl.command
        where execution_id = current_setting('test.exec')::bigint and step_name = 'a'
    ),
    true
) as step_a;

select noetl.register_worker('w-dead', 'h', 1, 1, null);
select noetl.register_worker('w-live', 'h', 2, 1, null);
select is(
    (select array_length(noetl.claim_command_ids('w-dead', null, 1), 1)),
    1, 'the dead worker claims step a'
);
select is(
    (
        select claim_gen from noetl.command
        where command_id = current_setting('test.a')::bigint
    ),
    1, 'a claim from the queue bumps the claim generation'
);

-- A fresh heartbeat protects the claim.
select is(noetl.reap_stale_claims(60), 0, 'a live claim is not reaped');
select throws_ok(
    $$select noetl.reap_stale_claims(-1)$$, '22023', null, 'a negative timeout is refused'
);
select throws_ok(
    $$select noetl.reap_stale_claims(60, -1)$$, '22023', null,
    'a negative max_reclaims is refused'
);

update noetl.worker set heartbeat_at = now() - interval '10 minutes'
where worker_id = 'w-dead';
select is(noetl.reap_stale_claims(), 1, 'a claim silent past the default 300 s is reaped');
select results_eq(
    $$select status, attempt, claimed_by, reclaims from noetl.command
      where command_id = current_setting('test.a')::bigint$$,
    $$values ('queued'::text, 1, null::text, 1)$$,
    'max_attempts 1, yet the reaped command is queued again at the SAME attempt, one reclaim'
);
select results_eq(
    $$select attempt, meta ->> 'worker_id', meta ->> 'outcome', (meta ->> 'reclaims')::int
      from noetl.event
      where execution_id = current_setting('test.exec')::bigint
        and event_type = 'command.reaped'$$,
    $$values (1, 'w-dead'::text, 'requeued'::text, 1)$$,
    'command.reaped names the attempt, the worker, what happened and the reclaim count'
);
select is(
    (select outcome from noetl.complete_command(current_setting('test.a')::bigint, 1, '1')),
    'stale', 'a late completion while the command is queued is refused'
);
select results_eq(
    $$select attempt, meta ->> 'status' from noetl.event
      where command_id = current_setting('test.a')::bigint
        and event_type = 'command.outcome_refused'$$,
    $$values (1, 'queued'::text)$$,
    'the refusal leaves command.outcome_refused with the attempt and what the command is now'
);

-- Claimed again by a live worker at the same attempt: the old claim's outcome is refused
-- by its generation, the holder's outcome is applied.
select is(
    (select array_length(noetl.claim_command_ids('w-live', null, 1), 1)),
    1, 'the live worker claims step a again'
);
select is(
    (
        select count(*)::integer from noetl.finish_and_claim(
            'w-dead',
            jsonb_build_array(jsonb_build_object(
                'op', 'done', 'command_id', current_setting('test.a')::bigint,
                'attempt', 1, 'claim', 1, 'result', 'late'
            ))
        )
    ),
    0, 'the dead worker reports its old claim (same attempt, generation 1)'
);
select results_eq(
    $$select status, claimed_by, claim_gen from noetl.command
      where command_id = current_setting('test.a')::bigint$$,
    $$values ('claimed'::text, 'w-live'::text, 2)$$,
    'the old claim''s outcome changed nothing: still claimed by the live worker'
);
select results_eq(
    $$select (meta ->> 'claim')::int, (meta ->> 'current_claim')::int, meta ->> 'worker_id',
             meta ->> 'holder'
      from noetl.event
      where command_id = current_setting('test.a')::bigint
        and event_type = 'command.outcome_refused'
      order by event_id desc limit 1$$,
    $$values (1, 2, 'w-dead'::text, 'w-live'::text)$$,
    'its refusal names the stale generation, the current one and the holder'
);
select is(
    (
        select count(*)::integer from noetl.event
        where command_id = current_setting('test.a')::bigint and event_type = 'call.done'
    ),
    0, 'no refused outcome wrote call.done'
);
select is(
    (
        select count(*)::integer from noetl.finish_and_claim(
            'w-live',
            jsonb_build_array(jsonb_build_object(
                'op', 'fail', 'command_id', current_setting('test.a')::bigint,
                'attempt', 1, 'claim', 2, 'error', 'tool error'
            ))
        )
    ),
    1, 'the holder''s outcome (a tool error) is applied and hands it the route claimed'
);
select results_eq(
    $$select status, attempt from noetl.command
      where command_id = current_setting('test.a')::bigint$$,
    $$values ('failed'::text, 1)$$,
    'a tool error is what spends max_attempts'
);

-- A route command claimed by a dead worker goes back to the queue at its attempt.
update noetl.worker set heartbeat_at = now() - interval '10 minutes'
where worker_id = 'w-live';
select is(noetl.reap_stale_claims(300), 1, 'the route claim of a silent worker is reaped');
select results_eq(
    $$select status, attempt, reclaims from noetl.command
      where execution_id = current_setting('test.exec')::bigint and kind = 'route'$$,
    $$values ('queued'::text, 1, 1)$$,
    'the route command is re-queued at attempt 1'
);
select noetl.register_worker('w-live', 'h', 2, 1, null);

-- A claim by a worker that never registered is reaped once the claim is old.
select is(
    (select array_length(noetl.claim_command_ids('w-ghost', array['route'], 1), 1)),
    1, 'an unregistered worker claims the route command'
);
select is(noetl.reap_stale_claims(300), 0, 'a fresh claim of an unknown worker is left alone');
update noetl.command set claimed_at = now() - interval '1 hour'
where claimed_by = 'w-ghost';
select is(noetl.reap_stale_claims(300), 1, 'an old claim of an unknown worker is reaped');
select is(
    (
        select meta ->> 'reason' from noetl.event
        where
            execution_id = current_setting('test.exec')::bigint
            and event_type = 'command.reaped'
        order by event_id desc limit 1
    ),
    'worker never registered', 'the reason names the missing registration'
);

-- The live worker's claims are untouched.
select is(
    (select array_length(noetl.claim_command_ids('w-live', array['route'], 1), 1)),
    1, 'the live worker claims the route command'
);
select is(noetl.reap_stale_claims(300), 0, 'a live worker keeps its claim');

-- Cancellation: claimed work is cancelled, a late outcome is refused, children follow.
select
    set_config(
        'test.child',
        noetl.start_execution_from(
            't/reap', '{}', null, current_setting('test.exec')::bigint, null
        )::text,
        true
    ) as child_started;
select is(
    noetl.cancel_execution(current_setting('test.exec')::bigint, 'test says stop'),
    2, 'cancel_execution cancels the execution and its running child'
);
select results_eq(
    $$select status, error from noetl.execution
      where execution_id in (current_setting('test.exec')::bigint,
                             current_setting('test.child')::bigint)
      order by execution_id$$,
    $$values ('CANCELLED'::text, 'test says stop'::text),
             ('CANCELLED'::text, 'test says stop'::text)$$,
    'both end CANCELLED with the reason'
);
select is(
    (
        select count(*)::integer from noetl.command
        where execution_id in (
            current_setting('test.exec')::bigint,
            current_setting('test.child')::bigint
        )
        and status in ('queued', 'claimed', 'waiting')
    ),
    0, 'no command of either is left active'
);
select is(
    noetl.apply_route(
        (
            select command_id from noetl.command
            where execution_id = current_setting('test.exec')::bigint and kind = 'route'
        ),
        1, '[{"step": "b"}]'
    ),
    'stale', 'the running route''s late outcome is refused: nothing routes'
);
select is(
    noetl.cancel_execution(current_setting('test.exec')::bigint),
    0, 'cancelling a finished execution is a no-op'
);

-- Poison: a command that keeps losing its worker fails once max_reclaims is used up.
select set_config('test.exec3', noetl.start_execution('t/reap')::text, true) as started3;
create function pg_temp.lose_worker() returns integer
language plpgsql as $$
begin
    perform noetl.claim_command_ids('w-dead', array['noop'], 1);
    update noetl.worker set heartbeat_at = now() - interval '10 minutes'
    where worker_id = 'w-dead';
    return noetl.reap_stale_claims(300, 2);
end;
$$;
select is(pg_temp.lose_worker(), 1, 'first loss: re-queued');
select is(pg_temp.lose_worker(), 1, 'second loss: re-queued');
select results_eq(
    $$select status, attempt, reclaims from noetl.command
      where execution_id = current_setting('test.exec3')::bigint and kind = 'noop'$$,
    $$values ('queued'::text, 1, 2)$$,
    'after two losses: queued at attempt 1 with two reclaims'
);
select is(pg_temp.lose_worker(), 1, 'third loss with max_reclaims 2: taken back as poison');
select results_eq(
    $$select status, reclaims from noetl.command
      where execution_id = current_setting('test.exec3')::bigint and kind = 'noop'$$,
    $$values ('failed'::text, 3)$$,
    'the poison command failed'
);
select matches(
    (
        select error from noetl.event
        where
            execution_id = current_setting('test.exec3')::bigint
            and event_type = 'command.failed'
    ),
    '^step ''a'': poison: the command was taken back 3 times .*NOETL_MAX_RECLAIMS=2\)$',
    'command.failed says poison, how often, and the setting'
);
select results_eq(
    $$select meta ->> 'outcome' from noetl.event
      where execution_id = current_setting('test.exec3')::bigint
        and event_type = 'command.reaped'
      order by event_id$$,
    $$values ('requeued'::text), ('requeued'::text), ('poison'::text)$$,
    'each loss is a command.reaped event; the last says poison'
);
select results_eq(
    $$select kind, status, input ->> 'event' from noetl.command
      where execution_id = current_setting('test.exec3')::bigint and kind = 'route'$$,
    $$values ('route'::text, 'queued'::text, 'call.error'::text)$$,
    'the poison failure routes like any failure (call.error)'
);

-- A live worker's sweep of claims it does not hold (lost replies): no reclaim counted.
select set_config('test.exec2', noetl.start_execution('t/reap')::text, true) as started2;
select noetl.register_worker('w-live', 'h', 2, 1, null);
select is(
    (select array_length(noetl.claim_command_ids('w-live', array['noop'], 1), 1)),
    1, 'the live worker claims step a of a new run'
);
select is(
    noetl.reap_orphan_claims(
        'w-live',
        array(
            select command_id from noetl.command
            where execution_id = current_setting('test.exec2')::bigint
        ),
        0
    ),
    0, 'a claim the worker holds is not an orphan'
);
select is(noetl.reap_orphan_claims('w-live', '{}', 3600), 0, 'a young claim is left alone');
select is(noetl.reap_orphan_claims('w-live', '{}', 0), 1, 'an unheld claim is taken back');
select results_eq(
    $$select status, attempt, reclaims from noetl.command
      where execution_id = current_setting('test.exec2')::bigint$$,
    $$values ('queued'::text, 1, 0)$$,
    'the orphan is queued again at attempt 1, not counted as a reclaim'
);

-- At start-up a worker takes back what an earlier process with its id left: a reclaim.
select is(
    (select array_length(noetl.claim_command_ids('w-live', array['noop'], 1), 1)),
    1, 'claimed again under the same worker id'
);
select is(
    noetl.reap_earlier_process('w-live'), 1, 'a restarted worker takes it back at start'
);
select results_eq(
    $$select status, attempt, reclaims from noetl.command
      where execution_id = current_setting('test.exec2')::bigint$$,
    $$values ('queued'::text, 1, 1)$$,
    'queued at attempt 1, counted as a reclaim (the earlier process died holding it)'
);

select * from finish();
rollback;
