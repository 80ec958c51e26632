"""Result store: keeps results too large for an event and hands out small refs to them.

`ResultStore` is the one entry point. A result at most `inline_max_bytes` of compact JSON
stays inline in the event; a larger one (or any `bytes` value) is written to a tier and the
event carries `ResultRef.to_event()` instead. Tiers are tried along the fallback chain
s3/minio -> fs/pvc -> db; every step down is reported in `fallbacks` so the engine can write
a warning event, and a result is only lost when the database itself is down.

Bytes are written first, then the ref row is registered (`noetl.result_ref_put`); readers
find a result only through its row, so they never see a half-written one. Cleanup deletes
rows first (`noetl.cleanup_execution_results`, `noetl.cleanup_expired_results`) and then
the fs/s3 objects they listed, so a crash in between leaves an unreferenced object, never a
dangling ref; what could not be deleted is returned in `CleanupReport.leftovers`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from noetl_pg import db as engine_db
from noetl_pg import settings
from noetl_pg.errors import DatabaseTransient
from noetl_pg.extras import require_extra
from noetl_pg.store.base import (
    TIERS,
    ObjectKey,
    ResultCorrupt,
    ResultMissing,
    ResultRef,
    SourceConsumed,
    StoredObject,
    StoreError,
    StoreUnavailable,
    Tier,
    iter_chunks,
    iter_file,
)
from noetl_pg.store.db import DbTier
from noetl_pg.store.fs import FsTier

if TYPE_CHECKING:
    from noetl_pg.store.s3 import S3Tier

__all__ = [
    "CleanupReport",
    "Externalized",
    "Fallback",
    "ResultCorrupt",
    "ResultMissing",
    "ResultRef",
    "ResultStore",
    "SourceConsumed",
    "StoreError",
    "StoreUnavailable",
    "Stored",
]

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
DEFAULT_INLINE_MAX_BYTES = 64 * 1024
DEFAULT_PVC_TIER_THRESHOLD_BYTES = 1024 * 1024
# Tier names as recorded -> the module that serves them.
CANONICAL = {"db": "db", "fs": "fs", "pvc": "fs", "s3": "s3", "minio": "s3"}
FALLBACK_AFTER = {"s3": ("fs", "db"), "fs": ("db",), "db": ()}
REF_EVENT_KEYS = frozenset({"result_ref", "store_tier", "bytes_size", "sha256", "content_type"})


@dataclass(frozen=True)
class Fallback:
    """A tier that failed during a write, and the tier tried next."""

    tier_from: str
    tier_to: str
    error: str


@dataclass(frozen=True)
class Stored:
    """A result written to a tier: its ref row and the fallbacks taken to get there."""

    ref: ResultRef
    fallbacks: tuple[Fallback, ...] = ()


@dataclass(frozen=True)
class Externalized:
    """What `externalize` decided. `value` is what the event carries: the result itself when
    it is inline, else the ref dict (`ref.to_event()`)."""

    value: Any
    ref: ResultRef | None = None
    fallbacks: tuple[Fallback, ...] = ()

    @property
    def inline(self) -> bool:
        return self.ref is None


@dataclass
class CleanupReport:
    """Refs deleted, and the objects (or execution prefixes) that could not be deleted
    because their store was unavailable; those are leaked, not referenced."""

    refs_deleted: int = 0
    leftovers: list[str] = field(default_factory=list)


RefLike = str | Mapping[str, Any] | ResultRef


class ResultStore:
    """Writes, reads and cleans up externalized results.

    Every method opens short connections to `dsn`; when PostgreSQL is unreachable it raises
    `StoreUnavailable` with tier `db` (no ref can be registered or looked up without it).
    """

    def __init__(
        self,
        dsn: str,
        *,
        fs: FsTier | None = None,
        s3: S3Tier | None = None,
        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
        pvc_tier_threshold_bytes: int = DEFAULT_PVC_TIER_THRESHOLD_BYTES,
    ) -> None:
        self.dsn = dsn
        self.inline_max_bytes = inline_max_bytes
        self.pvc_tier_threshold_bytes = pvc_tier_threshold_bytes
        self._tiers: dict[str, Tier] = {"db": DbTier(dsn)}
        if fs is not None:
            self._tiers["fs"] = fs
        if s3 is not None:
            self._tiers["s3"] = s3

    @classmethod
    def from_env(cls, dsn: str, s3_credentials: Mapping[str, str] | None = None) -> ResultStore:
        """A store configured from `NOETL_INLINE_MAX_BYTES`, `NOETL_PVC_MOUNT_PATH`,
        `NOETL_PVC_TIER_THRESHOLD_BYTES` and `NOETL_S3_*` (see `S3Tier.from_env`)."""
        configured = settings.current()
        mount_path = configured.pvc_mount_path
        return cls(
            dsn,
            fs=FsTier(mount_path) if mount_path else None,
            s3=_s3_tier_from_env(s3_credentials),
            inline_max_bytes=configured.inline_max_bytes,
            pvc_tier_threshold_bytes=configured.pvc_tier_threshold_bytes,
        )

    def externalize(
        self,
        execution_id: int,
        step: str,
        name: str,
        value: Any,
        *,
        store: str | None = None,
        expires_at: datetime | None = None,
    ) -> Externalized:
        """Keep `value` inline when its compact JSON fits `inline_max_bytes`, else store it.

        `bytes` values are always stored (events are JSON). `store` forces the first tier
        (a step's `output.store`). Raises `TypeError` for values JSON cannot encode, and
        `StoreUnavailable` only when every tier of the chain, db included, failed.
        """
        if isinstance(value, bytes | bytearray):
            data, content_type = bytes(value), BINARY_CONTENT_TYPE
        else:
            data, content_type = _encode_json(value), JSON_CONTENT_TYPE
            if len(data) <= self.inline_max_bytes:
                return Externalized(value)
        # The value is already encoded: store those bytes rather than encode it again.
        stored = self._put_bytes(execution_id, step, name, data, content_type, store,
                                 expires_at)
        return Externalized(stored.ref.to_event(), stored.ref, stored.fallbacks)

    def put(
        self,
        execution_id: int,
        step: str,
        name: str,
        value: Any,
        *,
        store: str | None = None,
        expires_at: datetime | None = None,
    ) -> Stored:
        """Store `value` whatever its size: `bytes` as is, anything else as compact JSON."""
        if isinstance(value, bytes | bytearray):
            data, content_type = bytes(value), BINARY_CONTENT_TYPE
        else:
            data, content_type = _encode_json(value), JSON_CONTENT_TYPE
        return self._put_bytes(execution_id, step, name, data, content_type, store,
                               expires_at)

    def _put_bytes(
        self,
        execution_id: int,
        step: str,
        name: str,
        data: bytes,
        content_type: str,
        store: str | None,
        expires_at: datetime | None,
    ) -> Stored:
        return self._store(
            ObjectKey(execution_id, _segment(step), _segment(name)),
            lambda: iter_chunks(data),
            content_type,
            self._first_tier(store, len(data)),
            expires_at,
        )

    def put_stream(
        self,
        execution_id: int,
        step: str,
        name: str,
        source: BinaryIO | Iterable[bytes],
        *,
        content_type: str = BINARY_CONTENT_TYPE,
        store: str | None = None,
        size_hint: int | None = None,
        expires_at: datetime | None = None,
    ) -> Stored:
        """Store a large value read from a binary file or an iterator of byte blocks, without
        holding it in memory. The tier is chosen as in `put`, with `size_hint` (unknown =
        large) standing in for the size.

        A seekable file is rewound when a tier fails mid-write, so the fallback chain works
        as for `put`. A one-shot iterator can only fall back before its first block is read
        (tiers are probed first); a tier failing after that raises `SourceConsumed`.
        """
        return self._store(
            ObjectKey(execution_id, _segment(step), _segment(name)),
            _replayable(source),
            content_type,
            self._first_tier(store, size_hint),
            expires_at,
        )

    def resolve(self, ref: RefLike) -> Any:
        """The stored value: decoded JSON, or `bytes` for other content types.

        Raises `ResultMissing` when the ref or its bytes are gone, `ResultCorrupt` when the
        bytes do not match the recorded size and SHA-256, `StoreUnavailable` when the tier
        holding them (or the database) cannot be reached.
        """
        row = self.get_ref(ref)
        data = self._tier(row.store_tier).get(row.physical_uri)
        if len(data) != row.bytes_size or hashlib.sha256(data).hexdigest() != row.sha256:
            raise ResultCorrupt(
                f"{row.ref}: read {len(data)} bytes from {row.physical_uri}, "
                f"expected {row.bytes_size} with sha256 {row.sha256}"
            )
        return json.loads(data) if row.content_type == JSON_CONTENT_TYPE else data

    def open(self, ref: RefLike) -> BinaryIO:
        """A read stream of the stored bytes (the caller closes it). Errors as `resolve`;
        the digest is not checked, and a store lost mid-read raises from `read`."""
        row = self.get_ref(ref)
        return self._tier(row.store_tier).open_stream(row.physical_uri)

    def local_path(self, ref: RefLike) -> Path | None:
        """The file holding the bytes of an fs/pvc ref on this host, for tools that read
        files in place (DuckDB's read_parquet); None for refs on other tiers (use `open`).
        Raises like `get_ref`, and `StoreUnavailable` when the fs tier is not configured."""
        row = self.get_ref(ref)
        tier = self._tier(row.store_tier)
        return tier.local_path(row.physical_uri) if isinstance(tier, FsTier) else None

    def get_ref(self, ref: RefLike) -> ResultRef:
        """The ref row; `ResultMissing` when it does not exist (never stored, or cleaned up)."""
        uri = _ref_uri(ref)
        rows = self._refs("result_ref_get", ref=uri)
        if not rows:
            raise ResultMissing(f"{uri}: no such result ref")
        return rows[0]

    @staticmethod
    def is_ref(value: Any) -> bool:
        """Whether `value` is a ref dict made by `ResultRef.to_event()`."""
        return (
            isinstance(value, Mapping)
            and set(value) == REF_EVENT_KEYS
            and str(value["result_ref"]).startswith("noetl://execution/")
        )

    def list_refs(self, execution_id: int) -> list[ResultRef]:
        """Every ref of the execution, oldest first."""
        return self._refs("result_ref_list", execution_id=execution_id)

    def cleanup_execution(self, execution_id: int) -> CleanupReport:
        """Delete the execution's refs and db blobs, then its fs/s3 objects: first each
        listed object, then the execution's whole prefix on every configured fs/s3 tier
        (objects of writes interrupted before their ref was registered)."""
        deleted = self._objects("result_cleanup_execution", execution_id=execution_id)
        report = self._delete_objects(deleted)
        for tier in self._tiers.values():
            try:
                tier.delete_execution(execution_id)
            except StoreUnavailable as exc:
                report.leftovers.append(f"{tier.name}:{execution_id}/*")
                log.warning("results of execution %s left on %s: %s", execution_id, tier.name, exc)
        return report

    def cleanup_expired(self, batch_size: int = 1000) -> CleanupReport:
        """Delete every expired ref with its data, `batch_size` refs per transaction; safe to
        run from several processes at once (rows are claimed with skip locked)."""
        report = CleanupReport()
        while True:
            deleted = self._objects("result_cleanup_expired", batch_size=batch_size)
            batch = self._delete_objects(deleted)
            report.refs_deleted += batch.refs_deleted
            report.leftovers += batch.leftovers
            if len(deleted) < batch_size:
                return report

    def _store(
        self,
        key: ObjectKey,
        chunks: Callable[[], Iterator[bytes]],
        content_type: str,
        first_tier: str,
        expires_at: datetime | None,
    ) -> Stored:
        chain = [first_tier, *FALLBACK_AFTER[CANONICAL[first_tier]]]
        fallbacks: list[Fallback] = []
        last_error: StoreUnavailable | None = None
        for position, tier_name in enumerate(chain):
            try:
                written = self._tier(tier_name).put_stream(key, chunks())
            except StoreUnavailable as exc:
                if position + 1 == len(chain):
                    raise
                last_error = exc
                fallbacks.append(Fallback(tier_name, chain[position + 1], str(exc)))
                log.warning("result %s: tier %s down, trying %s", key.path, *chain[position:][:2])
                continue
            except SourceConsumed as exc:
                raise exc from last_error
            ref = self._register(key, tier_name, written, content_type, expires_at)
            return Stored(ref, tuple(fallbacks))
        raise AssertionError("unreachable: the chain always ends with db")

    def _register(
        self,
        key: ObjectKey,
        tier_name: str,
        written: StoredObject,
        content_type: str,
        expires_at: datetime | None,
    ) -> ResultRef:
        """Record the ref; if that fails the written object is deleted before re-raising."""
        try:
            with _store_errors(), engine_db.connection(self.dsn) as conn:
                row = engine_db.fetch_one(
                    conn, "result_ref_put", execution_id=key.execution_id,
                    step_name=key.step_name, result_name=key.result_name, store_tier=tier_name,
                    physical_uri=written.physical_uri, content_type=content_type,
                    bytes_size=written.bytes_size, sha256=written.sha256, expires_at=expires_at)
            assert row is not None
            ref_uri, replaced_tier, replaced_uri = (
                row["ref"], row["replaced_store_tier"], row["replaced_physical_uri"])
        except BaseException:
            with contextlib.suppress(StoreError):
                self._tier(tier_name).delete(written.physical_uri)
            raise
        if replaced_uri is not None:
            self._delete_objects([(replaced_tier, replaced_uri)])
        return self.get_ref(ref_uri)

    def _delete_objects(self, deleted: list[tuple[str, str]]) -> CleanupReport:
        """Delete the fs/s3 objects of refs already deleted (db blobs went with the rows)."""
        report = CleanupReport(refs_deleted=len(deleted))
        for tier_name, physical_uri in deleted:
            if tier_name == "db":
                continue
            try:
                self._tier(tier_name).delete(physical_uri)
            except StoreUnavailable as exc:
                report.leftovers.append(physical_uri)
                log.warning("result object %s left behind: %s", physical_uri, exc)
        return report

    def _first_tier(self, store: str | None, size: int | None) -> str:
        if store is not None:
            if store not in TIERS:
                raise ValueError(f"unknown store tier {store!r}; expected one of {TIERS}")
            return store
        if "fs" in self._tiers and (size is None or size > self.pvc_tier_threshold_bytes):
            return "fs"
        if "s3" in self._tiers:
            return "s3"
        return "db"

    def _tier(self, tier_name: str) -> Tier:
        tier = self._tiers.get(CANONICAL[tier_name])
        if tier is None:
            raise StoreUnavailable(tier_name, "not configured in this process")
        return tier

    def _refs(self, name: str, **params: Any) -> list[ResultRef]:
        with _store_errors(), engine_db.connection(self.dsn) as conn:
            return [ResultRef(**row) for row in engine_db.fetch_all(conn, name, **params)]

    def _objects(self, name: str, **params: Any) -> list[tuple[str, str]]:
        with _store_errors(), engine_db.connection(self.dsn) as conn:
            return [(row["store_tier"], row["physical_uri"])
                    for row in engine_db.fetch_all(conn, name, **params)]


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """A database that cannot answer now is the db tier being down (StoreUnavailable)."""
    try:
        yield
    except DatabaseTransient as exc:
        raise StoreUnavailable("db", exc.message) from exc


# json.dumps with options builds an encoder per call; every step result is measured here.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode_json(value: Any) -> bytes:
    return _COMPACT_JSON.encode(value).encode()


def _segment(text: str) -> str:
    """A step or result name as a path segment of the ref and of object keys."""
    if not text or "/" in text or text in (".", ".."):
        raise ValueError(f"result step/name {text!r} must be non-empty, not '.'/'..', no '/'")
    return text


def _ref_uri(ref: RefLike) -> str:
    if isinstance(ref, ResultRef):
        return ref.ref
    if isinstance(ref, Mapping):
        return str(ref["result_ref"])
    return ref


def _replayable(source: BinaryIO | Iterable[bytes]) -> Callable[[], Iterator[bytes]]:
    """A callable giving the source's blocks from the start on each call (for fallback)."""
    if hasattr(source, "read"):
        stream = cast(BinaryIO, source)
        if hasattr(stream, "seekable") and stream.seekable():
            start = stream.tell()

            def rewound() -> Iterator[bytes]:
                stream.seek(start)
                return iter_file(stream)

            return rewound
        return _OneShot(iter_file(stream))
    return _OneShot(iter(source))


class _OneShot:
    """Gives its iterator once; asking again after a block was read raises SourceConsumed."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._started = False

    def __call__(self) -> Iterator[bytes]:
        if self._started:
            raise SourceConsumed("the stream was partly read by a tier that then failed")
        return self._read()

    def _read(self) -> Iterator[bytes]:
        # Runs on the first next(): a tier that fails while probing leaves the source whole.
        self._started = True
        yield from self._blocks


def _s3_tier_from_env(credentials: Mapping[str, str] | None) -> S3Tier | None:
    """The s3 tier when NOETL_S3_ENDPOINT is set; boto3 (the `s3` extra) is imported only then."""
    if not settings.current().s3_endpoint:
        return None
    require_extra("s3", "NOETL_S3_ENDPOINT (the s3 result tier)")
    from noetl_pg.store.s3 import S3Tier

    return S3Tier.from_env(credentials)
