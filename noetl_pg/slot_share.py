"""Claimed commands one slot sets aside for whichever slot of the worker frees first.

A slot claims in batches (worker.ClaimSizer) and runs its batch one command after another.
That pays while commands are fast, but a batch of slow commands (four `select
pg_sleep(2)` iterations claimed right after a fast step grew the batch size) would then
run one at a time in one slot while the other slots sit idle. So a slot keeps for itself
the first command of a batch and the commands of steps it has seen run fast, and sets the
others aside here; every slot takes set-aside commands before it claims from the
database. The commands stay claimed by this worker all along (nothing changes in the
database), and the ids set aside count as held, so the orphan sweep leaves them alone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from noetl_pg.protocol import ClaimedCommand

# Kinds whose commands take no time worth spreading over slots: the worker evaluates
# routes and renders loop collections itself, and noop does nothing.
FAST_KINDS = frozenset({"route", "loop", "noop"})
# A step whose commands take at most this long stays batched in one slot.
FAST_SECONDS = 0.005
# A step is slow once this many of its commands in a row took longer: one command that
# waited for a core or for the interpreter lock on a busy machine (a thread waits up to
# its 5 ms switch interval) does not make a fast step slow. Set aside, each command
# would cost a transaction of its own.
SLOW_IN_A_ROW = 3


def context_group(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The rows that share one context: a claim carries it on the first row of each group
    of one execution, step, kind and loop-or-not only (noetl.describe_commands)."""
    return (row["execution_id"], row["step_name"], row["kind"], row["loop_id"] is None)


class StepTimings:
    """How many commands in a row of each (catalog_id, step, kind) took longer than
    FAST_SECONDS on this worker: the kind matters, a loop step's own 'loop' command is
    fast whatever its iterations do. A step never seen is not fast."""

    def __init__(self) -> None:
        self._slow: dict[tuple[int, str, str], int] = {}

    def observe(self, row: Mapping[str, Any], seconds: float) -> None:
        key = (row["catalog_id"], row["step_name"], row["kind"])
        # A step never seen counts as slow already: its first slow command keeps it slow.
        self._slow[key] = (self._slow.get(key, SLOW_IN_A_ROW) + 1
                           if seconds > FAST_SECONDS else 0)

    def is_fast(self, row: Mapping[str, Any]) -> bool:
        if row["kind"] in FAST_KINDS:
            return True
        slow = self._slow.get((row["catalog_id"], row["step_name"], row["kind"]))
        return slow is not None and slow < SLOW_IN_A_ROW


class SharedClaims:
    """The set-aside commands of one worker, shared by its slots (thread-safe)."""

    def __init__(self) -> None:
        self._rows: deque[ClaimedCommand] = deque()
        self._lock = threading.Lock()

    def split(self, rows: list[ClaimedCommand], timings: StepTimings) -> list[ClaimedCommand]:
        """Keep the first row and rows of fast steps; set the others aside, each given its
        group's context (see context_group), so that it runs on its own. The rows of a
        group are of one step, so a group's kept rows come with its first row, which
        carries the context: they are kept as they are (a copy of each row cost more
        than the rest of the split)."""
        if len(rows) <= 1:
            return rows
        contexts: dict[tuple[Any, ...], Any] = {}
        kept: list[ClaimedCommand] = []
        aside: list[ClaimedCommand] = []
        for position, row in enumerate(rows):
            group = context_group(row)
            if row.get("context") is not None:
                contexts[group] = row["context"]
            if position == 0 or timings.is_fast(row):
                kept.append(row)
            else:
                aside.append({**row, "context": contexts.get(group)})
        if aside:
            with self._lock:
                self._rows.extend(aside)
        return kept

    def take(self, held: dict[str, frozenset[int]], holder: str) -> list[ClaimedCommand]:
        """One set-aside row (or none), recorded as held by `holder` before it leaves."""
        with self._lock:
            if not self._rows:
                return []
            row = self._rows.popleft()
            held[holder] = frozenset({row["command_id"]})
            return [row]

    def held_ids(self, held: dict[str, frozenset[int]]) -> list[int]:
        """Every id the slots hold or that is set aside, read under the lock `take` moves
        rows under, so a row on its way from here to a slot is never missed."""
        with self._lock:
            ids = set().union(*list(held.values()))
            ids.update(row["command_id"] for row in self._rows)
        return sorted(ids)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
