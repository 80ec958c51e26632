"""The interface every storage tier implements, and the models shared by the tiers.

A tier stores opaque bytes under an `ObjectKey` and names them with a physical URI
(`db://...`, `fs://...`, `s3://...`). It knows nothing about refs: the `ResultStore` facade
registers the ref row in `noetl.result_ref` after the tier has written the bytes.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from noetl_pg.errors import NoetlError

CHUNK_SIZE = 1024 * 1024
TIERS = ("db", "fs", "pvc", "s3", "minio")


class StoreError(NoetlError):
    """Base class of result-store errors."""


class StoreUnavailable(StoreError):
    """A tier cannot be used right now (not configured, unreachable, not writable)."""

    def __init__(self, tier: str, message: str) -> None:
        super().__init__(f"store tier '{tier}' unavailable: {message}")
        self.tier = tier
        self.message = message


class ResultMissing(StoreError):
    """A ref, or the bytes it points at, no longer exists (expired, cleaned up or lost)."""


class ResultCorrupt(StoreError):
    """The bytes read back do not match the size or SHA-256 recorded in the ref."""


class SourceConsumed(StoreError):
    """A one-shot stream was partly written to a tier that failed, so it cannot be replayed."""


@dataclass(frozen=True)
class ObjectKey:
    """Where one write of one result goes: `<execution_id>/<step>/<name>/<token>`.

    The token makes every write a new object, so a retried step never overwrites bytes that
    a registered ref may still point at.
    """

    execution_id: int
    step_name: str
    result_name: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def path(self) -> str:
        return f"{self.execution_id}/{self.step_name}/{self.result_name}/{self.token}"


@dataclass(frozen=True)
class StoredObject:
    """What a tier reports after a write: where the bytes are, how many, their digest."""

    physical_uri: str
    bytes_size: int
    sha256: str


@dataclass(frozen=True)
class ResultRef:
    """One row of `noetl.result_ref`."""

    ref_id: int
    ref: str
    execution_id: int
    step_name: str
    result_name: str
    store_tier: str
    physical_uri: str
    content_type: str
    bytes_size: int
    sha256: str
    compression: str | None
    created_at: datetime
    expires_at: datetime | None

    def to_event(self) -> dict[str, str | int]:
        """The small dict an event carries in place of the value (well under 4 KB)."""
        return {
            "result_ref": self.ref,
            "store_tier": self.store_tier,
            "bytes_size": self.bytes_size,
            "sha256": self.sha256,
            "content_type": self.content_type,
        }


class Tier(ABC):
    """One storage tier. Every method raises `StoreUnavailable` when the store is gone."""

    name: str

    @abstractmethod
    def ensure_ready(self) -> None:
        """Check the store can take a write now (create the bucket or directory if needed)."""

    @abstractmethod
    def put_stream(self, key: ObjectKey, chunks: Iterable[bytes]) -> StoredObject:
        """Write `chunks` in order without holding them all; return where they went.

        Nothing is visible under the returned URI until the write completes; a failed
        write leaves no object behind.
        """

    @abstractmethod
    def open_stream(self, physical_uri: str) -> BinaryIO:
        """A read stream of the object; `ResultMissing` when it does not exist."""

    @abstractmethod
    def delete(self, physical_uri: str) -> None:
        """Delete the object; deleting a missing object is not an error."""

    @abstractmethod
    def delete_execution(self, execution_id: int) -> None:
        """Delete every object of the execution, registered or not."""

    def put(self, key: ObjectKey, data: bytes) -> StoredObject:
        """Write an in-memory value through `put_stream`."""
        return self.put_stream(key, iter_chunks(data))

    def get(self, physical_uri: str) -> bytes:
        """Read a whole object into memory through `open_stream`."""
        with self.open_stream(physical_uri) as stream:
            return stream.read()


def iter_chunks(data: bytes, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def regroup(blocks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup blocks of any size into blocks of `size` bytes (the last one shorter, none
    when the input is empty)."""
    pending = bytearray()
    for block in blocks:
        pending += block
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def iter_file(source: BinaryIO, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while block := source.read(size):
        yield block


class Digest:
    """Counts and hashes bytes as they pass through a write."""

    def __init__(self) -> None:
        self.bytes_size = 0
        self._sha256 = hashlib.sha256()

    def update(self, block: bytes) -> bytes:
        self.bytes_size += len(block)
        self._sha256.update(block)
        return block

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


class ChunkReader(io.RawIOBase):
    """A read-only stream over an iterator of byte chunks (for tiers that read in chunks)."""

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None] | None = None):
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")
        self._on_close = on_close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            block = next(self._chunks, None)
            if block is None:
                return 0
            self._pending = memoryview(block)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def readall(self) -> bytes:
        return b"".join([bytes(self._pending), *self._chunks])

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            self._on_close()
        super().close()


def buffered(reader: io.RawIOBase) -> BinaryIO:
    return io.BufferedReader(reader, buffer_size=CHUNK_SIZE)
