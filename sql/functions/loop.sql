-- loop.sql: loops and fan-out, counted in SQL. The loop row is the one place that decides
-- how many iterations are in flight and when the loop closes; every change to it happens
-- under its row lock in the same transaction as the event that moves it.

-- noetl.start_loop(command_id, attempt, items, loop_spec, worker_id) -> route_command_id
-- Contract: finishes the claimed 'loop' command of a loop step: stores every item of the
--   rendered collection as a loop_item row (one bulk insert), writes `loop.started`
--   (or `loop.fanout.started`) with loop_id and collection_size, puts the loop command in
--   'waiting' (it stays active until the loop closes) and issues the first
--   min(max_in_flight, total) iterations. An empty collection closes the loop at once.
--   loop_spec: {iterator, mode, max_in_flight, is_fanout, max_shard_retries}.
--   Returns a claimed route command when an empty loop routes through conditional arcs.
--   A stale attempt changes nothing and returns NULL.
-- Locks: the loop command row, then the new loop row.
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
    v_fanout boolean := coalesce((p_loop_spec ->> 'is_fanout')::boolean, false);
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

    insert into noetl.loop (
        execution_id, step_name, command_id, iterator, mode, max_in_flight, total,
        is_fanout, max_shard_retries
    )
    values (
        v_cmd.execution_id, v_cmd.step_name, v_cmd.command_id,
        coalesce(p_loop_spec ->> 'iterator', 'item'),
        coalesce(p_loop_spec ->> 'mode', 'sequential'),
        case
            when coalesce(p_loop_spec ->> 'mode', 'sequential') = 'sequential' then 1
            else greatest(coalesce((p_loop_spec ->> 'max_in_flight')::integer, 10), 1)
        end,
        v_total,
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
    perform noetl.issue_loop_items(v_loop, v_loop.max_in_flight);
    return null;
end;
$$;

-- noetl.issue_loop_items(loop, n) -> integer
-- Contract: issues the next `n` pending items of the loop (lowest index first) as
--   iteration commands keyed "iter:<loop_id>:<index>" and counts them in loop.issued.
--   The caller guarantees the bound: issued - done - failed stays <= max_in_flight.
-- Locks: the caller holds the loop row; the chosen loop_item rows (FOR UPDATE).
create or replace function noetl.issue_loop_items(p_loop noetl.loop, p_n integer)
returns integer
language plpgsql
as $$
declare
    v_step noetl.catalog_step;
    v_item record;
    v_issued integer := 0;
    v_command_id bigint;
begin
    select s.* into strict v_step
    from noetl.catalog_step as s
    inner join noetl.execution as e on s.catalog_id = e.catalog_id
    where e.execution_id = p_loop.execution_id and s.step_name = p_loop.step_name;

    for v_item in
        select li.iter_index
        from noetl.loop_item as li
        where li.loop_id = p_loop.loop_id and li.status = 'pending'
        order by li.iter_index
        limit p_n
        for update
    loop
        v_command_id := noetl.issue_command(
            p_loop.execution_id,
            'iter:' || p_loop.loop_id || ':' || v_item.iter_index,
            v_step.tool_kind,
            p_loop.step_name,
            v_step.max_attempts,
            p_loop.loop_id,
            v_item.iter_index,
            jsonb_build_object('loop_total', p_loop.total)
        );
        update noetl.loop_item as li
        set status = 'issued', command_id = v_command_id
        where li.loop_id = p_loop.loop_id and li.iter_index = v_item.iter_index;
        v_issued := v_issued + 1;
    end loop;

    if v_issued > 0 then
        update noetl.loop as l set issued = l.issued + v_issued where l.loop_id = p_loop.loop_id;
    end if;
    return v_issued;
end;
$$;

-- noetl.finish_loop_item(command, status, result, worker_id) -> route_command_id
-- Contract: counts one finished iteration ('done' or 'failed') of its loop. A failed shard
--   of a fan-out loop with retries left is re-queued on the same command and shard key
--   (`loop.shard.failed`, `command.retried`) instead of being counted. Otherwise the
--   counter moves, the next pending item is issued (keeping the in-flight bound), and the
--   iteration that makes done + failed = total closes the loop (close_loop).
-- Locks: the loop row (FOR UPDATE): iterations of one loop finish one at a time, so
--   exactly one transaction sees the last one.
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
    v_item noetl.loop_item;
begin
    select * into v_loop from noetl.loop as l where l.loop_id = p_cmd.loop_id for update;
    if v_loop.status <> 'running' then
        return null;
    end if;

    select * into v_item from noetl.loop_item as li
    where li.loop_id = p_cmd.loop_id and li.iter_index = p_cmd.iter_index;

    if p_status = 'failed' and v_loop.is_fanout
        and v_item.shard_attempts < v_loop.max_shard_retries then
        update noetl.loop_item as li
        set shard_attempts = li.shard_attempts + 1
        where li.loop_id = p_cmd.loop_id and li.iter_index = p_cmd.iter_index;
        update noetl.command as c
        set status = 'queued', attempt = c.attempt + 1, available_at = now(),
            claimed_by = null, claimed_at = null, finished_at = null
        where c.command_id = p_cmd.command_id;
        perform noetl.record_event(
            p_cmd.execution_id, 'loop.shard.failed', p_cmd.step_name, p_cmd.command_id,
            p_cmd.attempt, null, p_result ->> 'error',
            jsonb_build_object('shard_id', p_cmd.iter_index, 'retry', true),
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

    update noetl.loop_item as li
    set status = p_status, result = p_result
    where li.loop_id = p_cmd.loop_id and li.iter_index = p_cmd.iter_index;

    update noetl.loop as l
    set done = l.done + (p_status = 'done')::integer,
        failed = l.failed + (p_status = 'failed')::integer
    where l.loop_id = p_cmd.loop_id
    returning * into v_loop;

    if v_loop.is_fanout then
        perform noetl.record_event(
            p_cmd.execution_id,
            case p_status when 'done' then 'loop.shard.done' else 'loop.shard.failed' end,
            p_cmd.step_name, p_cmd.command_id, p_cmd.attempt, null, p_result ->> 'error',
            jsonb_build_object('shard_id', p_cmd.iter_index), p_cmd.loop_id, p_cmd.iter_index
        );
    end if;

    if v_loop.done + v_loop.failed >= v_loop.total then
        return noetl.close_loop(v_loop.loop_id, p_worker_id);
    end if;
    if v_loop.issued < v_loop.total then
        perform noetl.issue_loop_items(v_loop, 1);
    end if;
    return null;
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
