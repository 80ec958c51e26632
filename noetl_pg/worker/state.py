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


class RunningCommands:
    """Commands running now and executions cancelled while this worker runs: a slot
    registers each command it starts, the listener cancels (NOTIFY noetl_cancel)."""

    def __init__(self) -> None:
        # Executions cancelled while this worker runs (from NOTIFY noetl_cancel).
        self.cancelled: set[int] = set()
        # command_id -> (execution_id, flag set on cancel) for commands running now.
        self._running: dict[int, tuple[int, threading.Event]] = {}
        self._lock = threading.Lock()

    def started(self, command: Mapping[str, Any]) -> threading.Event:
        """The cancel flag of `command`, set if its execution is cancelled while it runs."""
        flag = threading.Event()
        with self._lock:
            self._running[command["command_id"]] = (command["execution_id"], flag)
        return flag

    def finished(self, command_id: int) -> None:
        with self._lock:
            self._running.pop(command_id, None)

    def cancel(self, execution_id: int) -> None:
        """NOTIFY noetl_cancel: skip what is not started, stop what is running."""
        self.cancelled.add(execution_id)
        with self._lock:
            for running_execution, flag in self._running.values():
                if running_execution == execution_id:
                    flag.set()


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
