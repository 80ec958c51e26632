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
--   the same way (its ancestors are held already, so nothing else can hold its rows).
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
    v_status text;
    v_child bigint;
    v_cancelled integer := 0;
begin
    perform noetl.lock_executions(array[p_execution_id]);
    select e.status into v_status
    from noetl.execution as e
    where e.execution_id = p_execution_id;
    if not found then
        raise exception 'execution % does not exist', p_execution_id using errcode = 'P0002';
    end if;

    if v_status = 'RUNNING' then
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
