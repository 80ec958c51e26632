-- completion.sql: a worker reports the outcome of a command it claimed.

-- Signatures changed (the claim generation fences direct calls too): drop the old ones so
-- calls are not ambiguous.
drop function if exists noetl.complete_command(bigint, integer, jsonb, jsonb, text, jsonb);
drop function if exists noetl.fail_command(
    bigint, integer, text, double precision, jsonb, text
);
drop function if exists noetl.lock_claimed_command(bigint, integer, text);
-- (worker_id added: a refusal of a worker's own call raises the NOTICE it logs.)
drop function if exists noetl.lock_claimed_command(bigint, integer, text, integer, text);

-- noetl.complete_command(command_id, attempt, result, ctx_set, worker_id, targets, claim)
--   -> (outcome, route_command_id)
-- Contract: records `call.done` for the claimed attempt `attempt` and applies what follows
--   in the same transaction: the step result is stored for later templates, `ctx_set`
--   (the step's rendered `set` writes to ctx) is merged into the execution, a loop
--   iteration is counted by its loop, unconditional arcs issue their targets, conditional
--   arcs create a route command. With `worker_id` that route command is created already
--   claimed by the caller, which evaluates it at once (no wake-up round trip); its id is
--   returned; with `targets` (the arcs the caller evaluated, see route_after) they are
--   applied in this transaction instead. outcome is 'ok', or 'stale' when the command is
--   no longer claimed at that attempt and, when `claim` is given, under that claim
--   generation (it was reaped, retried, cancelled or completed; reaped and claimed again
--   at the same attempt has a new generation): a stale call changes nothing but the
--   `command.outcome_refused` event. A worker passes the claim_gen its claim returned
--   (complete_command_v1 requires it); without it the attempt alone fences.
-- Locks: in the lock order, its execution (with ancestors), its loop and the command row
--   (lock_command_rows; the fence of lock_claimed_command is the update's WHERE clause,
--   and lock_claimed_command records a refusal); routing then re-uses the execution row
--   it holds.
-- Failure modes: raises no_data_found for an unknown command id.
create or replace function noetl.complete_command(
    p_command_id bigint,
    p_attempt integer,
    p_result jsonb default null,
    p_ctx_set jsonb default null,
    p_worker_id text default null,
    p_targets jsonb default null,
    p_claim integer default null,
    out outcome text,
    out route_command_id bigint
)
language plpgsql
as $$
declare
    -- The command row as this call updated it (status 'done').
    v_cmd noetl.command;
begin
    -- lock_claimed_command's fence, applied by the update itself (one statement, where a
    -- read then an update were two): done only while claimed at `attempt` and, when
    -- given, under `claim`; NULLs fence nothing, as there.
    perform noetl.lock_command_rows(array[p_command_id]);
    update noetl.command as c
    set status = 'done', finished_at = noetl.now()
    where
        c.command_id = p_command_id
        -- `is true`: found by key, not through a status index (docs/architecture.md)
        and (c.status = 'claimed') is true
        and coalesce(c.attempt = p_attempt, true)
        and coalesce(c.claim_gen = p_claim, true)
    returning c.* into v_cmd;
    if not found then
        -- Refused or unknown: lock_claimed_command records the refusal or raises.
        v_cmd := noetl.lock_claimed_command(p_command_id, p_attempt, null, p_claim, 'done');
        if v_cmd.command_id is not null then
            raise exception 'complete_command: command %: the update''s fence and '
                'lock_claimed_command''s disagree', p_command_id;
        end if;
        outcome := 'stale';
        return;
    end if;
    if v_cmd.kind in ('route', 'loop', 'cursor') then
        raise exception 'command % is a % command; it is finished by %', p_command_id,
            v_cmd.kind,
            case v_cmd.kind
                when 'route' then 'apply_route' when 'loop' then 'start_loop'
                else 'finish_cursor_claim_v1'
            end
            using errcode = '22023';
    end if;

    perform noetl.record_event(
        v_cmd.execution_id, 'call.done', v_cmd.step_name, p_command_id, p_attempt,
        p_result, null, null, v_cmd.loop_id, v_cmd.iter_index
    );

    outcome := 'ok';
    if v_cmd.loop_id is not null then
        route_command_id := noetl.finish_loop_item(v_cmd, 'done', p_result, p_worker_id);
        return;
    end if;

    if p_ctx_set is not null and p_ctx_set <> '{}'::jsonb then
        update noetl.execution as e
        set ctx = e.ctx || p_ctx_set
        where e.execution_id = v_cmd.execution_id;
    end if;

    perform noetl.store_step_result(
        v_cmd.execution_id, v_cmd.step_name, p_command_id, p_result
    );
    route_command_id := noetl.route_after(
        v_cmd, 'call.done', null, p_worker_id, p_targets
    );
end;
$$;

-- noetl.fail_command(command_id, attempt, error, retry_delay_seconds, output, worker_id,
--   claim) -> (outcome, route_command_id)
-- Contract: records `call.error` for the claimed attempt. When the caller asks for a retry
--   (`retry_delay_seconds` not NULL, decided by the step's policy) and attempts remain
--   (attempt < max_attempts), the same command is re-queued as attempt + 1, due after the
--   delay, and `command.retried` is written: outcome 'retried'. Otherwise the command
--   fails (`command.failed`, outcome 'failed'): a loop iteration is counted as failed by
--   its loop; a step routes through its conditional arcs with event.name 'call.error' or,
--   with none, fails the execution. 'stale' as in complete_command (fenced by attempt and,
--   when given, the claim generation `claim`).
-- Locks: as complete_command (execution, loop, command row, in the lock order).
create or replace function noetl.fail_command(
    p_command_id bigint,
    p_attempt integer,
    p_error text,
    p_retry_delay_seconds double precision default null,
    p_output jsonb default null,
    p_worker_id text default null,
    p_claim integer default null,
    out outcome text,
    out route_command_id bigint
)
language plpgsql
as $$
declare
    v_cmd noetl.command;
begin
    v_cmd := noetl.lock_claimed_command(p_command_id, p_attempt, null, p_claim, 'fail');
    if v_cmd.command_id is null then
        outcome := 'stale';
        return;
    end if;

    perform noetl.record_event(
        v_cmd.execution_id, 'call.error', v_cmd.step_name, p_command_id, p_attempt,
        p_output, p_error, null, v_cmd.loop_id, v_cmd.iter_index
    );

    if p_retry_delay_seconds is not null and v_cmd.attempt < v_cmd.max_attempts then
        perform noetl.requeue_commands(array[p_command_id], true, p_retry_delay_seconds);
        perform noetl.record_event(
            v_cmd.execution_id, 'command.retried', v_cmd.step_name, p_command_id,
            p_attempt + 1, null, null,
            jsonb_build_object('delay_seconds', p_retry_delay_seconds),
            v_cmd.loop_id, v_cmd.iter_index
        );
        outcome := 'retried';
        return;
    end if;

    perform noetl.fail_command_finally(v_cmd, p_error, p_output);
    outcome := 'failed';
    route_command_id := noetl.after_command_failed(v_cmd, p_error, p_output, p_worker_id);
end;
$$;

-- noetl.complete_command_v1(command_id, attempt, claim, result, ctx_set)
--   -> (outcome, route_command_id)
-- Worker protocol v1, for a worker (or a script) that reports one outcome at a time
-- instead of through finish_and_claim_v1: complete_command fenced by attempt AND claim
-- generation, both required. Conditional arcs become a route command queued for a router.
-- Locks: as complete_command. Fails: 22023 when `claim` is NULL; as complete_command.
create or replace function noetl.complete_command_v1(
    p_command_id bigint,
    p_attempt integer,
    p_claim integer,
    p_result jsonb default null,
    p_ctx_set jsonb default null,
    out outcome text,
    out route_command_id bigint
)
language plpgsql
as $$
begin
    if p_claim is null then
        raise exception 'complete_command_v1: command %: the claim generation is required',
            p_command_id using errcode = '22023';
    end if;
    select r.outcome, r.route_command_id into outcome, route_command_id
    from noetl.complete_command(
        p_command_id, p_attempt, p_result, p_ctx_set, null, null, p_claim
    ) as r;
end;
$$;

-- noetl.fail_command_v1(command_id, attempt, claim, error, retry_delay_seconds, output)
--   -> (outcome, route_command_id)
-- Worker protocol v1: fail_command fenced by attempt AND claim generation, both required.
-- Locks: as fail_command. Fails: 22023 when `claim` is NULL; as fail_command.
create or replace function noetl.fail_command_v1(
    p_command_id bigint,
    p_attempt integer,
    p_claim integer,
    p_error text,
    p_retry_delay_seconds double precision default null,
    p_output jsonb default null,
    out outcome text,
    out route_command_id bigint
)
language plpgsql
as $$
begin
    if p_claim is null then
        raise exception 'fail_command_v1: command %: the claim generation is required',
            p_command_id using errcode = '22023';
    end if;
    select r.outcome, r.route_command_id into outcome, route_command_id
    from noetl.fail_command(
        p_command_id, p_attempt, p_error, p_retry_delay_seconds, p_output, null, p_claim
    ) as r;
end;
$$;

-- noetl.fail_command_finally(command, error, output) -> void
-- Contract: marks a command failed for good and writes `command.failed`. Shared by
--   fail_command and the reaper (attempts exhausted). Caller holds the command row lock.
create or replace function noetl.fail_command_finally(
    p_cmd noetl.command,
    p_error text,
    p_output jsonb
) returns void
language plpgsql
as $$
begin
    update noetl.command as c
    set status = 'failed', finished_at = noetl.now()
    where c.command_id = p_cmd.command_id;
    perform noetl.record_event(
        p_cmd.execution_id, 'command.failed', p_cmd.step_name, p_cmd.command_id,
        p_cmd.attempt, p_output, p_error, null, p_cmd.loop_id, p_cmd.iter_index
    );
end;
$$;

-- noetl.after_command_failed(command, error, output, worker_id) -> route_command_id
-- Contract: what a definitive failure leads to: a route command that failed (its arcs could
--   not be evaluated) fails the execution; a loop iteration is counted by its loop; a step
--   stores {status: error, error, output} as its result (no output key when `output` is
--   NULL) and routes with 'call.error'.
-- Locks: through routing, the loop or execution row.
create or replace function noetl.after_command_failed(
    p_cmd noetl.command,
    p_error text,
    p_output jsonb,
    p_worker_id text
) returns bigint
language plpgsql
as $$
declare
    -- (jsonb_build_object never returns NULL: a NULL output is left out explicitly.)
    v_error_result jsonb := jsonb_build_object('status', 'error', 'error', p_error)
        || case when p_output is null then '{}'::jsonb
            else jsonb_build_object('output', p_output) end;
begin
    if p_cmd.kind = 'route' then
        -- A route that cannot be evaluated (bad template) must not route again.
        perform noetl.fail_execution(p_cmd.execution_id, p_cmd.step_name, p_error);
        return null;
    end if;
    if p_cmd.kind = 'cursor' then
        -- A cursor loop's claim (poison, say): a failed item, its slot drained.
        return noetl.cursor_claim_failed(p_cmd, p_error, p_worker_id);
    end if;
    if p_cmd.loop_id is not null then
        return noetl.finish_loop_item(p_cmd, 'failed', v_error_result, p_worker_id);
    end if;
    perform noetl.store_step_result(
        p_cmd.execution_id, p_cmd.step_name, p_cmd.command_id, v_error_result
    );
    return noetl.route_after(p_cmd, 'call.error', p_error, p_worker_id);
end;
$$;

-- noetl.store_step_result(execution_id, step_name, command_id, result) -> void
-- Contract: keeps the latest result of a step for later templates (`{{ step.field }}`).
--   The event log keeps every result; this row is the read model templates use.
-- Locks: the step_result row.
create or replace function noetl.store_step_result(
    p_execution_id bigint,
    p_step_name text,
    p_command_id bigint,
    p_result jsonb
) returns void
language plpgsql
as $$
begin
    insert into noetl.step_result (execution_id, step_name, result, command_id)
    values (p_execution_id, p_step_name, p_result, p_command_id)
    on conflict (execution_id, step_name) do update
    set result = excluded.result, command_id = excluded.command_id, updated_at = noetl.now();
end;
$$;

-- noetl.lock_claimed_command(command_id, attempt, kind, claim, op, worker_id)
--   -> noetl.command
-- Contract: the fencing preamble of every outcome and of every call a claim holder makes
--   while it runs (complete, fail, route, loop, await_child, a cursor claim, a stream's
--   chunk; finish_and_claim fences a worker's batch first, then its outcomes pass here
--   again). Takes the locks of the command in the lock order and returns the command when
--   it is claimed at `attempt` and, when `claim` is given, under that claim generation;
--   returns NULL (the caller reports 'stale') when it is not: taken back (even if claimed
--   again at the same attempt), retried, cancelled or finished meanwhile. A refusal is
--   recorded (refuse_outcome, with `claim`, `op` and `worker_id`: given, the refusal also
--   raises the NOTICE the worker logs). With `kind`, a command of another kind is an error
--   (a route command finished as a loop).
-- Locks: its execution (with ancestors), its loop, then the command row
--   (lock_command_rows); rows a caller such as finish_and_claim already holds are free.
-- Failure modes: raises no_data_found (P0002) naming an unknown command id, and 22023
--   for a kind mismatch.
create or replace function noetl.lock_claimed_command(
    p_command_id bigint,
    p_attempt integer,
    p_kind text default null,
    p_claim integer default null,
    p_op text default null,
    p_worker_id text default null
) returns noetl.command
language plpgsql
as $$
declare
    v_cmd noetl.command;
begin
    perform noetl.lock_command_rows(array[p_command_id]);
    select * into v_cmd from noetl.command as c where c.command_id = p_command_id;
    if not found then
        raise exception 'command % does not exist', p_command_id using errcode = 'P0002';
    end if;
    if p_kind is not null and v_cmd.kind <> p_kind then
        raise exception 'command % is not a % command', p_command_id, p_kind
            using errcode = '22023';
    end if;
    if v_cmd.status <> 'claimed' or v_cmd.attempt <> p_attempt
        or v_cmd.claim_gen <> coalesce(p_claim, v_cmd.claim_gen) then
        perform noetl.refuse_outcome(v_cmd, p_attempt, p_claim, p_op, p_worker_id);
        return null;
    end if;
    return v_cmd;
end;
$$;

-- noetl.refuse_outcome(command, attempt, claim, op, worker_id) -> void
-- Contract: the trace of an outcome refused as stale (its claim was taken back, retried,
--   cancelled or already finished): writes `command.outcome_refused` with the refused
--   attempt and meta {op, claim, worker_id, status, current_attempt, current_claim,
--   holder} (what the command is now); for a worker's outcome (`worker_id` given) also
--   raises a NOTICE starting "outcome refused:", which the worker logs. Changes no state.
-- Locks: none beyond the event insert (the caller holds the command row).
create or replace function noetl.refuse_outcome(
    p_cmd noetl.command,
    p_attempt integer,
    p_claim integer,
    p_op text,
    p_worker_id text
) returns void
language plpgsql
as $$
begin
    perform noetl.record_event(
        p_cmd.execution_id, 'command.outcome_refused', p_cmd.step_name, p_cmd.command_id,
        p_attempt, null, null,
        jsonb_strip_nulls(jsonb_build_object(
            'op', p_op, 'claim', p_claim, 'worker_id', p_worker_id, 'status', p_cmd.status,
            'current_attempt', p_cmd.attempt, 'current_claim', p_cmd.claim_gen,
            'holder', p_cmd.claimed_by
        )),
        p_cmd.loop_id, p_cmd.iter_index
    );
    if p_worker_id is not null then
        raise notice 'outcome refused: command % (execution %, step ''%'') attempt % claim % '
            'from worker %: the command is now % at attempt % claim %',
            p_cmd.command_id, p_cmd.execution_id, p_cmd.step_name, p_attempt,
            coalesce(p_claim::text, '?'), p_worker_id, p_cmd.status, p_cmd.attempt,
            p_cmd.claim_gen;
    end if;
end;
$$;
