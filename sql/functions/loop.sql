-- loop.sql: loops and fan-out, counted in SQL. The loop row is the one place that decides
-- how many iterations are in flight and when the loop closes; every change to it happens
-- under its row lock in the same transaction as the events that move it.
--
-- Items are issued in index order, so the items issued so far are exactly those with
-- iter_index < loop.issued, and the in-flight count is issued - done - failed (checked by
-- the table constraint loop_in_flight_bound). A loop_item stays 'pending' until its
-- iteration is counted 'done' or 'failed'; its command is found by (loop_id, iter_index).

drop function if exists noetl.issue_loop_items(noetl.loop, integer);

-- noetl.start_loop(command_id, attempt, items, loop_spec, worker_id) -> route_command_id
-- Contract: finishes the claimed 'loop' command of a loop step: stores every item of the
--   rendered collection as a loop_item row (one bulk insert), writes `loop.started`
--   (or `loop.fanout.started`) with loop_id and collection_size, puts the loop command in
--   'waiting' (it stays active until the loop closes) and issues the first
--   min(max_in_flight, total) iterations (max_in_flight is 1 for a sequential loop).
--   An empty collection closes the loop at once.
--   loop_spec: {iterator, mode, max_in_flight, is_fanout, max_shard_retries}.
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
    select * into v_cmd from noetl.command as c where c.command_id = p_command_id for update;
    if not found then
        raise exception 'command % does not exist', p_command_id using errcode = 'P0002';
    end if;
    if v_cmd.kind <> 'loop' then
        raise exception 'command % is not a loop command', p_command_id using errcode = '22023';
    end if;
    if v_cmd.status <> 'claimed' or v_cmd.attempt <> p_attempt then
        return null;
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
        is_fanout, max_shard_retries
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
            then coalesce((p_loop_spec ->> 'max_shard_retries')::integer, 2) else 0 end
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

-- noetl.issue_loop_items(loop, from_index, n) -> integer
-- Contract: issues the iterations with iter_index in [from_index, from_index + n) as
--   commands keyed "iter:<loop_id>:<index>" (a key issued before is skipped), with one
--   `command.issued` event each and one NOTIFY; returns how many were new. Does not touch
--   the loop row: the caller counts them in loop.issued in its own update.
-- Locks: the caller holds the loop row; the unique keys of the new commands.
create or replace function noetl.issue_loop_items(
    p_loop noetl.loop,
    p_from integer,
    p_n integer
) returns integer
language plpgsql
as $$
declare
    v_kind text;
    v_max_attempts integer;
    v_issued integer;
begin
    if p_n <= 0 then
        return 0;
    end if;
    select s.tool_kind, s.max_attempts into strict v_kind, v_max_attempts
    from noetl.catalog_step as s
    inner join noetl.execution as e on s.catalog_id = e.catalog_id
    where e.execution_id = p_loop.execution_id and s.step_name = p_loop.step_name;

    with issued as (
        insert into noetl.command (
            execution_id, command_key, kind, step_name, max_attempts, loop_id, iter_index,
            input
        )
        select
            p_loop.execution_id,
            'iter:' || p_loop.loop_id || ':' || items.iter_index,
            v_kind,
            p_loop.step_name,
            v_max_attempts,
            p_loop.loop_id,
            items.iter_index,
            jsonb_build_object('loop_total', p_loop.total)
        from generate_series(p_from, p_from + p_n - 1) as items (iter_index)
        order by items.iter_index
        on conflict on constraint command_key_unique do nothing
        returning command_id, command_key, iter_index
    ),

    logged as (
        insert into noetl.event (
            execution_id, event_type, node_name, command_id, attempt, meta, loop_id,
            iter_index
        )
        select
            p_loop.execution_id, 'command.issued', p_loop.step_name, issued.command_id, 1,
            jsonb_build_object('kind', v_kind, 'command_key', issued.command_key),
            p_loop.loop_id, issued.iter_index
        from issued
    )

    select count(*) into v_issued from issued;
    if v_issued > 0 then
        perform pg_notify('noetl_command', '');
    end if;
    return v_issued;
end;
$$;

-- noetl.advance_loop(loop_id, done, failed, worker_id) -> route_command_id
-- Contract: counts `done` and `failed` finished iterations of a running loop (their items
--   are already stored), issues as many pending items as the bound now allows
--   (max_in_flight - in flight, at most the pending ones) and writes the counters in one
--   update. The call that brings done + failed to total closes the loop (close_loop).
--   A loop that is no longer running is left as it is.
-- Locks: the loop row (FOR UPDATE): counts of one loop are applied one transaction at a
--   time, so exactly one transaction sees the last iteration.
create or replace function noetl.advance_loop(
    p_loop_id bigint,
    p_done integer,
    p_failed integer,
    p_worker_id text
) returns bigint
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_next integer;
begin
    select * into v_loop from noetl.loop as l where l.loop_id = p_loop_id for update;
    if not found or v_loop.status <> 'running' then
        return null;
    end if;
    v_loop.done := v_loop.done + p_done;
    v_loop.failed := v_loop.failed + p_failed;
    v_next := greatest(least(
        v_loop.max_in_flight - (v_loop.issued - v_loop.done - v_loop.failed),
        v_loop.total - v_loop.issued
    ), 0);
    perform noetl.issue_loop_items(v_loop, v_loop.issued, v_next);

    update noetl.loop as l
    set done = v_loop.done, failed = v_loop.failed, issued = v_loop.issued + v_next
    where l.loop_id = p_loop_id;

    if v_loop.done + v_loop.failed >= v_loop.total then
        return noetl.close_loop(p_loop_id, p_worker_id);
    end if;
    return null;
end;
$$;

-- noetl.finish_loop_item(command, status, result, worker_id) -> route_command_id
-- Contract: one finished iteration ('done' or 'failed') of its loop, for a caller that
--   holds the command row. A failed shard of a fan-out loop with retries left is
--   re-queued on the same command and shard key (`loop.shard.failed` with retry true,
--   `command.retried`) instead of being counted. Otherwise the item stores its status and
--   result, a fan-out writes `loop.shard.done` / `loop.shard.failed`, and advance_loop
--   counts it.
-- Locks: the loop_item row; the loop row (advance_loop).
create or replace function noetl.finish_loop_item(
    p_cmd noetl.command,
    p_status text,
    p_result jsonb,
    p_worker_id text
) returns bigint
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_shard_attempts integer;
begin
    select * into v_loop from noetl.loop as l where l.loop_id = p_cmd.loop_id;
    if v_loop.status <> 'running' then
        return null;
    end if;

    if p_status = 'failed' and v_loop.is_fanout then
        update noetl.loop_item as li
        set shard_attempts = li.shard_attempts + 1
        where li.loop_id = p_cmd.loop_id and li.iter_index = p_cmd.iter_index
            and li.shard_attempts < v_loop.max_shard_retries
        returning li.shard_attempts into v_shard_attempts;
        if found then
            update noetl.command as c
            set status = 'queued', attempt = c.attempt + 1, available_at = now(),
                claimed_by = null, claimed_at = null, finished_at = null
            where c.command_id = p_cmd.command_id;
            perform noetl.record_event(
                p_cmd.execution_id, 'loop.shard.failed', p_cmd.step_name, p_cmd.command_id,
                p_cmd.attempt, null, p_result ->> 'error',
                jsonb_build_object(
                    'shard_id', p_cmd.iter_index, 'retry', true,
                    'shard_retry', v_shard_attempts
                ),
                p_cmd.loop_id, p_cmd.iter_index
            );
            perform noetl.record_event(
                p_cmd.execution_id, 'command.retried', p_cmd.step_name, p_cmd.command_id,
                p_cmd.attempt + 1, null, null, jsonb_build_object('reason', 'shard retry'),
                p_cmd.loop_id, p_cmd.iter_index
            );
            perform pg_notify('noetl_command', '');
            return null;
        end if;
    end if;

    update noetl.loop_item as li
    set status = p_status, result = p_result
    where li.loop_id = p_cmd.loop_id and li.iter_index = p_cmd.iter_index;

    if v_loop.is_fanout then
        perform noetl.record_event(
            p_cmd.execution_id,
            case p_status when 'done' then 'loop.shard.done' else 'loop.shard.failed' end,
            p_cmd.step_name, p_cmd.command_id, p_cmd.attempt, null, p_result ->> 'error',
            jsonb_build_object('shard_id', p_cmd.iter_index, 'retry', false),
            p_cmd.loop_id, p_cmd.iter_index
        );
    end if;

    return noetl.advance_loop(
        p_cmd.loop_id, (p_status = 'done')::integer, (p_status = 'failed')::integer,
        p_worker_id
    );
end;
$$;

-- noetl.finish_loop_iterations(worker_id, outcomes) -> (handled, route_ids)
-- Contract: the set-based fast path of finish_and_claim for the `done` outcomes of loop
--   iterations ({op: done, command_id, attempt, result}); other outcomes are ignored.
--   Each iteration still claimed at that attempt is marked done with its `call.done`
--   event (and `loop.shard.done` in a fan-out) and its item result, in one statement;
--   then each loop touched is counted once (advance_loop), in loop_id order. Returns the
--   command ids it completed (the caller skips those outcomes; a stale one is not among
--   them and gets the usual treatment) and the claimed route commands of loops it closed.
-- Locks: the completed command rows (UPDATE), their loop_item rows, then each loop row
--   in loop_id order (so two batches touching the same loops cannot deadlock on them).
create or replace function noetl.finish_loop_iterations(
    p_worker_id text,
    p_outcomes jsonb,
    out handled bigint[],
    out route_ids bigint[]
)
language plpgsql
as $$
declare
    v_loop_ids bigint[];
    v_count record;
    v_route bigint;
begin
    route_ids := '{}';
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
        set status = 'done', finished_at = now()
        from outcome
        where c.command_id = outcome.command_id
            and c.attempt = outcome.attempt
            and c.status = 'claimed'
            and c.loop_id is not null
        returning
            c.command_id, c.execution_id, c.step_name, c.loop_id, c.iter_index, c.attempt,
            outcome.result
    ),

    logged as (
        insert into noetl.event (
            execution_id, event_type, node_name, command_id, attempt, result, result_ref,
            meta, loop_id, iter_index
        )
        select
            f.execution_id, 'call.done', f.step_name, f.command_id, f.attempt, f.result,
            noetl.result_ref_of(f.result), null, f.loop_id, f.iter_index
        from finished as f
        union all
        select
            f.execution_id, 'loop.shard.done', f.step_name, f.command_id, f.attempt, null,
            null, jsonb_build_object('shard_id', f.iter_index, 'retry', false),
            f.loop_id, f.iter_index
        from finished as f
        inner join noetl.loop as l on f.loop_id = l.loop_id
        where l.is_fanout
    ),

    stored as (
        update noetl.loop_item as li
        set status = 'done', result = f.result
        from finished as f
        where li.loop_id = f.loop_id and li.iter_index = f.iter_index
    )

    select
        coalesce(array_agg(f.command_id), '{}'),
        coalesce(array_agg(f.loop_id), '{}')
    into handled, v_loop_ids
    from finished as f;

    for v_count in
        select u.loop_id, count(*)::integer as n
        from unnest(v_loop_ids) as u (loop_id)
        group by u.loop_id
        order by u.loop_id
    loop
        v_route := noetl.advance_loop(v_count.loop_id, v_count.n, 0, p_worker_id);
        if v_route is not null then
            route_ids := route_ids || v_route;
        end if;
    end loop;
end;
$$;

-- noetl.close_loop(loop_id, worker_id) -> route_command_id
-- Contract: closes a running loop exactly once: the step result becomes
--   {results: [every iteration in index order], stats: {total, success, failed}} (plus
--   fanin: {status: complete|partial, done, failed, total} for a fan-out), `loop.done`
--   (and `loop.fanin.completed`) is written with loop_id and collection_size, the loop
--   command is done, and the step routes with event 'loop.done'.
-- Locks: the loop row (the status guard makes a second close a no-op).
create or replace function noetl.close_loop(p_loop_id bigint, p_worker_id text)
returns bigint
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_cmd noetl.command;
    v_stats jsonb;
    v_result jsonb;
begin
    update noetl.loop as l
    set status = 'done', finished_at = now()
    where l.loop_id = p_loop_id and l.status = 'running'
    returning * into v_loop;
    if not found then
        return null;
    end if;

    v_stats := jsonb_build_object(
        'total', v_loop.total, 'success', v_loop.done, 'failed', v_loop.failed
    );
    v_result := jsonb_build_object(
        'results',
        coalesce(
            (select jsonb_agg(li.result order by li.iter_index)
             from noetl.loop_item as li where li.loop_id = p_loop_id),
            '[]'::jsonb
        ),
        'stats', v_stats
    );
    if v_loop.is_fanout then
        v_result := v_result || jsonb_build_object('fanin', jsonb_build_object(
            'status', case when v_loop.failed = 0 then 'complete' else 'partial' end,
            'done', v_loop.done, 'failed', v_loop.failed, 'total', v_loop.total
        ));
        perform noetl.record_event(
            v_loop.execution_id, 'loop.fanin.completed', v_loop.step_name, v_loop.command_id,
            null, null, null, jsonb_build_object(
                'loop_id', p_loop_id, 'collection_size', v_loop.total
            ) || (v_result -> 'fanin'),
            p_loop_id
        );
    end if;
    perform noetl.record_event(
        v_loop.execution_id, 'loop.done', v_loop.step_name, v_loop.command_id, null, null,
        null,
        jsonb_build_object('loop_id', p_loop_id, 'collection_size', v_loop.total)
        || jsonb_build_object('stats', v_stats),
        p_loop_id
    );

    update noetl.command as c
    set status = 'done', finished_at = now()
    where c.command_id = v_loop.command_id
    returning * into v_cmd;

    perform noetl.store_step_result(
        v_loop.execution_id, v_loop.step_name, v_loop.command_id, v_result
    );
    return noetl.route_after(v_cmd, 'loop.done', null, p_worker_id);
end;
$$;
