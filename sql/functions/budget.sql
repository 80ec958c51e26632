-- budget.sql: engine limits and the per-execution command budget.


-- noetl.engine_limit(name) -> bigint
-- Contract: the value of the limit `name` from noetl.engine_limit.
-- Locks: none. Fails: P0002 when the limit does not exist (a missing migration).
create or replace function noetl.engine_limit(p_name text) returns bigint
language plpgsql
stable
set search_path = pg_catalog, noetl
as $$
declare
    v_value bigint;
begin
    select l.value into v_value from noetl.engine_limit as l where l.name = p_name;
    if not found then
        raise exception 'engine limit "%" is not defined', p_name using errcode = 'no_data_found';
    end if;
    return v_value;
end;
$$;


-- noetl.count_command() -> trigger (after insert on noetl.command, loop iterations excluded)
-- Contract: counts the command against its execution's budget: the playbook's
--   executor.spec.policy.limits.max_commands (where the registering client also writes
--   its NOETL_MAX_COMMANDS default), else engine_limit 'max_commands'.
--   The command that takes the count past the budget fails the execution
--   (noetl.fail_execution: queued commands, this one included, are cancelled) with an
--   error naming the playbook and the limit; a runaway cycle stops there instead of
--   running forever.
-- Locks: the execution's noetl.execution_budget row, never waiting for it: when another
--   transaction holds it the command goes to noetl.execution_budget_pending (no lock) and
--   is folded in by the next command that gets the row, so parallel branches may run a
--   few commands past the budget before one of them sees it. On the failing command, what
--   noetl.fail_execution locks.
create or replace function noetl.count_command() returns trigger
language plpgsql
set search_path = pg_catalog, noetl
as $$
declare
    v_issued bigint;
    v_max bigint;
    v_pending bigint := 0;
    v_folds boolean := true;
    v_path text;
begin
    -- Whether pending counts wait is read with the row: usually none do, and the delete
    -- that folds them in is skipped.
    select
        b.issued,
        b.max_commands,
        exists (
            select 1 from noetl.execution_budget_pending as p
            where p.execution_id = b.execution_id
        )
    into v_issued, v_max, v_folds
    from noetl.execution_budget as b
    where b.execution_id = new.execution_id
    for update of b skip locked;
    if not found then
        if exists (
            select 1 from noetl.execution_budget as b where b.execution_id = new.execution_id
        ) then
            insert into noetl.execution_budget_pending (execution_id) values (new.execution_id);
            return null;
        end if;
        select coalesce(
            (c.spec #>> '{executor,spec,policy,limits,max_commands}')::bigint,
            noetl.engine_limit('max_commands')
        ) into v_max
        from noetl.execution as e
        inner join noetl.catalog as c on e.catalog_id = c.catalog_id
        where e.execution_id = new.execution_id;
        insert into noetl.execution_budget as b (execution_id, max_commands, issued)
        values (new.execution_id, v_max, 0)
        on conflict (execution_id) do nothing;
        if not found then
            -- Created by a concurrent first command: count this one as pending.
            insert into noetl.execution_budget_pending (execution_id) values (new.execution_id);
            return null;
        end if;
        v_issued := 0;
        v_folds := true;
    end if;

    if v_folds then
        with folded as (
            delete from noetl.execution_budget_pending as p
            where p.execution_id = new.execution_id
            returning 1
        )
        select count(*) into v_pending from folded;
    end if;
    update noetl.execution_budget as b
    set issued = b.issued + 1 + v_pending
    where b.execution_id = new.execution_id
    returning b.issued into v_issued;

    if v_issued > v_max and v_issued - 1 - v_pending <= v_max then
        select e.path into v_path from noetl.execution as e
        where e.execution_id = new.execution_id;
        perform noetl.fail_execution(
            new.execution_id, new.step_name,
            format(
                'playbook %s: the execution issued more than %s commands, its budget '
                || '(executor.spec.policy.limits.max_commands); does a cycle never end?',
                v_path, v_max
            )
        );
    end if;
    return null;
end;
$$;

create or replace trigger command_budget
after insert on noetl.command
for each row when (new.loop_id is null)
execute function noetl.count_command();
