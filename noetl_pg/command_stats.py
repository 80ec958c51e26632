"""What a worker ran over the trailing window, for /metrics without reading noetl.command.

Each worker counts, per command kind and in one-second buckets, the commands it ran
(claims), those that succeeded (completions) and the run time of finished step commands
(a histogram over DURATION_BOUNDS). Its heartbeat publishes the sums over the last
WINDOW_SECONDS in its `noetl.worker.stats` row; `/metrics` adds up the rows of live
workers: one row per worker, however many commands there are. The figures are as old as
the last heartbeat (NOETL_WORKER_HEARTBEAT_SECONDS).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from typing import Any

WINDOW_SECONDS = 15.0
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0, float("inf"))
FINITE_BOUNDS = DURATION_BOUNDS[:-1]
# Command kinds that are engine bookkeeping, not steps: left out of the duration histogram.
NOT_STEPS = frozenset({"route", "loop"})
# Outcome ops of a command that succeeded; await_child has not finished yet.
COMPLETED_OPS = frozenset({"done", "loop", "route"})
UNFINISHED_OPS = frozenset({"await_child"})


def _empty() -> dict[str, Any]:
    return {"claims": 0, "completions": 0, "finished": 0, "finished_seconds": 0.0,
            "buckets": [0] * len(DURATION_BOUNDS)}


class CommandStats:
    """Per-kind counts of one worker in one-second buckets (thread-safe)."""

    def __init__(self, window_seconds: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._seconds: dict[int, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def observe(self, kind: str, op: str, run_seconds: float) -> None:
        """One command of `kind` ran for `run_seconds` and ended with outcome `op`."""
        second = math.floor(self._clock())
        with self._lock:
            # Not setdefault(kind, _empty()): that builds the empty counts on every call.
            per_kind = self._seconds.setdefault(second, {})
            counts = per_kind.get(kind)
            if counts is None:
                counts = per_kind[kind] = _empty()
            counts["claims"] += 1
            if op in COMPLETED_OPS:
                counts["completions"] += 1
            if kind not in NOT_STEPS and op not in UNFINISHED_OPS:
                counts["finished"] += 1
                counts["finished_seconds"] += run_seconds
                counts["buckets"][bisect.bisect_right(FINITE_BOUNDS, run_seconds)] += 1

    def snapshot(self) -> dict[str, Any]:
        """The sums over the window, `{"window_seconds": W, "kinds": {kind: counts}}`;
        buckets older than the window are dropped."""
        oldest = math.floor(self._clock() - self.window_seconds) + 1
        kinds: dict[str, dict[str, Any]] = {}
        with self._lock:
            for second in [s for s in self._seconds if s < oldest]:
                del self._seconds[second]
            for per_kind in self._seconds.values():
                for kind, counts in per_kind.items():
                    total = kinds.setdefault(kind, _empty())
                    for name in ("claims", "completions", "finished", "finished_seconds"):
                        total[name] += counts[name]
                    total["buckets"] = [a + b for a, b in zip(total["buckets"],
                                                              counts["buckets"], strict=True)]
        return {"window_seconds": self.window_seconds, "kinds": kinds}
