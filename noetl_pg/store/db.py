"""The `db` tier: bytes in `noetl.result_blob`, in 1 MiB chunks, through the SQL functions of
`sql/functions/result_store.sql`.

The physical URI is `db://result_blob/<execution_id>/<blob_id>`. A write is one transaction,
so a blob is visible whole or not at all; a read fetches one chunk per round trip, so neither
side holds the whole value. This is the last tier of the fallback chain: when it fails the
result cannot be stored and `StoreUnavailable` reaches the caller.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from noetl_pg import db
from noetl_pg.errors import DatabaseTransient
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
    """Chunks in PostgreSQL. Every method borrows a connection to `dsn` from the process's
    pool (noetl_pg.db.connection) and raises `StoreUnavailable` when the server cannot be
    reached or the connection breaks."""

    name = "db"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def ensure_ready(self) -> None:
        """One round trip; `StoreUnavailable` if that fails."""
        with self._connect() as conn:
            db.fetch_one(conn, "server_probe")

    def put_stream(self, key: ObjectKey, chunks: Iterable[bytes]) -> StoredObject:
        """Insert the chunks in one transaction (rolled back on any failure)."""
        blob_id = uuid.UUID(key.token)
        digest = Digest()
        with self._connect() as conn, db.transaction(conn):
            chunk_count = 0
            for block in regroup(chunks, CHUNK_SIZE):
                self._write_chunk(conn, key, blob_id, chunk_count, digest.update(block))
                chunk_count += 1
            if chunk_count == 0:
                # An empty value is one empty chunk, so "no rows" always means "no blob".
                self._write_chunk(conn, key, blob_id, 0, b"")
        return StoredObject(
            f"{SCHEME}{key.execution_id}/{blob_id}", digest.bytes_size, digest.sha256
        )

    def open_stream(self, physical_uri: str) -> BinaryIO:
        """A stream that reads chunk after chunk on one pooled connection (given back when
        the stream closes). `ResultMissing` at open when the blob has no chunk; a stream
        whose connection breaks mid-way raises `StoreUnavailable` from `read`."""
        execution_id, blob_id = _parse(physical_uri)
        held = contextlib.ExitStack()
        try:
            conn = held.enter_context(self._connect())
            first = _read_chunk(conn, execution_id, blob_id, 0)
        except BaseException:
            held.close()
            raise
        if first is None:
            held.close()
            raise ResultMissing(f"{physical_uri}: no blob rows")

        def chunks() -> Iterator[bytes]:
            yield first
            chunk_no = 1
            while (block := _read_chunk(conn, execution_id, blob_id, chunk_no)) is not None:
                yield block
                chunk_no += 1

        return buffered(ChunkReader(chunks(), on_close=held.close))

    def delete(self, physical_uri: str) -> None:
        """Delete the blob's chunks; a missing blob is fine."""
        execution_id, blob_id = _parse(physical_uri)
        with self._connect() as conn:
            db.fetch_one(conn, "result_blob_delete", execution_id=execution_id, blob_id=blob_id)

    @staticmethod
    def _write_chunk(
        conn: db.Connection, key: ObjectKey, blob_id: uuid.UUID, chunk_no: int, data: bytes
    ) -> None:
        db.fetch_one(conn, "result_blob_write_chunk", execution_id=key.execution_id,
                     blob_id=blob_id, chunk_no=chunk_no, data=data)

    def delete_execution(self, execution_id: int) -> None:
        """Nothing to do: `noetl.cleanup_execution_results` deletes the execution's blobs."""

    @contextlib.contextmanager
    def _connect(self) -> Iterator[db.Connection]:
        with _unavailable(), db.connection(self.dsn) as conn:
            yield conn


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """A database that cannot answer now is this tier being down (StoreUnavailable)."""
    try:
        yield
    except DatabaseTransient as exc:
        raise StoreUnavailable(DbTier.name, exc.message) from exc


def _read_chunk(
    conn: db.Connection, execution_id: int, blob_id: uuid.UUID, chunk_no: int
) -> bytes | None:
    with _unavailable():
        row: dict[str, Any] | None = db.fetch_one(
            conn, "result_blob_read_chunk", execution_id=execution_id, blob_id=blob_id,
            chunk_no=chunk_no)
    return None if row is None or row["data"] is None else bytes(row["data"])


def _parse(physical_uri: str) -> tuple[int, uuid.UUID]:
    if not physical_uri.startswith(SCHEME):
        raise ValueError(f"not a db physical URI: {physical_uri!r}")
    execution_id, _, blob_id = physical_uri.removeprefix(SCHEME).partition("/")
    return int(execution_id), uuid.UUID(blob_id)
