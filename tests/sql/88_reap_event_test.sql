-- Direct test of noetl.record_reap (sql/functions/reaper.sql): the command.reaped event of
-- a step command and of a loop iteration, written as given and changing nothing else, and
-- the same event shape from reap_command.
begin;
select plan(6);

insert into noetl.catalog (catalog_id, path, version, content, spec)
overriding system value values (988, 'test/reap', 1, '', '{}');
insert into noetl.execution (execution_id, catalog_id, path, version)
values (9881, 988, 'test/reap', 1);
-- Loop iterations only (loop_id set), so the budget trigger leaves them alone.
insert into noetl.command (
    command_id, execution_id, command_key, kind, step_name, loop_id, iter_index, status,
    attempt, max_attempts, claimed_by, claimed_at, claim_gen, reclaims
)
values
(988001, 9881, 'iter:88:0', 'python', 'work', 88, 0, 'claimed', 2, 3, 'w-x', now(), 4, 1),
(988002, 9881, 'iter:88:1', 'python', 'work', 88, 1, 'claimed', 1, 1, 'w-y', now(), 1, 0);

select noetl.record_reap(c, 'no heartbeat', 'requeued', 2, 'taken back')
from noetl.command as c
where c.command_id = 988001;
select results_eq(
    $$select e.execution_id, e.node_name, e.attempt, e.error, e.loop_id, e.iter_index, e.meta
      from noetl.event as e
      where e.command_id = 988001 and e.event_type = 'command.reaped'$$,
    $$values (9881::bigint, 'work'::text, 2, 'taken back'::text, 88::bigint, 0,
              '{"worker_id": "w-x", "reason": "no heartbeat", "outcome": "requeued",
                "reclaims": 2, "claim": 4}'::jsonb)$$,
    'record_reap writes command.reaped at the command''s attempt, with worker, reason, '
    || 'outcome, reclaims and claim'
);
select is(
    (
        select (c.status, c.attempt, c.claimed_by, c.reclaims, c.claim_gen)::text
        from noetl.command as c
        where c.command_id = 988001
    ),
    '(claimed,2,w-x,1,4)', 'record_reap changes no command state'
);
select is(
    (
        select count(*)::integer from noetl.event as e
        where e.execution_id = 9881 and e.event_type <> 'command.reaped'
    ),
    0, 'it writes no other event'
);

-- reap_command writes its event through record_reap: the same shape
select is(noetl.reap_command(988002, 'worker stopped'), true, 'reap_command takes it back');
select is(
    (
        select e.meta from noetl.event as e
        where e.command_id = 988002 and e.event_type = 'command.reaped'
    ),
    '{"worker_id": "w-y", "reason": "worker stopped", "outcome": "requeued", "reclaims": 1,
      "claim": 1}'::jsonb,
    'reap_command''s command.reaped has the meta record_reap writes'
);
select is(
    (
        select e.error from noetl.event as e
        where e.command_id = 988002 and e.event_type = 'command.reaped'
    ),
    'step ''work'': attempt 1 was taken back from worker w-y (worker stopped)',
    'and the error naming the step, attempt, worker and reason'
);

select * from finish();
rollback;
