"""Loops end to end on a real worker: DSL forms and namespaces, empty loops, strict order
of sequential loops, fan-out/fan-in with shard retries, pipelines per iteration, and a
loop step activated twice (also inside a child playbook)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engine_harness import Engine

from noetl_pg.dsl import load_playbook


def _events(engine: Engine, execution_id: int, event_type: str,
            step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in engine.events(execution_id)
            if e["event_type"] == event_type and (step is None or e["node_name"] == step)]


LEGACY_LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_forms, path: test/loop_forms}
workload:
  cities: [Paris, Oslo, Lima]
workflow:
  - step: visit
    loop: {in: "{{ workload.cities }}", iterator: city, mode: async, concurrency: 2}
    tool:
      kind: python
      input:
        bare: "{{ city }}"
        named: "{{ iter.city }}"
        index: "{{ iter._index }}"
        first: "{{ loop.first }}"
        position: "{{ loop.index }}"
        length: "{{ loop.length }}"
      code: |
        result = {"bare": bare, "named": named, "index": index, "first": first,
                  "position": position, "length": length}
"""


def test_older_loop_forms_normalise_and_expose_the_iterator(engine: Engine) -> None:
    loop = load_playbook(LEGACY_LOOP).workflow[0].loop
    assert loop is not None
    assert (loop.spec.mode, loop.spec.max_in_flight) == ("parallel", 2)

    row = engine.run(LEGACY_LOOP)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [
        {"bare": city, "named": city, "index": i, "first": i == 0, "position": i, "length": 3}
        for i, city in enumerate(["Paris", "Oslo", "Lima"])
    ]
    assert row["result"]["stats"] == {"total": 3, "success": 3, "failed": 0}
    loop_row = engine.sql("select mode, max_in_flight from noetl.loop where execution_id = %s",
                          row["execution_id"])
    assert loop_row == [{"mode": "parallel", "max_in_flight": 2}]


def test_canonical_spec_form_and_sequential_default() -> None:
    playbook = load_playbook("""
workflow:
  - step: a
    loop: {in: "{{ xs }}", iterator: x, spec: {mode: parallel, max_in_flight: 7}}
    tool: {kind: noop}
  - step: b
    loop: {in: "{{ xs }}", iterator: x}
    tool: {kind: noop}
""")
    a, b = playbook.workflow
    assert a.loop is not None and b.loop is not None
    assert (a.loop.spec.mode, a.loop.in_flight_bound) == ("parallel", 7)
    assert (b.loop.spec.mode, b.loop.in_flight_bound) == ("sequential", 1)


def test_empty_loop_closes_at_once_and_routes(engine: Engine) -> None:
    row = engine.run("""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_empty, path: test/loop_empty}
workflow:
  - step: empty
    loop: {in: "{{ [] }}", iterator: x, spec: {mode: parallel, max_in_flight: 5}}
    tool: {kind: python, code: "result = 1"}
    next: {arcs: [{step: after}]}
  - step: after
    tool: {kind: python, input: {r: "{{ empty }}"}, code: "result = r"}
""")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"results": [], "stats": {"total": 0, "success": 0, "failed": 0}}
    done = _events(engine, row["execution_id"], "loop.done")
    assert len(done) == 1
    assert done[0]["meta"]["collection_size"] == 0
    started = _events(engine, row["execution_id"], "loop.started")
    assert started[0]["meta"]["loop_id"] == done[0]["meta"]["loop_id"]


def test_sequential_loop_claims_each_iteration_after_the_previous_completes(
        engine: Engine) -> None:
    row = engine.run("""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_seq, path: test/loop_seq}
workflow:
  - step: chain
    loop: {in: "{{ range(12) | list }}", iterator: n, spec: {mode: sequential}}
    tool: {kind: python, input: {n: "{{ n }}"}, code: "result = n"}
""")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == list(range(12))
    events = engine.events(row["execution_id"])
    position = {(e["event_type"], e["iter_index"]): i for i, e in enumerate(events)
                if e["iter_index"] is not None}
    # A claim is a command.claimed, or the command.issued of an item created claimed
    # (it names the worker).
    claims = {e["iter_index"]: i for i, e in enumerate(events)
              if e["iter_index"] is not None and (
                  e["event_type"] == "command.claimed"
                  or (e["event_type"] == "command.issued" and "worker_id" in e["meta"]))}
    assert sorted(claims) == list(range(12))
    for index in range(1, 12):
        previous_done = position[("call.done", index - 1)]
        assert position[("command.issued", index)] > previous_done
        assert claims[index] > previous_done
    assert _events(engine, row["execution_id"], "loop.started")[0]["meta"]["max_in_flight"] == 1


def _fanout_playbook(spec: str, code: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: fanout, path: test/fanout}}
        workflow:
          - step: shards
            loop:
              in: "{{{{ range(50) | list }}}}"
              iterator: shard
              spec: {spec}
            tool:
              kind: python
              input: {{shard: "{{{{ shard }}}}", marks: "{{{{ marks }}}}"}}
              code: |
        {textwrap.indent(textwrap.dedent(code), " " * 16)}
            next:
              arcs:
                - step: partial
                  when: "{{{{ fanin.status == 'partial' }}}}"
                  set: {{ctx.fanin: "{{{{ fanin }}}}"}}
                - step: complete
                  set: {{ctx.fanin: "{{{{ fanin }}}}"}}
          - step: partial
            tool:
              kind: python
              input: {{f: "{{{{ ctx.fanin }}}}"}}
              code: "result = {{'arc': 'partial', **f}}"
          - step: complete
            tool:
              kind: python
              input: {{f: "{{{{ ctx.fanin }}}}"}}
              code: "result = {{'arc': 'complete', **f}}"
        """)


def test_fanout_with_shards_that_always_fail_is_partial(engine: Engine, tmp_path: Path) -> None:
    source = _fanout_playbook(
        "{mode: parallel, max_in_flight: 10, policy: {exec: distributed}}",
        """
        if shard in (7, 31):
            raise RuntimeError(f"shard {shard} is broken")
        result = {"shard": shard}
        """,
    )
    row = engine.wait(engine.start(engine.register(source), {"marks": str(tmp_path)}))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"arc": "partial", "status": "partial", "done": 48, "failed": 2,
                             "total": 50}
    execution_id = row["execution_id"]
    assert _events(engine, execution_id, "loop.fanout.started")[0]["meta"]["total_shards"] == 50
    assert len(_events(engine, execution_id, "loop.fanin.completed")) == 1
    assert len(_events(engine, execution_id, "loop.shard.done")) == 48
    failed = _events(engine, execution_id, "loop.shard.failed")
    # Each broken shard: 2 retries (default max_shard_retries) then a final failure.
    assert sorted((e["iter_index"], e["meta"]["retry"]) for e in failed) == [
        (7, False), (7, True), (7, True), (31, False), (31, True), (31, True)]
    keys = engine.sql("select iter_index, count(*) as commands, max(attempt) as attempts "
                      "from noetl.command where execution_id = %s and iter_index in (7, 31) "
                      "group by iter_index order by iter_index", execution_id)
    assert keys == [{"iter_index": 7, "commands": 1, "attempts": 3},
                    {"iter_index": 31, "commands": 1, "attempts": 3}]
    assert _events(engine, execution_id, "command.issued", "partial")
    assert not _events(engine, execution_id, "command.issued", "complete")


def test_fanout_with_shards_that_fail_once_is_complete(engine: Engine, tmp_path: Path) -> None:
    source = _fanout_playbook(
        "{mode: parallel, max_in_flight: 10, loop_mode: fanout, fanout: {max_shard_retries: 1}}",
        """
        import os
        mark = os.path.join(marks, str(shard))
        if shard in (3, 20, 44) and not os.path.exists(mark):
            open(mark, "w").close()
            raise RuntimeError(f"shard {shard} hiccup")
        result = {"shard": shard}
        """,
    )
    row = engine.wait(engine.start(engine.register(source), {"marks": str(tmp_path)}))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"arc": "complete", "status": "complete", "done": 50, "failed": 0,
                             "total": 50}
    execution_id = row["execution_id"]
    retried = _events(engine, execution_id, "loop.shard.failed")
    assert sorted(e["iter_index"] for e in retried) == [3, 20, 44]
    assert all(e["meta"]["retry"] for e in retried)
    assert len(_events(engine, execution_id, "loop.fanin.completed")) == 1
    results = engine.sql("select result from noetl.step_result where execution_id = %s "
                         "and step_name = 'shards'", execution_id)[0]["result"]
    assert results["results"] == [{"shard": shard} for shard in range(50)]


def test_pipeline_runs_as_one_unit_per_iteration(engine: Engine) -> None:
    row = engine.run("""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_pipeline, path: test/loop_pipeline}
workflow:
  - step: rows
    loop: {in: "{{ [1, 2, 3, 4] }}", iterator: n, spec: {mode: parallel, max_in_flight: 2}}
    tool:
      - name: fetch
        kind: python
        input: {n: "{{ n }}"}
        code: "result = {'v': n * 10}"
        spec:
          policy:
            rules:
              - else: {then: {do: continue, set: {iter.row: "{{ output.data.v }}"}}}
      - name: save
        kind: python
        input: {v: "{{ fetch.v }}", row: "{{ iter.row }}", n: "{{ iter.n }}",
                i: "{{ iter._index }}"}
        code: "result = {'v': v, 'row': row, 'n': n, 'i': i}"
""")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [
        {"v": n * 10, "row": n * 10, "n": n, "i": n - 1} for n in (1, 2, 3, 4)]
    commands = engine.sql("select iter_index, claimed_by from noetl.command "
                          "where execution_id = %s and loop_id is not null", row["execution_id"])
    assert sorted(c["iter_index"] for c in commands) == [0, 1, 2, 3], "one command each"


REENTERED_LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_twice, path: test/loop_twice}
workload: {round: 1}
workflow:
  - step: work
    loop:
      in: "{{ [ctx.round * 10, ctx.round * 10 + 1] }}"
      iterator: x
      spec: {mode: parallel, max_in_flight: 2}
    tool: {kind: python, input: {x: "{{ x }}"}, code: "result = x"}
    next: {arcs: [{step: check}]}
  - step: check
    tool: {kind: python, input: {seen: "{{ work.results }}"}, code: "result = seen"}
    next:
      arcs:
        - {step: work, when: "{{ ctx.round < 2 }}", set: {ctx.round: "{{ ctx.round + 1 }}"}}
        - {step: finish}
  - step: finish
    tool: {kind: python, input: {last: "{{ work.results }}", check: "{{ check }}"},
           code: "result = {'last': last, 'check': check}"}
"""


def test_same_loop_step_twice_gets_a_loop_each_time(engine: Engine) -> None:
    row = engine.run(REENTERED_LOOP)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"last": [20, 21], "check": [20, 21]}
    loops = engine.sql("select loop_id, total, done, status from noetl.loop "
                       "where execution_id = %s order by loop_id", row["execution_id"])
    assert [(r["total"], r["done"], r["status"]) for r in loops] == [(2, 2, "done")] * 2
    done = _events(engine, row["execution_id"], "loop.done")
    assert sorted(e["meta"]["loop_id"] for e in done) == [r["loop_id"] for r in loops]


def test_loop_inside_a_child_playbook_reached_twice(engine: Engine) -> None:
    child = engine.register(REENTERED_LOOP)
    parent = engine.register(textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: loop_parent, path: test/loop_parent}}
        workflow:
          - step: children
            loop: {{in: "{{{{ [1, 2] }}}}", iterator: k, spec: {{mode: parallel}}}}
            tool: {{kind: playbook, path: {child}}}
        """))
    row = engine.wait(engine.start(parent))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [{"last": [20, 21], "check": [20, 21]}] * 2
    children = engine.sql("select execution_id from noetl.execution "
                          "where parent_execution_id = %s", row["execution_id"])
    assert len(children) == 2
    for child_row in children:
        loops = engine.sql("select count(*) as n from noetl.loop where execution_id = %s "
                           "and status = 'done'", child_row["execution_id"])
        assert loops[0]["n"] == 2
