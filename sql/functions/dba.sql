-- dba.sql: functions for operators: schema version and retention (the views and
-- noetl.worker_gone_seconds, which they use, are in migration 0014b_dba).

-- noetl.schema_version() -> table (latest_migration, migrations, functions_digest,
--                                  functions_loaded_at)
-- Contract: which schema this database has: the newest applied migration, how many are
--   applied, and the digest and time of the function files last loaded (noetl db migrate).
-- Locks: none (reads).
create or replace function noetl.schema_version()
returns table (
    latest_migration text,
    migrations integer,
    functions_digest text,
    functions_loaded_at timestamptz
)
language sql
stable
as $$
    select
        (select max(m.version) from noetl.schema_migrations as m),
        (select count(*)::integer from noetl.schema_migrations),
        f.digest,
        f.loaded_at
    from (select 1) as one
    left join noetl.schema_functions as f on true;
$$;

-- noetl.purge_executions(older_than, keep_failed) -> (executions, events, stored_objects)
-- Contract: removes executions that finished more than `older_than` ago (with keep_failed,
--   the default, FAILED ones stay), their child executions, and everything of theirs
--   together in one transaction: events (deleted partition by partition, each through its
--   primary key), commands, step results, captured output, join arrivals, loops and loop
--   items, projected states, result refs and db-tier result blobs. stored_objects lists
--   the fs/s3 objects of the deleted refs ([{execution_id, store_tier, physical_uri}])
--   for the caller to delete: SQL cannot reach a filesystem or a bucket. Running
--   executions are never touched.
-- Locks: the deleted rows; a concurrent start or worker on other executions is unaffected.
-- Failure modes: older_than must be positive (22023).
create or replace function noetl.purge_executions(
    p_older_than interval,
    p_keep_failed boolean default true
) returns table (executions integer, events bigint, stored_objects jsonb)
language plpgsql
as $$
declare
    v_ids bigint[];
    v_partition regclass;
    v_count bigint;
begin
    if p_older_than <= interval '0' then
        raise exception 'purge_executions: older_than must be positive, got %', p_older_than
            using errcode = '22023';
    end if;
    with recursive doomed as (
        select e.execution_id from noetl.execution as e
        where e.status in ('COMPLETED', 'FAILED', 'CANCELLED')
            and e.finished_at < now() - p_older_than
            and e.parent_execution_id is null
            and not (p_keep_failed and e.status = 'FAILED')
        union
        select child.execution_id from noetl.execution as child
        inner join doomed on child.parent_execution_id = doomed.execution_id
        where child.status <> 'RUNNING'
    )

    select coalesce(array_agg(d.execution_id), '{}') into v_ids from doomed as d;

    executions := cardinality(v_ids);
    events := 0;
    for v_partition in
        select i.inhrelid::regclass from pg_inherits as i
        where i.inhparent = 'noetl.event'::regclass
        order by i.inhrelid
    loop
        execute format('delete from %s where execution_id = any($1)', v_partition)
        using v_ids;
        get diagnostics v_count = row_count;
        events := events + v_count;
    end loop;

    select coalesce(jsonb_agg(jsonb_build_object(
        'execution_id', ids.id, 'store_tier', r.store_tier, 'physical_uri', r.physical_uri
    )) filter (where r.store_tier <> 'db'), '[]'::jsonb)
    into stored_objects
    from unnest(v_ids) as ids (id),
        lateral noetl.cleanup_execution_results(ids.id) as r;

    delete from noetl.command_log as g where g.execution_id = any(v_ids);
    delete from noetl.loop_item as li where li.execution_id = any(v_ids);
    delete from noetl.cursor_loop as k where k.execution_id = any(v_ids);
    delete from noetl."loop" as l where l.execution_id = any(v_ids);
    delete from noetl.join_arrival as a where a.execution_id = any(v_ids);
    delete from noetl.stream_chunk as sc where sc.execution_id = any(v_ids);
    delete from noetl.step_result as r where r.execution_id = any(v_ids);
    delete from noetl.command as c where c.execution_id = any(v_ids);
    delete from noetl.execution_state as st where st.execution_id = any(v_ids);
    delete from noetl.execution as e where e.execution_id = any(v_ids);
    return next;
end;
$$;
