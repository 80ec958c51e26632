-- DBA functions (sql/functions/dba.sql): schema_version names the schema; purge_executions
-- removes old finished executions with their rows and keeps failed and recent ones.

begin;
select plan(7);

select is(
    (select latest_migration from noetl.schema_version()),
    (select max(version) from noetl.schema_migrations),
    'schema_version names the newest applied migration'
);
select ok(
    (select length(functions_digest) = 64 from noetl.schema_version()),
    'schema_version carries the digest of the loaded function files'
);

select lives_ok(
    $$select * from noetl.register_playbook('tap/purge', '', '{
        "workflow": [
            {"step": "only", "tool": {"kind": "noop"},
             "plan": {"kind": "noop", "route_mode": "none", "direct_targets": [],
                      "is_join": false, "has_loop": false, "successors": [],
                      "max_attempts": 1}}
        ]}'::jsonb)$$,
    'a one-step playbook registers'
);

create temp table t_runs as
select
    noetl.start_execution('tap/purge', '{}') as old_done,
    noetl.start_execution('tap/purge', '{}') as old_failed,
    noetl.start_execution('tap/purge', '{}') as recent;
select noetl.finish_execution(old_done, 'COMPLETED', '1', null, null) from t_runs;
select noetl.finish_execution(old_failed, 'FAILED', null, 'boom', 'only') from t_runs;
select noetl.finish_execution(recent, 'COMPLETED', '1', null, null) from t_runs;
update noetl.execution as e set finished_at = now() - interval '40 days'
from t_runs
where e.execution_id in (t_runs.old_done, t_runs.old_failed);

select throws_ok(
    $$select * from noetl.purge_executions(interval '0')$$, '22023', null,
    'a non-positive age is refused'
);
select is(
    (select (p.executions, p.events > 0)::text from noetl.purge_executions('30 days') as p),
    '(1,t)', 'one old completed execution is purged with its events'
);
select is(
    (
        select count(*)::integer from noetl.event as ev, t_runs
        where ev.execution_id = t_runs.old_done
    )
    + (
        select count(*)::integer from noetl.command as c, t_runs
        where c.execution_id = t_runs.old_done
    ),
    0, 'no event or command of it is left'
);
select is(
    (
        select array_agg(e.execution_id order by e.execution_id) from noetl.execution as e, t_runs
        where e.execution_id in (t_runs.old_done, t_runs.old_failed, t_runs.recent)
    ),
    (select array[old_failed, recent] from t_runs),
    'failed and recent executions stay'
);

select * from finish();
rollback;
