-- reaper.sql: taking work back from workers that stopped proving they are alive.
--
-- A crash is not a failure. A claim taken back because its worker died, lost the reply or
-- never started it goes back to the queue at the SAME attempt: `max_attempts` counts tool
-- errors only. The next claim bumps claim_gen, so the late outcome of the old claim is
-- still refused (finish_and_claim fences by claim generation). What bounds a command that
-- keeps killing its workers is command.reclaims: past `max_reclaims` (NOETL_MAX_RECLAIMS,
-- default 5) taking it back once more fails it as poison.

-- Signatures changed (max_reclaims): drop the old ones so calls are not ambiguous.
drop function if exists noetl.reap_stale_claims(double precision);
drop function if exists noetl.reap_command(bigint, text);
drop function if exists noetl.reap_command(bigint, text, integer, boolean);

-- noetl.reap_stale_claims_v1(timeout_seconds, max_reclaims) -> integer
-- Contract: finds every claimed command whose worker has not heartbeaten for
--   `timeout_seconds` (its worker row is older than that, stopped, or was never registered
--   and the claim itself is older than that) and takes it back (reap_command, counted as
--   a reclaim): re-queued at the same attempt, or failed as poison once it was taken back
--   `max_reclaims` times already. Returns how many commands it took back.
--   Any daemon may call it on a timer, and a DBA from psql (the unversioned name):
--     select noetl.reap_stale_claims(300);
-- Cost: O(claimed commands) through command_claimed_by_idx, whatever the queue backlog.
-- Locks: pg_try_advisory_xact_lock on the key "noetl.reaper": when another session is
--   reaping, returns 0 at once instead of waiting. Then, in the lock order, the executions
--   (with ancestors), loops and command rows of every stale claim (lock_command_rows),
--   waiting for completions in flight; a claim finished meanwhile is left alone.
-- Failure modes: a negative or NULL timeout, or a negative max_reclaims, raises
--   invalid_parameter_value.
create or replace function noetl.reap_stale_claims_v1(
    p_timeout_seconds double precision default 300,
    p_max_reclaims integer default 5
) returns integer
language plpgsql
as $$
declare
    v_cutoff timestamptz;
    v_ids bigint[];
    v_gens integer[];
    v_reasons text[];
begin
    if p_timeout_seconds is null or p_timeout_seconds < 0 then
        raise exception 'reap_stale_claims: timeout must be >= 0 seconds, got %',
            p_timeout_seconds using errcode = '22023';
    end if;
    if p_max_reclaims is null or p_max_reclaims < 0 then
        raise exception 'reap_stale_claims: max_reclaims must be >= 0, got %',
            p_max_reclaims using errcode = '22023';
    end if;
    if not pg_try_advisory_xact_lock(hashtextextended('noetl.reaper', 0)) then
        return 0;
    end if;
    v_cutoff := noetl.now() - make_interval(secs => p_timeout_seconds);

    select
        array_agg(c.command_id order by c.command_id),
        array_agg(c.claim_gen order by c.command_id),
        array_agg(
            case
                when w.worker_id is null then 'worker never registered'
                when w.stopped_at is not null then 'worker stopped'
                else 'no heartbeat since ' || w.heartbeat_at::text
            end
            order by c.command_id
        )
    into v_ids, v_gens, v_reasons
    from noetl.command as c
    left join noetl.worker as w on c.claimed_by = w.worker_id
    where c.status = 'claimed'
        and (
            w.heartbeat_at < v_cutoff
            or w.stopped_at is not null
            or (w.worker_id is null and coalesce(c.claimed_at, '-infinity') < v_cutoff)
        );

    return noetl.reap_commands(v_ids, v_gens, v_reasons, p_max_reclaims, true);
end;
$$;

-- noetl.reap_command(command_id, reason, max_reclaims, counts, claim_gen) -> boolean
-- Contract: takes back one claimed command whose claim is no longer trusted, writing
--   `command.reaped` (attempt unchanged; meta: worker_id, reason, outcome, reclaims,
--   claim). Returns false (and does nothing) when the command is no longer claimed, or no
--   longer under the claim generation `claim_gen` the caller judged (when given): it was
--   finished and claimed afresh while the caller waited for its locks.
--   * Of an execution that is no longer RUNNING: cancelled (outcome 'cancelled').
--   * Otherwise, when `counts` (its worker died: a reclaim) and the command was taken back
--     `max_reclaims` times already: it fails for good as poison (outcome 'poison';
--     fail_command_finally, then after_command_failed routes it like any failure).
--   * Otherwise: queued again at the SAME attempt, due now, reclaims + 1 when `counts`
--     (outcome 'requeued'). The same row is re-queued, so a loop's issued/done/failed
--     counters and its in-flight bound are unchanged.
--   A lost reply of a live worker (reap_orphan_claims) does not count: the command did not
--   kill anything, and it may well never have started.
-- Locks: in the lock order, its execution (with ancestors), loop and command row
--   (lock_command_rows; callers that reap several commands lock them all first).
create or replace function noetl.reap_command(
    p_command_id bigint,
    p_reason text,
    p_max_reclaims integer default 5,
    p_counts boolean default true,
    p_claim_gen integer default null
) returns boolean
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_reclaims integer;
    v_error text;
begin
    perform noetl.lock_command_rows(array[p_command_id]);
    select * into v_cmd from noetl.command as c
    where c.command_id = p_command_id
        -- `is true`: found by key, not through a status index (docs/architecture.md)
        and (c.status = 'claimed') is true
        and c.claim_gen = coalesce(p_claim_gen, c.claim_gen);
    if not found then
        return false;
    end if;
    v_reclaims := v_cmd.reclaims + p_counts::integer;
    v_error := format(
        'step ''%s'': attempt %s was taken back from worker %s (%s)',
        v_cmd.step_name, v_cmd.attempt, coalesce(v_cmd.claimed_by, '?'), p_reason
    );

    if not noetl.execution_is_running(v_cmd.execution_id) then
        update noetl.command as c
        set status = 'cancelled', finished_at = noetl.now()
        where c.command_id = v_cmd.command_id;
        perform noetl.record_reap(v_cmd, p_reason, 'cancelled', v_cmd.reclaims, v_error);
        return true;
    end if;

    if p_counts and v_cmd.reclaims >= coalesce(p_max_reclaims, 5) then
        v_error := format(
            'step ''%s'': poison: the command was taken back %s times from workers that '
            'stopped while holding it (the last: %s, %s); not re-queued again '
            '(NOETL_MAX_RECLAIMS=%s)',
            v_cmd.step_name, v_reclaims, coalesce(v_cmd.claimed_by, '?'), p_reason,
            p_max_reclaims
        );
        update noetl.command as c set reclaims = v_reclaims
        where c.command_id = v_cmd.command_id;
        perform noetl.record_reap(v_cmd, p_reason, 'poison', v_reclaims, v_error);
        perform noetl.fail_command_finally(v_cmd, v_error, null);
        perform noetl.after_command_failed(v_cmd, v_error, null, null);
        return true;
    end if;

    -- Woken once by reap_commands, for every command it took back.
    perform noetl.requeue_commands(array[v_cmd.command_id], false, 0, p_counts, false);
    perform noetl.record_reap(v_cmd, p_reason, 'requeued', v_reclaims, v_error);
    return true;
end;
$$;

-- noetl.reap_commands(command_ids, claim_gens, reasons, max_reclaims, counts) -> integer
-- Contract: the one body of every reaper: takes back each command of `command_ids` still
--   claimed under the matching generation of `claim_gens` (reap_command with its reason:
--   `reasons` one per command, or one for all; `counts` says whether it is a reclaim),
--   then wakes workers once if any went back. Returns how many were taken back. NULL or
--   empty ids: 0.
-- Locks: in the lock order, the executions (with ancestors), loops and command rows of
--   all the commands at once (lock_command_rows), before the first is reaped.
create or replace function noetl.reap_commands(
    p_command_ids bigint[],
    p_claim_gens integer[],
    p_reasons text[],
    p_max_reclaims integer,
    p_counts boolean
) returns integer
language plpgsql
as $$
declare
    v_index integer;
    v_reaped integer := 0;
begin
    if coalesce(cardinality(p_command_ids), 0) = 0 then
        return 0;
    end if;
    perform noetl.lock_command_rows(p_command_ids);
    for v_index in 1..cardinality(p_command_ids) loop
        if noetl.reap_command(
            p_command_ids[v_index],
            p_reasons[case when cardinality(p_reasons) = 1 then 1 else v_index end],
            p_max_reclaims, p_counts, p_claim_gens[v_index]
        ) then
            v_reaped := v_reaped + 1;
        end if;
    end loop;
    if v_reaped > 0 then
        perform noetl.notify_queue();
    end if;
    return v_reaped;
end;
$$;

-- noetl.record_reap(command, reason, outcome, reclaims, error) -> void
-- Contract: writes the `command.reaped` event of reap_command (at the command's attempt).
-- Locks: none beyond the insert.
create or replace function noetl.record_reap(
    p_cmd noetl.command,
    p_reason text,
    p_outcome text,
    p_reclaims integer,
    p_error text
) returns void
language sql
as $$
    select noetl.record_event(
        p_cmd.execution_id, 'command.reaped', p_cmd.step_name, p_cmd.command_id,
        p_cmd.attempt, null, p_error,
        jsonb_build_object(
            'worker_id', p_cmd.claimed_by, 'reason', p_reason, 'outcome', p_outcome,
            'reclaims', p_reclaims, 'claim', p_cmd.claim_gen
        ),
        p_cmd.loop_id, p_cmd.iter_index
    );
$$;

-- noetl.reap_orphan_claims_v1(worker_id, held_command_ids, min_age_seconds) -> integer
-- Contract: a live worker's own sweep. Takes back (reap_command, not counted as a reclaim)
--   the claims of `worker_id` older than `min_age_seconds` that the worker does not hold
--   in memory: claims whose reply was lost when a connection broke after the claim
--   committed, including loop iterations created already claimed inside a committed
--   finish_and_claim. They never ran, so they go back to the queue at the same attempt.
--   Returns how many it took back.
-- Cost: O(claims of this worker) through command_claimed_by_idx.
-- Locks: the claims' executions, loops and command rows in the lock order.
create or replace function noetl.reap_orphan_claims_v1(
    p_worker_id text,
    p_held_command_ids bigint[],
    p_min_age_seconds double precision
) returns integer
language plpgsql
as $$
declare
    v_ids bigint[];
    v_gens integer[];
begin
    select array_agg(c.command_id order by c.command_id),
        array_agg(c.claim_gen order by c.command_id)
    into v_ids, v_gens
    from noetl.command as c
    where c.claimed_by = p_worker_id
        and c.status = 'claimed'
        and c.claimed_at <= noetl.now() - make_interval(secs => p_min_age_seconds)
        and not c.command_id = any(coalesce(p_held_command_ids, '{}'));
    return noetl.reap_commands(
        v_ids, v_gens, array['claim not held by its worker (lost reply)'], null, false
    );
end;
$$;

-- noetl.reap_earlier_process_v1(worker_id, max_reclaims) -> integer
-- Contract: called by a worker at start-up: every claim still recorded under its worker id
--   belongs to an earlier process with that id, which is gone (crashed or killed). Each is
--   taken back as a reclaim (reap_command: re-queued at the same attempt, or poison past
--   `max_reclaims`). Returns how many.
-- Locks: the claims' executions, loops and command rows in the lock order.
create or replace function noetl.reap_earlier_process_v1(
    p_worker_id text,
    p_max_reclaims integer default 5
) returns integer
language plpgsql
as $$
declare
    v_ids bigint[];
    v_gens integer[];
begin
    select array_agg(c.command_id order by c.command_id),
        array_agg(c.claim_gen order by c.command_id)
    into v_ids, v_gens
    from noetl.command as c
    where c.claimed_by = p_worker_id and c.status = 'claimed';
    return noetl.reap_commands(
        v_ids, v_gens, array['claimed by an earlier process with this worker id'],
        p_max_reclaims, true
    );
end;
$$;
