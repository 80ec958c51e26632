"""How an execution ends: a big final result stays out of the event log; a failed parent
cancels the child executions its waiting commands were awaiting."""

from __future__ import annotations

import time
import uuid

from engine_harness import Engine

BIG_FINAL_LOOP = """
metadata: {path: test/big_final}
workflow:
  - step: rows
    loop:
      in: "{{ range(400) | list }}"
      iterator: n
      spec: {mode: parallel, max_in_flight: 20}
    tool: {kind: python, spec: {isolation: inline}, input: {n: "{{ n }}"},
           code: "result = {'n': n, 'label': 'row number ' ~ str(n)}"}
"""


def test_large_final_result_is_kept_out_of_the_completed_event(engine: Engine) -> None:
    row = engine.run(BIG_FINAL_LOOP.replace("~", "+"))
    assert row["status"] == "COMPLETED", row["error"]
    assert len(row["result"]["results"]) == 400
    completed = [e for e in engine.events(row["execution_id"])
                 if e["event_type"] == "playbook.completed"]
    assert len(completed) == 1
    assert completed[0]["result"] is None
    assert completed[0]["meta"]["result_in"] == "noetl.execution.result"
    assert completed[0]["meta"]["result_bytes"] > 4096


def test_small_final_result_stays_in_the_completed_event(engine: Engine) -> None:
    row = engine.run("""
metadata: {path: test/small_final}
workflow:
  - step: one
    tool: {kind: python, code: "result = {'ok': True}"}
""")
    completed = [e for e in engine.events(row["execution_id"])
                 if e["event_type"] == "playbook.completed"]
    assert completed[0]["result"] == {"ok": True}


def test_failed_parent_cancels_the_child_it_was_waiting_for(engine: Engine) -> None:
    child_path = f"test/slow_child-{uuid.uuid4().hex[:8]}"
    engine.register("""
metadata: {path: x}
workflow:
  - step: sleep
    tool: {kind: python, code: "import time\\ntime.sleep(3)\\nresult = 1"}
""", path=child_path)
    parent = engine.register(f"""
metadata: {{path: test/failing_parent}}
workflow:
  - step: split
    tool: {{kind: noop}}
    next: {{spec: {{mode: inclusive}}, arcs: [{{step: wait_child}}, {{step: explode}}]}}
  - step: wait_child
    tool: {{kind: playbook, path: {child_path}}}
  - step: explode
    tool: {{kind: python, code: "import time\\ntime.sleep(0.5)\\nraise RuntimeError('boom')"}}
""")
    row = engine.wait(engine.start(parent), timeout=20)
    assert row["status"] == "FAILED"
    children = engine.sql(
        "select status from noetl.execution where parent_execution_id = %s",
        row["execution_id"],
    )
    assert [child["status"] for child in children] == ["CANCELLED"]


def test_cancel_stops_a_running_python_step_and_frees_its_slot(fresh_engine: Engine) -> None:
    """With one slot, a second run can only finish if the cancelled 30 s step was stopped."""
    sleeper = fresh_engine.register("""
metadata: {path: test/sleeper}
workflow:
  - step: nap
    tool: {kind: python, code: "import time\\ntime.sleep(30)\\nresult = 1"}
""")
    quick = fresh_engine.register("""
metadata: {path: test/quick}
workflow:
  - step: hop
    tool: {kind: python, code: "result = 2"}
""")
    with fresh_engine.worker(slots=1):
        sleeping = fresh_engine.start(sleeper)
        deadline = time.monotonic() + 10
        while not fresh_engine.sql(
            "select 1 from noetl.command where execution_id = %s and status = 'claimed'",
            sleeping,
        ):
            assert time.monotonic() < deadline, "the sleeping step was never claimed"
            time.sleep(0.05)
        time.sleep(0.3)  # the executor is inside time.sleep now
        fresh_engine.sql("select noetl.cancel_execution(%s)", sleeping)
        started = time.monotonic()
        row = fresh_engine.wait(fresh_engine.start(quick), timeout=10)
        assert row["status"] == "COMPLETED"
        assert time.monotonic() - started < 10
    assert fresh_engine.wait(sleeping)["status"] == "CANCELLED"
