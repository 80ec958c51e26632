"""A conditional transition evaluated by the completing worker is applied in the same
finish_and_claim transaction as the completion (issue 13 item 2, SQL half): no route
command. A worker that does not serve routes leaves it to a router, as before."""

from __future__ import annotations

from engine_harness import Engine

BRANCH = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: fused_route, path: test/fused_route}
workload: {n: 7}
workflow:
  - step: start
    tool: {kind: python, input: {n: "{{ n }}"}, code: "result = {'n': n}"}
    set: {ctx.seen: "{{ result.n }}"}
    next:
      spec: {mode: exclusive}
      arcs:
        - step: small
          when: "{{ start.n < 5 }}"
        - step: big
          when: "{{ start.n >= 5 and ctx.seen == 7 }}"
          set: {ctx.branch: "{{ 'big' ~ result.n }}"}
  - step: small
    tool: {kind: python, code: "result = 'small'"}
  - step: big
    tool: {kind: python, input: {b: "{{ ctx.branch }}"}, code: "result = b"}
"""


def _route_commands(engine: Engine, execution_id: int) -> int:
    return engine.sql("select count(*) as n from noetl.command "
                      "where execution_id = %s and kind = 'route'", execution_id)[0]["n"]


def _steps_run(engine: Engine, execution_id: int) -> list[str]:
    return [row["step_name"] for row in engine.sql(
        "select step_name from noetl.command where execution_id = %s and kind <> 'route' "
        "order by command_id", execution_id)]


def test_the_completing_worker_applies_its_arcs_without_a_route_command(
    fresh_engine: Engine,
) -> None:
    with fresh_engine.worker(slots=1):
        row = fresh_engine.run(BRANCH)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == "big7"
    assert _steps_run(fresh_engine, row["execution_id"]) == ["start", "big"]
    assert _route_commands(fresh_engine, row["execution_id"]) == 0
    applied = [e for e in fresh_engine.events(row["execution_id"])
               if e["event_type"] == "route.applied"]
    assert len(applied) == 1 and applied[0]["node_name"] == "start"
    # Applied in the completion's transaction: same transaction id as start's call.done.
    same = fresh_engine.sql(
        "select count(distinct xmin::text) as n from noetl.event "
        "where execution_id = %s and node_name = 'start' "
        "and event_type in ('call.done', 'route.applied')", row["execution_id"])
    assert same[0]["n"] == 1


def test_a_worker_that_does_not_serve_routes_leaves_them_to_a_router(
    fresh_engine: Engine,
) -> None:
    with fresh_engine.worker(slots=1, kinds=["python"]), \
            fresh_engine.worker(slots=1, kinds=["route"]):
        row = fresh_engine.run(BRANCH)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == "big7"
    assert _steps_run(fresh_engine, row["execution_id"]) == ["start", "big"]
    assert _route_commands(fresh_engine, row["execution_id"]) == 1
