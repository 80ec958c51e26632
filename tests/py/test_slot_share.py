"""Which steps a slot keeps batched (noetl_pg.slot_share.StepTimings): a step is slow once
SLOW_IN_A_ROW of its commands in a row took longer than FAST_SECONDS; one command that
waited for a core does not set a fast step's next commands aside (each would then cost a
transaction of its own)."""

from __future__ import annotations

from noetl_pg.slot_share import FAST_SECONDS, SLOW_IN_A_ROW, StepTimings

ROW = {"catalog_id": 1, "step_name": "work", "kind": "python"}
SLOW = FAST_SECONDS * 10
FAST = FAST_SECONDS / 10


def test_a_step_never_seen_is_not_fast() -> None:
    assert not StepTimings().is_fast(ROW)
    assert StepTimings().is_fast({**ROW, "kind": "noop"})


def test_a_step_first_seen_slow_stays_slow() -> None:
    timings = StepTimings()
    timings.observe(ROW, SLOW)
    assert not timings.is_fast(ROW)


def test_a_fast_step_turns_slow_after_slow_commands_in_a_row() -> None:
    timings = StepTimings()
    timings.observe(ROW, FAST)
    assert timings.is_fast(ROW)
    for _ in range(SLOW_IN_A_ROW - 1):
        timings.observe(ROW, SLOW)
        assert timings.is_fast(ROW)
    timings.observe(ROW, SLOW)
    assert not timings.is_fast(ROW)
    timings.observe(ROW, FAST)
    assert timings.is_fast(ROW)


def test_steps_are_told_apart_by_catalog_step_and_kind() -> None:
    timings = StepTimings()
    timings.observe(ROW, FAST)
    assert not timings.is_fast({**ROW, "step_name": "other"})
    assert not timings.is_fast({**ROW, "catalog_id": 2})
    assert not timings.is_fast({**ROW, "kind": "http"})
