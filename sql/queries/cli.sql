-- cli.sql: statements of the `noetl` command line (noetl_pg/cli*.py) beyond the engine's.

-- name: catalog_latest_same
-- The latest version of `path` when its content and spec equal the given ones (so a
-- registration of unchanged text reuses it instead of adding a version).
select
    latest.catalog_id,
    latest.version
from noetl.catalog as latest
where
    latest.path = %(path)s
    and latest.version = (
        select max(c.version) from noetl.catalog as c
        where c.path = latest.path
    )
    and latest.content = %(content)s
    and latest.spec = %(spec)s::jsonb;

-- name: catalog_latest_list
-- The latest version of every registered path, with how many versions it has.
select distinct on (path)
    path,
    version,
    catalog_id,
    created_at,
    count(*) over (partition by path) as versions
from noetl.catalog
order by path asc, version desc;

-- name: catalog_get
-- One catalog row: the given version of `path`, or its latest.
select
    catalog_id,
    path,
    version,
    content,
    spec,
    created_at
from noetl.catalog
where path = %(path)s and (%(version)s::integer is null or version = %(version)s::integer)
order by version desc
limit 1;

-- name: execution_exists
-- Whether an execution id is known (commands use it to exit 2 on an unknown id).
select exists(
    select 1 from noetl.execution
    where execution_id = %(execution_id)s
) as known;

-- name: credential_delete
-- Remove a named credential; returns its name when it existed.
delete from noetl.credential
where name = %(credential_name)s
returning name;

-- name: resume_execution
-- Continue a FAILED or CANCELLED execution; returns how many commands were issued again.
select noetl.resume_execution(%(execution_id)s) as requeued;

-- name: rerun_execution
-- A new execution of the same playbook from `from_step`, reusing earlier results.
select noetl.rerun_execution(%(execution_id)s, %(from_step)s) as execution_id;
