"""Slots claim in batches only while work is fast, so slow work spreads over idle slots."""

from __future__ import annotations

import pytest
from engine_harness import Engine

from noetl_pg.worker import ClaimSizer

SLOW_LOOP = """
metadata: {path: test/slow_loop}
workflow:
  - step: wait
    loop:
      in: "{{ range(8) | list }}"
      iterator: n
      spec: {mode: parallel, max_in_flight: 8}
    tool:
      kind: python
      spec: {isolation: inline}
      code: |
        import time
        started = time.time()
        time.sleep(0.3)
        result = {"started": started, "finished": time.time()}
"""


def test_claim_size_doubles_while_fast_and_resets_when_slow() -> None:
    sizer = ClaimSizer(16)
    assert sizer.size == 1
    for expected in (2, 4, 8, 16, 16):
        sizer.observe(commands=sizer.size, seconds=0.0001 * sizer.size)
        assert sizer.size == expected
    sizer.observe(commands=16, seconds=16 * 0.2)
    assert sizer.size == 1


def test_slow_iterations_run_on_several_slots_at_once(fresh_engine: Engine) -> None:
    with fresh_engine.worker(slots=4, batch_size=16):
        row = fresh_engine.run(SLOW_LOOP)
    assert row["status"] == "COMPLETED", row["error"]
    spans = sorted(
        (item["started"], item["finished"])
        for item in fresh_engine.sql(
            "select result from noetl.step_result where step_name = 'wait'"
        )[0]["result"]["results"]
    )
    most_at_once = max(
        sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans
    )
    assert most_at_once >= 3, f"iterations ran {most_at_once} at a time: {spans}"


def test_engine_connection_lost_while_a_command_runs_is_not_the_steps_failure(
        fresh_engine: Engine) -> None:
    """The slot's own connection breaks while a command runs (here: reading its step's
    spec): the slot reconnects and the command goes back at the same attempt, instead of
    failing the step with an "internal error" (a 1000-execution chaos run failed so)."""
    from noetl_pg import db
    from noetl_pg.errors import DatabaseUnavailable
    from noetl_pg.protocol import claimed
    from noetl_pg.worker import Worker

    path = fresh_engine.register(
        "metadata: {path: test/lost}\nworkflow:\n  - step: only\n    tool: {kind: noop}\n")
    fresh_engine.start(path)
    worker = Worker(fresh_engine.dsn, slots=1)
    conn = db.connect(fresh_engine.dsn)
    rows = claimed(db.fetch_all(conn, "claim_commands", worker_id=worker.worker_id,
                                kinds=None, n=1))
    assert len(rows) == 1
    runner = worker._slot_loop._runner(conn)
    conn.close()  # as a restart or pg_terminate_backend leaves it
    with pytest.raises(DatabaseUnavailable):
        worker._slot_loop._run_batch(conn, runner, rows)
    assert fresh_engine.sql("select count(*) as n from noetl.event "
                            "where event_type in ('call.error', 'command.failed')") == [{"n": 0}]
