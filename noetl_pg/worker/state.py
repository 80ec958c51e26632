"""What the parts of one worker share: who it is, the stop flag, the NATS bus once started,
its tool resources, what it ran, and the commands running now.

Each part (slots, wake-up, housekeeping) owns the rest of its state; what more than one
thread of the worker reads or writes is here, so a reader finds every shared thing in one
place.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import psycopg

from noetl_pg import db, nats_bus
from noetl_pg.command_stats import CommandStats


class _ExecutionFlag:
    """The cancel flag the running commands of one execution share, and how many run."""

    __slots__ = ("event", "running")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.running = 0


class RunningCommands:
    """Commands running now and executions cancelled while this worker runs: a slot
    registers each command it starts, the listener cancels (NOTIFY noetl_cancel)."""

    def __init__(self) -> None:
        # Executions cancelled while this worker runs (from NOTIFY noetl_cancel).
        self.cancelled: set[int] = set()
        # command_id -> execution_id, for commands running now.
        self._running: dict[int, int] = {}
        # execution_id -> the flag set on its cancel: the commands of one execution share
        # it (an Event per command cost more than the rest of a command's bookkeeping
        # here), dropped when the last of them ends.
        self._flags: dict[int, _ExecutionFlag] = {}
        self._lock = threading.Lock()

    def started(self, command: Mapping[str, Any]) -> threading.Event:
        """The cancel flag of `command`, set if its execution is cancelled while it runs."""
        command_id, execution_id = command["command_id"], command["execution_id"]
        with self._lock:
            flag = self._flags.get(execution_id)
            if flag is None:
                flag = self._flags[execution_id] = _ExecutionFlag()
            if self._running.get(command_id) != execution_id:
                self._running[command_id] = execution_id
                flag.running += 1
            return flag.event

    def finished(self, command_id: int) -> None:
        with self._lock:
            execution_id = self._running.pop(command_id, None)
            if execution_id is None:
                return
            flag = self._flags[execution_id]
            flag.running -= 1
            if not flag.running:
                del self._flags[execution_id]

    def cancel(self, execution_id: int) -> None:
        """NOTIFY noetl_cancel: skip what is not started, stop what is running."""
        self.cancelled.add(execution_id)
        with self._lock:
            flag = self._flags.get(execution_id)
            if flag is not None:
                flag.event.set()


class WorkerState:
    """The shared state of the worker `worker_id` serving the database at `dsn`."""

    def __init__(self, dsn: str, worker_id: str, slots: int, kinds: list[str] | None) -> None:
        self.dsn = dsn
        self.worker_id = worker_id
        self.slots = slots
        self.kinds = kinds
        self.stopping = threading.Event()
        # NATS (None: off, or not started yet): wake-ups, offers and reports.
        self.bus: nats_bus.NatsBus | None = None
        # Tool resources (pools); "worker_slots" sizes a pool to what the slots can use.
        self.resources: dict[str, Any] = {"worker_slots": slots}
        # What this worker ran over the trailing window, published by the heartbeat.
        self.stats = CommandStats()
        self.running = RunningCommands()

    def connect(self) -> psycopg.Connection[dict[str, Any]]:
        """A connection named after this worker in pg_stat_activity (application_name), so a
        DBA, or a test that killed the worker, can tell which backends are its."""
        return db.connect(self.dsn, application_name=f"noetl worker {self.worker_id}")
