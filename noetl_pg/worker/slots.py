"""The slot loop: claim a batch of commands, run it, apply its outcomes.

Each of a worker's `slots` slot threads, with its own connection, loops "claim a batch, run
it, finish it and claim the next batch in one transaction" (noetl.finish_and_claim), and
waits (noetl_pg.worker.wakeup) when the queue is empty. Claim commands of cursor loops run
here (noetl_pg.cursor), the others through CommandRunner; commands of slow steps are set
aside for any free slot (noetl_pg.slot_share).

On a broken connection a slot reconnects (noetl_pg.db.Reconnect: jittered exponential
backoff) and sends its outcomes again: an outcome that had committed is then refused as
stale, so a retry never applies twice. Once the worker is stopping a slot finishes the
batch it holds and claims nothing more.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import psycopg
from psycopg.types.json import Jsonb, set_json_loads

from noetl_pg import db
from noetl_pg.credentials import for_command
from noetl_pg.cursor import KIND as CURSOR_KIND
from noetl_pg.cursor import CursorClaims
from noetl_pg.dsl import Playbook
from noetl_pg.errors import DatabaseError, DatabaseTransient
from noetl_pg.executor import CommandRunner
from noetl_pg.logs import CommandLogWriter
from noetl_pg.pipeline import TaskCall
from noetl_pg.protocol import ClaimedCommand, Outcome, claimed, failure
from noetl_pg.slot_share import SharedClaims, StepTimings, context_group
from noetl_pg.store import ResultStore
from noetl_pg.stream import ChunkSink, DbPartialRecorder, EngineConnectionLost
from noetl_pg.tool_calls import CommandRun, FirstCalls, call_tool
from noetl_pg.tools import create_tools
from noetl_pg.tools.base import CredentialResolver, ResultAccess, Tool, ToolCall, ToolContext
from noetl_pg.worker.sizing import ClaimSizer
from noetl_pg.worker.state import WorkerState
from noetl_pg.worker.wakeup import WakeUp

log = logging.getLogger(__name__)


def _log_refusal(diagnostic: psycopg.errors.Diagnostic) -> None:
    """NOTICE from noetl.refuse_outcome: an outcome of a claim this worker no longer
    holds (taken back while it was paused or cut off, or already applied) was refused."""
    message = diagnostic.message_primary or ""
    if message.startswith("outcome refused:"):
        log.warning("%s", message)


def _load_json(data: str | bytes) -> Any:
    """A json/jsonb value of a slot's connection: PostgreSQL sends UTF-8 text, so it is
    decoded as such; json.loads on bytes guesses their encoding first, which cost half
    of a claimed row's small `input` and `item` (1 us each)."""
    return json.loads(data.decode() if isinstance(data, bytes) else data)


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


class SlotLoop:
    """What a worker's slot threads run (`slot`), and what they share with each other."""

    def __init__(
        self,
        state: WorkerState,
        wakeup: WakeUp,
        *,
        batch_size: int,
        credentials: CredentialResolver | None,
        redact: Callable[[str], str],
        store: ResultStore | None,
    ) -> None:
        self._state = state
        self._wakeup = wakeup
        self._batch_size = batch_size
        self._credentials = credentials
        self._redact = redact
        # Large results go here (default: configured from NOETL_INLINE_MAX_BYTES,
        # NOETL_PVC_MOUNT_PATH, NOETL_S3_*; the db tier always).
        self._store = store or ResultStore.from_env(state.dsn)
        self._logs = CommandLogWriter(state.dsn, self._store, redact)
        self._tools: dict[str, Tool] = create_tools()
        self._specs = SpecCache()
        # Command ids each slot holds (claimed, running, or outcome not yet applied): the
        # heartbeat's orphan sweep takes back this worker's other claims.
        self._held: dict[str, frozenset[int]] = {}
        # Claimed commands of slow steps a slot set aside for any free slot (slot_share).
        self._shared = SharedClaims()
        self._timings = StepTimings()
        # Claim commands of cursor loops (noetl_pg.cursor): run here, not by CommandRunner.
        self._cursor_claims = CursorClaims(state.worker_id, state.kinds, self._tool_context,
                                           redact)

    def held_ids(self) -> list[int]:
        """Every command id a slot holds or set aside: what the orphan sweep leaves alone."""
        return self._shared.held_ids(self._held)

    def slot(self) -> None:
        """One slot thread: serves until the worker stops, reconnecting when cut off."""
        stopping = self._state.stopping
        reconnect = db.Reconnect("slot")
        pending: list[Outcome] = []
        while True:
            try:
                with self._state.connect() as conn:
                    reconnect.succeeded()
                    conn.add_notice_handler(_log_refusal)
                    set_json_loads(_load_json, conn)
                    runner = self._runner(conn)
                    pending = self._serve(conn, runner, pending)
                    return
            except DatabaseTransient as exc:
                if stopping.is_set() and not pending:
                    return
                delay = reconnect.failed(exc)
                log.warning("slot lost its connection (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
            except Exception:
                # A bug must not silently leave the worker with fewer slots: log it and
                # serve again. Claims this slot held are taken back by the orphan sweep.
                if stopping.is_set():
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
            worker_id=self._state.worker_id,
        )

    def _serve(
        self, conn: psycopg.Connection[Any], runner: CommandRunner, pending: list[Outcome]
    ) -> list[Outcome]:
        """Claim, run and finish until stopped. Outcomes not yet sent are kept in `pending`
        (the caller's list survives a reconnect) and sent first on the next connection."""
        state = self._state
        sizer = ClaimSizer(self._batch_size)
        rows: list[ClaimedCommand] = []
        if pending:
            rows = self._finish(conn, pending, sizer.size)
            pending.clear()
        while True:
            self._hold(rows)
            if not rows:
                rows = self._shared.take(self._held, threading.current_thread().name)
            if not rows:
                if state.stopping.is_set():
                    return pending
                generation = self._wakeup.generation
                rows = claimed(db.fetch_all(conn, "claim_commands", worker_id=state.worker_id,
                                            kinds=state.kinds, n=sizer.size))
                self._hold(rows)
                if not rows:
                    self._wakeup.wait_for_work(generation)
                    continue
            rows = self._run_cursor_claims(conn, rows)
            self._hold(rows)
            if not rows:
                continue
            rows = self._shared.split(rows, self._timings)
            self._hold(rows)
            if len(self._shared):
                self._wakeup.wake_all()
            started = time.monotonic()
            outcomes = self._run_batch(conn, runner, rows)
            sizer.observe(len(rows), time.monotonic() - started)
            pending[:] = outcomes
            # Set-aside commands come first: claim no more while some wait for a slot.
            rows = self._finish(conn, outcomes, 0 if len(self._shared) else sizer.size)
            pending.clear()

    def _hold(self, rows: list[ClaimedCommand]) -> None:
        self._held[threading.current_thread().name] = frozenset(r["command_id"] for r in rows)

    def _run_cursor_claims(
        self, conn: psycopg.Connection[Any], rows: list[ClaimedCommand]
    ) -> list[ClaimedCommand]:
        """Runs the claim commands of cursor loops among `rows` (each applies its own
        outcome, see noetl_pg.cursor); returns the other rows, then the commands those
        claims created already claimed by this worker."""
        running = self._state.running
        others = [row for row in rows if row["kind"] != CURSOR_KIND]
        created: list[int] = []
        for row in rows:
            if row["kind"] != CURSOR_KIND or row["execution_id"] in running.cancelled:
                continue
            try:
                created += self._cursor_claims.run(conn, row)
            finally:
                running.finished(row["command_id"])
        if created:
            others += claimed(db.fetch_all(conn, "cursor_claimed_commands", command_ids=created))
        return others

    def _run_batch(self, conn: psycopg.Connection[Any], runner: CommandRunner,
                   rows: list[ClaimedCommand]) -> list[Outcome]:
        """Run a claimed batch in two passes: each command up to its first tool call,
        those calls started together where their tool batches (noetl_pg.tool_calls),
        then each command to its end, in claim order. A command of an execution
        cancelled meanwhile is dropped: cancel_execution already cancelled it, and any
        outcome would be stale."""
        # claim rows carry the context (what the step reads) on the first row of each
        # group of one execution, step, kind and loop-or-not only (noetl.describe_commands).
        contexts: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        cancelled = self._state.running.cancelled
        done: dict[int, Outcome] = {}
        # Commands at their first tool call: (row, its run, the seconds it took so far).
        waiting: list[tuple[ClaimedCommand, CommandRun, float]] = []
        calls: list[ToolCall] = []
        try:
            for row in rows:
                group = context_group(row)
                if row["context"] is not None:
                    contexts[group] = row["context"]
                if row["execution_id"] in cancelled:
                    continue
                started = time.monotonic()
                run = runner.start(row, contexts[group])
                step = self._advance(conn, row, run, None)
                if isinstance(step, ToolCall):
                    waiting.append((row, run, time.monotonic() - started))
                    calls.append(step)
                else:
                    self._observe(row, step, time.monotonic() - started)
                    done[row["command_id"]] = step
            first_calls = FirstCalls(calls)
            try:
                for index, (row, run, seconds) in enumerate(waiting):
                    if row["execution_id"] in cancelled:
                        first_calls.drop(index)
                        continue
                    started = time.monotonic()
                    step = self._advance(conn, row, run, first_calls.take(index))
                    while isinstance(step, ToolCall):
                        step = self._advance(conn, row, run, call_tool(step))
                    self._observe(row, step, seconds + time.monotonic() - started)
                    done[row["command_id"]] = step
            finally:
                first_calls.close()
        finally:
            for row, run, _ in waiting:  # dropped, or the batch ended by a lost connection
                if row["command_id"] not in done:
                    run.close()
                    self._state.running.finished(row["command_id"])
        return [done[row["command_id"]] for row in rows if row["command_id"] in done]

    def _observe(self, row: ClaimedCommand, outcome: Outcome, run_seconds: float) -> None:
        self._timings.observe(row, run_seconds)
        self._state.stats.observe(row["kind"], str(outcome.get("op")), run_seconds)
        # The claim's fencing token: refused if the claim was taken back meanwhile, even
        # when the command went back to the queue at the same attempt.
        outcome["claim"] = row["claim_gen"]

    def _advance(
        self, conn: psycopg.Connection[Any], row: ClaimedCommand, run: CommandRun,
        call: TaskCall | None,
    ) -> ToolCall | Outcome:
        """The command's next tool call, sent the last one's TaskCall (None: start it),
        or its outcome once it ends."""
        try:
            return next(run) if call is None else run.send(call)
        except Exception as exc:  # StopIteration included: the command ended either way
            self._state.running.finished(row["command_id"])
            return self._ended(conn, row, exc)

    def _ended(self, conn: psycopg.Connection[Any], row: ClaimedCommand,
               exc: Exception) -> Outcome:
        """The outcome of a command whose run ended with `exc`: its own outcome, or the
        internal error of a bug; raises when the engine's connection is lost."""
        if isinstance(exc, StopIteration):
            outcome: Outcome = exc.value
            return outcome
        if isinstance(exc, EngineConnectionLost):
            # A stream lost this slot's connection: reconnect, like a lost finish. The
            # command stays claimed by us; the orphan sweep gives it back to the queue.
            raise exc.connection_error from None
        if isinstance(exc, DatabaseTransient | psycopg.OperationalError) and (
                conn.broken or conn.closed):
            # The engine's own connection broke while the command ran (reading its spec,
            # a stored result, a credential): infrastructure, not the step's failure.
            # Reconnect; the command goes back to the queue at this attempt.
            raise db.database_error(exc) if isinstance(exc, psycopg.Error) else exc \
                from None
        # A bug or an unexpected library error: fail the command.
        return self._internal_error(row, exc)

    def _internal_error(self, row: ClaimedCommand, exc: Exception) -> Outcome:
        log.exception("command %s failed unexpectedly", row["command_id"])
        return failure(row["command_id"], row["attempt"],
                       self._redact(f"step '{row['step_name']}': internal error: {exc}"))

    def _finish(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], claim_size: int
    ) -> list[ClaimedCommand]:
        state = self._state
        claim_n = 0 if state.stopping.is_set() else claim_size
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
            rows += claimed(db.fetch_all(conn, "claim_commands", worker_id=state.worker_id,
                                         kinds=state.kinds, n=claim_n))
        return rows

    def _apply(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], claim_n: int
    ) -> list[ClaimedCommand]:
        """finish_and_claim, then the wake-ups for what it issued (over NATS when up)."""
        state = self._state
        if not self._wakeup.leaves_wakeups_to_nats(conn):
            return self._apply_outcomes(conn, outcomes, claim_n)
        if any(outcome.get("store_fallbacks") for outcome in outcomes):
            rows = self._apply_outcomes(conn, outcomes, claim_n)
            row = db.fetch_one(conn, "take_wake_counts")
            self._wakeup.publish(row["counts"] if row else {}, conn)
            return rows
        # The counts are taken in the same round trip, after finish_and_claim committed.
        finished, taken = db.fetch_pipelined(
            conn,
            ("finish_and_claim", {"worker_id": state.worker_id, "outcomes": Jsonb(outcomes),
                                  "kinds": state.kinds, "n": claim_n}),
            ("take_wake_counts", {}))
        self._wakeup.publish(taken[0]["counts"] if taken else {}, conn)
        return claimed(finished)

    def _apply_outcomes(
        self, conn: psycopg.Connection[Any], outcomes: list[Outcome], claim_n: int
    ) -> list[ClaimedCommand]:
        """finish_and_claim; a result that fell back to a lower store tier first gets its
        `result.store.fallback` warning events, in the same transaction."""
        state = self._state
        fallbacks = [
            {"command_id": outcome["command_id"], "attempt": outcome["attempt"],
             "fallbacks": outcome["store_fallbacks"]}
            for outcome in outcomes if outcome.get("store_fallbacks")
        ]
        if not fallbacks:
            return claimed(db.fetch_all(conn, "finish_and_claim", worker_id=state.worker_id,
                                        outcomes=Jsonb(outcomes), kinds=state.kinds, n=claim_n))
        with db.transaction(conn):
            db.fetch_one(conn, "record_store_fallbacks", fallbacks=Jsonb(fallbacks))
            return claimed(db.fetch_all(conn, "finish_and_claim", worker_id=state.worker_id,
                                        outcomes=Jsonb(outcomes), kinds=state.kinds, n=claim_n))

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
            state = self._state
            return claimed(db.fetch_all(conn, "finish_and_claim", worker_id=state.worker_id,
                                        outcomes=Jsonb([refused]), kinds=state.kinds, n=0))

    def _tool_context(self, command: Mapping[str, Any], results: ResultAccess | None = None,
                      stream: ChunkSink | None = None) -> ToolContext:
        state = self._state
        return ToolContext(
            cancelled=state.running.started(command),
            execution_id=command["execution_id"],
            step=command["step_name"],
            command_id=command["command_id"],
            attempt=command["attempt"],
            dsn=state.dsn,
            credentials=for_command(self._credentials, state.worker_id, command),
            worker_resources=state.resources,
            log_sink=partial(self._logs.write, command),
            results=results,
            stream=stream,
        )
