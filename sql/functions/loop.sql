-- loop.sql: loops and fan-out, counted in SQL. The loop row is the one place that decides
-- how many iterations are in flight and when the loop closes; every change to it happens
-- under its row lock in the same transaction as the events that move it.
--
-- Items are issued in index order, so the items issued so far are exactly those with
-- iter_index < loop.issued, and the in-flight count is issued - done - failed (checked by
-- the table constraint loop_in_flight_bound). A loop_item stays 'pending' until its
-- iteration is counted 'done' or 'failed'; its command is found by (loop_id, iter_index).

drop function if exists noetl.issue_loop_items(noetl.loop, integer);
drop function if exists noetl.issue_loop_items(noetl.loop, integer, integer);
drop function if exists noetl.advance_loop(bigint, integer, integer, text);
drop function if exists noetl.finish_loop_iterations(text, jsonb);

-- noetl.start_loop(command_id, attempt, items, loop_spec, worker_id) -> route_command_id
-- Contract: finishes the claimed 'loop' command of a loop step: stores every item of the
--   rendered collection as a loop_item row (one bulk insert), writes `loop.started`
--   (or `loop.fanout.started`) with loop_id and collection_size, puts the loop command in
--   'waiting' (it stays active until the loop closes) and issues the first
--   min(max_in_flight, total) iterations (max_in_flight is 1 for a sequential loop).
--   An empty collection closes the loop at once. A cursor loop (mode 'cursor') has no
--   collection: start_cursor_loop (cursor_loop.sql) starts it.
--   loop_spec: {iterator, mode, max_in_flight, is_fanout, max_shard_retries, on_error}
--   (on_error: 'fail', the default, or 'continue'; see close_loop).
--   Returns a claimed route command when an empty loop routes through conditional arcs.
--   A stale attempt changes nothing and returns NULL.
-- Locks: the loop command row; the new loop row is created with its counters final.
-- Failure modes: raises (naming the step) when items is not a JSON array.
create or replace function noetl.start_loop(
    p_command_id bigint,
    p_attempt integer,
    p_items jsonb,
    p_loop_spec jsonb,
    p_worker_id text default null
) returns bigint
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_loop noetl.loop;
    v_total integer;
    v_mode text := coalesce(p_loop_spec ->> 'mode', 'sequential');
    v_fanout boolean := coalesce((p_loop_spec ->> 'is_fanout')::boolean, false);
    v_max_in_flight integer;
begin
    v_cmd := noetl.lock_claimed_command(p_command_id, p_attempt, 'loop');
    if v_cmd.command_id is null then
        return null;
    end if;
    if v_mode = 'cursor' then
        return noetl.start_cursor_loop(v_cmd, p_attempt, p_loop_spec);
    end if;
    if jsonb_typeof(p_items) is distinct from 'array' then
        raise exception 'step "%": loop.in must render to a list, got %', v_cmd.step_name,
            coalesce(jsonb_typeof(p_items), 'null') using errcode = '22023';
    end if;
    v_total := jsonb_array_length(p_items);
    v_max_in_flight := case
        when v_mode = 'sequential' then 1
        else greatest(coalesce((p_loop_spec ->> 'max_in_flight')::integer, 10), 1)
    end;

    insert into noetl.loop (
        execution_id, step_name, command_id, iterator, mode, max_in_flight, total, issued,
        is_fanout, max_shard_retries, on_error
    )
    values (
        v_cmd.execution_id, v_cmd.step_name, v_cmd.command_id,
        coalesce(p_loop_spec ->> 'iterator', 'item'),
        v_mode,
        v_max_in_flight,
        v_total,
        least(v_max_in_flight, v_total),
        v_fanout,
        case when v_fanout
            then coalesce((p_loop_spec ->> 'max_shard_retries')::integer, 2) else 0 end,
        coalesce(p_loop_spec ->> 'on_error', 'fail')
    )
    returning * into v_loop;

    insert into noetl.loop_item (loop_id, iter_index, execution_id, item_value)
    select v_loop.loop_id, (items.ordinality - 1)::integer, v_cmd.execution_id, items.value
    from jsonb_array_elements(p_items) with ordinality as items (value, ordinality);

    update noetl.command as c set status = 'waiting' where c.command_id = p_command_id;

    perform noetl.record_event(
        v_cmd.execution_id,
        case when v_fanout then 'loop.fanout.started' else 'loop.started' end,
        v_cmd.step_name, p_command_id, p_attempt, null, null,
        jsonb_build_object(
            'loop_id', v_loop.loop_id, 'collection_size', v_total,
            'total_shards', case when v_fanout then v_total end,
            'max_in_flight', v_loop.max_in_flight, 'mode', v_loop.mode
        ),
        v_loop.loop_id
    );

    if v_total = 0 then
        return noetl.close_loop(v_loop.loop_id, p_worker_id);
    end if;
    perform noetl.issue_loop_items(v_loop, 0, v_loop.issued);
    return null;
end;
$$;

-- noetl.issue_loop_items(loop, from_index, n, claimer, claim_n) -> claimed command ids
-- Contract: issues the iterations with iter_index in [from_index, from_index + n) as
--   commands keyed "iter:<loop_id>:<index>" (a key issued before is skipped), with one
--   `command.issued` event each. The first `claim_n` of them are created already claimed
--   by `claimer` (a worker finishing this loop's iterations with free capacity: no queue
--   round trip), when that worker serves the step's kind (`kinds` NULL: any); their ids
--   are returned, and their `command.issued` names the claimer (meta.worker_id): issued
--   and claimed in one happening, one event, not a `command.claimed` beside it (a third
--   of a loop item's events). The rest are queued, with one wake-up.
--   Does not touch the loop row: the caller counts all n in loop.issued in its own update.
-- Locks: the caller holds the loop row; the unique keys of the new commands.
create or replace function noetl.issue_loop_items(
    p_loop noetl.loop,
    p_from integer,
    p_n integer,
    p_claimer text default null,
    p_claim_n integer default 0,
    p_kinds text[] default null
) returns bigint[]
language plpgsql
as $$
declare
    v_kind text;
    v_max_attempts integer;
    v_claim_below integer;
    v_claimed bigint[];
    v_queued integer;
    v_logged integer;
    -- Every item's input, built once rather than once per row.
    v_input jsonb := jsonb_build_object('loop_total', p_loop.total);
begin
    if p_n <= 0 then
        return '{}';
    end if;
    select s.tool_kind, s.max_attempts into strict v_kind, v_max_attempts
    from noetl.catalog_step as s
    inner join noetl.execution as e on s.catalog_id = e.catalog_id
    where e.execution_id = p_loop.execution_id and s.step_name = p_loop.step_name;
    -- Items with iter_index below this are created claimed by p_claimer.
    v_claim_below := p_from + case
        when p_claimer is not null and (p_kinds is null or v_kind = any(p_kinds))
            then least(greatest(p_claim_n, 0), p_n)
        else 0
    end;

    with issued as (
        insert into noetl.command (
            execution_id, command_key, kind, step_name, max_attempts, loop_id, iter_index,
            input, status, claimed_by, claimed_at
        )
        select
            p_loop.execution_id,
            'iter:' || p_loop.loop_id || ':' || items.iter_index,
            v_kind,
            p_loop.step_name,
            v_max_attempts,
            p_loop.loop_id,
            items.iter_index,
            v_input,
            case when items.iter_index < v_claim_below then 'claimed' else 'queued' end,
            case when items.iter_index < v_claim_below then p_claimer end,
            case when items.iter_index < v_claim_below then noetl.now() end
        from generate_series(p_from, p_from + p_n - 1) as items (iter_index)
        order by items.iter_index
        on conflict on constraint command_key_unique do nothing
        returning command_id, command_key, iter_index, status
    )

    select
        coalesce(array_agg(issued.command_id) filter (where issued.status = 'claimed'), '{}'),
        count(*) filter (where issued.status = 'queued'),
        noetl.record_events(array_agg(
            row(
                p_loop.execution_id, 'command.issued', p_loop.step_name,
                issued.command_id, 1, null, null,
                jsonb_build_object('kind', v_kind, 'command_key', issued.command_key)
                || case
                    when issued.status = 'claimed'
                        then jsonb_build_object('worker_id', p_claimer)
                    else '{}'::jsonb
                end,
                p_loop.loop_id, issued.iter_index, null
            )::noetl.event_record
            order by issued.iter_index
        ))
    into v_claimed, v_queued, v_logged
    from issued;
    if v_queued > 0 then
        perform noetl.notify_queue(v_kind, v_queued);
    end if;
    return v_claimed;
end;
$$;

-- noetl.advance_loop(loop_id, done, failed, worker_id, claimer, claim_n, kinds)
--   -> (route_command_id, claimed)
-- Contract: counts `done` and `failed` finished iterations of a running loop (their items
--   are already stored), issues as many pending items as the bound now allows
--   (max_in_flight - in flight, at most the pending ones; up to `claim_n` of them created
--   claimed by `claimer`, see issue_loop_items) and writes the counters in one update.
--   The call that brings done + failed to total closes the loop (close_loop, whose claimed
--   route command for `worker_id` is returned). A loop no longer running is left as it is;
--   a loop whose execution is no longer RUNNING counts and becomes 'cancelled' (nothing
--   more is issued for a failed or cancelled run).
-- Locks: the loop row (FOR UPDATE): counts of one loop are applied one transaction at a
--   time, so exactly one transaction sees the last iteration.
create or replace function noetl.advance_loop(
    p_loop_id bigint,
    p_done integer,
    p_failed integer,
    p_worker_id text,
    p_claimer text default null,
    p_claim_n integer default 0,
    p_kinds text[] default null,
    out route_command_id bigint,
    out claimed bigint[]
)
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_next integer;
begin
    claimed := '{}';
    select * into v_loop from noetl.loop as l where l.loop_id = p_loop_id for update;
    if not found or v_loop.status <> 'running' then
        return;
    end if;
    v_loop.done := v_loop.done + p_done;
    v_loop.failed := v_loop.failed + p_failed;
    if not noetl.execution_is_running(v_loop.execution_id) then
        -- The execution failed or was cancelled: count, issue nothing more, stop here.
        update noetl.loop as l
        set done = v_loop.done, failed = v_loop.failed, status = 'cancelled',
            finished_at = noetl.now()
        where l.loop_id = p_loop_id;
        return;
    end if;
    v_next := greatest(least(
        v_loop.max_in_flight - (v_loop.issued - v_loop.done - v_loop.failed),
        v_loop.total - v_loop.issued
    ), 0);
    claimed := noetl.issue_loop_items(
        v_loop, v_loop.issued, v_next, p_claimer, p_claim_n, p_kinds
    );

    update noetl.loop as l
    set done = v_loop.done, failed = v_loop.failed, issued = v_loop.issued + v_next
    where l.loop_id = p_loop_id;

    if v_loop.done + v_loop.failed >= v_loop.total then
        route_command_id := noetl.close_loop(p_loop_id, p_worker_id);
    end if;
end;
$$;

-- noetl.finish_loop_iterations(router, outcomes, worker_id, kinds, claim_n)
--   -> (handled, route_ids, claimed)
-- Contract: the set-based fast path of finish_and_claim for the `done` outcomes of loop
--   iterations ({op: done, command_id, attempt, result}); other outcomes are ignored.
--   Each iteration still claimed at that attempt is marked done with its `call.done`
--   event (and `loop.shard.done` in a fan-out) and its item result, in one statement;
--   then each loop touched is counted once (advance_loop), in loop_id order. Returns the
--   command ids it completed (the caller skips those outcomes; a stale one is not among
--   them and gets the usual treatment), the route commands of loops it closed (claimed by
--   `router`, when not NULL) and the next iterations it issued already claimed by
--   `worker_id` (at most `claim_n` in all, of `kinds`), which the caller claims no more.
-- Locks: the completed command rows (UPDATE), their loop_item rows, then each loop row
--   in loop_id order (so two batches touching the same loops cannot deadlock on them).
create or replace function noetl.finish_loop_iterations(
    p_router text,
    p_outcomes jsonb,
    p_worker_id text default null,
    p_kinds text[] default null,
    p_claim_n integer default 0,
    out handled bigint[],
    out route_ids bigint[],
    out claimed bigint[]
)
language plpgsql
as $$
declare
    v_loop_ids bigint[];
    v_iter_indexes integer[];
    v_count record;
    v_advanced record;
    v_logged integer;
begin
    route_ids := '{}';
    claimed := '{}';
    with outcome as (
        select
            (o.value ->> 'command_id')::bigint as command_id,
            (o.value ->> 'attempt')::integer as attempt,
            o.value -> 'result' as result
        from jsonb_array_elements(coalesce(p_outcomes, '[]')) as o (value)
        where o.value ->> 'op' = 'done'
    ),

    finished as (
        update noetl.command as c
        set status = 'done', finished_at = noetl.now()
        from outcome
        where c.command_id = outcome.command_id
            and c.attempt = outcome.attempt
            -- `is true`: found by key, not through a status index (docs/architecture.md)
            and (c.status = 'claimed') is true
            and c.loop_id is not null
        returning
            c.command_id, c.execution_id, c.step_name, c.loop_id, c.iter_index, c.attempt,
            outcome.result
    ),

    stored as (
        update noetl.loop_item as li
        set status = 'done', result = f.result
        from finished as f
        where li.loop_id = f.loop_id and li.iter_index = f.iter_index
    )

    -- Every call.done first, then the loop.shard.done of the fan-out shards among them.
    select
        coalesce(array_agg(f.command_id), '{}'),
        coalesce(array_agg(f.loop_id), '{}'),
        coalesce(array_agg(f.iter_index), '{}'),
        noetl.record_events(
            array_agg(
                row(
                    f.execution_id, 'call.done', f.step_name, f.command_id, f.attempt,
                    f.result, null, null, f.loop_id, f.iter_index, null
                )::noetl.event_record
                order by f.command_id
            )
            || coalesce(array_agg(
                row(
                    f.execution_id, 'loop.shard.done', f.step_name, f.command_id, f.attempt,
                    null, null, jsonb_build_object('shard_id', f.iter_index, 'retry', false),
                    f.loop_id, f.iter_index, null
                )::noetl.event_record
                order by f.command_id
            ) filter (where l.is_fanout), '{}')
        )
    into handled, v_loop_ids, v_iter_indexes, v_logged
    from finished as f
    left join noetl.loop as l on f.loop_id = l.loop_id;

    for v_count in
        select u.loop_id, count(*)::integer as n, array_agg(u.iter_index) as indexes,
            bool_or(l.mode = 'cursor') as is_cursor
        from unnest(v_loop_ids, v_iter_indexes) as u (loop_id, iter_index)
        inner join noetl."loop" as l on u.loop_id = l.loop_id
        group by u.loop_id
        order by u.loop_id
    loop
        if v_count.is_cursor then
            -- A cursor loop moves each finished item's slot on (cursor_loop.sql).
            claimed := claimed || noetl.advance_cursor_loop(
                v_count.loop_id, v_count.n, 0, v_count.indexes, p_worker_id,
                coalesce(p_claim_n, 0) - cardinality(claimed), p_kinds
            );
            continue;
        end if;
        select * into v_advanced from noetl.advance_loop(
            v_count.loop_id, v_count.n, 0, p_router, p_worker_id,
            coalesce(p_claim_n, 0) - cardinality(claimed), p_kinds
        );
        if v_advanced.route_command_id is not null then
            route_ids := route_ids || v_advanced.route_command_id;
        end if;
        claimed := claimed || v_advanced.claimed;
    end loop;
end;
$$;
