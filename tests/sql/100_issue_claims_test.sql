-- The finishing worker takes the steps its outcomes issue (open_issue_claims,
-- take_issue_claim, close_issue_claims, issue_command under them, finish_and_claim's use
-- of them) and lock_executions remembers what it locked.
begin;
select plan(32);
set local client_min_messages = warning;

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
                "reads": {}, "loop_reads": {}}}
    ]}'::jsonb as spec;
select * from noetl.register_playbook('t/issue_claims', 'yaml', (select spec from spec_fixture));
select set_config(
    'test.e1', noetl.start_execution('t/issue_claims')::text, true
) as e1;

-- the entry step is queued: due work of a kind keeps its turn in the queue
select ok(
    noetl.due_work_queued(array['noop']),
    'due_work_queued: the queued entry step is due work of its kind'
);
select ok(noetl.due_work_queued(null), 'due_work_queued: and of any kind');
select ok(not noetl.due_work_queued(array['http']), 'due_work_queued: not of another kind');
select noetl.open_issue_claims('w1', array['noop'], 5);
select is(
    noetl.take_issue_claim('noop'), null,
    'with due work of that kind queued the finishing worker takes nothing'
);
select noetl.close_issue_claims();
create temporary table claim_start as
select * from noetl.claim_commands_v1('w0', null, 10);
select ok(not noetl.due_work_queued(null), 'due_work_queued: claimed, it is queued no more');

-- take_issue_claim: nothing is open, then a budget of one for kind noop
select is(noetl.take_issue_claim('noop'), null, 'no claims are open: nobody takes a command');
select noetl.open_issue_claims('w1', array['noop'], 1);
select is(noetl.take_issue_claim('http'), null, 'a kind the worker does not serve is not taken');
select is(noetl.take_issue_claim('noop'), 'w1', 'a served kind is taken by the worker');
select is(noetl.take_issue_claim('noop'), null, 'the budget of one is spent');
select is(noetl.close_issue_claims(), '{}'::bigint[], 'nothing was issued under the claims');

-- issue_command under open claims: created claimed with its event, listed, then queued
select noetl.open_issue_claims('w1', null, 1);
select set_config('test.c1', noetl.issue_command(
    current_setting('test.e1')::bigint, 'b@t1', 'noop', 'b'
)::text, true) as c1;
select set_config('test.c2', noetl.issue_command(
    current_setting('test.e1')::bigint, 'b@t2', 'noop', 'b'
)::text, true) as c2;
select is(
    (
        select c.status || ' ' || c.claimed_by from noetl.command as c
        where c.command_id = current_setting('test.c1')::bigint
    ),
    'claimed w1', 'the first command is created claimed by the finishing worker'
);
select is(
    (
        select array_agg(e.event_type || ' ' || coalesce(e.meta ->> 'worker_id', '-'))
        from noetl.event as e
        where e.command_id = current_setting('test.c1')::bigint
    ),
    array['command.issued w1'],
    'issued and claimed in one event: its command.issued names the worker, no command.claimed'
);
select is(
    (
        select c.status from noetl.command as c
        where c.command_id = current_setting('test.c2')::bigint
    ),
    'queued', 'past the budget commands are queued'
);
select is(
    noetl.close_issue_claims(), array[current_setting('test.c1')::bigint],
    'close_issue_claims lists the command created claimed'
);
select set_config('test.c3', noetl.issue_command(
    current_setting('test.e1')::bigint, 'b@t3', 'noop', 'b'
)::text, true) as c3;
select is(
    (
        select c.status from noetl.command as c
        where c.command_id = current_setting('test.c3')::bigint
    ),
    'queued', 'after close_issue_claims commands are queued again'
);

-- a command created claimed for an execution that ended meanwhile is cancelled
select set_config(
    'test.e3', noetl.start_execution('t/issue_claims')::text, true
) as e3;
create temporary table claim_e3 as
select * from noetl.claim_commands_v1('w0', null, 10);
select noetl.open_issue_claims('w1', null, 1);
select set_config('test.c4', noetl.issue_command(
    current_setting('test.e3')::bigint, 'b@t4', 'noop', 'b'
)::text, true) as c4;
update noetl.execution set status = 'FAILED'
where execution_id = current_setting('test.e3')::bigint;
select is(
    noetl.close_issue_claims(), '{}'::bigint[],
    'a command of an execution no longer running is not handed out'
);
select is(
    (
        select c.status from noetl.command as c
        where c.command_id = current_setting('test.c4')::bigint
    ),
    'cancelled', 'it is cancelled, as fail_execution cancels queued commands'
);

-- finish_and_claim: the step an outcome issues comes back claimed, with no queue scan
select set_config(
    'test.e2', noetl.start_execution('t/issue_claims')::text, true
) as e2;
create temporary table claim_a as
select * from noetl.claim_commands_v1('w2', null, 10)
where execution_id = current_setting('test.e2')::bigint;
create temporary table next_b as
select * from noetl.finish_and_claim_v1(
    'w2',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', (select command_id from claim_a), 'attempt', 1,
        'claim', (select claim_gen from claim_a), 'result', '{}'::jsonb
    )),
    array['noop'], 1
);
select is(
    (select step_name || ' ' || claim_gen from next_b), 'b 0',
    'finish_and_claim returns the next step, created claimed (claim_gen 0)'
);
select is(
    (
        select array_agg(e.event_type || ' ' || coalesce(e.meta ->> 'worker_id', '-'))
        from noetl.event as e
        where e.command_id = (select nb.command_id from next_b as nb)
    ),
    array['command.issued w2'],
    'the next step has one event, its command.issued naming the worker'
);
select is(
    noetl.take_issue_claim('noop'), null, 'finish_and_claim leaves no claims open'
);

-- finish_and_claim scans the queue only when something may be there for it
set local track_functions = 'all';
-- How many times this transaction scanned the queue (claim_command_ids) so far.
create function pg_temp.queue_scans() returns bigint
language sql as $$
    select coalesce(pg_stat_get_xact_function_calls(
        'noetl.claim_command_ids(text, text[], integer)'::regprocedure
    ), 0);
$$;
create temporary table scans (label text, calls bigint);
insert into scans
values ('before', pg_temp.queue_scans());
create temporary table next_none as
select * from noetl.finish_and_claim_v1(
    'w2',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', (select nb.command_id from next_b as nb), 'attempt', 1,
        'claim', (select nb.claim_gen from next_b as nb), 'result', '{}'::jsonb
    )),
    array['noop'], 5
);
insert into scans
values ('after', pg_temp.queue_scans());
select is(
    (select count(*) from next_none), 0::bigint,
    'the last step''s outcome issues nothing and nothing is queued: nothing comes back'
);
select is(
    (select max(calls) - min(calls) from scans), 0::bigint,
    'with no due work queued at the start and none queued by the outcomes, no queue scan'
);
-- work another execution queued before the call is claimed by the scan
select set_config(
    'test.e4', noetl.start_execution('t/issue_claims')::text, true
) as e4;
select set_config(
    'test.e5', noetl.start_execution('t/issue_claims')::text, true
) as e5;
create temporary table claim_e4 as
select * from noetl.claim_commands_v1('w3', null, 1)
where execution_id = current_setting('test.e4')::bigint;
insert into scans
values ('claimed e4', pg_temp.queue_scans());
create temporary table after_e4 as
select * from noetl.finish_and_claim_v1(
    'w3',
    jsonb_build_array(jsonb_build_object(
        'op', 'done', 'command_id', (select c.command_id from claim_e4 as c), 'attempt', 1,
        'claim', (select c.claim_gen from claim_e4 as c), 'result', '{}'::jsonb
    )),
    null, 5
);
select is(
    (
        select array_agg(a.execution_id || ' ' || a.step_name order by a.command_id)
        from after_e4 as a
    ),
    array[
        current_setting('test.e5') || ' a',
        current_setting('test.e4') || ' b'
    ],
    'with due work queued at the start the queue is scanned: the older execution''s entry '
    'step comes back, and the step the outcome issued was queued behind it'
);
insert into scans
values ('queued', pg_temp.queue_scans());
select is(
    (
        select
            max(s.calls) filter (where s.label = 'queued')
            - max(s.calls) filter (where s.label = 'claimed e4')
        from scans as s
    ),
    1::bigint, 'that call scanned the queue once'
);

-- lock_executions: what it locked is remembered for the transaction
select noetl.lock_executions(array[current_setting('test.e2')::bigint]);
select ok(
    array[current_setting('test.e2')::bigint]
    <@ current_setting('noetl.locked_executions')::bigint[],
    'lock_executions records the executions it locked'
);
update noetl.execution set parent_execution_id = current_setting('test.e1')::bigint
where execution_id = current_setting('test.e2')::bigint;
select noetl.lock_executions(array[current_setting('test.e2')::bigint]);
select ok(
    not array[current_setting('test.e1')::bigint]
    <@ current_setting('noetl.locked_executions')::bigint[],
    'a call for executions already held does not walk again'
);
select set_config('noetl.locked_executions', '', true) as reset;
select noetl.lock_executions(array[current_setting('test.e2')::bigint]);
select ok(
    array[current_setting('test.e1')::bigint, current_setting('test.e2')::bigint]
    <@ current_setting('noetl.locked_executions')::bigint[],
    'a child''s lock takes its parent too'
);

-- lock_running_execution: a child through lock_executions, a root at once
update noetl.execution as e set status = 'RUNNING'
where e.execution_id in (current_setting('test.e1')::bigint, current_setting('test.e2')::bigint);
select set_config('noetl.locked_executions', '', true) as reset_child;
select ok(
    noetl.lock_running_execution(current_setting('test.e2')::bigint, false),
    'lock_running_execution: a running child says so'
);
select ok(
    array[current_setting('test.e1')::bigint, current_setting('test.e2')::bigint]
    <@ current_setting('noetl.locked_executions')::bigint[],
    'locked with its parent, by lock_executions'
);
select set_config('noetl.locked_executions', '', true) as reset_root;
select ok(
    noetl.lock_running_execution(current_setting('test.e1')::bigint, true),
    'lock_running_execution: a running root says so'
);
select is(
    current_setting('noetl.locked_executions'), '',
    'its row locked at once, without the walk'
);
update noetl.execution as e set status = 'FAILED'
where e.execution_id = current_setting('test.e1')::bigint;
select ok(
    not noetl.lock_running_execution(current_setting('test.e1')::bigint, true),
    'lock_running_execution: a root no longer running says so'
);

select * from finish(); -- noqa: AM04
rollback;
