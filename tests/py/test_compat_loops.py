"""NoETL-style loops whose iterations fail: the loop step fails (`call.error`) unless an arc
takes the error, a fan-out routes on `fanin.status` or the loop says `on_error: continue`.
Also loops over an earlier step's output, as NoETL playbooks write them."""

from __future__ import annotations

import textwrap
import time
from typing import Any

import pytest
from engine_harness import Engine


def _events(engine: Engine, execution_id: int, event_type: str,
            step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in engine.events(execution_id)
            if e["event_type"] == event_type and (step is None or e["node_name"] == step)]


def _issued(engine: Engine, execution_id: int) -> dict[str, int]:
    """How many commands of each step were issued (route and loop commands excluded)."""
    rows = engine.sql(
        "select step_name, count(*) as n from noetl.command where execution_id = %s "
        "and kind not in ('route', 'loop') group by step_name", execution_id)
    return {row["step_name"]: row["n"] for row in rows}


def _step_result(engine: Engine, execution_id: int, step: str) -> Any:
    rows = engine.sql("select result from noetl.step_result where execution_id = %s "
                      "and step_name = %s", execution_id, step)
    return rows[0]["result"] if rows else None


def _playbook(loop_spec: str, code: str, after: str = "", next_block: str = "") -> str:
    return textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: loopfail, path: test/compat/loopfail}
        workflow:
          - step: start
            tool: {kind: python, code: "result = {'items': [1, 2, 3, 4]}"}
            next: [{step: each}]
          - step: each
            loop:
              in: "{{ start.items }}"
              iterator: n
              spec: %s
            tool:
              kind: python
              input: {n: "{{ n }}"}
              code: |
        %s
        %s
          - step: after
            tool: {kind: python, input: {r: "{{ each.stats }}"}, code: "result = r"}
        %s
        """) % (loop_spec, textwrap.indent(textwrap.dedent(code), " " * 8),
                textwrap.indent(textwrap.dedent(next_block), " " * 4), after)


FAIL_ODD = """
if n % 2:
    raise RuntimeError(f"odd {n}")
result = {"n": n}
"""


def test_all_failed_iterations_fail_the_execution(engine: Engine) -> None:
    source = _playbook("{mode: parallel, max_in_flight: 4}",
                       "raise RuntimeError(f'item {n} broke')", next_block="next: [{step: after}]")
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert row["failed_step"] == "each"
    assert 'step "each": 4/4 iterations failed' in row["error"]
    assert "[0]" in row["error"] and "item 1 broke" in row["error"]
    assert "[2]" in row["error"] and "item 3 broke" in row["error"]
    # Only the first three errors are quoted.
    assert "item 4 broke" not in row["error"] and row["error"].endswith("; ...")
    execution_id = row["execution_id"]
    assert _issued(engine, execution_id) == {"start": 1, "each": 4}
    errors = _events(engine, execution_id, "call.error", "each")
    loop_error = [e for e in errors if e["iter_index"] is None]
    assert len(loop_error) == 1 and loop_error[0]["error"] == row["error"]
    result = _step_result(engine, execution_id, "each")
    assert result["stats"] == {"total": 4, "success": 0, "failed": 4}
    assert result["status"] == "error"
    loop_cmd = engine.sql("select status from noetl.command where execution_id = %s "
                          "and kind = 'loop'", execution_id)
    assert loop_cmd == [{"status": "failed"}]


def test_some_failed_iterations_fail_the_step_and_skip_next(engine: Engine) -> None:
    source = _playbook("{mode: sequential}", FAIL_ODD, next_block="next: [{step: after}]")
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert row["error"].startswith('step "each": 2/4 iterations failed: [0] ')
    assert "odd 1" in row["error"] and "[2]" in row["error"] and "odd 3" in row["error"]
    assert not row["error"].endswith("...")
    # Every iteration still ran (the failure is decided when the loop closes).
    assert _issued(engine, row["execution_id"]) == {"start": 1, "each": 4}
    assert len(_events(engine, row["execution_id"], "call.done", "each")) == 2


def test_on_error_continue_goes_on_with_the_stats(engine: Engine) -> None:
    source = _playbook("{mode: parallel, max_in_flight: 2, on_error: continue}", FAIL_ODD,
                       next_block="next: [{step: after}]")
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"total": 4, "success": 2, "failed": 2}
    assert _issued(engine, row["execution_id"]) == {"start": 1, "each": 4, "after": 1}
    assert not [e for e in _events(engine, row["execution_id"], "call.error", "each")
                if e["iter_index"] is None]


def test_an_arc_on_call_error_handles_the_failed_loop(engine: Engine) -> None:
    arcs = """
    next:
      arcs:
        - step: after
          when: "{{ event.name == 'loop.done' }}"
        - step: recover
          when: "{{ event.name == 'call.error' }}"
          set: {ctx.why: "{{ error }}"}
    """
    recover = """
  - step: recover
    tool: {kind: python, input: {why: "{{ ctx.why }}", s: "{{ each.stats }}"},
           code: "result = {'why': why, 'stats': s}"}
    """
    row = engine.run(_playbook("{mode: parallel, max_in_flight: 4}", FAIL_ODD, recover, arcs))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["why"].startswith('step "each": 2/4 iterations failed')
    assert row["result"]["stats"] == {"total": 4, "success": 2, "failed": 2}
    assert _issued(engine, row["execution_id"]) == {"start": 1, "each": 4, "recover": 1}


def test_a_clean_loop_still_routes_on_loop_done(engine: Engine) -> None:
    arcs = """
    next:
      arcs:
        - step: after
          when: "{{ event.name == 'loop.done' }}"
    """
    row = engine.run(_playbook("{mode: parallel, max_in_flight: 4}", "result = {'n': n}", "",
                               arcs))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"total": 4, "success": 4, "failed": 0}
    assert _issued(engine, row["execution_id"]) == {"start": 1, "each": 4, "after": 1}


def test_an_arc_without_when_is_not_taken_after_a_failed_loop(engine: Engine) -> None:
    arcs = """
    next:
      arcs:
        - step: after
    """
    row = engine.run(_playbook("{mode: parallel}", FAIL_ODD, "", arcs))
    assert row["status"] == "FAILED"
    assert _issued(engine, row["execution_id"]) == {"start": 1, "each": 4}


def test_fanout_routes_on_fanin_status_after_failed_shards(engine: Engine) -> None:
    arcs = """
    next:
      arcs:
        - step: after
          when: "{{ fanin.status == 'complete' }}"
        - step: partial
          when: "{{ fanin.status == 'partial' }}"
          set: {ctx.fanin: "{{ fanin }}"}
    """
    partial = """
  - step: partial
    tool: {kind: python, input: {f: "{{ ctx.fanin }}"}, code: "result = f"}
    """
    spec = "{mode: parallel, max_in_flight: 4, policy: {exec: distributed}, " \
           "fanout: {max_shard_retries: 0}}"
    row = engine.run(_playbook(spec, FAIL_ODD, partial, arcs))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"status": "partial", "done": 2, "failed": 2, "total": 4}
    assert _issued(engine, row["execution_id"]) == {"start": 1, "each": 4, "partial": 1}


def test_retried_iterations_that_recover_do_not_fail_the_loop(engine: Engine,
                                                              tmp_path: Any) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: loopretry, path: test/compat/loopretry}
        workload: {marks: "%s"}
        workflow:
          - step: each
            loop: {in: "{{ [1, 2, 3] }}", iterator: n, mode: async, concurrency: 3}
            tool:
              kind: python
              input: {n: "{{ n }}", marks: "{{ workload.marks }}"}
              retry: {max_attempts: 2}
              code: |
                import os
                mark = os.path.join(marks, str(n))
                if not os.path.exists(mark):
                    open(mark, "w").close()
                    raise RuntimeError("first try fails")
                result = n * 10
            next: [{step: after}]
          - step: after
            tool: {kind: python, input: {r: "{{ each.results }}"}, code: "result = r"}
        """) % tmp_path
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == [10, 20, 30]
    retried = _events(engine, row["execution_id"], "command.retried", "each")
    assert len(retried) == 3


def test_loop_over_an_earlier_steps_output_items_key(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: loopitems, path: test/compat/loopitems}
        workflow:
          - step: start
            tool:
              kind: python
              code: "result = {'items': [{'id': 1, 'v': 'a'}, {'id': 2, 'v': 'b'}]}"
            next: [{step: each}]
          - step: each
            loop: {in: "{{ start.items }}", iterator: row, spec: {mode: parallel}}
            tool:
              kind: python
              input: {row: "{{ row }}", idx: "{{ iter._index }}"}
              code: "result = {'id': row['id'], 'v': row['v'].upper(), 'idx': idx}"
            next: [{step: end}]
          - step: end
            tool: {kind: python, input: {r: "{{ each.results }}"}, code: "result = r"}
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == [{"id": 1, "v": "A", "idx": 0}, {"id": 2, "v": "B", "idx": 1}]


def test_noetl_status_shows_done_failed_total_of_a_failed_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from noetl_pg.cli import main
    from noetl_pg.projection import Projector

    source = _playbook("{mode: parallel, max_in_flight: 4}", FAIL_ODD,
                       next_block="next: [{step: after}]")
    row = engine.run(source)
    assert row["status"] == "FAILED"
    projector = Projector(engine.dsn, poll_interval=0.02)
    projector.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = engine.sql("select state from noetl.execution_state"
                                " where execution_id = %s", row["execution_id"])
            state = states[0]["state"] if states else {}
            if (state or {}).get("status") == "FAILED":
                break
            time.sleep(0.05)
    finally:
        projector.stop()
        projector.join(timeout=30)
    loop = state["loop"]["each"]
    assert (loop["done"], loop["failed"], loop["total"]) == (2, 2, 4)
    assert state["steps"]["each"]["status"] == "failed"
    monkeypatch.setenv("NOETL_DSN", engine.dsn)
    monkeypatch.setenv("COLUMNS", "200")
    shown = CliRunner().invoke(main, ["status", str(row["execution_id"])])
    assert shown.exit_code == 0, shown.output
    assert "2/4 (2 failed)" in shown.output
    assert "2/4 iterations failed" in shown.output
