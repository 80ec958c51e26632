-- Result store: the SQL API behind noetl_pg.store (one concern: result refs and db-tier bytes).
--
-- Division of work: these functions own the rows (noetl.result_ref, noetl.result_blob).
-- Bytes on fs/pvc/s3/minio live outside the database, so the functions that delete refs
-- return the physical URIs of those objects and the Python caller (ResultStore) deletes
-- them right after the commit, in the same call. Rows go first: a crash between the two
-- steps leaves an unreferenced object (a storage leak swept by the next cleanup of that
-- execution), never a ref that points at nothing.

-- result_ref_put: register (or replace) the ref of one result, after its bytes are written.
-- Returns the ref URI and, when an earlier ref with the same URI pointed at an fs/s3 object,
-- that object's tier and physical URI so the caller deletes it (its db-tier bytes, if any,
-- are deleted here). Locks: the replaced result_ref row (for update) and its blob rows; two
-- writers of the same ref serialize on it, the later one replacing the earlier.
-- Fails with invalid_parameter_value when step or name is empty or contains '/', and with
-- check_violation on an unknown tier.
create or replace function noetl.result_ref_put(
    p_execution_id bigint,
    p_step_name text,
    p_result_name text,
    p_store_tier text,
    p_physical_uri text,
    p_content_type text,
    p_bytes_size bigint,
    p_sha256 text,
    p_compression text default null,
    p_expires_at timestamptz default null
) returns table (ref text, replaced_store_tier text, replaced_physical_uri text)
language plpgsql
as $$
declare
    v_ref text;
    v_old noetl.result_ref%rowtype;
begin
    if coalesce(p_step_name, '') = '' or p_step_name like '%/%'
        or coalesce(p_result_name, '') = '' or p_result_name like '%/%' then
        raise exception 'result_ref_put: step % / name % must be non-empty and contain no "/"',
            p_step_name, p_result_name
            using errcode = 'invalid_parameter_value';
    end if;
    v_ref := format('noetl://execution/%s/result/%s/%s', p_execution_id, p_step_name, p_result_name);

    -- Loop: the row seen by the conflict can be deleted (cleanup) before it is locked.
    loop
        insert into noetl.result_ref (
            execution_id, ref, step_name, result_name, store_tier, physical_uri,
            content_type, bytes_size, sha256, compression, expires_at
        ) values (
            p_execution_id, v_ref, p_step_name, p_result_name, p_store_tier, p_physical_uri,
            p_content_type, p_bytes_size, p_sha256, p_compression, p_expires_at
        )
        on conflict on constraint result_ref_ref_key do nothing;
        exit when found;

        -- A retry (or a concurrent writer that committed first): lock the row so exactly
        -- one writer sees, and hands back, each replaced object.
        select r.* into v_old
        from noetl.result_ref as r
        where r.execution_id = p_execution_id and r.ref = v_ref
        for update;
        continue when not found;

        update noetl.result_ref as r set
            store_tier = p_store_tier,
            physical_uri = p_physical_uri,
            content_type = p_content_type,
            bytes_size = p_bytes_size,
            sha256 = p_sha256,
            compression = p_compression,
            created_at = noetl.now(),
            expires_at = p_expires_at
        where r.execution_id = p_execution_id and r.ref_id = v_old.ref_id;
        exit;
    end loop;

    if v_old.ref_id is not null and v_old.store_tier = 'db' then
        delete from noetl.result_blob as b
        where b.execution_id = p_execution_id
            and b.blob_id = noetl.result_blob_id(v_old.physical_uri);
    end if;

    return query select
        v_ref,
        case when v_old.store_tier <> 'db' then v_old.store_tier end,
        case when v_old.store_tier <> 'db' then v_old.physical_uri end;
end;
$$;

-- result_blob_id: the blob id inside a db-tier physical URI
-- (db://result_blob/<execution_id>/<blob_id>). Pure; fails with invalid_text_representation
-- when the URI does not end in a uuid.
create or replace function noetl.result_blob_id(p_physical_uri text)
returns uuid
language sql
immutable
as $$
    select split_part(p_physical_uri, '/', 5)::uuid
$$;

-- result_ref_get: the ref row named by its URI; no row when it does not exist (expired or
-- cleaned up). Reads only; takes no locks.
create or replace function noetl.result_ref_get(p_ref text)
returns setof noetl.result_ref
language sql
stable
as $$
    select r.* from noetl.result_ref as r where r.ref = p_ref
$$;

-- result_ref_list: every ref of one execution, oldest first. Reads only; takes no locks.
create or replace function noetl.result_ref_list(p_execution_id bigint)
returns setof noetl.result_ref
language sql
stable
as $$
    select r.* from noetl.result_ref as r
    where r.execution_id = p_execution_id
    order by r.ref_id
$$;

-- result_blob_write_chunk: store chunk `p_chunk_no` (0-based) of a db-tier blob. The caller
-- writes all chunks of a blob in one transaction, so a blob is visible whole or not at all.
-- Fails with unique_violation when the chunk already exists.
create or replace function noetl.result_blob_write_chunk(
    p_execution_id bigint, p_blob_id uuid, p_chunk_no integer, p_data bytea
) returns void
language sql
as $$
    insert into noetl.result_blob (execution_id, blob_id, chunk_no, data)
    values (p_execution_id, p_blob_id, p_chunk_no, p_data)
$$;

-- result_blob_read_chunk: chunk `p_chunk_no` of a db-tier blob, or null past its last chunk
-- (or when the blob does not exist). Reads only; takes no locks.
create or replace function noetl.result_blob_read_chunk(
    p_execution_id bigint, p_blob_id uuid, p_chunk_no integer
) returns bytea
language sql
stable
as $$
    select b.data from noetl.result_blob as b
    where b.execution_id = p_execution_id and b.blob_id = p_blob_id and b.chunk_no = p_chunk_no
$$;

-- result_blob_delete: delete a db-tier blob (all its chunks); returns the number of chunks
-- deleted, 0 when it was already gone. Locks the deleted rows.
create or replace function noetl.result_blob_delete(p_execution_id bigint, p_blob_id uuid)
returns bigint
language plpgsql
as $$
declare
    v_deleted bigint;
begin
    delete from noetl.result_blob as b
    where b.execution_id = p_execution_id and b.blob_id = p_blob_id;
    get diagnostics v_deleted = row_count;
    return v_deleted;
end;
$$;

-- cleanup_execution_results: delete every ref of one execution and every db-tier blob of it
-- (including blobs of writes that never registered a ref). Returns one row per deleted ref;
-- the caller deletes the fs/pvc/s3/minio objects listed and then the execution's prefix on
-- each of those stores. Locks: the deleted rows; concurrent writers of the same execution
-- block on them until commit. Idempotent: a second call returns no rows.
create or replace function noetl.cleanup_execution_results(p_execution_id bigint)
returns table (store_tier text, physical_uri text)
language plpgsql
as $$
begin
    delete from noetl.result_blob as b where b.execution_id = p_execution_id;
    return query
    delete from noetl.result_ref as r
    where r.execution_id = p_execution_id
    returning r.store_tier, r.physical_uri;
end;
$$;

-- cleanup_expired_results: delete up to `p_limit` refs whose expires_at has passed, with
-- their db-tier blobs, and return the deleted refs so the caller deletes fs/s3 objects.
-- Locks: the chosen ref rows, taken with `for update skip locked`, so several cleaners run
-- side by side without waiting on each other; call again until it returns no rows.
create or replace function noetl.cleanup_expired_results(p_limit integer default 1000)
returns table (execution_id bigint, store_tier text, physical_uri text)
language plpgsql
as $$
begin
    return query
    with expired as (
        select r.execution_id, r.ref_id
        from noetl.result_ref as r
        where r.expires_at < noetl.now()
        order by r.expires_at
        limit p_limit
        for update skip locked
    ),
    deleted as (
        delete from noetl.result_ref as r
        using expired as e
        where r.execution_id = e.execution_id and r.ref_id = e.ref_id
        returning r.execution_id, r.store_tier, r.physical_uri
    ),
    blobs as (
        delete from noetl.result_blob as b
        using deleted as d
        where d.store_tier = 'db'
            and b.execution_id = d.execution_id
            and b.blob_id = noetl.result_blob_id(d.physical_uri)
    )
    select d.execution_id, d.store_tier, d.physical_uri from deleted as d;
end;
$$;

-- result_ref_of: the ref URI of a value that is a ref dict (what an event carries in place
-- of a stored result: {result_ref, store_tier, bytes_size, sha256, content_type}), else
-- NULL. record_event uses it to fill noetl.event.result_ref. Locks: none.
create or replace function noetl.result_ref_of(p_value jsonb) returns text
language sql
immutable
as $$
    select case
        when jsonb_typeof(p_value) = 'object'
            and p_value ?& array['result_ref', 'store_tier', 'sha256']
            and (p_value ->> 'result_ref') like 'noetl://execution/%'
            then p_value ->> 'result_ref'
    end;
$$;

-- noetl.record_store_fallbacks_v1(fallbacks) -> integer
-- Worker protocol v1 (the unversioned record_store_fallbacks calls it, for older workers).
-- Contract: warning events for results that reached a lower tier than the first one
--   tried. `p_fallbacks` is a JSON array of {command_id, attempt, fallbacks: [{tier_from,
--   tier_to, error, result_ref}]}; one `result.store.fallback` event per step down, with
--   the fallback as meta. Only for commands still claimed at that attempt, so an outcome
--   sent again after a lost acknowledgement (stale) writes nothing twice. The worker calls
--   it in the transaction of finish_and_claim. Returns how many events it wrote.
-- Locks: none (reads the command rows).
create or replace function noetl.record_store_fallbacks_v1(p_fallbacks jsonb) returns integer
language sql
as $$
    with written as (
        select
            noetl.record_event(
                c.execution_id, 'result.store.fallback', c.step_name, c.command_id,
                c.attempt, null, null, f.value, c.loop_id, c.iter_index
            ) as event_id
        from jsonb_array_elements(coalesce(p_fallbacks, '[]'::jsonb)) as o (value)
        inner join noetl.command as c
            on
                c.command_id = (o.value ->> 'command_id')::bigint
                and c.attempt = (o.value ->> 'attempt')::integer
                -- `is true`: found by key, not through a status index (docs/architecture.md)
                and (c.status = 'claimed') is true
        cross join jsonb_array_elements(o.value -> 'fallbacks') as f (value)
    )

    select count(*)::integer from written;
$$;
