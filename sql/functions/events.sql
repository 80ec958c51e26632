-- events.sql: the append-only event log, the one door for what happened.

-- noetl.record_event(execution_id, event_type, node_name, command_id, attempt, result,
--                    error, meta, loop_id, iter_index) -> event_id
-- Contract: appends one row to noetl.event and returns its id. Never updates or deletes.
--   When `result` is a stored result's ref dict, its URI also goes to event.result_ref.
--   Also the door workers use for events that change no state (heartbeats, call.partial).
-- Locks: none beyond the insert.
-- Failure modes: a NULL execution_id or event_type raises not_null_violation.
create or replace function noetl.record_event(
    p_execution_id bigint,
    p_event_type text,
    p_node_name text default null,
    p_command_id bigint default null,
    p_attempt integer default null,
    p_result jsonb default null,
    p_error text default null,
    p_meta jsonb default null,
    p_loop_id bigint default null,
    p_iter_index integer default null
) returns bigint
language plpgsql
as $$
declare
    v_event_id bigint;
begin
    insert into noetl.event (
        execution_id, event_type, node_name, command_id, attempt, result, result_ref,
        error, meta, loop_id, iter_index
    )
    values (
        p_execution_id, p_event_type, p_node_name, p_command_id, p_attempt, p_result,
        noetl.result_ref_of(p_result), p_error, p_meta, p_loop_id, p_iter_index
    )
    returning event_id into v_event_id;
    return v_event_id;
end;
$$;

-- noetl.record_events(events) -> integer
-- Contract: record_event for many events in one statement (a claim, a batch of loop
--   iterations): appends one row per element of `events` (noetl.event_record), in array
--   order, and returns how many. An element's event_id, when set, is the id reserved for
--   it beforehand (nextval of noetl.event_id_seq: stream_chunk names its chunk's event);
--   NULL takes the next one. result_ref as in record_event. NULL or empty: 0, nothing
--   written.
-- Locks: none beyond the insert.
-- Failure modes: as record_event, for any element (the whole call then rolls back).
create or replace function noetl.record_events(p_events noetl.event_record[])
returns integer
language plpgsql
as $$
declare
    v_recorded integer;
begin
    insert into noetl.event (
        execution_id, event_id, event_type, node_name, command_id, attempt, result,
        result_ref, error, meta, loop_id, iter_index
    )
    select
        e.execution_id, coalesce(e.event_id, nextval('noetl.event_id_seq')), e.event_type,
        e.node_name, e.command_id, e.attempt, e.result, noetl.result_ref_of(e.result),
        e.error, e.meta, e.loop_id, e.iter_index
    from unnest(p_events) with ordinality as e
    order by e.ordinality;
    get diagnostics v_recorded = row_count;
    return v_recorded;
end;
$$;
