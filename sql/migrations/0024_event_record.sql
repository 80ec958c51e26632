-- 0024_event_record: one row type for events written several at a time. Idempotent.

-- The fields of an event as its writer gives them (noetl.record_event's arguments, plus an
-- event_id reserved beforehand, NULL for the next of the sequence): what
-- noetl.record_events takes, so a set-based writer (a claim, a batch of loop iterations)
-- goes through the same door as a single one.
do $$
begin
    if to_regtype('noetl.event_record') is null then
        create type noetl.event_record as (
            execution_id bigint,
            event_type text,
            node_name text,
            command_id bigint,
            attempt integer,
            result jsonb,
            error text,
            meta jsonb,
            loop_id bigint,
            iter_index integer,
            event_id bigint
        );
    end if;
end
$$;

comment on type noetl.event_record is
'An event as its writer gives it (record_event''s arguments and an optional reserved '
'event_id): the element type of noetl.record_events.';
