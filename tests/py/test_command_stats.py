"""CommandStats: a worker's per-kind counts over the trailing window, in one-second
buckets, with a fake clock."""

from __future__ import annotations

from noetl_pg.command_stats import DURATION_BOUNDS, CommandStats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_by_kind_and_outcome_within_the_window() -> None:
    clock = Clock()
    stats = CommandStats(window_seconds=15, clock=clock)
    stats.observe("python", "done", 0.03)
    stats.observe("python", "fail", 2.0)
    stats.observe("python", "await_child", 0.001)
    stats.observe("route", "route", 0.001)
    clock.now += 10
    stats.observe("python", "done", 400.0)
    kinds = stats.snapshot()["kinds"]
    python = kinds["python"]
    assert (python["claims"], python["completions"], python["finished"]) == (4, 2, 3)
    assert python["finished_seconds"] == 402.03
    expected = [0] * len(DURATION_BOUNDS)
    expected[3] += 1  # 0.03 s: at least 0.025, below 0.05
    expected[8] += 1  # 2.0 s: at least 1.0, below 2.5
    expected[14] += 1  # 400 s: past the last finite bound (+Inf)
    assert python["buckets"] == expected
    # route is bookkeeping: counted as a claim and a completion, never as a step run time
    assert (kinds["route"]["claims"], kinds["route"]["completions"],
            kinds["route"]["finished"]) == (1, 1, 0)


def test_old_seconds_leave_the_window() -> None:
    clock = Clock()
    stats = CommandStats(window_seconds=15, clock=clock)
    stats.observe("noop", "done", 0.001)
    clock.now += 14
    assert stats.snapshot()["kinds"]["noop"]["claims"] == 1
    clock.now += 1
    assert stats.snapshot() == {"window_seconds": 15, "kinds": {}}
