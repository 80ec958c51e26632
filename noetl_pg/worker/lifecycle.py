"""The worker's lifecycle: register, start its threads, stop, release what it holds.

`start()` takes back claims an earlier process with this worker id left, registers the
worker with every slot free, starts the NATS bus (if configured) and the threads: the
listener (wakeup.py), the heartbeat (housekeeping.py) and the slots (slots.py).
`stop()` (SIGTERM) lets each slot finish the batch it holds, claims nothing more, and
releases anything still claimed.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from noetl_pg import db, nats_bus, settings
from noetl_pg.command_stats import CommandStats
from noetl_pg.credentials import DatabaseCredentialResolver
from noetl_pg.errors import DatabaseError
from noetl_pg.keychain import RedactingFilter, SecretRedactor
from noetl_pg.store import ResultStore
from noetl_pg.tools.base import CredentialResolver
from noetl_pg.worker.housekeeping import Housekeeping
from noetl_pg.worker.sizing import DEFAULT_BATCH_SIZE
from noetl_pg.worker.slots import SlotLoop
from noetl_pg.worker.state import WorkerState
from noetl_pg.worker.wakeup import WakeUp

log = logging.getLogger(__name__)

# Young-generation threshold of the cyclic collector while a worker runs. A slot's batch
# keeps each command's namespace, config and outcome alive until the batch is finished
# (~1,400 containers for 32 python iterations), so at Python's default (700) every batch
# ran young collections that traversed them all and promoted them to older generations,
# whose collections traversed them again: 15% of an iteration's CPU, measured. Their
# objects die by reference counting; a cycle waits a little longer to be collected.
YOUNG_COLLECTION_THRESHOLD = 20_000


class Worker:
    """A pool of slots serving the command queue of the database at `dsn`."""

    def __init__(
        self,
        dsn: str,
        *,
        slots: int = 4,
        kinds: list[str] | None = None,
        worker_id: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_interval: float = 1.0,
        heartbeat_interval: float | None = None,
        claim_timeout: float | None = None,
        orphan_claim_age: float | None = None,
        max_reclaims: int | None = None,
        credentials: CredentialResolver | None = None,
        redact: Callable[[str], str] | None = None,
        housekeeping: Callable[[psycopg.Connection[Any]], None] | None = None,
        store: ResultStore | None = None,
        nats: nats_bus.NatsSettings | bool | None = True,
        listen: bool = True,
    ) -> None:
        worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # The options as resolved are public: the worker's configuration as others see it.
        # Each part below is handed the ones it uses.
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        configured = settings.current()
        self.heartbeat_interval = heartbeat_interval or configured.worker_heartbeat_seconds
        # Claims of a worker silent for this long are taken back by the reaper.
        self.claim_timeout = claim_timeout or configured.command_heartbeat_timeout_seconds
        # This worker's own claims that no slot holds are taken back after this long: far
        # longer than a slot needs between a claim's commit and holding its rows.
        self.orphan_claim_age = orphan_claim_age or max(10.0, 3 * self.heartbeat_interval)
        self.max_reclaims = (max_reclaims if max_reclaims is not None
                             else configured.max_reclaims)
        # One part per job: what several of them read is in `_state`; anything else a part
        # needs of another is handed to it here.
        self._state = WorkerState(dsn, worker_id, slots, kinds)
        self._wakeup = WakeUp(self._state, poll_interval=poll_interval, listen_commands=listen)
        self._slot_loop = SlotLoop(self._state, self._wakeup, batch_size=batch_size,
                                   credentials=credentials,
                                   redact=redact or (lambda text: text), store=store)
        self._housekeeping = Housekeeping(
            self._state, heartbeat_interval=self.heartbeat_interval,
            claim_timeout=self.claim_timeout, orphan_claim_age=self.orphan_claim_age,
            max_reclaims=self.max_reclaims, free_slots=self._wakeup.idle_slots,
            held_ids=self._slot_loop.held_ids, extra=housekeeping)
        self._threads: list[threading.Thread] = []
        # NATS (None: off) for the bus `start` opens: wake-ups, offers and reports.
        # nats=True: from the environment (NOETL_NATS_URL); False or None: off.
        self.nats = nats_bus.nats_settings() if nats is True else (nats or None)

    @property
    def dsn(self) -> str:
        return self._state.dsn

    @property
    def worker_id(self) -> str:
        return self._state.worker_id

    @property
    def slots(self) -> int:
        return self._state.slots

    @property
    def kinds(self) -> list[str] | None:
        return self._state.kinds

    @property
    def stats(self) -> CommandStats:
        """What this worker ran over the trailing window, published by the heartbeat."""
        return self._state.stats

    @property
    def bus(self) -> nats_bus.NatsBus | None:
        """The NATS bus once started (None: NATS off, or not started yet)."""
        return self._state.bus

    def start(self) -> None:
        young, middle, old = gc.get_threshold()
        if young:  # 0: the process turned collection off
            gc.set_threshold(max(young, YOUNG_COLLECTION_THRESHOLD), middle, old)
        with self._state.connect() as conn:
            # Claims left by an earlier process with this worker id will never be finished.
            row = db.fetch_one(conn, "reap_earlier_process", worker_id=self.worker_id,
                               max_reclaims=self.max_reclaims)
            if row is not None and row["reaped"]:
                log.warning("took back %d claims of an earlier process with this worker id",
                            row["reaped"])
            self._register(conn)
        if self.nats is not None:
            bus = nats_bus.NatsBus(
                self.nats, worker_id=self.worker_id, kinds=self.kinds, dsn=self.dsn,
                on_wake=self._wakeup.woken, free_slots=self._wakeup.idle_slots,
                gone_after=3 * self.heartbeat_interval)
            self._state.bus = bus
            bus.start()
        targets: list[tuple[str, Callable[[], None]]] = [
            ("listener", self._wakeup.listen), ("heartbeat", self._housekeeping.heartbeat)
        ]
        targets += [(f"slot-{index}", self._slot_loop.slot) for index in range(self.slots)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=f"noetl-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s started with %d slots", self.worker_id, self.slots)

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        db.fetch_one(conn, "register_worker", worker_id=self.worker_id,
                     hostname=socket.gethostname(), pid=os.getpid(), slots=self.slots,
                     kinds=self.kinds)
        # Capacity is in the registry from the start (every slot free), not a heartbeat later.
        db.fetch_one(conn, "report_worker", report=self._housekeeping.report(free=self.slots))

    def stop(self) -> None:
        """Ask every thread to finish what it holds; returns at once (see `join`)."""
        self._state.stopping.set()
        self._wakeup.wake_all()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        try:
            with self._state.connect() as conn:
                row = db.fetch_one(conn, "stop_worker", worker_id=self.worker_id)
                if row and row["released"]:
                    log.info("released %d claimed commands", row["released"])
        except DatabaseError as exc:
            log.warning("could not release claims on stop: %s", exc)
        for resource in self._state.resources.values():
            close = getattr(resource, "close", None)
            if callable(close):
                close()
        if self.bus is not None:
            self.bus.stop()

    def run_forever(self) -> None:
        self.start()
        self.serve()

    def serve(self) -> None:
        """Waits, once started, until `stop()`; then joins the worker's threads."""
        try:
            while not self._state.stopping.wait(0.5):
                pass
        finally:
            self.join()


def build_worker(dsn: str, **options: Any) -> Worker:
    """A Worker wired for production: credentials read from `noetl.credential` (key from
    NOETL_CREDENTIAL_KEY) and one redactor for every secret they hand out or a keychain
    resolves, applied to outcomes (executor) and to every log record of this process.
    Used by `noetl run` and `noetl worker`; `options` are Worker's keyword options."""
    resolver = DatabaseCredentialResolver(dsn)
    redactor = SecretRedactor(resolver)
    log_filter = RedactingFilter(redactor)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
    return Worker(dsn, credentials=resolver, redact=redactor, **options)
