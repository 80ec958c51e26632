-- The reaper: claims of silent, stopped or unregistered workers are taken back, re-queued
-- at attempt + 1 while attempts remain and failed for good after; a late outcome of a
-- reaped attempt is refused; route commands and finished executions are handled; and
-- cancel_execution stops an execution and its children.
begin;
select plan(33);

create temporary table spec_fixture as
select  -- noqa: LT09
    '{"entry_step": "a", "workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "router", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": ["b"], "max_attempts": 2}},
      {"step": "b", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "reaches": [], "max_attempts": 1}}
    ]}'::jsonb as spec;

select lives_ok(
    $$select * from noetl.register_playbook('t/reap', 'yaml', (select spec from spec_fixture))$$,
    'playbook registered'
);
select set_config('test.exec', noetl.start_execution('t/reap')::text, true) as started;

select noetl.register_worker('w-dead', 'h', 1, 1, null);
select noetl.register_worker('w-live', 'h', 2, 1, null);
select is(
    (select array_length(noetl.claim_command_ids('w-dead', null, 1), 1)),
    1, 'the dead worker claims step a'
);

-- A fresh heartbeat protects the claim.
select is(noetl.reap_stale_claims(60), 0, 'a live claim is not reaped');
select throws_ok(
    $$select noetl.reap_stale_claims(-1)$$, '22023', null, 'a negative timeout is refused'
);

update noetl.worker set heartbeat_at = now() - interval '10 minutes'
where worker_id = 'w-dead';
select is(noetl.reap_stale_claims(), 1, 'a claim silent past the default 300 s is reaped');
select results_eq(
    $$select status, attempt, claimed_by from noetl.command
      where execution_id = current_setting('test.exec')::bigint and step_name = 'a' and kind = 'noop'$$,
    $$values ('queued'::text, 2, null::text)$$,
    'the reaped command is queued again as attempt 2, unclaimed'
);
select results_eq(
    $$select attempt, meta ->> 'worker_id', meta ->> 'outcome' from noetl.event
      where execution_id = current_setting('test.exec')::bigint
        and event_type = 'command.reaped'$$,
    $$values (2, 'w-dead'::text, 'requeued'::text)$$,
    'command.reaped names the attempt, the worker and what happened'
);
select is(
    (select outcome from noetl.complete_command(
        (
            select command_id from noetl.command
            where
                execution_id = current_setting('test.exec')::bigint
                and step_name = 'a'
                and kind = 'noop'
        ),
        1, '{"late": true}'
    )),
    'stale', 'a late completion of the reaped attempt is refused'
);
select is(
    (
        select count(*)::integer from noetl.event
        where
            execution_id = current_setting('test.exec')::bigint
            and event_type = 'call.done'
    ),
    0, 'the refused completion wrote nothing'
);

-- Attempt 2 of 2 claimed by the dead worker again: exhausted, so it fails for good.
select is(
    (select array_length(noetl.claim_command_ids('w-dead', null, 1), 1)),
    1, 'attempt 2 is claimed'
);
select is(noetl.reap_stale_claims(300), 1, 'the exhausted claim is reaped');
select results_eq(
    $$select status, attempt from noetl.command
      where execution_id = current_setting('test.exec')::bigint and step_name = 'a' and kind = 'noop'$$,
    $$values ('failed'::text, 2)$$,
    'with no attempt left the command fails'
);
select is(
    (
        select count(*)::integer from noetl.event
        where
            execution_id = current_setting('test.exec')::bigint
            and event_type = 'command.failed'
    ),
    1, 'command.failed is written once'
);
select results_eq(
    $$select kind, status, input ->> 'event' from noetl.command
      where execution_id = current_setting('test.exec')::bigint and kind = 'route'$$,
    $$values ('route'::text, 'queued'::text, 'call.error'::text)$$,
    'the failure routes through the step''s conditional arcs (call.error)'
);

-- A route command claimed by a dead worker is re-queued although its budget is 1.
select is(
    (select array_length(noetl.claim_command_ids('w-dead', array['route'], 1), 1)),
    1, 'the dead worker claims the route command'
);
select is(noetl.reap_stale_claims(300), 1, 'the route claim is reaped');
select results_eq(
    $$select status, attempt from noetl.command
      where execution_id = current_setting('test.exec')::bigint and kind = 'route'$$,
    $$values ('queued'::text, 2)$$,
    'a route command is re-queued (it has no side effect)'
);

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

-- The live worker's claims are untouched, and a stopped worker's claims are reaped.
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
        3, '[{"step": "b"}]'
    ),
    'stale', 'the running route''s late outcome is refused: nothing routes'
);
select is(
    noetl.cancel_execution(current_setting('test.exec')::bigint),
    0, 'cancelling a finished execution is a no-op'
);

-- A live worker's sweep of claims it does not hold (lost replies, an earlier process).
select set_config('test.exec2', noetl.start_execution('t/reap')::text, true) as started2;
select is(
    (select array_length(noetl.claim_command_ids('w-live', null, 1), 1)),
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
    $$select status, attempt from noetl.command
      where execution_id = current_setting('test.exec2')::bigint$$,
    $$values ('queued'::text, 2)$$,
    'the orphan is queued again as attempt 2'
);

select * from finish();
rollback;
