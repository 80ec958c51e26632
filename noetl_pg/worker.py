"""The worker daemon: claim commands, run them, report outcomes. It never routes.

Threads: `slots` slot threads, each with its own connection, loop "claim a batch, run it,
finish it and claim the next batch in one transaction" (noetl.finish_and_claim), and wait
when the queue is empty; a listener thread LISTENs on `noetl_command` and wakes idle
slots, and on `noetl_cancel` to skip claimed commands of cancelled executions and set the
cancel flag of their running ones (ToolContext.cancelled); a heartbeat
thread proves the worker alive every `heartbeat_interval` seconds
(NOETL_WORKER_HEARTBEAT_SECONDS, one row write whatever it holds, carrying its free slots and
tool pools: the capacity registry) and runs the reaper
(noetl.reap_stale_claims with NOETL_COMMAND_HEARTBEAT_TIMEOUT_SECONDS; concurrent daemons
skip it under an advisory lock). If NOTIFY is lost (reconnect, restart) slots still poll
every `poll_interval` seconds, so nothing waits forever.

With NOETL_NATS_URL set (noetl_pg/nats_bus.py), while NATS is reachable the slots send no
NOTIFY: after each commit they take the counts of commands issued per kind
(noetl.take_wake_counts) and publish them, offered first to a worker with free slots; idle
slots are also woken by NATS wake-ups and offers; heartbeats travel as reports over NATS
that a consumer applies. When NATS goes away the worker is back on NOTIFY at once.

On a broken connection a slot reconnects (noetl_pg.db.Reconnect: jittered exponential
backoff) and sends its outcomes again: an
outcome that had committed is then refused as stale, so a retry never applies twice.
`stop()` (SIGTERM) lets each slot finish the batch it holds, claims nothing more, and
releases anything still claimed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg import db, nats_bus, settings
from noetl_pg.command_stats import CommandStats
from noetl_pg.credentials import DatabaseCredentialResolver, for_command
from noetl_pg.cursor import KIND as CURSOR_KIND
from noetl_pg.cursor import CursorClaims
from noetl_pg.dsl import Playbook
from noetl_pg.errors import DatabaseError, DatabaseTransient
from noetl_pg.executor import CommandRunner
from noetl_pg.keychain import RedactingFilter, SecretRedactor
from noetl_pg.logs import CommandLogWriter
from noetl_pg.protocol import ClaimedCommand, Outcome, claimed, failure
from noetl_pg.slot_share import SharedClaims, StepTimings, context_group
from noetl_pg.store import ResultStore
from noetl_pg.stream import DbPartialRecorder, EngineConnectionLost
from noetl_pg.tools import create_tools
from noetl_pg.tools.base import CredentialResolver, Tool, ToolContext

log = logging.getLogger(__name__)



def _log_refusal(diagnostic: psycopg.errors.Diagnostic) -> None:
    """NOTICE from noetl.refuse_outcome: an outcome of a claim this worker no longer
    holds (taken back while it was paused or cut off, or already applied) was refused."""
    message = diagnostic.message_primary or ""
    if message.startswith("outcome refused:"):
        log.warning("%s", message)


class SpecCache:
    """catalog_id -> Playbook. Catalog rows never change, so entries never expire."""

    def __init__(self) -> None:
        self._specs: dict[int, Playbook] = {}
        self._lock = threading.Lock()

    def get(self, conn: psycopg.Connection[Any], catalog_id: int) -> Playbook:
        playbook = self._specs.get(catalog_id)
        if playbook is None:
            row = db.fetch_one(conn, "catalog_spec", catalog_id=catalog_id)
            if row is None:
                raise LookupError(f"catalog row {catalog_id} does not exist")
            playbook = Playbook.model_validate(row["spec"])
            with self._lock:
                self._specs[catalog_id] = playbook
        return playbook


def default_slots() -> int:
    """Slots of a worker started without --concurrency: one per CPU, at least 2, at most 8.

    Slots beyond the cores do not run python faster; they queue on the loop's counter
    row and the isolation processes compete for the same cores. Measured on 2 cores
    (bench/README.md): a 2,000-item loop took 6.2 s with 4 slots, 3.5 s with 2. Steps that
    mostly wait (HTTP, child playbooks) want more: pass --concurrency.
    """
    return min(8, max(2, os.cpu_count() or 2))


class ClaimSizer:
    """How many commands one slot claims at a time: batching only while work is fast.

    A slot runs its batch one command after another, so a batch of slow commands (an HTTP
    call, a child playbook) would keep queued work away from idle slots and other
    workers. The size starts at 1, doubles after each batch whose commands took at most
    `FAST_SECONDS` each on average, up to `limit`, and drops back to 1 after a slow batch.
    Fast loops still claim (and complete) in batches, which is where batching pays.
    """

    FAST_SECONDS = 0.005

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.size = 1

    def observe(self, commands: int, seconds: float) -> None:
        if commands and seconds / commands <= self.FAST_SECONDS:
            self.size = min(self.size * 2, self.limit)
        else:
            self.size = 1


class Worker:
    """A pool of slots serving the command queue of the database at `dsn`."""

    def __init__(
        self,
        dsn: str,
        *,
        slots: int = 4,
        kinds: list[str] | None = None,
        worker_id: str | None = None,
        batch_size: int = 16,
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
        self.dsn = dsn
        self.slots = slots
        self.kinds = kinds
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
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
        self._credentials = credentials
        self._redact = redact or (lambda text: text)
        self._housekeeping = housekeeping
        # Large results go here (default: configured from NOETL_INLINE_MAX_BYTES,
        # NOETL_PVC_MOUNT_PATH, NOETL_S3_*; the db tier always).
        self._store = store or ResultStore.from_env(dsn)
        self._logs = CommandLogWriter(dsn, self._store, self._redact)
        self._tools: dict[str, Tool] = create_tools()
        # Tool resources (pools); "worker_slots" sizes a pool to what the slots can use.
        self._resources: dict[str, Any] = {"worker_slots": slots}
        self._specs = SpecCache()
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._wake_generation = 0
        self._threads: list[threading.Thread] = []
        # Executions cancelled while this worker runs (from NOTIFY noetl_cancel).
        self._cancelled: set[int] = set()
        # command_id -> (execution_id, flag set on cancel) for commands running now.
        self._running: dict[int, tuple[int, threading.Event]] = {}
        self._running_lock = threading.Lock()
        # Command ids each slot holds (claimed, running, or outcome not yet applied): the
        # heartbeat's orphan sweep takes back this worker's other claims.
        self._held: dict[str, frozenset[int]] = {}
        # Claimed commands of slow steps a slot set aside for any free slot (slot_share).
        self._shared = SharedClaims()
        self._timings = StepTimings()
        # Claim commands of cursor loops (noetl_pg.cursor): run here, not by CommandRunner.
        self._cursor_claims = CursorClaims(self.worker_id, kinds, self._tool_context,
                                           self._redact)
        # What this worker ran over the trailing window, published by the heartbeat.
        self.stats = CommandStats()
        # LISTEN noetl_command (off only to prove that polling alone finishes the work).
        self._listen_commands = listen
        # Slots waiting for work now: the free slots of the capacity registry.
        self._idle = 0
        # NATS (None: off): wake-ups, offers and reports; each slot's connection says
        # whether it currently leaves its wake-ups to NATS (noetl.wakeup).
        # nats=True: from the environment (NOETL_NATS_URL); False or None: off.
        self.nats = nats_bus.nats_settings() if nats is True else (nats or None)
        self.bus: nats_bus.NatsBus | None = None
        self._slot_state = threading.local()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        with self._connect() as conn:
            # Claims left by an earlier process with this worker id will never be finished.
            row = db.fetch_one(conn, "reap_earlier_process", worker_id=self.worker_id,
                               max_reclaims=self.max_reclaims)
            if row is not None and row["reaped"]:
                log.warning("took back %d claims of an earlier process with this worker id",
                            row["reaped"])
            self._register(conn)
        if self.nats is not None:
            self.bus = nats_bus.NatsBus(
                self.nats, worker_id=self.worker_id, kinds=self.kinds, dsn=self.dsn,
                on_wake=self._woken, free_slots=lambda: self._idle,
                gone_after=3 * self.heartbeat_interval)
            self.bus.start()
        targets: list[tuple[str, Callable[[], None]]] = [
            ("listener", self._listen), ("heartbeat", self._heartbeat)
        ]
        targets += [(f"slot-{index}", self._slot) for index in range(self.slots)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=f"noetl-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s started with %d slots", self.worker_id, self.slots)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        """A connection named after this worker in pg_stat_activity (application_name), so a
        DBA, or a test that killed the worker, can tell which backends are its."""
        return db.connect(self.dsn, application_name=f"noetl worker {self.worker_id}")

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        db.fetch_one(conn, "register_worker", worker_id=self.worker_id,
                     hostname=socket.gethostname(), pid=os.getpid(), slots=self.slots,
                     kinds=self.kinds)
        # Capacity is in the registry from the start (every slot free), not a heartbeat later.
        db.fetch_one(conn, "report_worker", report=self._report(free=self.slots))

    def _report(self, free: int | None = None) -> dict[str, Any]:
        """The heartbeat with capacity (noetl.report_worker): free slots (default: the slots
        waiting for work now), tool pools."""
        free = self._idle if free is None else free
        pools: dict[str, Any] = {
            kind: {"free": free, "size": self.slots}
            for kind in (self.kinds or [nats_bus.ANY_KIND])
        }
        for kind, resource in self._resources.items():
            describe = getattr(resource, "describe", None)
            if callable(describe):
                pools.setdefault(kind, {}).update(describe())
        return {"worker_id": self.worker_id, "hostname": socket.gethostname(),
                "pid": os.getpid(), "slots": self.slots, "kinds": self.kinds,
                "available_slots": free, "tool_pools": pools,
                "sent_at": datetime.now(UTC).isoformat()}

    def stop(self) -> None:
        """Ask every thread to finish what it holds; returns at once (see `join`)."""
        self._stopping.set()
        self._wake_all()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        try:
            with self._connect() as conn:
                row = db.fetch_one(conn, "stop_worker", worker_id=self.worker_id)
                if row and row["released"]:
                    log.info("released %d claimed commands", row["released"])
        except DatabaseError as exc:
            log.warning("could not release claims on stop: %s", exc)
        for resource in self._resources.values():
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
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.join()

    # --- wake-ups --------------------------------------------------------------------

    def _wake_all(self) -> None:
        with self._wake:
            self._wake_generation += 1
            self._wake.notify_all()

    def _wait_for_work(self, seen_generation: int) -> None:
        with self._wake:
            if self._wake_generation == seen_generation and not self._stopping.is_set():
                self._idle += 1
                try:
                    self._wake.wait(self.poll_interval)
                finally:
                    self._idle -= 1

    def _woken(self, kind: str, n: int | None) -> int:
        """A NATS wake-up or offer for `n` commands of `kind` (None: any number): wakes
        that many idle slots and returns how many it woke (0 for a kind not served)."""
        if self.kinds is not None and kind != nats_bus.ANY_KIND and kind not in self.kinds:
            return 0
        with self._wake:
            # Bumped even with no idle slot: a slot about to wait claims again instead.
            self._wake_generation += 1
            woken = self._idle if n is None else min(n, self._idle)
            self._wake.notify(woken)
        return woken

    def _listen(self) -> None:
        reconnect = db.Reconnect("listener")
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    if self._listen_commands:
                        db.execute(conn, "listen_commands")
                    db.execute(conn, "listen_cancel")
                    reconnect.succeeded()
                    # Anything notified while we were not listening is picked up now.
                    self._wake_all()
                    while not self._stopping.is_set():
                        for notify in db.notifies(conn, 0.5):
                            if notify.channel == "noetl_cancel" and notify.payload.isdigit():
                                self._cancel_running(int(notify.payload))
                            else:
                                self._wake_all()
            except DatabaseTransient as exc:
                delay = reconnect.failed(exc)
                log.warning("listener lost its connection (%s); retrying in %.1fs", exc, delay)
                self._stopping.wait(delay)

    def _heartbeat(self) -> None:
        """Heartbeat, then reap, every interval, on one connection (reopened when lost)."""
        conn: psycopg.Connection[Any] | None = None
        while not self._stopping.wait(self.heartbeat_interval):
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                # Over NATS when it is up (a consumer applies it), else directly; either
                # way noetl.report_worker registers us again if our row was removed.
                report = self._report()
                if self.bus is None or not self.bus.publish_report(report):
                    db.fetch_one(conn, "report_worker", report=report)
                row = db.fetch_one(conn, "reap_stale_claims", timeout_seconds=self.claim_timeout,
                                   max_reclaims=self.max_reclaims)
                if row is not None and row["reaped"]:
                    log.warning("reaper took back %d stale claims", row["reaped"])
                row = db.fetch_one(conn, "reap_orphan_claims", worker_id=self.worker_id,
                                   held=self._held_ids(), min_age_seconds=self.orphan_claim_age)
                if row is not None and row["reaped"]:
                    log.warning("took back %d claims whose reply was lost", row["reaped"])
                if self._housekeeping is not None:
                    self._housekeeping(conn)
                # Last: the reaper above must not wait on statistics.
                conn.execute(db.query("worker_publish_stats"), {
                    "worker_id": self.worker_id, "stats": Jsonb(self.stats.snapshot())})
            except (DatabaseError, psycopg.Error) as exc:
                log.warning("heartbeat failed: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _hold(self, rows: list[ClaimedCommand]) -> None:
        self._held[threading.current_thread().name] = frozenset(r["command_id"] for r in rows)

    def _held_ids(self) -> list[int]:
        return self._shared.held_ids(self._held)

    # --- slots -----------------------------------------------------------------------

    def _slot(self) -> None:
        reconnect = db.Reconnect("slot")
        pending: list[Outcome] = []
        while True:
            try:
                with self._connect() as conn:
                    reconnect.succeeded()
                    conn.add_notice_handler(_log_refusal)
                    runner = self._runner(conn)
                    pending = self._serve(conn, runner, pending)
                    return
            except DatabaseTransient as exc:
                if self._stopping.is_set() and not pending:
                    return
                delay = reconnect.failed(exc)
                log.warning("slot lost its connection (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
            except Exception:
                # A bug must not silently leave the worker with fewer slots: log it and
                # serve again. Claims this slot held are taken back by the orphan sweep.
                if self._stopping.is_set():
                    return
                delay = reconnect.failed(RuntimeError("unexpected error"))
                log.exception("slot failed unexpectedly; restarting it in %.1fs", delay)
                pending = []
                time.sleep(delay)

    def _runner(self, conn: psycopg.Connection[Any]) -> CommandRunner:
        return CommandRunner(
            self._tools,
            lambda catalog_id: self._specs.get(conn, catalog_id),
            self._tool_context,
            self._redact,
            self._credentials,
            store=self._store,
            partials=DbPartialRecorder(conn),
            worker_id=self.worker_id,
        )

    def _serve(
        self, conn: psycopg.Connection[Any], runner: CommandRunner, pending: list[Outcome]
    ) -> list[Outcome]:
        """Claim, run and finish until stopped. Outcomes not yet sent are kept in `pending`
        (the caller's list survives a reconnect) and sent first on the next connection."""
        sizer = ClaimSizer(self.batch_size)
        rows: list[ClaimedCommand] = []
        if pending:
            rows = self._finish(conn, pending, sizer.size)
            pending.clear()
        while True:
            self._hold(rows)
            if not rows:
                rows = self._shared.take(self._held, threading.current_thread().name)
            if not rows:
                if self._stopping.is_set():
                    return pending
                generation = self._wake_generation
                rows = claimed(db.fetch_all(conn, "claim_commands", worker_id=self.worker_id,
                                            kinds=self.kinds, n=sizer.size))
                self._hold(rows)
                if not rows:
                    self._wait_for_work(generation)
                    continue
            rows = self._run_cursor_claims(conn, rows)
            self._hold(rows)
            if not rows:
                continue
            rows = self._shared.split(rows, self._timings)
            self._hold(rows)
            if len(self._shared):
                self._wake_all()
            started = time.monotonic()
            outcomes = self._run_batch(conn, runner, rows)
            sizer.observe(len(rows), time.monotonic() - started)
            pending[:] = outcomes
            # Set-aside commands come first: claim no more while some wait for a slot.
            rows = self._finish(conn, outcomes, 0 if len(self._shared) else sizer.size)
            pending.clear()

    def _run_cursor_claims(
        self, conn: psycopg.Connection[Any], rows: list[ClaimedCommand]
    ) -> list[ClaimedCommand]:
        """Runs the claim commands of cursor loops among `rows` (each applies its own
        outcome, see noetl_pg.cursor); returns the other rows, then the commands those
        claims created already claimed by this worker."""
        others = [row for row in rows if row["kind"] != CURSOR_KIND]
        created: list[int] = []
        for row in rows:
            if row["kind"] != CURSOR_KIND or row["execution_id"] in self._cancelled:
                continue
            try:
                created += self._cursor_claims.run(conn, row)
            finally:
                with self._running_lock:
                    self._running.pop(row["command_id"], None)
        if created:
            others += claimed(db.fetch_all(conn, "cursor_claimed_commands", command_ids=created))
        return others

    def _run_batch(self, conn: psycopg.Connection[Any], runner: CommandRunner,
                   rows: list[ClaimedCommand]) -> list[Outcome]:
        # claim rows carry the context (what the step reads) on the first row of each
        # group of one execution, step, kind and loop-or-not only (noetl.describe_commands).
        contexts: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        outcomes: list[Outcome] = []
        for row in rows:
            group = context_group(row)
            if row["context"] is not None:
                contexts[group] = row["context"]
            if row["execution_id"] in self._cancelled:
                # cancel_execution already cancelled the command; any outcome would be stale.
                continue
            started = time.monotonic()
            outcome = self._run_one(conn, runner, row, contexts[group])
            run_seconds = time.monotonic() - started
            self._timings.observe(row, run_seconds)
            self.stats.observe(row["kind"], str(outcome.get("op")), run_seconds)
            # The claim's fencing token: refused if the claim was taken back meanwhile,
            # even when the command went back to the queue at the same attempt.
            outcome["claim"] = row["claim_gen"]
            outcomes.append(outcome)
        return outcomes

    def _run_one(
        self, conn: psycopg.Connection[Any], runner: CommandRunner, row: ClaimedCommand,
        context: Mapping[str, Any]
    ) -> Outcome:
        try:
            return runner.run(row, context)
        except EngineConnectionLost as lost:
            # A stream lost this slot's connection: reconnect, like a lost finish. The
            # command stays claimed by us; the orphan sweep gives it back to the queue.
            raise lost.connection_error from None
        except (DatabaseTransient, psycopg.OperationalError) as exc:
            if conn.broken or conn.closed:
                # The engine's own connection broke while the command ran (reading its
                # spec, a stored result, a credential): infrastructure, not the step's
                # failure. Reconnect; the command goes back to the queue at this attempt.
                raise db.database_error(exc) if isinstance(exc, psycopg.Error) else exc \
                    from None
            return self._internal_error(row, exc)
        except Exception as exc:  # a bug or an unexpected library error: fail the command
            return self._internal_error(row, exc)
        finally:
            with self._running_lock:
                self._running.pop(row["command_id"], None)

    def _internal_error(self, row: ClaimedCommand, exc: Exception) -> Outcome:
        log.exception("command %s failed unexpectedly", row["command_id"])
        return failure(row["command_id"], row["attempt"],
                       self._redact(f"step '{row['step_name']}': internal error: {exc}"))

    def _finish(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], claim_size: int
    ) -> list[ClaimedCommand]:
        claim_n = 0 if self._stopping.is_set() else claim_size
        try:
            return self._apply(conn, outcomes, claim_n)
        except DatabaseTransient:
            raise
        except DatabaseError as exc:
            log.warning("batch of %d outcomes failed (%s); applying one by one",
                        len(outcomes), exc)
        rows: list[ClaimedCommand] = []
        for outcome in outcomes:
            rows += self._finish_one(conn, outcome)
        if claim_n:
            rows += claimed(db.fetch_all(conn, "claim_commands", worker_id=self.worker_id,
                                         kinds=self.kinds, n=claim_n))
        return rows

    def _apply(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], claim_n: int
    ) -> list[ClaimedCommand]:
        """finish_and_claim, then the wake-ups for what it issued (over NATS when up)."""
        if not self._wakeup_mode(conn):
            return self._apply_outcomes(conn, outcomes, claim_n)
        if any(outcome.get("store_fallbacks") for outcome in outcomes):
            rows = self._apply_outcomes(conn, outcomes, claim_n)
            row = db.fetch_one(conn, "take_wake_counts")
            self._publish_wakeups(row["counts"] if row else {}, conn)
            return rows
        # The counts are taken in the same round trip, after finish_and_claim committed.
        finished, taken = db.fetch_pipelined(
            conn,
            ("finish_and_claim", {"worker_id": self.worker_id, "outcomes": Jsonb(outcomes),
                                  "kinds": self.kinds, "n": claim_n}),
            ("take_wake_counts", {}))
        self._publish_wakeups(taken[0]["counts"] if taken else {}, conn)
        return claimed(finished)

    def _wakeup_mode(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether this slot's connection leaves its wake-ups to NATS: set to follow the
        bus's connection state, one statement each time that changes."""
        wanted = self.bus is not None and self.bus.connected
        state = self._slot_state
        if getattr(state, "conn", None) is not conn or state.nats_on != wanted:
            db.fetch_one(conn, "set_wakeup_nats", nats=wanted)
            state.conn, state.nats_on = conn, wanted
        return wanted

    def _publish_wakeups(self, counts: dict[str, int], conn: psycopg.Connection[Any]) -> None:
        """After the commit: publish what it issued; NOTIFY if NATS just went away."""
        if counts and (self.bus is None or not self.bus.wake(counts)):
            db.fetch_one(conn, "notify_workers")

    def _apply_outcomes(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], claim_n: int
    ) -> list[ClaimedCommand]:
        """finish_and_claim; a result that fell back to a lower store tier first gets its
        `result.store.fallback` warning events, in the same transaction."""
        fallbacks = [
            {"command_id": outcome["command_id"], "attempt": outcome["attempt"],
             "fallbacks": outcome["store_fallbacks"]}
            for outcome in outcomes if outcome.get("store_fallbacks")
        ]
        if not fallbacks:
            return claimed(db.fetch_all(conn, "finish_and_claim", worker_id=self.worker_id,
                                        outcomes=Jsonb(outcomes), kinds=self.kinds, n=claim_n))
        with db.transaction(conn):
            db.fetch_one(conn, "record_store_fallbacks", fallbacks=Jsonb(fallbacks))
            return claimed(db.fetch_all(conn, "finish_and_claim", worker_id=self.worker_id,
                                        outcomes=Jsonb(outcomes), kinds=self.kinds, n=claim_n))

    def _finish_one(self, conn: psycopg.Connection[Any], outcome: Outcome) -> list[ClaimedCommand]:
        try:
            return self._apply(conn, [outcome], 0)
        except DatabaseTransient:
            raise
        except DatabaseError as exc:
            # The outcome itself cannot be applied (e.g. a loop collection the database
            # rejects): record it as the command's failure so the run does not hang.
            refused = failure(outcome["command_id"], outcome["attempt"],
                              self._redact(exc.message), claim=outcome.get("claim"))
            return claimed(db.fetch_all(conn, "finish_and_claim", worker_id=self.worker_id,
                                        outcomes=Jsonb([refused]), kinds=self.kinds, n=0))

    def _cancel_running(self, execution_id: int) -> None:
        """NOTIFY noetl_cancel: skip what is not started, stop what is running."""
        self._cancelled.add(execution_id)
        with self._running_lock:
            for running_execution, flag in self._running.values():
                if running_execution == execution_id:
                    flag.set()

    def _tool_context(self, command: Mapping[str, Any]) -> ToolContext:
        flag = threading.Event()
        with self._running_lock:
            self._running[command["command_id"]] = (command["execution_id"], flag)
        return ToolContext(
            cancelled=flag,
            execution_id=command["execution_id"],
            step=command["step_name"],
            command_id=command["command_id"],
            attempt=command["attempt"],
            dsn=self.dsn,
            credentials=for_command(self._credentials, self.worker_id, command),
            worker_resources=self._resources,
            log_sink=partial(self._logs.write, command),
        )


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
