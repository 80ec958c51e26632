-- worker_api.sql: the calls a worker daemon makes, batched so a busy worker needs one
-- round trip per batch.

-- noetl.claim_command_ids(worker_id, kinds, n) -> bigint[]
-- Contract: claims up to `n` due queued commands of the given kinds (NULL: any), marks
--   them claimed by `worker_id`, writes `command.claimed` for each, returns their ids.
-- Locks: FOR UPDATE SKIP LOCKED on the queue rows (the one place the queue is scanned).
create or replace function noetl.claim_command_ids(
    p_worker_id text,
    p_kinds text[],
    p_n integer
) returns bigint[]
language plpgsql
as $$
declare
    v_ids bigint[];
begin
    if p_n is null or p_n <= 0 then
        return '{}';
    end if;
    with picked as (
        select q.command_id
        from noetl.command as q
        where q.status = 'queued'
            and q.available_at <= noetl.now()
            and (p_kinds is null or q.kind = any(p_kinds))
        order by q.priority desc, q.command_id
        limit p_n
        for update skip locked
    ),

    claimed as (
        update noetl.command as c
        set status = 'claimed', claimed_by = p_worker_id, claimed_at = noetl.now()
        from picked
        where c.command_id = picked.command_id
        returning c.*
    ),

    logged as (
        insert into noetl.event (
            execution_id, event_type, node_name, command_id, attempt, loop_id, iter_index,
            meta
        )
        select
            cl.execution_id, 'command.claimed', cl.step_name, cl.command_id, cl.attempt,
            cl.loop_id, cl.iter_index, jsonb_build_object('worker_id', p_worker_id)
        from claimed as cl
    )

    select coalesce(array_agg(cl.command_id order by cl.command_id), '{}') into v_ids
    from claimed as cl;
    return v_ids;
end;
$$;

-- noetl.finish_and_claim(worker_id, outcomes, kinds, n) -> setof claimed commands
-- Contract: applies a worker's finished work and claims its next, in one transaction:
--   `outcomes` is a JSON array of
--     {op: done,  command_id, attempt, result, ctx_set, targets?} -> complete_command
--       (`targets`: the step's conditional arcs as the worker evaluated them, applied in
--       this transaction when the worker serves routes: no route command)
--     {op: fail,  command_id, attempt, error, retry_delay, output} -> fail_command
--     {op: route, command_id, attempt, targets}                -> apply_route
--     {op: loop,  command_id, attempt, items, loop}            -> start_loop
--     {op: await_child, command_id, attempt, path, version, payload, return_step,
--      retry_delay, pipeline}                                -> await_child (child.sql)
--   then up to `n` commands are claimed. Returns (like claim_commands) the route commands
--   created claimed by this worker while finishing (only when `kinds` is NULL or has
--   'route'; otherwise they are queued for a router), then the newly claimed commands
--   (loop iterations issued by these outcomes are created claimed, within `n`).
--   A stale outcome is skipped (its function returns 'stale'). If any outcome raises, the
--   whole call rolls back and the caller retries the outcomes one by one. Workers are
--   woken (NOTIFY) only if the outcomes issued work and due work is left after the claim.
-- Locks: those of the functions it calls; the queue rows with SKIP LOCKED.
create or replace function noetl.finish_and_claim(
    p_worker_id text,
    p_outcomes jsonb,
    p_kinds text[] default null,
    p_n integer default 0
) returns table (
    command_id bigint,
    execution_id bigint,
    catalog_id bigint,
    step_name text,
    kind text,
    attempt integer,
    loop_id bigint,
    iter_index integer,
    input jsonb,
    item jsonb,
    context jsonb
)
language plpgsql
as $$
declare
    v_outcome jsonb;
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
begin
    -- Wake-ups for what these outcomes issue are decided once, after our own claim.
    perform set_config('noetl.defer_notify', 'on', true);
    perform set_config('noetl.notify_pending', 'off', true);
    -- Loop iterations that finished are completed set-based, each loop counted once.
    if jsonb_path_exists(coalesce(p_outcomes, '[]'), '$[*] ? (@.loop_id != null)') then
        select f.handled, f.route_ids, f.claimed into v_loop_done, v_routes, v_loop_claimed
        from noetl.finish_loop_iterations(
            v_router, p_outcomes, p_worker_id, p_kinds, p_n
        ) as f;
    end if;
    v_loop_done := coalesce(v_loop_done, '{}');
    v_routes := coalesce(v_routes, '{}');
    v_loop_claimed := coalesce(v_loop_claimed, '{}');
    for v_outcome in select value from jsonb_array_elements(coalesce(p_outcomes, '[]')) loop
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
                    end
                ) as r;
            when 'fail' then
                select r.route_command_id into v_route
                from noetl.fail_command(
                    v_id, v_attempt, v_outcome ->> 'error',
                    (v_outcome ->> 'retry_delay')::double precision,
                    nullif(v_outcome -> 'output', 'null'::jsonb), v_router
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

    -- Next iterations the loops issued already claimed by us count against p_n.
    v_claimed := v_loop_claimed || noetl.claim_command_ids(
        p_worker_id, p_kinds, p_n - cardinality(v_loop_claimed)
    );
    perform set_config('noetl.defer_notify', 'off', true);
    if current_setting('noetl.notify_pending', true) = 'on' and exists (
        select 1 from noetl.command as q
        where q.status = 'queued' and q.available_at <= noetl.now()
    ) then
        perform noetl.notify_queue();
    end if;

    return query select * from noetl.describe_commands(v_routes || v_claimed);
end;
$$;

-- noetl.register_worker(worker_id, hostname, pid, slots, kinds) -> void
-- Contract: adds or refreshes the worker's registry row and its heartbeat.
-- Locks: the worker row.
create or replace function noetl.register_worker(
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

-- noetl.worker_heartbeat(worker_id) -> boolean
-- Contract: one write per worker per interval proves every claim of that worker alive
--   (O(workers), not O(commands)). Returns false when the worker row is gone or stopped.
-- Locks: the worker row.
create or replace function noetl.worker_heartbeat(p_worker_id text) returns boolean
language plpgsql
as $$
begin
    update noetl.worker as w
    set heartbeat_at = noetl.now()
    where w.worker_id = p_worker_id and w.stopped_at is null;
    return found;
end;
$$;

-- noetl.stop_worker(worker_id) -> integer
-- Contract: a worker leaving cleanly: marks it stopped and puts its remaining claims back
--   on the queue at the same attempt (they never ran to an outcome). Returns how many.
-- Locks: the worker row, then its claimed command rows.
create or replace function noetl.stop_worker(p_worker_id text) returns integer
language plpgsql
as $$
declare
    v_released integer;
begin
    update noetl.worker as w set stopped_at = noetl.now() where w.worker_id = p_worker_id;
    update noetl.command as c
    set status = 'queued', claimed_by = null, claimed_at = null
    where c.claimed_by = p_worker_id and c.status = 'claimed';
    get diagnostics v_released = row_count;
    if v_released > 0 then
        perform noetl.notify_queue();
    end if;
    return v_released;
end;
$$;
