-- locking.sql: the one lock order of the engine, as functions every writer calls first.
--
-- Lock order (a function that locks more than one row takes them in this order):
--   1. execution rows, ascending execution_id, an execution's ancestors included
--      (a parent's id is always lower than its child's, so "ancestors first" is "by id");
--   2. loop rows, ascending loop_id;
--   3. command rows, ascending command_id.
-- Taking an execution's whole ancestor chain first makes the root execution row the mutex
-- of its tree: a transaction that holds it may then lock any row of any execution below it
-- (cancel walks down to children, a child's end reports up to its parent command) without
-- another transaction holding one of those rows and waiting for it.
-- Not in the order, because they never wait while holding a row: claims (FOR UPDATE SKIP
-- LOCKED on queue rows, last thing in their transaction), the projector (SKIP LOCKED on
-- execution rows, nothing else), worker rows (only ever locked alone).

-- noetl.lock_executions(execution_ids) -> void
-- Contract: locks the given executions and all their ancestors FOR UPDATE, ascending id.
--   Unknown ids are ignored. Re-locking rows this transaction already holds is free: the
--   ids locked are kept in the transaction-local setting `noetl.locked_executions`, and a
--   call asking only for those returns at once (one transition locks its execution three
--   times, from lock_command_rows, lock_claimed_command and routing; the ancestor walk was
--   a quarter of a chain step's time). A rolled-back subtransaction drops its locks and
--   its setting together.
--   Planned once per session (plan_cache_mode): with the ids as a literal the planner's
--   estimate of `= any(ids)` is one row against ten for a parameter, so the plan cache
--   kept choosing a custom plan and planned the statements again on every call. Index
--   scans only (enable_seqscan): a plan kept from when the table was small would
--   otherwise go on scanning it whole as it grows, until the next ANALYZE.
-- Locks: execution rows (step 1 of the order).
create or replace function noetl.lock_executions(p_execution_ids bigint[])
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_held bigint[] := nullif(current_setting('noetl.locked_executions', true), '')::bigint[];
    v_family bigint[] := p_execution_ids;
    v_frontier bigint[] := p_execution_ids;
    v_locked bigint[];
begin
    if p_execution_ids <@ v_held then
        return;
    end if;
    -- Ancestors by walking parent links a level at a time (nesting depth is small), not a
    -- recursive CTE: its plan made a lock of one root execution cost ~30 times more.
    loop
        select array_agg(distinct x.parent_execution_id) into v_frontier
        from noetl.execution as x
        where x.execution_id = any(v_frontier)
            and x.parent_execution_id is not null
            and not x.parent_execution_id = any(v_family);
        exit when v_frontier is null;
        v_family := v_family || v_frontier;
    end loop;
    select array_agg(l.execution_id) into v_locked
    from (
        select e.execution_id
        from noetl.execution as e
        where e.execution_id = any(v_family)
        order by e.execution_id
        for update
    ) as l;
    perform set_config(
        'noetl.locked_executions', (coalesce(v_held, '{}') || v_locked)::text, true
    );
end;
$$;

-- noetl.lock_running_execution(execution_id, root) -> boolean
-- Contract: the first step of the lock order for one execution, and whether it is
--   RUNNING: a root execution (`root`, the caller's read of parent_execution_id) has no
--   ancestors to lock before it, and its row is locked here at once with its status, one
--   statement instead of lock_executions' walk; a child's goes through lock_executions.
--   The short paths' first lock (finish_plain_step, finish_loop_batch). A root's lock is
--   not remembered in `noetl.locked_executions`: lock_executions takes it again, free.
-- Locks: execution rows (step 1 of the order).
create or replace function noetl.lock_running_execution(p_execution_id bigint, p_root boolean)
returns boolean
language plpgsql
as $$
declare
    v_running boolean;
begin
    if p_root then
        select e.status = 'RUNNING' into v_running
        from noetl.execution as e
        where e.execution_id = p_execution_id
        for update;
        return coalesce(v_running, false);
    end if;
    perform noetl.lock_executions(array[p_execution_id]);
    return noetl.execution_is_running(p_execution_id);
end;
$$;

-- noetl.lock_command_rows(command_ids) -> void
-- Contract: locks, in the lock order, everything a change to these commands may touch:
--   their executions (with ancestors), their loops, then the command rows themselves.
--   An execution_id or loop_id of a command never changes, so reading them before the
--   locks is safe. Unknown ids are ignored. As in lock_executions, what this transaction
--   locked here is remembered (transaction-local `noetl.locked_commands`; a rolled-back
--   subtransaction drops it with its locks) and a call asking only for commands already
--   locked returns at once: finish_and_claim locks its outcomes' commands, then each
--   outcome passes lock_claimed_command again. Plans as lock_executions'.
-- Locks: execution rows, loop rows, command rows (steps 1-3 of the order).
create or replace function noetl.lock_command_rows(p_command_ids bigint[])
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_held bigint[] := nullif(current_setting('noetl.locked_commands', true), '')::bigint[];
    v_execution_ids bigint[];
    v_loop_ids bigint[];
    v_locked bigint[];
begin
    if p_command_ids <@ v_held then
        return;
    end if;
    select
        array_agg(distinct c.execution_id),
        array_agg(distinct c.loop_id) filter (where c.loop_id is not null)
    into v_execution_ids, v_loop_ids
    from noetl.command as c
    where c.command_id = any(p_command_ids);
    if v_execution_ids is null then
        return;
    end if;
    perform noetl.lock_executions(v_execution_ids);
    if v_loop_ids is not null then
        perform 1 from noetl.loop as l
        where l.loop_id = any(v_loop_ids)
        order by l.loop_id
        for update;
    end if;
    select array_agg(l.command_id) into v_locked
    from (
        select c.command_id
        from noetl.command as c
        where
            c.command_id = any(p_command_ids)
            and not c.command_id = any(coalesce(v_held, '{}'))
        order by c.command_id
        for update
    ) as l;
    perform set_config(
        'noetl.locked_commands', (coalesce(v_held, '{}') || v_locked)::text, true
    );
end;
$$;
