"""`kind: playbook`: child executions awaited without holding a worker slot."""

from __future__ import annotations

import textwrap
import time

import pytest
from engine_harness import Engine

CHILD = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: child, path: test/child}
workload: {n: 1, fail: false}
workflow:
  - step: compute
    tool:
      kind: python
      input: {n: "{{ n }}", fail: "{{ fail }}"}
      code: |
        if fail:
            raise ValueError(f"child asked to fail for {n}")
        result = {"doubled": n * 2}
    next: {arcs: [{step: finish}]}
  - step: finish
    tool:
      kind: python
      input: {d: "{{ compute.doubled }}"}
      code: "result = {'final': d + 1}"
"""


def parent(child_path: str, extra: str = "", step_extra: str = "") -> str:
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: parent, path: test/parent}}
        workload: {{n: 5}}
        workflow:
          - step: run_child
            tool:
              kind: playbook
              path: {child_path}
              input: {{n: "{{{{ n }}}}"}}
              {extra}
            {step_extra}
            next: {{arcs: [{{step: report}}]}}
          - step: report
            tool:
              kind: python
              input: {{child: "{{{{ run_child }}}}"}}
              code: "result = {{'got': child}}"
        """)


def test_child_result_becomes_the_step_result(engine: Engine) -> None:
    child = engine.register(CHILD)
    row = engine.run(parent(child))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"got": {"final": 11}}
    children = engine.sql(
        "select execution_id, parent_command_id, status from noetl.execution"
        " where parent_execution_id = %s", row["execution_id"])
    assert len(children) == 1 and children[0]["status"] == "COMPLETED"
    command = engine.sql("select step_name, status, input from noetl.command"
                         " where command_id = %s", children[0]["parent_command_id"])[0]
    assert command["step_name"] == "run_child" and command["status"] == "done"
    assert command["input"]["child"]["execution_id"] == children[0]["execution_id"]


def test_return_step_and_payload_alias(engine: Engine) -> None:
    child = engine.register(CHILD)
    source = parent(child, extra="return_step: compute").replace("input: {n:", "payload: {n:")
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"got": {"doubled": 10}}


def test_failed_child_fails_the_parent_step_with_its_error(engine: Engine) -> None:
    child = engine.register(CHILD)
    source = parent(child).replace('input: {n: "{{ n }}"}', 'input: {n: 3, fail: true}')
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert row["failed_step"] == "run_child"
    assert "child playbook" in row["error"] and "failed in step 'compute'" in row["error"]
    assert "child asked to fail for 3" in row["error"]


def test_retry_starts_a_fresh_child_per_attempt(engine: Engine) -> None:
    child = engine.register(CHILD)
    source = parent(child, extra="retry: {max_attempts: 3, retry_on: [error]}").replace(
        'input: {n: "{{ n }}"}', "input: {n: 4, fail: true}")
    row = engine.run(source)
    assert row["status"] == "FAILED"
    children = engine.sql("select status from noetl.execution where parent_execution_id = %s",
                          row["execution_id"])
    assert [c["status"] for c in children] == ["FAILED"] * 3
    retried = [e for e in engine.events(row["execution_id"])
               if e["event_type"] == "command.retried"]
    assert len(retried) == 2


def test_unknown_child_path_fails_cleanly(engine: Engine) -> None:
    row = engine.run(parent("test/no-such-playbook"))
    assert row["status"] == "FAILED"
    assert "child playbook cannot start" in row["error"]
    assert "not registered" in row["error"]


def test_awaiting_parent_holds_no_slot(fresh_engine: Engine) -> None:
    """One slot: the parent's step waits while the child's steps use that same slot."""
    child = fresh_engine.register(CHILD)
    grandparent_child = fresh_engine.register(parent(child))
    with fresh_engine.worker(slots=1):
        row = fresh_engine.run(parent(grandparent_child), timeout=60)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"got": {"got": {"final": 11}}}


def test_waiting_command_is_not_claimed(fresh_engine: Engine) -> None:
    slow_child = fresh_engine.register(CHILD.replace(
        "result = {\"doubled\": n * 2}", "import time\n        time.sleep(1.0)\n"
        "        result = {\"doubled\": n * 2}"))
    with fresh_engine.worker(slots=2):
        execution_id = fresh_engine.start(fresh_engine.register(parent(slow_child)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = fresh_engine.sql("select status, claimed_by from noetl.command"
                                    " where execution_id = %s and step_name = 'run_child'",
                                    execution_id)
            if rows and rows[0]["status"] == "waiting":
                break
            time.sleep(0.02)
        assert rows[0] == {"status": "waiting", "claimed_by": None}
        assert fresh_engine.wait(execution_id)["status"] == "COMPLETED"


def test_loop_of_children(engine: Engine) -> None:
    child = engine.register(CHILD)
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: loop_parent, path: test/loop_parent}}
        workflow:
          - step: each
            loop: {{in: "{{{{ [1, 2, 3] }}}}", iterator: n, spec: {{mode: parallel}}}}
            tool: {{kind: playbook, path: {child}, input: {{n: "{{{{ n }}}}"}}}}
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [{"final": 3}, {"final": 5}, {"final": 7}]


SEED_CHILD = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: seed_child, path: test/seed_child}
workload: {index: 0}
workflow:
  - step: work
    tool:
      kind: python
      input: {index: "{{ index }}"}
      code: |
        import time
        time.sleep(0.1)
        result = {"index": index, "status": "completed"}
"""


def seed_parent(child_path: str, mode: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: seed_parent, path: test/seed_parent}}
        workload: {{count: 48}}
        workflow:
          - step: children
            loop:
              in: "{{{{ range(count) | list }}}}"
              iterator: index
              spec: {{mode: {mode}, max_in_flight: 10}}
            tool:
              kind: playbook
              path: {child_path}
              input: {{index: "{{{{ index }}}}"}}
              retry: {{max_attempts: 2, retry_on: [timeout]}}
            next: {{arcs: [{{step: summary}}]}}
          - step: summary
            tool:
              kind: python
              input: {{results: "{{{{ children.results }}}}", stats: "{{{{ children.stats }}}}"}}
              code: |
                completed = [r for r in results if r and r.get("status") == "completed"]
                result = {{"completed_children": len(completed), "stats": stats,
                          "indexes": sorted(r["index"] for r in completed)}}
        """)


@pytest.mark.parametrize(("mode", "batch_size"),
                         [("parallel", 16), ("parallel", 1), ("sequential", 16)])
def test_48_children_with_one_worker(fresh_engine: Engine, mode: str, batch_size: int) -> None:
    """The seeds' regression: 48 children through a loop of `kind: playbook` with
    max_in_flight 10 and ONE 4-slot worker. Awaited children hold no slot, so this ends."""
    child = fresh_engine.register(SEED_CHILD)
    parent_path = fresh_engine.register(seed_parent(child, mode))
    with fresh_engine.worker(slots=4, batch_size=batch_size):
        started = time.monotonic()
        row = fresh_engine.wait(fresh_engine.start(parent_path), timeout=120)
        elapsed = time.monotonic() - started
    print(f"\n48 children, {mode}, worker batch_size {batch_size}: {elapsed:.2f}s")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["completed_children"] == 48
    assert row["result"]["indexes"] == list(range(48))
    assert row["result"]["stats"] == {"total": 48, "success": 48, "failed": 0}
    children = fresh_engine.sql(
        "select count(*) filter (where status = 'COMPLETED') as done, count(*) as total"
        " from noetl.execution where parent_execution_id = %s", row["execution_id"])[0]
    assert children == {"done": 48, "total": 48}


def test_cancelling_the_parent_cancels_the_waiting_child(fresh_engine: Engine) -> None:
    if not fresh_engine.sql("select 1 from pg_proc where proname = 'cancel_execution'"):
        pytest.skip("noetl.cancel_execution is not installed")
    slow_child = fresh_engine.register(CHILD.replace(
        "result = {\"doubled\": n * 2}", "import time\n        time.sleep(1.5)\n"
        "        result = {\"doubled\": n * 2}"))
    with fresh_engine.worker(slots=2):
        execution_id = fresh_engine.start(fresh_engine.register(parent(slow_child)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not fresh_engine.sql(
                "select 1 from noetl.execution where parent_execution_id = %s", execution_id):
            time.sleep(0.02)
        fresh_engine.sql("select noetl.cancel_execution(%s)", execution_id)
        row = fresh_engine.wait(execution_id)
        child = fresh_engine.sql("select execution_id, status from noetl.execution"
                                 " where parent_execution_id = %s", execution_id)[0]
        assert fresh_engine.wait(child["execution_id"])["status"] == "CANCELLED"
        time.sleep(2.0)  # the child's step finishes meanwhile: nothing must route
    assert row["status"] == "CANCELLED"
    command = fresh_engine.sql("select status from noetl.command where execution_id = %s"
                               " and step_name = 'run_child'", execution_id)
    assert command == [{"status": "cancelled"}]
    assert not fresh_engine.sql("select 1 from noetl.command where execution_id = %s"
                                " and step_name = 'report'", execution_id)
