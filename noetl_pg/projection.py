"""The projector: keeps `noetl.execution_state` up to date from the event log, shard by shard.

The fold itself is SQL (`noetl.project_shards`, sql/functions/projector_round.sql); this
module only schedules it. A projector holds shards (execution_id % shard count) through leases it
renews every `lease_seconds / 3`; shards of a projector that stopped renewing are taken
over once their lease expires, and the fold resumes from the shard's checkpoint. Any
daemon can run one: `noetl projector`, `noetl worker --projector`, or `noetl run`
in-process.

On a broken connection the projector reconnects with backoff (noetl_pg.db.Reconnect);
nothing is lost, because each fold and its checkpoint commit together. Any other database
error is logged and the next round tries again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import psycopg

from noetl_pg import db, settings
from noetl_pg.errors import DatabaseError, DatabaseTransient

log = logging.getLogger(__name__)



def shard_count_from_env() -> int | None:
    """NOETL_SHARD_COUNT, or None when unset. SettingsError when not a positive int."""
    return settings.current().shard_count


class Projector:
    """Claims projection shards and folds their new events until stopped."""

    def __init__(
        self,
        dsn: str,
        *,
        owner: str | None = None,
        lease_seconds: float = 10.0,
        batch_limit: int = 5000,
        poll_interval: float = 0.1,
        shard_count: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.owner = owner or (
            f"projector-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.lease_seconds = lease_seconds
        self.batch_limit = batch_limit
        self.poll_interval = poll_interval
        self.shard_count = shard_count if shard_count is not None else shard_count_from_env()
        self.shards: list[int] = []
        self.folded_events = 0
        # Whether the last round left a shard with more events than one batch folds.
        self.behind = False
        self._renewed_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Run in a daemon thread (see `stop` and `join`)."""
        self._thread = threading.Thread(target=self.run_forever, name="noetl-projector",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        """Fold until `stop()`; then release the leases so peers take over at once."""
        reconnect = db.Reconnect("projector")
        while not self._stopping.is_set():
            try:
                with db.connect(self.dsn, application_name=f"noetl {self.owner}") as conn:
                    if self.shard_count is not None:
                        db.fetch_one(conn, "set_projection_shard_count", count=self.shard_count)
                    reconnect.succeeded()
                    while not self._stopping.is_set():
                        # A round that left no shard with a full batch waiting caught up:
                        # going round again at once would fold a few events per shard at
                        # the fixed cost of a call per shard (and rescan, for each empty
                        # shard, the events the others wrote since).
                        if self.run_once(conn) == 0 or not self.behind:
                            self._stopping.wait(self.poll_interval)
                    # A stopping worker folds what its own last commits added first: with
                    # no other projector running, `noetl status` would show them missing.
                    with contextlib.suppress(TimeoutError):
                        self.catch_up(conn, timeout=self.lease_seconds)
                    db.fetch_one(conn, "release_projection_shards", owner=self.owner)
                    return
            except DatabaseTransient as exc:
                delay = reconnect.failed(exc)
                log.warning("projector lost its connection (%s); retrying in %.1fs", exc, delay)
                self._renewed_at = 0.0
                self._stopping.wait(delay)

    # --- one round -------------------------------------------------------------------

    def run_once(self, conn: psycopg.Connection[Any]) -> int:
        """Renew leases when due, fold one batch of each held shard (one call:
        noetl.project_shards); returns events folded and sets `behind` when a shard had
        more than a batch.

        Raises DatabaseTransient (DatabaseUnavailable when the connection breaks); other
        database errors are logged and count as nothing folded.
        """
        try:
            if time.monotonic() - self._renewed_at >= self.lease_seconds / 3:
                self.renew(conn)
            rows = db.fetch_all(conn, "project_shards", owner=self.owner,
                                batch_limit=self.batch_limit)
            # A shard left out lost its lease; the next renewal may take it back.
            self.shards = sorted(row["shard"] for row in rows)
            folded = int(sum(row["folded"] for row in rows))
            self.folded_events += folded
            self.behind = any(row["has_more"] for row in rows)
            return folded
        except DatabaseTransient:
            raise
        except DatabaseError as exc:
            log.warning("projection round failed: %s", exc)
            return 0

    def renew(self, conn: psycopg.Connection[Any]) -> list[int]:
        """Renew this projector's leases and rebalance; returns the shards it now holds."""
        rows = db.fetch_all(conn, "claim_projection_shards", owner=self.owner,
                            lease_seconds=self.lease_seconds)
        self.shards = [row["shard"] for row in rows]
        self._renewed_at = time.monotonic()
        return self.shards

    def catch_up(self, conn: psycopg.Connection[Any], *, timeout: float = 30.0) -> int:
        """Fold until a round folds nothing (tests, `noetl run`'s final print)."""
        deadline = time.monotonic() + timeout
        total = 0
        while time.monotonic() < deadline:
            folded = self.run_once(conn)
            total += folded
            if folded == 0:
                return total
        raise TimeoutError(f"projection still folding after {timeout}s")
