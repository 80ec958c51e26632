"""The heartbeat thread: proves the worker alive, reports its capacity, runs the reapers.

Every `heartbeat_interval` seconds (NOETL_WORKER_HEARTBEAT_SECONDS) the worker writes one
row whatever it holds, carrying its free slots and tool pools: the capacity registry. With
NATS up (noetl_pg/nats_bus.py) the heartbeat travels as a report over NATS that a consumer
applies instead. Then it runs the reaper (noetl.reap_stale_claims with
NOETL_COMMAND_HEARTBEAT_TIMEOUT_SECONDS; concurrent daemons skip it under an advisory
lock) and takes back this worker's own claims that no slot holds.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg import db, nats_bus
from noetl_pg.errors import DatabaseError
from noetl_pg.worker.state import WorkerState

log = logging.getLogger(__name__)


class Housekeeping:
    """The heartbeat of one worker; `free_slots()` and `held_ids()` say what its slots are
    doing now, `extra` is the caller's own housekeeping, run on the heartbeat's connection."""

    def __init__(
        self,
        state: WorkerState,
        *,
        heartbeat_interval: float,
        claim_timeout: float,
        orphan_claim_age: float,
        max_reclaims: int,
        free_slots: Callable[[], int],
        held_ids: Callable[[], list[int]],
        extra: Callable[[psycopg.Connection[Any]], None] | None,
    ) -> None:
        self._state = state
        self._heartbeat_interval = heartbeat_interval
        self._claim_timeout = claim_timeout
        self._orphan_claim_age = orphan_claim_age
        self._max_reclaims = max_reclaims
        self._free_slots = free_slots
        self._held_ids = held_ids
        self._extra = extra

    def report(self, free: int | None = None) -> dict[str, Any]:
        """The heartbeat with capacity (noetl.report_worker): free slots (default: the slots
        waiting for work now), tool pools."""
        state = self._state
        free = self._free_slots() if free is None else free
        pools: dict[str, Any] = {
            kind: {"free": free, "size": state.slots}
            for kind in (state.kinds or [nats_bus.ANY_KIND])
        }
        for kind, resource in state.resources.items():
            describe = getattr(resource, "describe", None)
            if callable(describe):
                pools.setdefault(kind, {}).update(describe())
        return {"worker_id": state.worker_id, "hostname": socket.gethostname(),
                "pid": os.getpid(), "slots": state.slots, "kinds": state.kinds,
                "available_slots": free, "tool_pools": pools,
                "sent_at": datetime.now(UTC).isoformat()}

    def heartbeat(self) -> None:
        """Heartbeat, then reap, every interval, on one connection (reopened when lost)."""
        state = self._state
        conn: psycopg.Connection[Any] | None = None
        while not state.stopping.wait(self._heartbeat_interval):
            try:
                if conn is None or conn.closed:
                    conn = state.connect()
                # Over NATS when it is up (a consumer applies it), else directly; either
                # way noetl.report_worker registers us again if our row was removed.
                report = self.report()
                if state.bus is None or not state.bus.publish_report(report):
                    db.fetch_one(conn, "report_worker", report=report)
                row = db.fetch_one(conn, "reap_stale_claims", timeout_seconds=self._claim_timeout,
                                   max_reclaims=self._max_reclaims)
                if row is not None and row["reaped"]:
                    log.warning("reaper took back %d stale claims", row["reaped"])
                row = db.fetch_one(conn, "reap_orphan_claims", worker_id=state.worker_id,
                                   held=self._held_ids(), min_age_seconds=self._orphan_claim_age)
                if row is not None and row["reaped"]:
                    log.warning("took back %d claims whose reply was lost", row["reaped"])
                if self._extra is not None:
                    self._extra(conn)
                # Last: the reaper above must not wait on statistics.
                conn.execute(db.query("worker_publish_stats"), {
                    "worker_id": state.worker_id, "stats": Jsonb(state.stats.snapshot())})
            except (DatabaseError, psycopg.Error) as exc:
                log.warning("heartbeat failed: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
