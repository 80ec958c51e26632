-- A step that fails for good with no conditional arc fails the execution, cancels what
-- was still queued, and records why.
begin;
select plan(5);

select lives_ok(
    $$select * from noetl.register_playbook('t/fails', 'yaml', '{"workflow": [
      {"step": "a", "tool": {"kind": "noop"},
       "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                "is_join": false, "has_loop": false, "successors": [], "max_attempts": 1}}
    ]}')$$,
    'a one-step playbook registers'
);

select set_config('test.execution_id', noetl.start_execution('t/fails')::text, true) as started;
create temporary table claim_a as
select * from noetl.claim_commands('w1', null, 1);

select is(
    (select outcome from noetl.fail_command((select command_id from claim_a), 1, 'kaput', 0)),
    'failed', 'with no attempts left the failure is final even when a retry is asked'
);
select is(
    (
        select status || ' ' || failed_step || ': ' || error from noetl.execution
        where execution_id = current_setting('test.execution_id')::bigint
    ),
    'FAILED a: kaput', 'the execution fails, naming the step and the error'
);
select is(
    (
        select array_agg(event_type order by event_id) from noetl.event
        where
            execution_id = current_setting('test.execution_id')::bigint
            and event_type in ('call.error', 'command.failed', 'playbook.failed')
    ),
    array['call.error', 'command.failed', 'playbook.failed'],
    'call.error, command.failed and playbook.failed are recorded in order'
);
select is(
    (select outcome from noetl.complete_command((select command_id from claim_a), 1, '{}')),
    'stale', 'a late completion of the failed command is refused'
);

select * from finish();
rollback;
