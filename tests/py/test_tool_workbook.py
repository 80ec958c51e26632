"""`kind: workbook`: named tasks of the playbook's workbook section."""

from __future__ import annotations

import textwrap

import pytest
from engine_harness import Engine

from noetl_pg.errors import ToolError
from noetl_pg.workbook_call import resolve_task

WORKBOOK = [
    {"name": "greet", "tool": {"kind": "python", "input": {"greeting": "hi"},
                               "code": "result = f'{greeting} {who} from {{ region }}'"}},
    {"name": "flat", "kind": "noop"},
]


def test_resolve_renders_with_scope_and_input() -> None:
    config = resolve_task(WORKBOOK, {"kind": "workbook", "name": "greet",
                                     "input": {"who": "ann", "greeting": "hello"}},
                          {"region": "eu"})
    assert config["task"]["code"] == "result = f'{greeting} {who} from eu'"
    assert config["task"]["input"] == {"greeting": "hello", "who": "ann"}
    flat = resolve_task(WORKBOOK, {"kind": "workbook", "name": "flat"}, {})
    assert flat["task"] == {"kind": "noop", "input": {}}


def test_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(ToolError, match=r"no task named 'nope' \(known: flat, greet\)"):
        resolve_task(WORKBOOK, {"kind": "workbook", "name": "nope"}, {})


def test_workbook_task_can_start_a_child_playbook(engine: Engine) -> None:
    child = engine.register(textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: wb_child, path: test/wb_child}
        workflow:
          - step: only
            tool: {kind: python, input: {v: "{{ v }}"}, code: "result = {'v': v * 3}"}
        """))
    row = engine.run(textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: wb_parent, path: test/wb_parent}}
        workbook:
          - name: triple
            tool: {{kind: playbook, path: {child}, input: {{v: "{{{{ input.v }}}}"}}}}
        workflow:
          - step: call
            tool: {{kind: workbook, name: triple, input: {{v: 7}}}}
        """))
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"v": 21}


def test_unknown_workbook_task_fails_the_step(engine: Engine) -> None:
    row = engine.run(textwrap.dedent("""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {name: wb_missing, path: test/wb_missing}
        workflow:
          - step: call
            tool: {kind: workbook, name: missing}
        """))
    assert row["status"] == "FAILED"
    assert "no task named 'missing'" in row["error"]
