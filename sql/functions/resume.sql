-- resume.sql: continuing a failed or cancelled execution, and rerunning one from a step.

-- noetl.resume_execution(execution_id) -> integer
-- Contract: a FAILED or CANCELLED execution continues where it stopped, in one transaction:
--   the commands that did not finish are issued again on the same row as a new attempt
--   (attempt + 1, `command.retried` with meta.reason 'resume'): every 'cancelled' command
--   and the 'failed' commands of the step that failed the execution. A loop that did not
--   finish cleanly is reopened under a new loop_id (a loop_id closes once): its failed
--   iterations (only those) and the iterations cancelled in flight run again, its counters
--   forget those failures, and the loop closes and routes again when they are done.
--   Finished steps are not run again, their results stay. The execution is RUNNING
--   again, `playbook.resumed` is written (meta: commands, loops), workers are woken.
--   Returns how many commands were issued again.
--   If re-queuing the failed iterations of a loop would put more than its max_in_flight
--   in flight, that loop's bound is raised to fit (meta.raised_in_flight names it).
-- Locks: the execution row (FOR UPDATE) first, then its loop rows, then command rows, so it
--   serialises with every function that finishes a command of this execution.
-- Failure modes (nothing changes): the execution does not exist (P0002); it is RUNNING or
--   COMPLETED (22023, naming its status); nothing is left to resume (22023).
--   The raise rolls back the whole call (the execution stays as it was).
--   Not handled: a command of another branch that finished after the execution failed has
--   its result recorded but is not routed again. A cursor loop to reopen raises 22023
--   (nothing changes): rerun from its step instead.
create or replace function noetl.resume_execution(p_execution_id bigint)
returns integer
language plpgsql
as $$
declare
    v_exec noetl.execution;
    v_loop noetl.loop;
    v_old_loop_id bigint;
    v_failed_items integer;
    v_requeued integer := 0;
    v_count integer;
    v_loops jsonb := '[]'::jsonb;
    v_raised jsonb := '[]'::jsonb;
begin
    select * into v_exec from noetl.execution as e
    where e.execution_id = p_execution_id
    for update;
    if not found then
        raise exception 'execution % does not exist', p_execution_id using errcode = 'P0002';
    end if;
    if v_exec.status not in ('FAILED', 'CANCELLED') then
        raise exception 'execution % is %: only a FAILED or CANCELLED execution can be resumed',
            p_execution_id, v_exec.status using errcode = '22023';
    end if;

    -- RUNNING first: advance_loop and routing below act only on a running execution.
    update noetl.execution as e
    set status = 'RUNNING', finished_at = null, error = null, failed_step = null,
        result = null, updated_at = now()
    where e.execution_id = p_execution_id;

    -- Steps first (what was cancelled, and the failed commands of the step that failed the
    -- run), so a loop that closes below never sees the execution as having nothing left.
    with again as (
        update noetl.command as c
        set status = 'queued', attempt = c.attempt + 1,
            max_attempts = greatest(c.max_attempts, c.attempt + 1),
            available_at = noetl.now(), claimed_by = null, claimed_at = null, finished_at = null
        where c.execution_id = p_execution_id
            and c.loop_id is null
            and not exists (
                select 1 from noetl.loop as l
                where l.execution_id = c.execution_id and l.command_id = c.command_id
            )
            and (
                c.status = 'cancelled'
                or (c.status = 'failed' and c.step_name = v_exec.failed_step)
            )
        returning c.*
    )

    select count(*)::integer into v_count
    from again as a,
        lateral noetl.record_event(
            a.execution_id, 'command.retried', a.step_name, a.command_id, a.attempt,
            null, null, jsonb_build_object('reason', 'resume'), null, null
        ) as logged;
    v_requeued := v_requeued + v_count;

    -- Loops that stopped early, or whose failed iterations failed the loop step.
    -- ("loop" quoted: unquoted, PL/pgSQL would read it as the start of the loop body.)
    for v_loop in
        select * from noetl."loop" as l
        where l.execution_id = p_execution_id
            and (
                l.status <> 'done'
                or exists (
                    select 1 from noetl.command as c
                    where c.command_id = l.command_id and c.status = 'failed'
                )
            )
        order by l.loop_id
        for update
    loop
        if v_loop.mode = 'cursor' then
            -- Its slots drained; what to claim again is the playbook's table's business.
            raise exception 'execution %: step "%" is a cursor loop, which cannot be '
                'resumed: rerun the execution from that step', p_execution_id,
                v_loop.step_name using errcode = '22023';
        end if;
        -- A loop closes once per loop_id (event_loop_close_once_idx): the reopened loop,
        -- its items and its commands take a new id, so its second close is a new one.
        v_old_loop_id := v_loop.loop_id;
        v_loop.loop_id := nextval('noetl.loop_id_seq');
        update noetl."loop" as l set loop_id = v_loop.loop_id
        where l.loop_id = v_old_loop_id;
        update noetl.loop_item as li set loop_id = v_loop.loop_id
        where li.loop_id = v_old_loop_id;
        update noetl.command as c set loop_id = v_loop.loop_id
        where c.execution_id = p_execution_id and c.loop_id = v_old_loop_id;

        update noetl.loop_item as li
        set status = 'pending', result = null
        where li.loop_id = v_loop.loop_id and li.status = 'failed';
        get diagnostics v_failed_items = row_count;

        with again as (
            update noetl.command as c
            set status = 'queued', attempt = c.attempt + 1,
                max_attempts = greatest(c.max_attempts, c.attempt + 1),
                available_at = noetl.now(), claimed_by = null, claimed_at = null,
                finished_at = null
            from noetl.loop_item as li
            where c.loop_id = v_loop.loop_id
                and li.loop_id = c.loop_id and li.iter_index = c.iter_index
                and li.status = 'pending'
                and c.status in ('failed', 'cancelled')
            returning c.*
        )

        select count(*)::integer into v_count
        from again as a,
            lateral noetl.record_event(
                a.execution_id, 'command.retried', a.step_name, a.command_id, a.attempt,
                null, null, jsonb_build_object('reason', 'resume'), a.loop_id, a.iter_index
            ) as logged;
        v_requeued := v_requeued + v_count;

        v_loop.failed := v_loop.failed - v_failed_items;
        if v_loop.issued - v_loop.done - v_loop.failed > v_loop.max_in_flight then
            v_raised := v_raised || to_jsonb(v_loop.step_name);
            v_loop.max_in_flight := v_loop.issued - v_loop.done - v_loop.failed;
        end if;
        update noetl.loop as l
        set status = 'running', finished_at = null, failed = v_loop.failed,
            max_in_flight = v_loop.max_in_flight
        where l.loop_id = v_loop.loop_id;
        -- The loop command stays active until the loop closes again.
        update noetl.command as c
        set status = 'waiting', finished_at = null
        where c.command_id = v_loop.command_id;
        -- Issues what the bound allows (a loop cancelled with nothing in flight) and closes
        -- a loop that has nothing left to run; counts nothing itself.
        perform noetl.advance_loop(v_loop.loop_id, 0, 0, null);
        v_loops := v_loops || jsonb_build_object(
            'step', v_loop.step_name, 'loop_id', v_loop.loop_id, 'was_loop_id', v_old_loop_id,
            'failed_iterations', v_failed_items
        );
    end loop;

    if v_requeued = 0 and jsonb_array_length(v_loops) = 0 then
        raise exception 'execution % has nothing to resume: no failed or cancelled command',
            p_execution_id using errcode = '22023';
    end if;

    perform noetl.record_event(
        p_execution_id, 'playbook.resumed', null, null, null, null, null,
        jsonb_build_object(
            'commands', v_requeued, 'loops', v_loops, 'raised_in_flight', v_raised,
            'previous_status', v_exec.status, 'previous_error', v_exec.error
        )
    );
    perform noetl.notify_queue();
    return v_requeued;
end;
$$;

-- noetl.rerun_execution(execution_id, from_step) -> execution_id
-- Contract: starts a new execution of the same playbook version and workload, linked to
--   the old one (execution.rerun_of), that reuses the old results of every step that
--   `from_step` cannot reach (the steps before it) and the old ctx, and starts at
--   `from_step`: `playbook.started` (meta: rerun_of, from_step, reused steps), the reused
--   results in step_result, the command of `from_step`. The old execution is not changed.
-- Locks: the old execution row (FOR SHARE), so it is not resumed at the same time.
-- Failure modes (nothing is written): the execution does not exist (P0002); it is still
--   RUNNING (22023); `from_step` is not a step of its playbook (22023, naming it).
create or replace function noetl.rerun_execution(p_execution_id bigint, p_from_step text)
returns bigint
language plpgsql
as $$
declare
    v_old noetl.execution;
    v_downstream text[];
    v_new bigint;
    v_reused text[];
begin
    select * into v_old from noetl.execution as e
    where e.execution_id = p_execution_id
    for share;
    if not found then
        raise exception 'execution % does not exist', p_execution_id using errcode = 'P0002';
    end if;
    if v_old.status = 'RUNNING' then
        raise exception 'execution % is still RUNNING: cancel it or wait before a rerun',
            p_execution_id using errcode = '22023';
    end if;
    perform 1 from noetl.catalog_step as s
    where s.catalog_id = v_old.catalog_id and s.step_name = p_from_step;
    if not found then
        raise exception 'playbook %: step "%" does not exist (rerun of execution %)',
            v_old.path, p_from_step, p_execution_id using errcode = '22023';
    end if;
    v_downstream := noetl.reachable_steps(v_old.catalog_id, array[p_from_step]);

    insert into noetl.execution (
        catalog_id, path, version, workload, ctx, parent_execution_id, parent_command_id,
        rerun_of
    )
    values (
        v_old.catalog_id, v_old.path, v_old.version, v_old.workload, v_old.ctx, null, null,
        p_execution_id
    )
    returning execution_id into v_new;

    insert into noetl.step_result (execution_id, step_name, result, command_id)
    select v_new, r.step_name, r.result, r.command_id
    from noetl.step_result as r
    where r.execution_id = p_execution_id
        and r.step_name <> p_from_step
        and not (r.step_name = any(v_downstream));
    select coalesce(array_agg(r.step_name order by r.step_name), '{}') into v_reused
    from noetl.step_result as r
    where r.execution_id = v_new;

    perform noetl.record_event(
        v_new, 'playbook.started', null, null, null, null, null,
        jsonb_build_object(
            'path', v_old.path, 'version', v_old.version, 'rerun_of', p_execution_id,
            'from_step', p_from_step, 'reused_steps', to_jsonb(v_reused)
        )
    );
    perform noetl.issue_step(v_new, v_old.catalog_id, p_from_step, 'rerun');
    return v_new;
end;
$$;
