-- zz_privileges.sql: least-privilege roles, ownership, SECURITY DEFINER and grants.
--
-- Applied last (the migrator loads function files in name order) on every migrate, and by
-- `noetl db roles`: CREATE OR REPLACE FUNCTION resets a function's attributes, so they are
-- set again here after every reload. Idempotent.
--
-- Roles (cluster-wide, created when missing; grants are per database):
--   noetl_admin     owns schema noetl and everything in it; the only role that changes
--                   playbooks, credentials, limits (noetl.engine_limit) and tables.
--   noetl_worker    the worker API: claim, finish, heartbeat, reap, the result store,
--                   the projector, and the credential a command it holds references
--                   (noetl.command_credential_v1 only: no access to noetl.credential).
--   noetl_operator  start, cancel (and resume/rerun where defined), plus noetl_reader.
--   noetl_reader    executions, events, commands, status; never credentials or tokens.
-- All four are NOLOGIN: a DBA grants them to login roles (`grant noetl_worker to etl_w`).
-- The API functions run as noetl_admin (SECURITY DEFINER) with
-- `search_path = pg_catalog, noetl`, so a caller's own schemas and search_path cannot
-- substitute objects; callers get EXECUTE on their functions only (not PUBLIC).
--
-- A migrator that may not create roles (neither superuser nor CREATEROLE) and finds them
-- missing applies nothing here and says so in a notice; `noetl db roles` run later by a
-- DBA completes it.

do $$
declare
    v_role text;
    v_object record;
    v_name text;
    v_roles constant text[] := array['noetl_admin', 'noetl_worker', 'noetl_operator', 'noetl_reader'];
    -- The API each role calls; every one runs as noetl_admin (SECURITY DEFINER).
    v_worker_api constant text[] := array[
        'claim_commands', 'claim_command_ids', 'finish_and_claim', 'register_worker',
        'worker_heartbeat', 'stop_worker', 'reap_stale_claims', 'reap_command',
        'reap_orphan_claims', 'reap_earlier_process', 'record_store_fallbacks', 'command_context',
        'describe_commands', 'finish_cursor_claim', 'command_credential_v1',
        -- Worker protocol v1 (worker_compat.sql keeps the names above for older workers).
        'claim_commands_v1', 'finish_and_claim_v1', 'register_worker_v1', 'worker_heartbeat_v1',
        'stop_worker_v1', 'reap_stale_claims_v1', 'reap_orphan_claims_v1',
        'reap_earlier_process_v1', 'complete_command_v1', 'fail_command_v1',
        'describe_commands_v1', 'finish_cursor_claim_v1', 'record_partial_v1',
        'stream_chunks_v1', 'report_worker_v1', 'apply_worker_reports_v1',
        'take_wake_counts_v1', 'record_store_fallbacks_v1',
        -- NATS and the capacity registry (wakeup.sql, capacity.sql).
        'report_worker', 'apply_worker_reports', 'take_wake_counts',
        'result_ref_put', 'result_ref_get', 'result_ref_list', 'result_blob_id',
        'result_blob_write_chunk', 'result_blob_read_chunk', 'result_blob_delete',
        'claim_projection_shards', 'project_shard', 'project_shards', 'release_projection_shards',
        'set_projection_shard_count', 'projection_shard_lag', 'reap_earlier_process',
        'cleanup_execution_results', 'due_schedules', 'fire_schedule',
        'record_partial', 'stream_chunks'
    ];
    v_operator_api constant text[] := array[
        'start_execution', 'cancel_execution', 'resume_execution', 'rerun_execution',
        'add_schedule', 'delete_schedule', 'pause_schedule'
    ];
    v_reader_api constant text[] := array['projection_shard_lag', 'max_payload_bytes'];
    v_secret_tables constant text[] := array['credential', 'api_token'];
begin
    foreach v_role in array v_roles loop
        if not exists (select 1 from pg_roles where rolname = v_role) then
            begin
                execute format('create role %I nologin', v_role);
            exception
                -- Another database's migrator created it at the same moment.
                when duplicate_object or unique_violation then null;
                when insufficient_privilege then
                    raise notice 'cannot create role % here: run `noetl db roles` as a DBA', v_role;
                    return;
            end;
        end if;
    end loop;

    -- noetl_admin owns the schema and every object in it.
    execute 'alter schema noetl owner to noetl_admin';
    for v_object in
        select c.relname, c.relkind from pg_class as c
        where
            c.relnamespace = 'noetl'::regnamespace
            and c.relkind in ('r', 'p', 'S', 'v', 'm')
            -- A serial/identity sequence follows its table's owner.
            and (c.relkind <> 'S' or not exists (
                select 1 from pg_depend as d
                where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype in ('a', 'i')
            ))
    loop
        execute format(
            'alter %s noetl.%I owner to noetl_admin',
            case v_object.relkind when 'S' then 'sequence' when 'v' then 'view'
                when 'm' then 'materialized view' else 'table' end,
            v_object.relname
        );
    end loop;
    for v_object in
        select p.oid::regprocedure as signature from pg_proc as p
        where p.pronamespace = 'noetl'::regnamespace
    loop
        execute format('alter routine %s owner to noetl_admin', v_object.signature);
    end loop;

    -- Nothing for PUBLIC; each role gets its own functions and tables below.
    execute 'revoke all on schema noetl from public';
    execute 'revoke execute on all functions in schema noetl from public';
    execute 'grant usage on schema noetl to noetl_worker, noetl_operator, noetl_reader';

    for v_object in
        select p.oid::regprocedure as signature, p.proname from pg_proc as p
        where
            p.pronamespace = 'noetl'::regnamespace
            and p.proname = any(v_worker_api || v_operator_api || v_reader_api)
    loop
        execute format(
            'alter function %s security definer set search_path = pg_catalog, noetl',
            v_object.signature
        );
        if v_object.proname = any(v_worker_api) then
            execute format('grant execute on function %s to noetl_worker', v_object.signature);
        end if;
        if v_object.proname = any(v_operator_api) then
            execute format('grant execute on function %s to noetl_operator', v_object.signature);
        end if;
        if v_object.proname = any(v_reader_api) then
            execute format(
                'grant execute on function %s to noetl_reader, noetl_operator', v_object.signature
            );
        end if;
    end loop;

    -- Readers see everything but secrets; a new table is readable unless listed above.
    execute 'grant select on all tables in schema noetl to noetl_reader, noetl_operator';
    foreach v_name in array v_secret_tables loop
        if to_regclass('noetl.' || v_name) is not null then
            execute format(
                'revoke all on noetl.%I from noetl_reader, noetl_operator, noetl_worker', v_name
            );
        end if;
    end loop;

    -- The worker reads playbooks, commands and executions (its cached specs, cancel flags);
    -- credentials only through command_credential_v1, for a command it holds.
    execute 'grant select on noetl.catalog, noetl.command, noetl.execution to noetl_worker';
    -- Before 0023 it read noetl.credential under a policy and called get_credential.
    execute 'revoke execute on function noetl.get_credential(text) from noetl_worker';
    -- The engine's clock is read inside queries row by row: granted, left inlinable.
    for v_object in
        select p.oid::regprocedure as signature from pg_proc as p
        where p.pronamespace = 'noetl'::regnamespace and p.proname = 'now'
    loop
        execute format(
            'grant execute on function %s to noetl_worker, noetl_operator, noetl_reader',
            v_object.signature
        );
    end loop;
    -- Row-level security with no policy: a role granted the table by mistake reads nothing
    -- (the owner, noetl_admin, and the functions running as it are not subject to it).
    execute 'alter table noetl.credential enable row level security';
    execute 'drop policy if exists credential_of_running_commands on noetl.credential';
end
$$;
