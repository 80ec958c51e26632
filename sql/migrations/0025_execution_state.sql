-- 0025_execution_state: the projected state of an execution moves out of its
-- noetl.execution row into noetl.execution_state. Idempotent.
--
-- The engine locks an execution's row FOR UPDATE for the whole of each transition, which
-- during a busy run is nearly all the time; the projector, to write state in that row,
-- took it FOR UPDATE SKIP LOCKED: most of its batches found the row taken, stopped and
-- read the same events again on the next round, and a batch that got the row held it
-- through the fold, so the engine's next transition waited on the projector. In a table
-- of its own the state is written by the projector alone and never waits for, nor holds
-- up, the engine.

-- The projected state of an execution (see sql/functions/projection.sql): one row per
-- execution that has had events folded, written by the projector and by
-- noetl.rebuild_execution_state; no row reads as the empty state '{}'.
create table if not exists noetl.execution_state (
    execution_id bigint primary key,
    state jsonb not null default '{}'
) with (fillfactor = 70);

do $$
begin
    if exists (
        select 1 from information_schema.columns
        where table_schema = 'noetl' and table_name = 'execution' and column_name = 'state'
    ) then
        insert into noetl.execution_state (execution_id, state)
        select x.execution_id, x.state from noetl.execution as x
        where x.state <> '{}'::jsonb
        on conflict (execution_id) do nothing;
        alter table noetl.execution drop column state;
    end if;
end
$$;

comment on table noetl.execution is
'One row per execution: status, workload, ctx, result or error; rerun_of links a rerun to
its source. Its projected state is in noetl.execution_state.';
