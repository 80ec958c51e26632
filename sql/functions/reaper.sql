-- reaper.sql: taking work back from workers that stopped proving they are alive.

-- noetl.reap_stale_claims(timeout_seconds) -> integer
-- Contract: finds every claimed command whose worker has not heartbeaten for
--   `timeout_seconds` (its worker row is older than that, stopped, or was never registered
--   and the claim itself is older than that) and takes it back, writing `command.reaped`
--   (meta: worker_id, reason, outcome). Returns how many commands it took back.
--   * A command with attempts left is re-queued as attempt + 1, due now. The same row is
--     re-queued, so a loop's issued/done/failed counters are unchanged and its in-flight
--     bound holds. A late outcome of the reaped attempt is refused as stale (fencing by
--     attempt, see complete_command).
--   * A command whose attempts are used up fails for good (fail_command_finally) and
--     routes like any failure (after_command_failed: a loop counts the item as failed, a
--     step routes 'call.error' or fails the execution).
--   * A route or loop command only evaluates templates (no side effect), so it is
--     re-queued while attempt < greatest(max_attempts, 3) whatever the step's own budget.
--   * A claimed command of an execution that is no longer RUNNING is cancelled.
--   Any daemon may call it on a timer, and a DBA from psql:
--     select noetl.reap_stale_claims(300);
-- Locks: pg_try_advisory_xact_lock on the key "noetl.reaper": when another session is
--   reaping, returns 0 at once instead of waiting. Each command row FOR UPDATE SKIP LOCKED,
--   so a completion in flight for that row is never waited on (it is looked at next time).
-- Failure modes: a negative or NULL timeout raises invalid_parameter_value.
create or replace function noetl.reap_stale_claims(
    p_timeout_seconds double precision default 300
) returns integer
language plpgsql
as $$
declare
    v_cutoff timestamptz;
    v_stale record;
    v_reaped integer := 0;
begin
    if p_timeout_seconds is null or p_timeout_seconds < 0 then
        raise exception 'reap_stale_claims: timeout must be >= 0 seconds, got %',
            p_timeout_seconds using errcode = '22023';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('noetl.reaper', 0)) then
        return 0;
    end if;
    v_cutoff := now() - make_interval(secs => p_timeout_seconds);

    for v_stale in
        select
            c.command_id,
            case
                when w.worker_id is null then 'worker never registered'
                when w.stopped_at is not null then 'worker stopped'
                else 'no heartbeat since ' || w.heartbeat_at::text
            end as reason
        from noetl.command as c
        left join noetl.worker as w on c.claimed_by = w.worker_id
        where c.status = 'claimed'
            and (
                w.heartbeat_at < v_cutoff
                or w.stopped_at is not null
                or (w.worker_id is null and coalesce(c.claimed_at, '-infinity') < v_cutoff)
            )
        order by c.command_id
        for update of c skip locked
    loop
        v_reaped := v_reaped + 1;
        perform noetl.reap_command(v_stale.command_id, v_stale.reason);
    end loop;

    if v_reaped > 0 then
        perform pg_notify('noetl_command', '');
    end if;
    return v_reaped;
end;
$$;

-- noetl.reap_command(command_id, reason) -> void
-- Contract: takes back one claimed command whose claim is no longer trusted (see
--   reap_stale_claims for what happens to it), writing `command.reaped` with `reason`.
--   A command that is no longer claimed is left alone.
-- Locks: the command row (FOR UPDATE; callers usually hold it already); through
--   after_command_failed, the loop or execution row.
create or replace function noetl.reap_command(p_command_id bigint, p_reason text)
returns void
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_reason text := p_reason;
    v_error text;
    v_budget integer;
begin
    select * into v_cmd from noetl.command as c
    where c.command_id = p_command_id and c.status = 'claimed'
    for update;
    if not found then
        return;
    end if;
    v_error := format(
        'step ''%s'': attempt %s was taken back from worker %s (%s)',
        v_cmd.step_name, v_cmd.attempt, coalesce(v_cmd.claimed_by, '?'), v_reason
    );

    if not exists (
        select 1 from noetl.execution as e
        where e.execution_id = v_cmd.execution_id and e.status = 'RUNNING'
    ) then
        update noetl.command as c
        set status = 'cancelled', finished_at = now()
        where c.command_id = v_cmd.command_id;
        perform noetl.record_event(
            v_cmd.execution_id, 'command.reaped', v_cmd.step_name, v_cmd.command_id,
            v_cmd.attempt, null, v_error,
            jsonb_build_object(
                'worker_id', v_cmd.claimed_by, 'reason', v_reason, 'outcome', 'cancelled'
            ),
            v_cmd.loop_id, v_cmd.iter_index
        );
        return;
    end if;

    v_budget := case
        when v_cmd.kind in ('route', 'loop') then greatest(v_cmd.max_attempts, 3)
        else v_cmd.max_attempts
    end;

    if v_cmd.attempt < v_budget then
        update noetl.command as c
        set status = 'queued',
            attempt = c.attempt + 1,
            available_at = now(),
            claimed_by = null,
            claimed_at = null
        where c.command_id = v_cmd.command_id;
        perform noetl.record_event(
            v_cmd.execution_id, 'command.reaped', v_cmd.step_name, v_cmd.command_id,
            v_cmd.attempt + 1, null, v_error,
            jsonb_build_object(
                'worker_id', v_cmd.claimed_by, 'reason', v_reason, 'outcome', 'requeued'
            ),
            v_cmd.loop_id, v_cmd.iter_index
        );
        return;
    end if;

    perform noetl.record_event(
        v_cmd.execution_id, 'command.reaped', v_cmd.step_name, v_cmd.command_id,
        v_cmd.attempt, null, v_error,
        jsonb_build_object(
            'worker_id', v_cmd.claimed_by, 'reason', v_reason, 'outcome', 'failed'
        ),
        v_cmd.loop_id, v_cmd.iter_index
    );
    perform noetl.fail_command_finally(v_cmd, v_error, null);
    perform noetl.after_command_failed(v_cmd, v_error, null, null);
end;
$$;

-- noetl.reap_orphan_claims(worker_id, held_command_ids, min_age_seconds) -> integer
-- Contract: a live worker's own sweep. Takes back (reap_command) the claims of `worker_id`
--   older than `min_age_seconds` that the worker does not hold in memory: claims whose
--   reply was lost when a connection broke after the claim committed, or claims of an
--   earlier process that used the same worker id (called with '{}' and 0 at start-up).
--   Returns how many it took back.
-- Locks: the command rows (FOR UPDATE SKIP LOCKED).
create or replace function noetl.reap_orphan_claims(
    p_worker_id text,
    p_held_command_ids bigint[],
    p_min_age_seconds double precision
) returns integer
language plpgsql
as $$
declare
    v_command_id bigint;
    v_reaped integer := 0;
begin
    for v_command_id in
        select c.command_id
        from noetl.command as c
        where c.claimed_by = p_worker_id
            and c.status = 'claimed'
            and c.claimed_at <= now() - make_interval(secs => p_min_age_seconds)
            and not c.command_id = any(coalesce(p_held_command_ids, '{}'))
        order by c.command_id
        for update skip locked
    loop
        perform noetl.reap_command(
            v_command_id, 'claim not held by its worker (lost reply or restart)'
        );
        v_reaped := v_reaped + 1;
    end loop;
    if v_reaped > 0 then
        perform pg_notify('noetl_command', '');
    end if;
    return v_reaped;
end;
$$;
