-- 0006_loop_guards: what the database itself refuses, whatever the functions do.
-- Idempotent: the index is created only if missing, the constraint only if absent.

-- A loop closes once: at most one `loop.done` and one `loop.fanin.completed` per loop.
-- A second close attempt fails on this index instead of writing a second event.
create unique index if not exists event_loop_close_once_idx
on noetl.event (execution_id, loop_id, event_type)
where event_type in ('loop.done', 'loop.fanin.completed');

-- The counters of a loop can never say more than max_in_flight iterations are in flight
-- (issued and not yet counted done or failed), nor count more than were issued.
do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conname = 'loop_in_flight_bound' and conrelid = 'noetl.loop'::regclass
    ) then
        alter table noetl.loop add constraint loop_in_flight_bound check (
            done >= 0 and failed >= 0
            and done + failed <= issued
            and issued <= total
            and issued - done - failed <= max_in_flight
        );
    end if;
end
$$;
