-- 0018_cursor_loop: pull-model loops (`loop.cursor`, NoETL's CursorSpec).
-- A cursor loop has no collection: `max_in_flight` slots each run the playbook's claim
-- statement against its own database, and the rows a claim returns become loop items as
-- they arrive (sql/functions/cursor_loop.sql). Idempotent.

-- A loop's mode may now be 'cursor'.
do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conname = 'loop_mode_check' and conrelid = 'noetl.loop'::regclass
            and pg_get_constraintdef(oid) like '%cursor%'
    ) then
        alter table noetl.loop drop constraint if exists loop_mode_check;
        alter table noetl.loop add constraint loop_mode_check
        check (mode in ('sequential', 'parallel', 'cursor'));
    end if;
end
$$;

-- The slot that claimed a cursor item, and the item's identity: a row the engine already
-- holds is never recorded twice in one loop, whichever slot claims it again.
alter table noetl.loop_item add column if not exists cursor_slot integer;
alter table noetl.loop_item add column if not exists row_key text;
-- Its predicate names a column that never changes, so item updates stay HOT (0007).
create unique index if not exists loop_item_cursor_row_idx
on noetl.loop_item (loop_id, row_key) where row_key is not null;

-- One row per cursor loop: the rendered cursor (kind, auth, claim, options), how many
-- slots it has, how many of them drained (their claim returned no row), and how many
-- claim commands it issued (their keys are cursor:<loop_id>:<n>).
create table if not exists noetl.cursor_loop (
    loop_id bigint primary key,
    execution_id bigint not null,
    cursor_spec jsonb not null,
    slots integer not null check (slots >= 1),
    drained integer not null default 0,
    claims bigint not null default 0,
    constraint cursor_loop_drained_bound check (drained >= 0 and drained <= slots)
) with (fillfactor = 50);

comment on table noetl.cursor_loop is
'Cursor loops (loop.cursor): the rendered claim, slots and drained slots; see '
'sql/functions/cursor_loop.sql.';
