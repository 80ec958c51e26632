-- Result store: where a result too large for an event lives, and (for the db tier) its bytes.
--
-- noetl.result_ref holds one row per externalized result. `ref` is the stable name the
-- engine puts into events (noetl://execution/<id>/result/<step>/<name>); `physical_uri`
-- says where the bytes are on `store_tier`. No foreign key to noetl.execution: results
-- are written by workers and cleaned up by execution id or expiry, never by cascade.
--
-- noetl.result_blob holds db-tier bytes in ordered chunks, so a value is written and read
-- as a stream and is not bound by the 1 GB bytea limit. A blob is named by `blob_id`,
-- which appears in the ref's physical_uri (db://result_blob/<execution_id>/<blob_id>).

create table if not exists noetl.result_ref (
    ref_id bigint generated always as identity,
    execution_id bigint not null,
    ref text not null,
    step_name text not null,
    result_name text not null,
    store_tier text not null,
    physical_uri text not null,
    content_type text not null default 'application/json',
    bytes_size bigint not null,
    sha256 text not null,
    compression text,
    created_at timestamptz not null default now(),
    expires_at timestamptz,
    constraint result_ref_pkey primary key (execution_id, ref_id),
    constraint result_ref_ref_key unique (ref),
    constraint result_ref_store_tier_check
    check (store_tier in ('db', 'fs', 'pvc', 's3', 'minio')),
    constraint result_ref_bytes_size_check check (bytes_size >= 0)
);

create index if not exists result_ref_expires_at_idx
on noetl.result_ref (expires_at)
where expires_at is not null;

create table if not exists noetl.result_blob (
    execution_id bigint not null,
    blob_id uuid not null,
    chunk_no integer not null,
    data bytea not null,
    constraint result_blob_pkey primary key (execution_id, blob_id, chunk_no)
);
