-- 0023_harden: workers read a credential only for a command they hold.
--
-- Before, noetl_worker read noetl.credential under a row-level policy
-- (noetl.credential_in_use): any credential named by ANY execution with a claimed command.
-- It now reads credentials only through noetl.command_credential_v1 (worker id, command id
-- and claim generation of a command it holds, which must reference the credential); the
-- policy and its function go, and zz_privileges.sql revokes the old grants.
drop policy if exists credential_of_running_commands on noetl.credential;
drop function if exists noetl.credential_in_use(text);

-- The routing plan stores each step's arc targets (successors) instead of every step it
-- reaches (reaches), which grew with the square of a chain's length: a 2,000-step chain
-- made a 17 MB spec. Reachability is computed from the arcs when a join or a rerun asks
-- (noetl.reachable_steps). Versions registered before get their successors from the
-- arcs of their stored spec.
alter table noetl.catalog_step
add column if not exists successors text[] not null default '{}';

update noetl.catalog_step as s
set successors = arcs.targets
from (
    select
        k.catalog_id,
        w.value ->> 'step' as step_name,
        array(
            select distinct t.value #>> '{}'
            from jsonb_path_query(w.value, '$.next.arcs[*].step') as t (value)
        ) as targets
    from noetl.catalog as k
    cross join lateral jsonb_array_elements(k.spec -> 'workflow') as w (value)
) as arcs
where s.catalog_id = arcs.catalog_id and s.step_name = arcs.step_name;

alter table noetl.catalog_step drop column if exists reaches;

comment on column noetl.catalog_step.successors is
'The step''s arc targets (any arc, conditional or not); what it can reach '
'is computed from them (noetl.reachable_steps).';

-- One row type for a claimed command: what claim_commands_v1, finish_and_claim_v1 and
-- describe_commands return (the same twelve columns were spelled out three times).
-- Column names and order are those workers already read.
do $$
begin
    if to_regtype('noetl.claimed_command') is null then
        create type noetl.claimed_command as (
            command_id bigint,
            execution_id bigint,
            catalog_id bigint,
            step_name text,
            kind text,
            attempt integer,
            loop_id bigint,
            iter_index integer,
            input jsonb,
            item jsonb,
            context jsonb,
            claim_gen integer
        );
    end if;
end
$$;

comment on type noetl.claimed_command is
'A claimed command as a worker receives it: the command, its loop item, the context of '
'what its step reads (first row of each group only) and claim_gen, the fencing token its '
'outcome names.';
