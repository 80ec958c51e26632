-- worker_api.sql: the calls a worker daemon makes, batched so a busy worker needs one
-- round trip per batch.

-- Worker protocol v1: the functions a worker calls carry a version suffix, so workers of
-- an older protocol keep working through a rolling upgrade (worker_compat.sql keeps the
-- unversioned names as thin wrappers); a change a v1 worker cannot read gets a _v2 beside.
-- Claims return rows of noetl.claimed_command (migration 0023).

-- Return types changed (claim_gen, then noetl.claimed_command): drop the old shapes
-- before re-creating them.
drop function if exists noetl.finish_and_claim(text, jsonb, text[], integer);

-- noetl.claim_command_ids(worker_id, kinds, n) -> bigint[]
-- Contract: claims up to `n` due queued commands of the given kinds (NULL: any), marks
--   them claimed by `worker_id` with a new claim generation (claim_gen + 1: the fencing
--   token the worker's outcome must name), writes `command.claimed` for each, returns
--   their ids. Highest priority then oldest first; with `kinds`, that order holds within
--   each kind and across them.
-- Cost: O(n) index entries, whatever the backlog: NULL kinds read command_queue_idx, a
--   kind list reads command_queue_kind_idx once per kind (up to n entries each; one short
--   query planned per kind). Rows due later (a retry's backoff) are stepped over.
-- Locks: FOR UPDATE SKIP LOCKED on the queue rows (the one place the queue is scanned); it
--   never waits. With several kinds, up to n rows per kind are locked and only the first
--   n claimed; the others are released at commit.
-- Plans: index scans only (enable_seqscan): planned without statistics (a fresh database,
--   autovacuum off), the claim's update by id read the whole table
--   (tests/py/test_plan_shapes.py).
create or replace function noetl.claim_command_ids(
    p_worker_id text,
    p_kinds text[],
    p_n integer
) returns bigint[]
language plpgsql
set enable_seqscan = off
as $$
declare
    v_kind text;
    v_candidates bigint[] := '{}';
    v_candidate_priorities integer[] := '{}';
    v_priorities integer[];
    v_picked bigint[];
    v_ids bigint[];
    v_logged integer;
begin
    if p_n is null or p_n <= 0 then
        return '{}';
    end if;
    if p_kinds is null then
        select array_agg(q.command_id) into v_picked
        from (
            select c.command_id
            from noetl.command as c
            where c.status = 'queued' and c.available_at <= noetl.now()
            order by c.priority desc, c.command_id
            limit p_n
            for update skip locked
        ) as q;
    else
        -- One claim per kind, each planned for its literal kind (EXECUTE): with the kind
        -- as a parameter the planner may walk command_queue_idx past the whole backlog of
        -- other kinds, its estimate for a parameter being "as common as any kind".
        for v_kind in select distinct k.kind from unnest(p_kinds) as k (kind) loop
            execute format(
                'select coalesce(array_agg(c.command_id), ''{}''), '
                '    coalesce(array_agg(c.priority), ''{}'') '
                'from (select q.command_id, q.priority from noetl.command as q '
                '      where q.status = ''queued'' and q.kind = %L '
                '          and q.available_at <= noetl.now() '
                '      order by q.priority desc, q.command_id '
                '      limit $1 for update skip locked) as c',
                v_kind
            ) into v_ids, v_priorities using p_n;
            v_candidates := v_candidates || v_ids;
            v_candidate_priorities := v_candidate_priorities || v_priorities;
        end loop;
        select array_agg(u.command_id order by u.priority desc, u.command_id)
        into v_picked
        from (
            select u.command_id, u.priority
            from unnest(v_candidates, v_candidate_priorities) as u (command_id, priority)
            order by u.priority desc, u.command_id
            limit p_n
        ) as u;
    end if;
    if v_picked is null then
        return '{}';
    end if;

    with claimed as (
        update noetl.command as c
        set status = 'claimed', claimed_by = p_worker_id, claimed_at = noetl.now(),
            claim_gen = c.claim_gen + 1
        where c.command_id = any(v_picked)
        returning c.*
    )

    select
        coalesce(array_agg(cl.command_id order by cl.command_id), '{}'),
        noetl.record_events(array_agg(
            row(
                cl.execution_id, 'command.claimed', cl.step_name, cl.command_id, cl.attempt,
                null, null,
                jsonb_build_object('worker_id', p_worker_id, 'claim', cl.claim_gen),
                cl.loop_id, cl.iter_index, null
            )::noetl.event_record
            order by cl.command_id
        ))
    into v_ids, v_logged
    from claimed as cl;
    return v_ids;
end;
$$;

-- noetl.finish_and_claim_v1(worker_id, outcomes, kinds, n) -> setof noetl.claimed_command
-- Contract: applies a worker's finished work and claims its next, in one transaction:
--   `outcomes` is a JSON array of
--     {op: done,  command_id, attempt, claim, result, ctx_set, targets?} -> complete_command
--       (`targets`: the step's conditional arcs as the worker evaluated them, applied in
--       this transaction when the worker serves routes: no route command)
--     {op: fail,  command_id, attempt, claim, error, retry_delay, output} -> fail_command
--     {op: route, command_id, attempt, claim, targets}                -> apply_route
--     {op: loop,  command_id, attempt, claim, items, loop}            -> start_loop
--     {op: await_child, command_id, attempt, claim, path, version, payload, return_step,
--      retry_delay, pipeline}                                -> await_child (child.sql)
--   A plain step's transition (finish_plain_step) and a batch of one loop's iterations
--   (finish_loop_batch) take short paths when they apply, writing what this path writes.
--   Then up to `n` commands are claimed (the queue is scanned only when open_issue_claims
--   found due work of `kinds` queued or the outcomes queued some). Returns (like
--   claim_commands) the route commands created claimed by this worker while finishing
--   (only when `kinds` is NULL or has 'route'; otherwise they are queued for a router),
--   then the newly claimed commands (loop iterations issued by these outcomes are created
--   claimed, within `n`).
--   Fencing: an outcome is applied only while its command is still claimed at its
--   `attempt` and claim generation `claim` (the claim_gen it was handed; an outcome
--   without `claim` is fenced by attempt alone). Any other outcome is refused: it changes
--   nothing, writes `command.outcome_refused` (refuse_outcome) and raises a NOTICE that
--   the worker logs. If any outcome raises, the whole call rolls back and the caller
--   retries the outcomes one by one. Workers are woken (NOTIFY) only if the outcomes
--   issued work and due work is left after the claim.
-- Locks: first, in the lock order (locking.sql), the executions (with ancestors), loops
--   and command rows of every outcome (lock_command_rows), so what the outcomes then lock
--   (routing, loop counters, cancelled children) is already held or lies below a held
--   execution; last, the queue rows with SKIP LOCKED.
-- Failure modes: an unknown command id raises no_data_found (P0002); an unknown op 22023.
-- Plans: the check of the outcomes' claims looks each command up by key, whatever the
--   table's size when it was planned. A backend plans it on its first calls and keeps
--   the plan: written as a join, on a fresh database (noetl.command a few pages, never
--   analyzed) that plan hashed the whole table, and went on doing so as it grew (20,000
--   rows, ~10 ms, per call by the end of a 20,000-item loop: half the database time of
--   a user's first big loop).
create or replace function noetl.finish_and_claim_v1(
    p_worker_id text,
    p_outcomes jsonb,
    p_kinds text[] default null,
    p_n integer default 0
) returns setof noetl.claimed_command
language plpgsql
as $$
declare
    v_outcomes jsonb := coalesce(p_outcomes, '[]');
    v_outcome jsonb;
    v_stale record;
    v_refused bigint[] := '{}';
    v_route bigint;
    v_routes bigint[] := '{}';
    v_id bigint;
    v_attempt integer;
    v_loop_done bigint[];
    v_claimed bigint[];
    v_loop_claimed bigint[];
    -- A worker that does not serve 'route' commands is not handed one pre-claimed.
    v_router text := case
        when p_kinds is null or 'route' = any(p_kinds) then p_worker_id
    end;
    v_plain record;
    v_batch record;
begin
    -- A chain's transition, one plain step done and the next issued to us, takes the
    -- short path (plain_step.sql) when it applies; it writes nothing when it declines.
    -- A loop iteration's outcome names its loop and is never a plain step's: it skips
    -- the short path's read.
    if p_n > 0 and jsonb_array_length(v_outcomes) = 1
        and v_outcomes -> 0 ->> 'op' = 'done'
        and v_outcomes -> 0 ->> 'loop_id' is null then
        select f.applied, f.next_command into v_plain
        from noetl.finish_plain_step(p_worker_id, v_outcomes -> 0, p_kinds) as f;
        if v_plain.applied then
            if (v_plain.next_command).command_id is not null then
                return next v_plain.next_command;
            end if;
            return;
        end if;
    end if;
    -- A batch of one loop's iterations, done and the next issued to us, takes the short
    -- path (loop_batch.sql) when it applies; it writes nothing when it declines.
    if p_n > 0 and v_outcomes -> 0 ->> 'loop_id' is not null then
        select f.applied, f.claimed into v_batch
        from noetl.finish_loop_batch(p_worker_id, v_outcomes, p_kinds, p_n) as f;
        if v_batch.applied then
            return query select * from unnest(v_batch.claimed);
            return;
        end if;
    end if;
    -- Wake-ups for what these outcomes issue are decided once, after our own claim.
    perform
        set_config('noetl.defer_notify', 'on', true),
        set_config('noetl.notify_pending', 'off', true),
        set_config('noetl.wake_pending', '', true);

    perform noetl.lock_command_rows(array(
        select (o.value ->> 'command_id')::bigint from jsonb_array_elements(v_outcomes) as o
    ));
    -- One lookup by key per outcome: `offset 0` keeps the lateral subquery from being
    -- flattened into a join, which a plan made on a small table hashed whole.
    for v_stale in
        select o.value as outcome, l.cmd, (l.cmd).command_id is null as unknown
        from jsonb_array_elements(v_outcomes) as o (value)
        left join lateral (
            select c from noetl.command as c
            where c.command_id = (o.value ->> 'command_id')::bigint
            offset 0
        ) as l (cmd) on true
        where (l.cmd).command_id is null
            or (l.cmd).status <> 'claimed'
            or (l.cmd).attempt <> (o.value ->> 'attempt')::integer
            or (l.cmd).claim_gen <> coalesce((o.value ->> 'claim')::integer, (l.cmd).claim_gen)
    loop
        if v_stale.unknown then
            raise exception 'command % does not exist', v_stale.outcome ->> 'command_id'
                using errcode = 'P0002';
        end if;
        perform noetl.refuse_outcome(
            v_stale.cmd, (v_stale.outcome ->> 'attempt')::integer,
            (v_stale.outcome ->> 'claim')::integer, v_stale.outcome ->> 'op', p_worker_id
        );
        v_refused := v_refused || (v_stale.cmd).command_id;
    end loop;
    if cardinality(v_refused) > 0 then
        v_outcomes := coalesce((
            select jsonb_agg(o.value order by o.ordinality)
            from jsonb_array_elements(v_outcomes) with ordinality as o (value, ordinality)
            where not (o.value ->> 'command_id')::bigint = any(v_refused)
        ), '[]');
    end if;

    -- Loop iterations that finished are completed set-based, each loop counted once.
    if jsonb_path_exists(v_outcomes, '$[*] ? (@.loop_id != null)') then
        select f.handled, f.route_ids, f.claimed into v_loop_done, v_routes, v_loop_claimed
        from noetl.finish_loop_iterations(
            v_router, v_outcomes, p_worker_id, p_kinds, p_n
        ) as f;
    end if;
    v_loop_done := coalesce(v_loop_done, '{}');
    v_routes := coalesce(v_routes, '{}');
    v_loop_claimed := coalesce(v_loop_claimed, '{}');
    -- Steps these outcomes issue are created claimed by us, within what is left of p_n.
    perform noetl.open_issue_claims(p_worker_id, p_kinds, p_n - cardinality(v_loop_claimed));
    for v_outcome in select value from jsonb_array_elements(v_outcomes) loop
        v_id := (v_outcome ->> 'command_id')::bigint;
        continue when v_id = any(v_loop_done);
        v_attempt := (v_outcome ->> 'attempt')::integer;
        v_route := null;
        case v_outcome ->> 'op'
            when 'done' then
                select r.route_command_id into v_route
                from noetl.complete_command(
                    v_id, v_attempt, v_outcome -> 'result',
                    nullif(v_outcome -> 'ctx_set', 'null'::jsonb), v_router,
                    -- Arcs the worker chose are applied here only for a worker that
                    -- serves routes; for one that does not, a router decides.
                    case when v_router is not null then
                        nullif(v_outcome -> 'targets', 'null'::jsonb)
                    end,
                    (v_outcome ->> 'claim')::integer
                ) as r;
            when 'fail' then
                select r.route_command_id into v_route
                from noetl.fail_command(
                    v_id, v_attempt, v_outcome ->> 'error',
                    (v_outcome ->> 'retry_delay')::double precision,
                    nullif(v_outcome -> 'output', 'null'::jsonb), v_router,
                    (v_outcome ->> 'claim')::integer
                ) as r;
            when 'route' then
                perform noetl.apply_route(v_id, v_attempt, v_outcome -> 'targets');
            when 'loop' then
                v_route := noetl.start_loop(
                    v_id, v_attempt, v_outcome -> 'items', v_outcome -> 'loop', v_router
                );
            when 'await_child' then
                select r.route_command_id into v_route
                from noetl.await_child(
                    v_id, v_attempt, v_outcome ->> 'path',
                    (v_outcome ->> 'version')::integer,
                    coalesce(nullif(v_outcome -> 'payload', 'null'::jsonb), '{}'::jsonb),
                    v_outcome ->> 'return_step',
                    (v_outcome ->> 'retry_delay')::double precision, v_router,
                    nullif(v_outcome -> 'pipeline', 'null'::jsonb)
                ) as r;
            else
                raise exception 'unknown outcome op "%"', v_outcome ->> 'op'
                    using errcode = '22023';
        end case;
        if v_route is not null then
            v_routes := v_routes || v_route;
        end if;
    end loop;

    -- Iterations and steps the outcomes issued already claimed by us count against p_n.
    v_claimed := v_loop_claimed || noetl.close_issue_claims();
    -- No queue scan when open_issue_claims found no due work of our kinds and the outcomes
    -- queued none (notify_queue marks notify_pending): a chain's step skips one.
    if p_n - cardinality(v_claimed) > 0 and (
        current_setting('noetl.issue_queue_empty', true) is distinct from 'on'
        or current_setting('noetl.notify_pending', true) = 'on'
    ) then
        v_claimed := v_claimed || noetl.claim_command_ids(
            p_worker_id, p_kinds, p_n - cardinality(v_claimed)
        );
    end if;
    perform set_config('noetl.defer_notify', 'off', true);
    if current_setting('noetl.notify_pending', true) = 'on'
        and noetl.due_work_queued(null) then
        perform noetl.notify_queue();
    end if;

    return query select * from noetl.describe_commands_v1(v_routes || v_claimed);
end;
$$;

-- noetl.register_worker_v1(worker_id, hostname, pid, slots, kinds) -> void
-- Contract: adds or refreshes the worker's registry row and its heartbeat.
-- Locks: the worker row.
create or replace function noetl.register_worker_v1(
    p_worker_id text,
    p_hostname text,
    p_pid integer,
    p_slots integer,
    p_kinds text[]
) returns void
language sql
as $$
    insert into noetl.worker (worker_id, hostname, pid, slots, kinds)
    values (p_worker_id, p_hostname, p_pid, p_slots, p_kinds)
    on conflict (worker_id) do update
    set hostname = excluded.hostname,
        pid = excluded.pid,
        slots = excluded.slots,
        kinds = excluded.kinds,
        heartbeat_at = noetl.now(),
        stopped_at = null;
$$;

-- noetl.worker_heartbeat_v1(worker_id) -> boolean
-- Contract: one write per worker per interval proves every claim of that worker alive
--   (O(workers), not O(commands)). Returns false when the worker row is gone or stopped.
-- Locks: the worker row.
create or replace function noetl.worker_heartbeat_v1(p_worker_id text) returns boolean
language plpgsql
as $$
begin
    update noetl.worker as w
    set heartbeat_at = noetl.now()
    where w.worker_id = p_worker_id and w.stopped_at is null;
    return found;
end;
$$;

-- noetl.stop_worker_v1(worker_id) -> integer
-- Contract: a worker leaving cleanly: marks it stopped and puts its remaining claims back
--   on the queue at the same attempt (they never ran to an outcome; not a reclaim).
--   Returns how many.
-- Locks: the worker row (alone, in its own statement), then the claims' executions, loops
--   and command rows in the lock order (lock_command_rows).
create or replace function noetl.stop_worker_v1(p_worker_id text) returns integer
language plpgsql
as $$
declare
    v_claims bigint[];
begin
    update noetl.worker as w set stopped_at = noetl.now() where w.worker_id = p_worker_id;
    v_claims := array(
        select c.command_id from noetl.command as c
        where c.claimed_by = p_worker_id and c.status = 'claimed'
    );
    perform noetl.lock_command_rows(v_claims);
    -- Still ours once locked: a claim finished meanwhile may have been claimed by another.
    return noetl.requeue_commands(array(
        select c.command_id from noetl.command as c
        where
            c.command_id = any(v_claims)
            and c.claimed_by = p_worker_id
            -- `is true`: found by key, not through a status index (docs/architecture.md)
            and (c.status = 'claimed') is true
    ));
end;
$$;
