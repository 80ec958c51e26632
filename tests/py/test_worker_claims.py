"""Slots claim in batches only while work is fast, so slow work spreads over idle slots."""

from __future__ import annotations

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
