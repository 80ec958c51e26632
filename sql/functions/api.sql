-- api.sql: the control plane callable from plain psql.

-- noetl.start_execution(path, payload, version) -> execution_id
-- Contract: starts a run of the registered playbook `path` (its latest version, or
--   `version`): the execution row with workload = playbook workload || payload, the
--   `playbook.started` event and the entry step's command, in one transaction.
-- Locks: none beyond the inserted rows.
-- Failure modes (nothing is written): the path or version is unknown (the error names
--   them); the payload is not a JSON object.
create or replace function noetl.start_execution(
    p_path text,
    p_payload jsonb default '{}',
    p_version integer default null
) returns bigint
language plpgsql
as $$
begin
    return noetl.start_execution_from(p_path, p_payload, p_version, null, null);
end;
$$;

-- noetl.start_execution_from(path, payload, version, parent_execution_id,
--                            parent_command_id) -> execution_id
-- Contract: start_execution with a parent link, used by the `playbook` tool so that the
--   child's end completes the parent command (noetl.child_finished).
-- Locks and failure modes: as start_execution.
create or replace function noetl.start_execution_from(
    p_path text,
    p_payload jsonb,
    p_version integer,
    p_parent_execution_id bigint,
    p_parent_command_id bigint
) returns bigint
language plpgsql
as $$
declare
    v_catalog noetl.catalog;
    v_execution_id bigint;
    v_entry text;
    v_payload jsonb := coalesce(p_payload, '{}'::jsonb);
begin
    if jsonb_typeof(v_payload) <> 'object' then
        raise exception 'playbook %: payload must be a JSON object, got %', p_path,
            jsonb_typeof(v_payload) using errcode = '22023';
    end if;
    if octet_length(v_payload::text) > noetl.max_payload_bytes() then
        raise exception 'playbook %: payload is % bytes, over the limit of % bytes', p_path,
            octet_length(v_payload::text), noetl.max_payload_bytes()
            using errcode = '54000';
    end if;

    select * into v_catalog
    from noetl.catalog as c
    where c.path = p_path and (p_version is null or c.version = p_version)
    order by c.version desc
    limit 1;
    if not found then
        if p_version is null then
            raise exception 'playbook "%" is not registered', p_path using errcode = 'P0002';
        end if;
        raise exception 'playbook "%" has no version %', p_path, p_version
            using errcode = 'P0002';
    end if;

    v_entry := coalesce(
        v_catalog.spec ->> 'entry_step', v_catalog.spec -> 'workflow' -> 0 ->> 'step'
    );

    insert into noetl.execution (
        catalog_id, path, version, workload, parent_execution_id, parent_command_id
    )
    values (
        v_catalog.catalog_id, v_catalog.path, v_catalog.version,
        coalesce(v_catalog.spec -> 'workload', '{}'::jsonb) || v_payload,
        p_parent_execution_id, p_parent_command_id
    )
    returning execution_id into v_execution_id;

    perform noetl.record_event(
        v_execution_id, 'playbook.started', null, null, null, null, null,
        jsonb_build_object(
            'path', v_catalog.path, 'version', v_catalog.version, 'payload', v_payload,
            'parent_execution_id', p_parent_execution_id
        )
    );
    perform noetl.issue_step(v_execution_id, v_catalog.catalog_id, v_entry, 'start');
    return v_execution_id;
end;
$$;

-- noetl.max_payload_bytes() -> integer
-- Contract: the largest start payload accepted: noetl.engine_limit 'max_payload_bytes'
--   (default 1 MiB), a table only noetl_admin changes (a session GUC could be `set` by
--   anyone).
-- Locks: none.
create or replace function noetl.max_payload_bytes() returns integer
language sql
stable
set search_path = pg_catalog, noetl
as $$
    select noetl.engine_limit('max_payload_bytes')::integer;
$$;
