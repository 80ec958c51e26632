"""Playbooks whose transitions take finish_and_claim's short path (sql/functions/plain_step.sql)
run on a real worker with the results the general path gives: which steps ran, how often,
in what order, with what output. The path itself is compared event by event in pgTAP 106;
these are the shapes users write around it (a `when` branch into a join, a join whose
arrival waits while another branch chooses its arc, a sub-playbook's chain)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine_harness import Engine

BRANCH_INTO_JOIN = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: branch_join, path: tests/branch_join}
workload: {x: 3}
workflow:
  - step: start
    tool: {kind: python, input: {x: "{{ x }}"}, code: "result = {'x': x}"}
    next:
      spec: {mode: exclusive}
      arcs:
        - step: left
          when: "{{ start.x > 0 }}"
          set: {ctx.side: left}
        - step: right
  - step: left
    tool: {kind: python, input: {x: "{{ start.x }}"}, code: "result = {'v': x * 10}"}
    next: {arcs: [{step: mid}]}
  - step: mid
    tool: {kind: python, input: {v: "{{ left.v }}"}, code: "result = {'v': v + 1}"}
    next: {arcs: [{step: end}]}
  - step: right
    tool: {kind: python, code: "result = {'v': -1}"}
    next: {arcs: [{step: end}]}
  - step: end
    tool:
      kind: python
      input: {v: "{{ mid.v }}", side: "{{ ctx.side }}"}
      code: "result = {'v': v, 'side': side}"
"""

# p and q start together; p's arrival at `end` waits while q chooses r.
ARRIVAL_WAITS = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: arrival_waits, path: tests/arrival_waits}
workflow:
  - step: start
    tool: {kind: noop}
    next:
      spec: {mode: inclusive}
      arcs: [{step: p}, {step: q}]
  - step: p
    tool: {kind: python, code: "result = {'v': 1}"}
    next: {arcs: [{step: end}]}
  - step: q
    tool: {kind: python, code: "import time; time.sleep(0.3); result = {'v': 2}"}
    next:
      spec: {mode: exclusive}
      arcs:
        - step: r
          when: "{{ q.v == 2 }}"
        - step: s
  - step: r
    tool: {kind: python, input: {v: "{{ q.v }}"}, code: "result = {'v': v * 3}"}
    next: {arcs: [{step: end}]}
  - step: s
    tool: {kind: python, code: "result = {'v': 0}"}
    next: {arcs: [{step: end}]}
  - step: end
    tool:
      kind: python
      input: {p: "{{ p.v }}", r: "{{ r.v }}"}
      code: "result = {'sum': p + r}"
"""

CHILD_CHAIN = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: child_chain, path: tests/child_chain}
workload: {n: 2}
workflow:
  - step: one
    tool: {kind: python, input: {n: "{{ n }}"}, code: "result = {'n': n + 1}"}
    next: {arcs: [{step: two}]}
  - step: two
    tool: {kind: python, input: {n: "{{ one.n }}"}, code: "result = {'n': n * 2}"}
    next: {arcs: [{step: three}]}
  - step: three
    tool: {kind: python, input: {n: "{{ two.n }}"}, code: "result = {'n': n - 1}"}
"""

PARENT = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: parent_of_chain, path: tests/parent_of_chain}
workflow:
  - step: call
    tool: {kind: playbook, path: CHILD_PATH, input: {n: 4}}
    next: {arcs: [{step: after}]}
  - step: after
    tool: {kind: python, input: {got: "{{ call }}"}, code: "result = {'got': got}"}
"""


def _done_counts(engine: Engine, execution_id: int) -> Counter[str]:
    return Counter(event["node_name"] for event in engine.events(execution_id)
                   if event["event_type"] == "call.done")


def test_a_when_branch_into_a_join_runs_the_chosen_side_once(engine: Engine) -> None:
    execution_id = engine.start(engine.register(BRANCH_INTO_JOIN))
    row = engine.wait(execution_id)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"v": 31, "side": "left"}
    assert _done_counts(engine, execution_id) == Counter(
        {"start": 1, "left": 1, "mid": 1, "end": 1})
    fused = [event["meta"] for event in engine.events(execution_id)
             if event["event_type"] == "route.applied"]
    assert fused == [{"event": "call.done", "fused": True,
                      "targets": [{"step": "left", "set": {"side": "left"}}]}]


def test_a_choice_while_a_join_arrival_waits_issues_the_join_once(engine: Engine) -> None:
    execution_id = engine.start(engine.register(ARRIVAL_WAITS))
    row = engine.wait(execution_id)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"sum": 7}
    assert _done_counts(engine, execution_id) == Counter(
        {"start": 1, "p": 1, "q": 1, "r": 1, "end": 1})
    done_at = {event["node_name"]: event["event_id"] for event in engine.events(execution_id)
               if event["event_type"] == "call.done"}
    assert done_at["p"] < done_at["q"] < done_at["r"] < done_at["end"]


def test_a_sub_playbook_chain_returns_its_last_result(engine: Engine) -> None:
    child_path = engine.register(CHILD_CHAIN)
    execution_id = engine.start(engine.register(PARENT.replace("CHILD_PATH", child_path)))
    row = engine.wait(execution_id)
    assert row["status"] == "COMPLETED", row["error"]
    child: list[dict[str, Any]] = engine.sql(
        "select execution_id, status, result from noetl.execution"
        " where parent_execution_id = %s", execution_id)
    assert [(c["status"], c["result"]) for c in child] == [("COMPLETED", {"n": 9})]
    assert _done_counts(engine, child[0]["execution_id"]) == Counter(
        {"one": 1, "two": 1, "three": 1})
    assert row["result"] == {"got": {"n": 9}}
