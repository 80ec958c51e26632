-- Statements of the schema and server administration code: migrations (noetl_pg/migrate.py),
-- comments (noetl_pg/comments.py), roles (noetl_pg/roles.py), databases
-- (noetl_pg/runtime.py, noetl_pg/testdb.py). Those that need an identifier return the
-- statement to run, quoted here by quote_ident/quote_literal (noetl_pg.db.execute_built).

-- name: schema_tables_present
-- Whether the migration bookkeeping tables exist (a database noetl never migrated has none).
select
    to_regclass('noetl.schema_migrations') is not null as migrations,
    to_regclass('noetl.schema_functions') is not null as functions;

-- name: schema_migrations_applied
-- Every applied migration with the checksum of its text.
select
    version,
    checksum
from noetl.schema_migrations;

-- name: schema_functions_digest
-- The digest of the function files loaded last (no row before the first load).
select digest from noetl.schema_functions;

-- name: schema_migration_record
-- Record one applied migration.
insert into noetl.schema_migrations (version, checksum)
values (%(version)s, %(checksum)s);

-- name: schema_functions_record
-- Record the digest of the function files just loaded.
insert into noetl.schema_functions (digest) values (%(digest)s)
on conflict (singleton) do update set
    digest = excluded.digest,
    loaded_at = now();

-- name: migration_lock
-- The session lock that serialises migrations (held until migration_unlock).
select pg_advisory_lock(%(lock_key)s);

-- name: migration_unlock
-- Release migration_lock.
select pg_advisory_unlock(%(lock_key)s);

-- name: functions_defer_body_checks
-- Function bodies may call functions of files loaded later (this transaction only).
set local check_function_bodies = off;

-- name: comment_on_function_statements
-- COMMENT ON statements for every overload of noetl.<name>.
select
    'comment on function ' || p.oid::regprocedure::text
    || ' is ' || quote_literal(%(comment)s) as statement
from pg_proc as p
where p.pronamespace = 'noetl'::regnamespace and p.proname = %(name)s;

-- name: comment_on_relation_statements
-- The COMMENT ON statement for table or view noetl.<name>, when it exists as that kind.
select
    'comment on ' || %(kind)s || ' noetl.' || quote_ident(c.relname)
    || ' is ' || quote_literal(%(comment)s) as statement
from pg_class as c
where
    c.relnamespace = 'noetl'::regnamespace
    and c.relname = %(name)s
    and c.relkind::text
    = any(case %(kind)s when 'view' then array['v'] else array['r', 'p'] end);

-- name: roles_present
-- Which of the given roles exist.
select rolname from pg_roles
where rolname = any(%(roles)s)
order by rolname;

-- name: database_exists
-- Whether a database of this name exists on the server.
select count(*) > 0 as present
from pg_database
where datname = %(name)s;

-- name: database_create_statements
-- The CREATE DATABASE statement for the name.
select 'create database ' || quote_ident(%(name)s) as statement;

-- name: database_drop_statements
-- DROP DATABASE for the name, closing its other sessions first.
select 'drop database if exists ' || quote_ident(%(name)s) || ' with (force)' as statement;

-- name: server_probe
-- A round trip that needs nothing (whether the server answers).
select 1 as answered;

-- name: schema_bootstrap
-- The schema and the migration bookkeeping tables, before the first migration.
create schema if not exists noetl;
create table if not exists noetl.schema_migrations (
    version text primary key,
    checksum text not null,
    applied_at timestamptz not null default now()
);
create table if not exists noetl.schema_functions (
    singleton boolean primary key default true check (singleton),
    digest text not null,
    loaded_at timestamptz not null default now()
);
