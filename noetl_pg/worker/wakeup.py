"""Waking idle slots: LISTEN/NOTIFY, NATS wake-ups and offers, polling when both are lost.

A listener thread LISTENs on `noetl_command` and wakes idle slots, and on `noetl_cancel`
to skip claimed commands of cancelled executions and set the cancel flag of their running
ones (ToolContext.cancelled). If NOTIFY is lost (reconnect, restart) slots still poll
every `poll_interval` seconds, so nothing waits forever.

With NOETL_NATS_URL set (noetl_pg/nats_bus.py), while NATS is reachable the slots send no
NOTIFY: after each commit they take the counts of commands issued per kind
(noetl.take_wake_counts) and publish them, offered first to a worker with free slots; idle
slots are also woken by NATS wake-ups and offers. When NATS goes away the worker is back
on NOTIFY at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from noetl_pg import db, nats_bus
from noetl_pg.errors import DatabaseTransient
from noetl_pg.worker.state import WorkerState

log = logging.getLogger(__name__)

# How long the listener waits for a notification before it looks at the stop flag.
LISTEN_WAIT_SECONDS = 0.1


class WakeUp:
    """Where a worker's idle slots wait for work, and what wakes them."""

    def __init__(self, state: WorkerState, *, poll_interval: float, listen_commands: bool) -> None:
        self._state = state
        self._poll_interval = poll_interval
        # LISTEN noetl_command (off only to prove that polling alone finishes the work).
        self._listen_commands = listen_commands
        self._wake = threading.Condition()
        self._generation = 0
        # Slots waiting for work now: the free slots of the capacity registry.
        self._idle = 0
        # Each slot's connection says whether it currently leaves its wake-ups to NATS
        # (noetl.wakeup); what it was last told, per slot thread.
        self._slot_state = threading.local()

    @property
    def generation(self) -> int:
        """Bumped by every wake-up: a slot reads it before it claims and waits only if it
        is unchanged, so a wake-up between its empty claim and its wait is not lost."""
        return self._generation

    def idle_slots(self) -> int:
        return self._idle

    def wake_all(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def wait_for_work(self, seen_generation: int) -> None:
        with self._wake:
            if self._generation == seen_generation and not self._state.stopping.is_set():
                self._idle += 1
                try:
                    self._wake.wait(self._poll_interval)
                finally:
                    self._idle -= 1

    def woken(self, kind: str, n: int | None) -> int:
        """A NATS wake-up or offer for `n` commands of `kind` (None: any number): wakes
        that many idle slots and returns how many it woke (0 for a kind not served)."""
        kinds = self._state.kinds
        if kinds is not None and kind != nats_bus.ANY_KIND and kind not in kinds:
            return 0
        with self._wake:
            # Bumped even with no idle slot: a slot about to wait claims again instead.
            self._generation += 1
            woken = self._idle if n is None else min(n, self._idle)
            self._wake.notify(woken)
        return woken

    def listen(self) -> None:
        """The listener thread: until stopped, on one connection (reopened when lost)."""
        stopping = self._state.stopping
        reconnect = db.Reconnect("listener")
        while not stopping.is_set():
            try:
                with self._state.connect() as conn:
                    if self._listen_commands:
                        db.execute(conn, "listen_commands")
                    db.execute(conn, "listen_cancel")
                    reconnect.succeeded()
                    # Anything notified while we were not listening is picked up now.
                    self.wake_all()
                    while not stopping.is_set():
                        # The wait is what a stopping worker waits for this thread (a
                        # socket wait, no query): `noetl run` ends within it.
                        for notify in db.notifies(conn, LISTEN_WAIT_SECONDS):
                            if notify.channel == "noetl_cancel" and notify.payload.isdigit():
                                self._state.running.cancel(int(notify.payload))
                            else:
                                self.wake_all()
            except DatabaseTransient as exc:
                delay = reconnect.failed(exc)
                log.warning("listener lost its connection (%s); retrying in %.1fs", exc, delay)
                stopping.wait(delay)

    def leaves_wakeups_to_nats(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether this slot's connection leaves its wake-ups to NATS: set to follow the
        bus's connection state, one statement each time that changes."""
        bus = self._state.bus
        wanted = bus is not None and bus.connected
        state = self._slot_state
        if getattr(state, "conn", None) is not conn or state.nats_on != wanted:
            db.fetch_one(conn, "set_wakeup_nats", nats=wanted)
            state.conn, state.nats_on = conn, wanted
        return wanted

    def publish(self, counts: dict[str, int], conn: psycopg.Connection[Any]) -> None:
        """After the commit: publish what it issued; NOTIFY if NATS just went away."""
        bus = self._state.bus
        if counts and (bus is None or not bus.wake(counts)):
            db.fetch_one(conn, "notify_workers")
