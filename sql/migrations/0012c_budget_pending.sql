-- 0012c_budget_pending: commands counted without waiting for the budget row.
--
-- noetl.count_command counts a command on its execution's noetl.execution_budget row. When
-- another transaction holds that row (parallel branches issuing at once), waiting for it
-- could deadlock with the locks routing takes afterwards; the command is then recorded here
-- instead, without any lock, and folded into the row by the next command that gets it.
create table if not exists noetl.execution_budget_pending (
    execution_id bigint not null
    references noetl.execution (execution_id) on delete cascade,
    counted_at timestamptz not null default now()
);

create index if not exists execution_budget_pending_execution_idx
on noetl.execution_budget_pending (execution_id);

comment on table noetl.execution_budget_pending is
'Commands not yet folded into noetl.execution_budget (its row was locked when they were issued).';
