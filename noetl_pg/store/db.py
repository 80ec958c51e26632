"""The `db` tier: bytes in `noetl.result_blob`, in 1 MiB chunks, through the SQL functions of
`sql/functions/result_store.sql`.

The physical URI is `db://result_blob/<execution_id>/<blob_id>`. A write is one transaction,
so a blob is visible whole or not at all; a read fetches one chunk per round trip, so neither
side holds the whole value. This is the last tier of the fallback chain: when it fails the
result cannot be stored and `StoreUnavailable` reaches the caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import psycopg

from noetl_pg.store.base import (
    CHUNK_SIZE,
    ChunkReader,
    Digest,
    ObjectKey,
    ResultMissing,
    StoredObject,
    StoreUnavailable,
    Tier,
    buffered,
    regroup,
)

SCHEME = "db://result_blob/"


class DbTier(Tier):
    """Chunks in PostgreSQL. Every method opens its own connection to `dsn` and raises
    `StoreUnavailable` when the server cannot be reached or the connection breaks."""

    name = "db"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def ensure_ready(self) -> None:
        """Open and close a connection; `StoreUnavailable` if that fails."""
        with self._connect():
            pass

    def put_stream(self, key: ObjectKey, chunks: Iterable[bytes]) -> StoredObject:
        """Insert the chunks in one transaction (rolled back on any failure)."""
        blob_id = uuid.UUID(key.token)
        digest = Digest()
        try:
            with self._connect() as conn, conn.transaction():
                chunk_count = 0
                for block in regroup(chunks, CHUNK_SIZE):
                    self._write_chunk(conn, key, blob_id, chunk_count, digest.update(block))
                    chunk_count += 1
                if chunk_count == 0:
                    # An empty value is one empty chunk, so "no rows" always means "no blob".
                    self._write_chunk(conn, key, blob_id, 0, b"")
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc
        return StoredObject(
            f"{SCHEME}{key.execution_id}/{blob_id}", digest.bytes_size, digest.sha256
        )

    def open_stream(self, physical_uri: str) -> BinaryIO:
        """A stream that reads chunk after chunk on its own connection (closed with the
        stream). `ResultMissing` at open when the blob has no chunk; a stream whose
        connection breaks mid-way raises `StoreUnavailable` from `read`."""
        execution_id, blob_id = _parse(physical_uri)
        conn = self._connect()
        try:
            first = _read_chunk(conn, execution_id, blob_id, 0)
        except BaseException:
            conn.close()
            raise
        if first is None:
            conn.close()
            raise ResultMissing(f"{physical_uri}: no blob rows")

        def chunks() -> Iterator[bytes]:
            yield first
            chunk_no = 1
            while (block := _read_chunk(conn, execution_id, blob_id, chunk_no)) is not None:
                yield block
                chunk_no += 1

        return buffered(ChunkReader(chunks(), on_close=conn.close))

    def delete(self, physical_uri: str) -> None:
        """Delete the blob's chunks; a missing blob is fine."""
        execution_id, blob_id = _parse(physical_uri)
        try:
            with self._connect() as conn:
                conn.execute("select noetl.result_blob_delete(%s, %s)", (execution_id, blob_id))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc

    @staticmethod
    def _write_chunk(
        conn: psycopg.Connection, key: ObjectKey, blob_id: uuid.UUID, chunk_no: int, data: bytes
    ) -> None:
        conn.execute(
            "select noetl.result_blob_write_chunk(%s, %s, %s, %s)",
            (key.execution_id, blob_id, chunk_no, data),
        )

    def delete_execution(self, execution_id: int) -> None:
        """Nothing to do: `noetl.cleanup_execution_results` deletes the execution's blobs."""

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc


def _read_chunk(
    conn: psycopg.Connection, execution_id: int, blob_id: uuid.UUID, chunk_no: int
) -> bytes | None:
    try:
        row = conn.execute(
            "select noetl.result_blob_read_chunk(%s, %s, %s)", (execution_id, blob_id, chunk_no)
        ).fetchone()
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(DbTier.name, str(exc)) from exc
    return None if row is None or row[0] is None else bytes(row[0])


def _parse(physical_uri: str) -> tuple[int, uuid.UUID]:
    if not physical_uri.startswith(SCHEME):
        raise ValueError(f"not a db physical URI: {physical_uri!r}")
    execution_id, _, blob_id = physical_uri.removeprefix(SCHEME).partition("/")
    return int(execution_id), uuid.UUID(blob_id)
