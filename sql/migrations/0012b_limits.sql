-- 0012b_limits: engine limits in a table only the schema owner changes, and the
-- per-execution command budget.
--
-- Limits used to be GUCs (noetl.max_payload_bytes) that any session could `set` past the
-- limit. They now live in noetl.engine_limit; roles other than noetl_admin may read it,
-- never write it (sql/functions/zz_privileges.sql).
create table if not exists noetl.engine_limit (
    name text primary key,
    value bigint not null check (value > 0),
    description text not null
);

insert into noetl.engine_limit (name, value, description) values
(
    'max_payload_bytes', 1048576,
    'Largest start payload (JSON text bytes) noetl.start_execution accepts.'
),
(
    'max_commands', 10000,
    'Default command budget of one execution (step, route and loop commands; loop '
    'iterations excluded); a playbook sets its own with executor.spec.policy.limits.'
    'max_commands. An execution that issues more fails.'
)
on conflict (name) do nothing;

-- Commands issued per execution, counted by the trigger noetl.count_command
-- (sql/functions/budget.sql); max_commands is fixed when the first command is issued.
create table if not exists noetl.execution_budget (
    execution_id bigint primary key
    references noetl.execution (execution_id) on delete cascade,
    max_commands bigint not null,
    issued bigint not null default 0
);

comment on table noetl.engine_limit is
'Engine-wide limits (payload size, default command budget). Only noetl_admin changes them.';
comment on table noetl.execution_budget is
'Commands issued so far by each execution against its budget (noetl.count_command).';
