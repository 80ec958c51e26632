-- 0009_loop_on_error: what a loop does when iterations failed after their retries.
-- 'fail' (the default): the loop step ends with `call.error`, so the execution fails unless
-- an arc handles it. 'continue' (`loop.spec.on_error: continue`): the loop ends with
-- `loop.done` as if every iteration succeeded; the failures stay in its stats.
alter table noetl.loop add column if not exists on_error text not null default 'fail';

do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conname = 'loop_on_error_known' and conrelid = 'noetl.loop'::regclass
    ) then
        alter table noetl.loop add constraint loop_on_error_known
        check (on_error in ('fail', 'continue'));
    end if;
end
$$;
