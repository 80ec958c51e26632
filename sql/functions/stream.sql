-- stream.sql: the chunks of a streamed step (`tool.output.stream: {chunk_rows: N}`).
--
-- A worker running a streamed postgres or duckdb step reads its result through a cursor
-- and, for each chunk of N rows, calls record_partial_v1 while the command is still claimed:
-- one `call.partial` event per chunk (meta.chunk_index), and one command per chunk for
-- each step its `on: call.partial` arcs chose, carrying the chunk in its input. The step's
-- `call.done` (complete_command) stays the one terminal event: only it routes the step's
-- other arcs. stream_chunks_v1 tells a stream started again (a reclaim at the same attempt)
-- which chunks it need not send again.

-- noetl.record_partial_v1(command_id, attempt, claim, chunk_index, has_more, row_count,
--                         columns, rows, targets) -> text
-- Worker protocol v1 (the unversioned record_partial calls it, for older workers).
-- Contract: records chunk `chunk_index` of the streamed command `command_id`, still
--   claimed at `attempt` and claim generation `claim` (the fencing token of the claim;
--   NULL: fenced by attempt alone). `rows` is the chunk's rows inline (a JSON array) or
--   the result store ref dict of them; `columns` their column names. `targets` are the
--   step's `on: call.partial` arcs the worker chose for this chunk, [{step, set}] (each
--   must be one of the plan's partial_targets). In one transaction: a noetl.stream_chunk
--   row, a `call.partial` event (result: the rows or ref; meta: chunk_index, has_more,
--   row_count, columns, targets), each arc's `set` merged into ctx, and per target one
--   command keyed "<target>@<command_id>/chunk/<chunk_index>" with input {chunk: {index,
--   has_more, row_count, columns, rows, source_step, source_command_id}}.
--   Returns 'ok'; 'duplicate' when this attempt recorded the chunk already (nothing is
--   written); 'stale' when the claim is no longer held (a `command.outcome_refused`
--   trace from lock_claimed_command, nothing else); 'stopped' when the execution is no
--   longer RUNNING (nothing).
--   A chunk command issued once is never issued again, whatever the attempt: a stream
--   retried after a tool error records its chunks again as events of the new attempt,
--   but the steps downstream run once per chunk index.
-- Locks: in the lock order, the execution (with ancestors) and the command row
--   (lock_claimed_command); then the unique keys of stream_chunk and command.
-- Failure modes: an unknown command raises P0002; a target that is no partial target of
--   the step, a negative chunk index or row count, 22023.
create or replace function noetl.record_partial_v1(
    p_command_id bigint,
    p_attempt integer,
    p_claim integer,
    p_chunk_index integer,
    p_has_more boolean,
    p_row_count integer,
    p_columns jsonb,
    p_rows jsonb,
    p_targets jsonb
) returns text
language plpgsql
as $$
declare
    v_cmd noetl.command;
    v_catalog_id bigint;
    v_allowed jsonb;
    v_target jsonb;
    v_step noetl.catalog_step;
    v_event_id bigint;
    v_targets jsonb := coalesce(nullif(p_targets, 'null'::jsonb), '[]'::jsonb);
begin
    if p_chunk_index is null or p_chunk_index < 0 or p_row_count is null or p_row_count < 0
        then
        raise exception 'command %: chunk index and row count must be >= 0', p_command_id
            using errcode = '22023';
    end if;
    v_cmd := noetl.lock_claimed_command(p_command_id, p_attempt, null, p_claim, 'partial');
    if v_cmd.command_id is null then
        return 'stale';
    end if;
    if not noetl.execution_is_running(v_cmd.execution_id) then
        return 'stopped';
    end if;

    insert into noetl.stream_chunk (
        execution_id, command_id, attempt, chunk_index, row_count, has_more, event_id
    )
    values (
        v_cmd.execution_id, p_command_id, p_attempt, p_chunk_index, p_row_count,
        coalesce(p_has_more, false), nextval('noetl.event_id_seq')
    )
    on conflict do nothing
    returning event_id into v_event_id;
    if v_event_id is null then
        return 'duplicate';
    end if;

    -- The event id the stream_chunk row names, reserved above.
    perform noetl.record_events(array[row(
        v_cmd.execution_id, 'call.partial', v_cmd.step_name, p_command_id, p_attempt, p_rows,
        null,
        jsonb_build_object(
            'chunk_index', p_chunk_index, 'has_more', coalesce(p_has_more, false),
            'row_count', p_row_count, 'columns', coalesce(p_columns, '[]'::jsonb),
            'targets', coalesce(
                (select jsonb_agg(t.value ->> 'step') from jsonb_array_elements(v_targets) as t),
                '[]'::jsonb
            )
        ),
        null, null, v_event_id
    )::noetl.event_record]);
    if jsonb_array_length(v_targets) = 0 then
        return 'ok';
    end if;

    -- The plan's partial targets, from the stored spec: read once per chunk, not per row.
    select e.catalog_id into v_catalog_id
    from noetl.execution as e where e.execution_id = v_cmd.execution_id;
    select coalesce(w.value -> 'plan' -> 'partial_targets', '[]'::jsonb) into v_allowed
    from noetl.catalog as k
    cross join lateral jsonb_array_elements(k.spec -> 'workflow') as w (value)
    where k.catalog_id = v_catalog_id and w.value ->> 'step' = v_cmd.step_name;
    for v_target in select value from jsonb_array_elements(v_targets) loop
        if not coalesce(v_allowed, '[]'::jsonb) ? (v_target ->> 'step') then
            raise exception 'step "%" has no on: call.partial arc to "%"',
                v_cmd.step_name, v_target ->> 'step' using errcode = '22023';
        end if;
        select * into strict v_step from noetl.catalog_step as s
        where s.catalog_id = v_catalog_id and s.step_name = v_target ->> 'step';
        if jsonb_typeof(v_target -> 'set') = 'object' and v_target -> 'set' <> '{}'::jsonb
            then
            update noetl.execution as e
            set ctx = e.ctx || (v_target -> 'set')
            where e.execution_id = v_cmd.execution_id;
        end if;
        perform noetl.issue_command(
            v_cmd.execution_id,
            v_step.step_name || '@' || p_command_id || '/chunk/' || p_chunk_index,
            v_step.tool_kind,
            v_step.step_name,
            v_step.max_attempts,
            null,
            null,
            jsonb_build_object('chunk', jsonb_build_object(
                'index', p_chunk_index, 'has_more', coalesce(p_has_more, false),
                'row_count', p_row_count, 'columns', coalesce(p_columns, '[]'::jsonb),
                'rows', p_rows, 'source_step', v_cmd.step_name,
                'source_command_id', p_command_id
            ))
        );
    end loop;
    return 'ok';
end;
$$;


-- noetl.stream_chunks_v1(command_id, attempt) -> integer[]
-- Worker protocol v1 (the unversioned stream_chunks calls it, for older workers).
-- Contract: the chunk indexes the command recorded at `attempt`, ascending ('{}' when
--   none): what a stream started again at the same attempt (its worker died, the claim
--   was taken back) skips sending.
-- Locks: none (a plain read).
create or replace function noetl.stream_chunks_v1(
    p_command_id bigint,
    p_attempt integer
) returns integer[]
language sql
stable
as $$
    select coalesce(array_agg(s.chunk_index order by s.chunk_index), '{}')
    from noetl.stream_chunk as s
    where s.execution_id = (
        select c.execution_id from noetl.command as c where c.command_id = p_command_id
    )
        and s.command_id = p_command_id and s.attempt = p_attempt;
$$;
