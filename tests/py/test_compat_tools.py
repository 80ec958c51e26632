"""NoETL tool forms end to end: postgres concurrency, errors with their cause, credential,
script, transfer and artifact tools, policy writes and playbook tasks in a pipeline."""

from __future__ import annotations

import textwrap
import threading
import time
import uuid
from typing import Any

import psycopg
from engine_harness import Engine


def _events(engine: Engine, execution_id: int, event_type: str,
            step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in engine.events(execution_id)
            if e["event_type"] == event_type and (step is None or e["node_name"] == step)]


def _issued(engine: Engine, execution_id: int) -> dict[str, int]:
    rows = engine.sql(
        "select step_name, count(*) as n from noetl.command where execution_id = %s "
        "and kind not in ('route', 'loop') group by step_name", execution_id)
    return {row["step_name"]: row["n"] for row in rows}


class BackendPeak:
    """Counts, from pg_stat_activity, the most backends running a query that has `tag`."""

    def __init__(self, dsn: str, tag: str) -> None:
        self.peak = 0
        self._dsn, self._tag = dsn, tag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> BackendPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and pid <> pg_backend_pid() and query like %s",
                    (f"%{self._tag}%",)).fetchone()
                assert row is not None
                self.peak = max(self.peak, row[0])
                time.sleep(0.02)


def _sleep_loop(dsn: str, tag: str, width: int) -> str:
    # A fast loop first grows each slot's claim batch (worker.ClaimSizer), the case where
    # one slot used to claim several slow postgres iterations and run them in turn.
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pgwidth, path: test/compat/pgwidth}}
        workload: {{dsn: "{dsn}"}}
        workflow:
          - step: warm
            loop: {{in: "{{{{ range(40) | list }}}}", iterator: i, mode: async, concurrency: 8}}
            tool: {{kind: noop}}
            next: [{{step: sleep}}]
          - step: sleep
            loop:
              in: "{{{{ range({width}) | list }}}}"
              iterator: i
              spec: {{mode: parallel, max_in_flight: {width}}}
            tool:
              kind: postgres
              auth: {{dsn: "{{{{ workload.dsn }}}}"}}
              command: "select pg_sleep(1.5) as slept /* {tag} */"
        """)


def test_postgres_loop_reaches_max_in_flight_up_to_the_slots(fresh_engine: Engine) -> None:
    tag = f"pgwidth_{uuid.uuid4().hex[:8]}"
    with fresh_engine.worker(slots=6), BackendPeak(fresh_engine.dsn, tag) as watch:
        row = fresh_engine.run(_sleep_loop(fresh_engine.dsn, tag, 6))
    assert row["status"] == "COMPLETED", row["error"]
    assert watch.peak == 6
    assert _issued(fresh_engine, row["execution_id"]) == {"warm": 40, "sleep": 6}
    assert row["result"]["stats"] == {"total": 6, "success": 6, "failed": 0}


def test_postgres_loop_wider_than_the_slots_runs_slots_at_a_time(fresh_engine: Engine) -> None:
    tag = f"pgwidth_{uuid.uuid4().hex[:8]}"
    with fresh_engine.worker(slots=3), BackendPeak(fresh_engine.dsn, tag) as watch:
        row = fresh_engine.run(_sleep_loop(fresh_engine.dsn, tag, 5))
    assert row["status"] == "COMPLETED", row["error"]
    assert watch.peak == 3
    assert len(_events(fresh_engine, row["execution_id"], "call.done", "sleep")) == 5


# --- pipelines and policy ---------------------------------------------------------------

CHILD = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: child, path: test/compat/child}
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
"""


def _pipeline_parent(child: str, loop: str = "", fail: str = "false") -> str:
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pipeparent, path: test/compat/pipeparent}}
        workload: {{n: 5}}
        workflow:
          - step: work
            {loop}
            tool:
              - name: prepare
                kind: python
                input: {{n: "{{{{ workload.n }}}}"}}
                code: "result = {{'n': n + 1}}"
              - name: child
                kind: playbook
                path: {child}
                input: {{n: "{{{{ prepare.n }}}}", fail: {fail}}}
              - name: finish
                kind: python
                input: {{before: "{{{{ prepare.n }}}}", got: "{{{{ child }}}}"}}
                code: "result = {{'before': before, 'got': got}}"
        """)


def test_playbook_task_inside_a_pipeline_resumes_after_the_child(engine: Engine) -> None:
    child = engine.register(CHILD)
    row = engine.run(_pipeline_parent(child))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"before": 6, "got": {"doubled": 12}}
    execution_id = row["execution_id"]
    children = engine.sql("select status from noetl.execution where parent_execution_id = %s",
                          execution_id)
    assert children == [{"status": "COMPLETED"}]
    # The command was parked (no slot held), resumed once, and claimed twice.
    assert len(_events(engine, execution_id, "command.resumed", "work")) == 1
    assert len(_events(engine, execution_id, "command.claimed", "work")) == 2
    assert len(_events(engine, execution_id, "call.done", "work")) == 1


def test_playbook_task_in_a_pipeline_per_loop_iteration(engine: Engine) -> None:
    child = engine.register(CHILD)
    loop = 'loop: {in: "{{ [1, 2, 3] }}", iterator: i, mode: async, concurrency: 3}'
    row = engine.run(_pipeline_parent(child, loop))
    assert row["status"] == "COMPLETED", row["error"]
    execution_id = row["execution_id"]
    result = engine.sql("select result from noetl.step_result where execution_id = %s "
                        "and step_name = 'work'", execution_id)[0]["result"]
    assert result["results"] == [{"before": 6, "got": {"doubled": 12}}] * 3
    assert len(_events(engine, execution_id, "command.resumed", "work")) == 3


def test_failed_child_in_a_pipeline_fails_the_step(engine: Engine) -> None:
    child = engine.register(CHILD)
    row = engine.run(_pipeline_parent(child, fail="true"))
    assert row["status"] == "FAILED"
    assert "child asked to fail for 6" in row["error"]
    assert not _events(engine, row["execution_id"], "command.resumed")


POLICY_SET = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: policyset, path: test/compat/policyset}
workflow:
  - step: fetch
    tool:
      - name: first
        kind: python
        code: "result = {'rows': [1, 2, 3]}"
        spec:
          policy:
            rules:
              - when: "{{ output.status == 'ok' }}"
                then:
                  do: continue
                  set:
                    ctx.row_count: "{{ output.data.rows | length }}"
                    iter.seen: "{{ output.data.rows[0] }}"
                    step.source: first
      - name: second
        kind: python
        input: {count: "{{ ctx.row_count }}", seen: "{{ iter.seen }}"}
        code: "result = {'count': count, 'seen': seen}"
    next: [{step: report}]
  - step: report
    tool:
      kind: python
      input: {count: "{{ ctx.row_count }}", source: "{{ fetch.source }}", data: "{{ fetch }}"}
      code: "result = {'count': count, 'source': source, 'data': data}"
"""


def test_policy_then_set_writes_ctx_iter_and_step(engine: Engine) -> None:
    row = engine.run(POLICY_SET)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["count"] == 3
    assert row["result"]["source"] == "first"
    assert row["result"]["data"]["count"] == 3 and row["result"]["data"]["seen"] == 1
    ctx = engine.sql("select ctx from noetl.execution where execution_id = %s",
                     row["execution_id"])[0]["ctx"]
    assert ctx["row_count"] == 3


def test_policy_set_on_error_with_continue_writes_ctx(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: policyerr, path: test/compat/policyerr}
        workflow:
          - step: risky
            tool:
              kind: python
              code: "raise RuntimeError('nope')"
              spec:
                policy:
                  rules:
                    - when: "{{ output.status == 'error' }}"
                      then: {do: continue, set: {ctx.failed_with: "{{ output.error }}"}}
            next: [{step: after}]
          - step: after
            tool: {kind: python, input: {why: "{{ ctx.failed_with }}"}, code: "result = why"}
        """)
    row = engine.run(source)
    assert row["status"] == "COMPLETED", row["error"]
    assert "nope" in row["result"]


def test_policy_that_cannot_render_after_an_error_keeps_the_cause(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: policybad, path: test/compat/policybad}
        workflow:
          - step: risky
            tool:
              kind: python
              code: "raise RuntimeError('the real cause')"
              spec:
                policy:
                  rules:
                    - when: "{{ output.status == 'error' and nosuchname.x }}"
                      then: {do: retry}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "the real cause" in row["error"]
    assert "policy could not be evaluated" in row["error"] and "nosuchname" in row["error"]
    assert row["error"].index("the real cause") < row["error"].index("nosuchname")


def test_arc_that_cannot_render_after_an_error_keeps_the_cause(engine: Engine) -> None:
    source = textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: arcbad, path: test/compat/arcbad}
        workflow:
          - step: risky
            tool: {kind: python, code: "raise RuntimeError('first failure')"}
            next:
              arcs:
                - step: handler
                  when: "{{ nosuchvar.field == 1 }}"
          - step: handler
            tool: {kind: noop}
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "first failure" in row["error"]
    assert "arcs could not be evaluated" in row["error"] and "nosuchvar" in row["error"]
    assert row["error"].index("first failure") < row["error"].index("nosuchvar")
    assert _issued(engine, row["execution_id"]) == {"risky": 1}


def test_postgres_step_error_carries_sqlstate_and_position(engine: Engine) -> None:
    source = textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pgerr, path: test/compat/pgerr}}
        workflow:
          - step: query
            tool:
              kind: postgres
              auth: {{dsn: "{engine.dsn}"}}
              command: |
                select 1;
                select
                  no_such_column from pg_class
        """)
    row = engine.run(source)
    assert row["status"] == "FAILED"
    assert "SQLSTATE 42703" in row["error"]
    assert "statement 1 (line 2, column 3)" in row["error"]
    assert "no_such_column" in row["error"]
