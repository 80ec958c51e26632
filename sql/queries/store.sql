-- The result store's statements (noetl_pg/store/): ref rows and db-tier blobs, through the
-- functions of sql/functions/result_store.sql.

-- name: result_ref_get
-- The ref row named by its URI (no row: never stored, expired or cleaned up).
select * from noetl.result_ref_get(%(ref)s);

-- name: result_ref_list
-- Every ref of one execution, oldest first.
select * from noetl.result_ref_list(%(execution_id)s);

-- name: result_ref_put
-- Register a written object; returns its ref and the object it replaced, if any.
select
    ref,
    replaced_store_tier,
    replaced_physical_uri
from noetl.result_ref_put(
    %(execution_id)s, %(step_name)s, %(result_name)s, %(store_tier)s, %(physical_uri)s,
    %(content_type)s, %(bytes_size)s, %(sha256)s, null, %(expires_at)s
);

-- name: result_cleanup_execution
-- Delete the execution's refs and db blobs; the fs/s3 objects left to delete.
select
    store_tier,
    physical_uri
from noetl.cleanup_execution_results(%(execution_id)s);

-- name: result_cleanup_expired
-- Delete up to batch_size expired refs with their db blobs; the fs/s3 objects to delete.
select
    store_tier,
    physical_uri
from noetl.cleanup_expired_results(%(batch_size)s);

-- name: result_blob_write_chunk
-- Store one chunk of a db-tier blob (all chunks of a blob go in one transaction).
select noetl.result_blob_write_chunk(
    %(execution_id)s, %(blob_id)s, %(chunk_no)s, %(data)s
);

-- name: result_blob_read_chunk
-- One chunk of a db-tier blob; null past its last chunk.
select noetl.result_blob_read_chunk(%(execution_id)s, %(blob_id)s, %(chunk_no)s) as data;

-- name: result_blob_delete
-- Delete a db-tier blob (every chunk); a missing blob is fine.
select noetl.result_blob_delete(%(execution_id)s, %(blob_id)s) as deleted;
