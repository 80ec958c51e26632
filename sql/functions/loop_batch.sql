-- loop_batch.sql: the commonest loop transition, a batch of one loop's iterations done and
-- as many next iterations issued to the same worker, in a few statements.
--
-- finish_and_claim_v1 tries this before its general path. Measured on a 2-core machine
-- (a database holding 400,000 commands), that path spends ~0.74 ms of a call whatever
-- its batch, a third of a batch of 25 iterations, around the one function that does the
-- work, finish_loop_iterations: locking every outcome's command row, checking each
-- outcome in a loop of its own, the issue claims, a queue scan and describing the claims
-- again. Here the same function does the work, under the execution's and the loop's
-- locks, after one check of all the outcomes, and the claims are described once. The
-- events, rows and claims are those the general path writes for the same outcomes
-- (tests/sql/107_loop_batch_test.sql compares the two); whatever this path does not
-- cover it declines before writing anything, and the general path runs.

-- noetl.finish_loop_batch(worker_id, outcomes, kinds, n) -> (applied, claimed)
-- Contract: applies finish_and_claim_v1's `outcomes` when all of these hold, and declines
--   (applied false, nothing written) otherwise:
--   - every outcome is `done` for a distinct iteration command of one loop, still claimed
--     at its `attempt` and, when given, claim generation `claim`;
--   - the loop is running, neither a cursor loop nor a fan-out, and these iterations do
--     not finish it (the last batch closes the loop and routes on: the general path);
--   - its execution is RUNNING.
--   Applied: finish_loop_iterations does the work (each command done with its
--   `call.done` and its loop item's result, the loop counted once, as many next
--   iterations issued as its width allows, up to `n` of them created claimed by
--   `worker_id`, the rest queued and workers woken). When they leave room in `n` and due
--   work of `kinds` is queued, that work is claimed beside them (claim_command_ids, as the
--   general path's queue scan). The claims are returned by describe_commands_v1.
-- Events: call.done per outcome, command.issued per new iteration, command.claimed per
--   queued command claimed.
-- Locks: in the lock order, the execution row (a child's with its ancestors first,
--   lock_executions), the loop row, then the command rows (the fenced update), last the
--   queue rows claimed (SKIP LOCKED). A declined call may leave the execution and loop
--   rows locked; the general path locks them next.
-- Failure modes: raises serialization_failure (40001) when an outcome's command changed
--   between the check and the update (the engine's writers of a claimed command take the
--   execution's lock first; the fence stays for one that would not): the call rolls back
--   and the worker, taking it as transient, sends the outcomes again.
-- Plans: one per session, index probes by key only (as finish_plain_step).
create or replace function noetl.finish_loop_batch(
    p_worker_id text,
    p_outcomes jsonb,
    p_kinds text[],
    p_n integer,
    out applied boolean,
    out claimed noetl.claimed_command[]
)
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
as $$
declare
    v_count integer := jsonb_array_length(p_outcomes);
    v_head record;
    v_loop noetl.loop;
    v_checked integer;
    v_done record;
    v_queued bigint[] := '{}';
begin
    applied := false;
    -- Which execution and loop to lock: columns of a command that never change.
    select c.execution_id, c.loop_id, e.parent_execution_id is null as root
    into v_head
    from noetl.command as c
    inner join noetl.execution as e on c.execution_id = e.execution_id
    where c.command_id = (p_outcomes -> 0 ->> 'command_id')::bigint;
    if not found or v_head.loop_id is null then
        return;
    end if;
    if not noetl.lock_running_execution(v_head.execution_id, v_head.root) then
        return;
    end if;
    select * into v_loop from noetl.loop as l where l.loop_id = v_head.loop_id for update;
    if not found or v_loop.status <> 'running' or v_loop.mode = 'cursor' or v_loop.is_fanout
        or v_loop.done + v_loop.failed + v_count >= v_loop.total then
        return;
    end if;
    -- Under the execution's lock: every outcome applies (complete_command's fence).
    select count(distinct c.command_id) into v_checked
    from jsonb_array_elements(p_outcomes) as o (value)
    cross join lateral (
        select c.command_id from noetl.command as c
        where
            c.command_id = (o.value ->> 'command_id')::bigint
            and c.loop_id = v_loop.loop_id
            -- `is true`: found by key, not through a status index (docs/architecture.md)
            and (c.status = 'claimed') is true
            and c.attempt = (o.value ->> 'attempt')::integer
            and c.claim_gen = coalesce((o.value ->> 'claim')::integer, c.claim_gen)
        offset 0
    ) as c
    where o.value ->> 'op' = 'done';
    if v_checked <> v_count then
        return;
    end if;
    applied := true;
    -- The router as finish_and_claim_v1 names it, though only the batch that closes the
    -- loop routes, and that one is the general path's.
    select f.handled, f.claimed into v_done
    from noetl.finish_loop_iterations(
        case when p_kinds is null or 'route' = any(p_kinds) then p_worker_id end,
        p_outcomes, p_worker_id, p_kinds, p_n
    ) as f;
    if cardinality(v_done.handled) <> v_count then
        raise exception 'loop %: % of % outcomes changed under the execution lock',
            v_loop.loop_id, v_count - cardinality(v_done.handled), v_count
            using errcode = '40001';
    end if;
    -- Room left and due work queued: the general path's queue scan. In a statement of its
    -- own: describe_commands_v1 (stable) reads the snapshot of the statement that calls
    -- it, which would not see a claim made in its arguments.
    if cardinality(v_done.claimed) < p_n and noetl.due_work_queued(p_kinds) then
        v_queued := noetl.claim_command_ids(
            p_worker_id, p_kinds, p_n - cardinality(v_done.claimed)
        );
    end if;
    claimed := array(
        select d from noetl.describe_commands_v1(v_done.claimed || v_queued) as d
    );
end;
$$;
