-- child.sql: `kind: playbook` steps. The parent command waits for its child execution in
-- status 'waiting' (still active for completion and join checks) and holds no worker slot;
-- the child's end completes or fails it through the same functions a worker calls.
--
-- Child executions are found by execution.parent_execution_id (indexed) and
-- execution.parent_command_id. What the parent command waits for is kept in
-- command.input -> 'child': {execution_id, return_step, retry_delay}.
--
-- Lock order (locking.sql): whoever finishes a child execution took the child's
-- execution row with all its ancestors first, so the parent execution row is already held
-- when the child's end reports to the parent command; a cancellation walks down from a
-- parent it holds. Neither waits for a row the other holds.


drop function if exists noetl.await_child(
    bigint, integer, text, integer, jsonb, text, double precision, text
);

-- noetl.await_child(command_id, attempt, path, version, payload, return_step,
--                   retry_delay, worker_id, pipeline) -> (outcome, route_command_id)
-- Contract: a worker ran a `playbook` step and hands it over: in one transaction the
--   claimed command moves to 'waiting' (claimed_by cleared: no slot, no heartbeat
--   needed), command.input.child records what it waits for, and the child execution
--   starts linked to it (parent_execution_id, parent_command_id). `retry_delay` is what
--   the step's retry policy says for a failed child (NULL: do not retry). `pipeline` is set
--   when the playbook task is one task of a pipeline: the state the worker resumes the
--   pipeline with after the child (kept in command.input.child.pipeline, see
--   child_finished). outcome is 'ok'
--   (route_command_id NULL), 'stale' (the attempt is no longer claimed: nothing changes),
--   or 'failed' when the child cannot start (unknown path or version, bad payload): the
--   command then fails through fail_command with that error, and route_command_id is what
--   fail_command returned.
-- Locks: the parent command row (FOR UPDATE); the child's new rows.
create or replace function noetl.await_child(
    p_command_id bigint,
    p_attempt integer,
    p_path text,
    p_version integer,
    p_payload jsonb,
    p_return_step text,
    p_retry_delay double precision,
    p_worker_id text,
    p_pipeline jsonb default null,
    out outcome text,
    out route_command_id bigint
)
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_child_id bigint;
    v_error text;
begin
    v_cmd := noetl.lock_claimed_command(p_command_id, p_attempt);
    if v_cmd.command_id is null then
        outcome := 'stale';
        return;
    end if;

    begin
        v_child_id := noetl.start_execution_from(
            p_path, p_payload, p_version, v_cmd.execution_id, p_command_id
        );
    exception
        when sqlstate 'P0002' or sqlstate '22023' or sqlstate '54000' then
            get stacked diagnostics v_error = message_text;
    end;
    if v_child_id is null then
        select f.outcome, f.route_command_id into outcome, route_command_id
        from noetl.fail_command(
            p_command_id, p_attempt,
            format('step ''%s'': child playbook cannot start: %s', v_cmd.step_name, v_error),
            null, null, p_worker_id
        ) as f;
        return;
    end if;

    update noetl.command as c
    set status = 'waiting',
        claimed_by = null,
        input = coalesce(c.input, '{}'::jsonb) || jsonb_build_object(
            'child', jsonb_build_object(
                'execution_id', v_child_id,
                'return_step', p_return_step,
                'retry_delay', p_retry_delay,
                'pipeline', p_pipeline
            )
        )
    where c.command_id = p_command_id;
    outcome := 'ok';
end;
$$;

-- noetl.child_finished(child execution row) -> void
-- Contract: called by finish_execution when an execution with a parent command reaches
--   its final status. If the parent command is still waiting for this very child, it is
--   handed back to the completion path at its current attempt:
--   COMPLETED -> complete_command with the child's result (or the step_result of
--   `return_step`, NULL when that step never ran): the parent step's result is stored, a
--   loop iteration is counted by its loop, and the step routes; but a command parked by a
--   playbook task of a pipeline is queued again at the same attempt with
--   input.pipeline = the parked state plus child_result (`command.resumed`), and the
--   worker that claims it runs the rest of the pipeline;
--   FAILED / CANCELLED -> fail_command with an error naming the child, its status and
--   its error: with a retry_delay and attempts left the parent command is re-queued
--   (its next attempt starts a fresh child), otherwise it fails and routes 'call.error'.
--   A parent command that is no longer waiting for this child (cancelled, failed with its
--   execution, or retried with a newer child) is left alone.
-- Locks: the parent command's execution (already held with the child's ancestors), its
--   loop row, then the parent command row (lock_command_rows, the lock order); then what
--   complete_command or fail_command lock, all held by then.
create or replace function noetl.child_finished(p_child noetl.execution) returns void
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_waiting jsonb;
    v_result jsonb;
begin
    perform noetl.lock_command_rows(array[p_child.parent_command_id]);
    select * into v_cmd from noetl.command as c
    where c.command_id = p_child.parent_command_id;
    if not found then
        return;
    end if;
    v_waiting := v_cmd.input -> 'child';
    if v_cmd.status <> 'waiting'
        or (v_waiting ->> 'execution_id')::bigint is distinct from p_child.execution_id then
        return;
    end if;

    -- Claimed for the length of this transaction only: the completion functions accept
    -- exactly a claimed command at its attempt, which makes a second report a no-op.
    update noetl.command as c
    set status = 'claimed', claimed_by = 'child:' || p_child.execution_id
    where c.command_id = v_cmd.command_id;

    if p_child.status = 'COMPLETED' then
        v_result := p_child.result;
        if v_waiting ->> 'return_step' is not null then
            select r.result into v_result
            from noetl.step_result as r
            where r.execution_id = p_child.execution_id
                and r.step_name = v_waiting ->> 'return_step';
        end if;
        if jsonb_typeof(v_waiting -> 'pipeline') = 'object' then
            update noetl.command as c
            set input = c.input || jsonb_build_object(
                'pipeline', (v_waiting -> 'pipeline')
                || jsonb_build_object('child_result', v_result)
            )
            where c.command_id = v_cmd.command_id;
            perform noetl.requeue_commands(array[v_cmd.command_id]);
            perform noetl.record_event(
                v_cmd.execution_id, 'command.resumed', v_cmd.step_name, v_cmd.command_id,
                v_cmd.attempt, null, null,
                jsonb_build_object(
                    'child_execution_id', p_child.execution_id,
                    'task_index', v_waiting -> 'pipeline' -> 'task_index'
                ),
                v_cmd.loop_id, v_cmd.iter_index
            );
            return;
        end if;
        perform noetl.complete_command(v_cmd.command_id, v_cmd.attempt, v_result, null, null);
        return;
    end if;

    perform noetl.fail_command(
        v_cmd.command_id,
        v_cmd.attempt,
        format(
            'step ''%s'': child playbook %s (execution %s) %s%s', v_cmd.step_name,
            p_child.path, p_child.execution_id, lower(p_child.status),
            coalesce(' in step ''' || p_child.failed_step || '''', '')
            || coalesce(': ' || p_child.error, '')
        ),
        (v_waiting ->> 'retry_delay')::double precision,
        jsonb_build_object(
            'child_execution_id', p_child.execution_id, 'child_status', p_child.status
        ),
        null
    );
end;
$$;
