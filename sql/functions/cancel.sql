-- cancel.sql: stopping an execution and everything it started.

-- noetl.cancel_execution(execution_id, reason) -> integer
-- Contract: cancels a RUNNING execution and, recursively, its RUNNING child executions
--   (execution.parent_execution_id). For each: every queued, waiting or claimed command
--   becomes 'cancelled' (a claimed one is told to stop with NOTIFY noetl_cancel, payload
--   the execution id; whatever its worker reports later is refused as stale, so nothing
--   routes), running loops are marked cancelled, and the execution finishes CANCELLED
--   with `playbook.cancelled` (error: the reason). Returns how many
--   executions it cancelled: 0 when the execution had already finished (a no-op).
-- Locks: in the lock order (locking.sql): the execution with its ancestors, then its
--   running loops by loop_id, then its active command rows by command_id; then each child
--   the same way (cancel_children; its ancestors are held already, so nothing else can
--   hold its rows).
-- Failure modes: raises no_data_found naming the id when the execution does not exist.
create or replace function noetl.cancel_execution(
    p_execution_id bigint,
    p_reason text default 'cancelled by request'
) returns integer
language plpgsql
-- Planned for the execution at hand: a generic plan for "this execution's active
-- commands" may scan the whole queue when one execution holds most of it.
set plan_cache_mode = force_custom_plan
as $$
declare
    v_cancelled integer := 0;
begin
    perform noetl.lock_executions(array[p_execution_id]);
    perform 1 from noetl.execution as e where e.execution_id = p_execution_id;
    if not found then
        raise exception 'execution % does not exist', p_execution_id using errcode = 'P0002';
    end if;

    if noetl.execution_is_running(p_execution_id) then
        perform 1 from noetl.loop as l
        where l.execution_id = p_execution_id and l.status = 'running'
        order by l.loop_id
        for update;
        perform 1 from noetl.command as c
        where c.execution_id = p_execution_id
            and c.status in ('queued', 'claimed', 'waiting')
        order by c.command_id
        for update;
        update noetl.loop as l
        set status = 'cancelled'
        where l.execution_id = p_execution_id and l.status = 'running';
        update noetl.command as c
        set status = 'cancelled', finished_at = noetl.now()
        where c.execution_id = p_execution_id
            and c.status in ('queued', 'claimed', 'waiting');

        perform noetl.finish_execution(p_execution_id, 'CANCELLED', null, p_reason, null);
        perform pg_notify('noetl_cancel', p_execution_id::text);
        v_cancelled := 1;
    end if;

    return v_cancelled + noetl.cancel_children(p_execution_id, p_reason);
end;
$$;

-- noetl.cancel_children(execution_id, reason) -> integer
-- Contract: cancels every RUNNING child execution of `execution_id` (parent_execution_id),
--   ascending id, each with cancel_execution (and so, recursively, their children), with
--   `reason` as their error. Returns how many executions were cancelled (0: none ran).
--   Called by cancel_execution and by fail_execution (a failed parent's children would run
--   on for nothing).
-- Locks: each child with its ancestors (cancel_execution); the caller holds the parent's
--   execution row with its ancestors already, so a child's rows are never held elsewhere.
create or replace function noetl.cancel_children(
    p_execution_id bigint,
    p_reason text
) returns integer
language plpgsql
as $$
declare
    v_child bigint;
    v_cancelled integer := 0;
begin
    for v_child in
        select e.execution_id
        from noetl.execution as e
        where e.parent_execution_id = p_execution_id and e.status = 'RUNNING'
        order by e.execution_id
    loop
        v_cancelled := v_cancelled + noetl.cancel_execution(v_child, p_reason);
    end loop;
    return v_cancelled;
end;
$$;
