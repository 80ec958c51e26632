-- 0014_rerun_link: an execution started by noetl.rerun_execution names the one it reruns.
alter table noetl.execution add column if not exists rerun_of bigint;

create index if not exists execution_rerun_of_idx on noetl.execution (rerun_of)
where rerun_of is not null;
