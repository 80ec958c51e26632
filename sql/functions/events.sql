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
