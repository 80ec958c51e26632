-- fanin.sql: the end of a loop. Iterations finished one at a time (failures, fan-out
-- shard retries) and the close of a loop: its result in index order and, for a fan-out,
-- the fan-in. The batched path for iterations that succeeded is in loop.sql.

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
            perform noetl.requeue_commands(array[p_cmd.command_id], true);
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

    if v_loop.mode = 'cursor' then
        -- The item's slot goes on (cursor_loop.sql); a cursor loop closes when drained.
        perform noetl.advance_cursor_loop(
            p_cmd.loop_id, (p_status = 'done')::integer, (p_status = 'failed')::integer,
            array[p_cmd.iter_index]
        );
        return null;
    end if;
    return (noetl.advance_loop(
        p_cmd.loop_id, (p_status = 'done')::integer, (p_status = 'failed')::integer,
        p_worker_id
    )).route_command_id;
end;
$$;

-- noetl.close_loop(loop_id, worker_id) -> route_command_id
-- Contract: closes a running loop exactly once: the step result becomes
--   {results: [every iteration in index order], stats: {total, success, failed}} (NoETL's
--   names: success counts the iterations done)
--   (plus fanin: {status: complete|partial, done, failed, total} for a fan-out), `loop.done`
--   (and `loop.fanin.completed`) is written with loop_id, collection_size and the stats.
--   When no iteration failed, or the loop says `on_error: continue`, the loop command is
--   done and the step routes with event 'loop.done'. Otherwise the step fails like any
--   step whose tool failed: the result also carries {status: error, error}, the loop
--   command writes `call.error` and `command.failed` with that error (naming the step,
--   failed/total and the first errors with their iteration index, see loop_failure_message)
--   and the step routes with 'call.error': the execution fails unless an arc takes it (an
--   arc on `event.name == 'call.error'`, or a fan-out's arc on `fanin.status`).
-- Locks: the loop row (the status guard makes a second close a no-op); the loop command.
create or replace function noetl.close_loop(p_loop_id bigint, p_worker_id text)
returns bigint
language plpgsql
as $$
declare
    v_loop noetl.loop;
    v_cmd noetl.command;
    v_stats jsonb;
    v_result jsonb;
    v_error text;
begin
    update noetl.loop as l
    set status = 'done', finished_at = noetl.now()
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

    select * into v_cmd from noetl.command as c where c.command_id = v_loop.command_id;
    if v_loop.failed > 0 and v_loop.on_error = 'fail' then
        v_error := noetl.loop_failure_message(v_loop);
        v_result := v_result || jsonb_build_object('status', 'error', 'error', v_error);
        perform noetl.record_event(
            v_loop.execution_id, 'call.error', v_loop.step_name, v_loop.command_id,
            v_cmd.attempt, null, v_error, jsonb_build_object('stats', v_stats), p_loop_id
        );
        perform noetl.fail_command_finally(v_cmd, v_error, null);
        perform noetl.store_step_result(
            v_loop.execution_id, v_loop.step_name, v_loop.command_id, v_result
        );
        return noetl.route_after(v_cmd, 'call.error', v_error, p_worker_id);
    end if;

    update noetl.command as c
    set status = 'done', finished_at = noetl.now()
    where c.command_id = v_loop.command_id
    returning * into v_cmd;

    perform noetl.store_step_result(
        v_loop.execution_id, v_loop.step_name, v_loop.command_id, v_result
    );
    return noetl.route_after(v_cmd, 'loop.done', null, p_worker_id);
end;
$$;

-- noetl.loop_failure_message(loop) -> text
-- Contract: the error of a loop whose iterations failed: 'step "<step>": <failed>/<total>
--   iterations failed: [<index>] <error>; ...' with the first three failed iterations in
--   index order (each error cut to 500 characters), and '; ...' when more failed.
-- Locks: none (reads the loop's items).
create or replace function noetl.loop_failure_message(p_loop noetl.loop)
returns text
language sql
stable
as $$
    select format(
        'step "%s": %s/%s iterations failed: %s%s',
        p_loop.step_name, p_loop.failed, p_loop.total,
        coalesce(string_agg(
            format('[%s] %s', first_failed.iter_index, left(first_failed.error, 500)),
            '; ' order by first_failed.iter_index
        ), '(no error recorded)'),
        case when p_loop.failed > 3 then '; ...' else '' end
    )
    from (
        select li.iter_index, coalesce(li.result ->> 'error', 'failed') as error
        from noetl.loop_item as li
        where li.loop_id = p_loop.loop_id and li.status = 'failed'
        order by li.iter_index
        limit 3
    ) as first_failed
$$;
