"""Worker protocol v1: a worker of the previous release (calling the unversioned worker
functions) still runs executions through a rolling upgrade; this release's worker calls
only the `_v1` names."""

from __future__ import annotations

import json
import re

import pytest
from engine_harness import Engine

from noetl_pg import db

PLAYBOOK = {
    "metadata": {"name": "protocol", "path": "protocol/v1"},
    "workload": {"xs": list(range(12))},
    "workflow": [
        {"step": "start", "tool": {"kind": "noop"}, "next": {"arcs": [{"step": "each"}]}},
        {"step": "each", "loop": {"in": "{{ workload.xs }}", "iterator": "x"},
         "tool": {"kind": "python", "isolation": "inline", "args": {"x": "{{ x }}"},
                  "code": "result = {'y': x * 2}"},
         "next": {"arcs": [{"step": "end", "when": "{{ workload.xs | length == 12 }}"}]}},
        {"step": "end", "tool": {"kind": "noop"}},
    ],
}
VERSIONED = re.compile(r"noetl\.(\w+)_v1\(")


def _run(engine: Engine, monkeypatch: pytest.MonkeyPatch, *, old_protocol: bool) -> set[str]:
    """Runs PLAYBOOK with one worker; returns the worker functions its statements named."""
    named: set[str] = set()
    original = db.query

    def recording(name: str) -> str:
        text = original(name)
        if old_protocol:
            text = VERSIONED.sub(r"noetl.\1(", text)
        named.update(re.findall(r"noetl\.(\w+)\(", text))
        return text

    monkeypatch.setattr(db, "query", recording)
    with engine.worker(slots=2):
        row = engine.run(json.dumps(PLAYBOOK), timeout=120)
    monkeypatch.setattr(db, "query", original)
    assert row["status"] == "COMPLETED", row["error"]
    done = engine.sql("select count(*) as n from noetl.command where execution_id = %s"
                      " and step_name = 'each' and loop_id is not null and status = 'done'",
                      row["execution_id"])
    assert done == [{"n": 12}]
    return named


def test_an_older_worker_runs_through_the_unversioned_names(
    fresh_engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = _run(fresh_engine, monkeypatch, old_protocol=True)
    assert {"claim_commands", "finish_and_claim", "register_worker"} <= old
    assert not {name for name in old if name.endswith("_v1")}
    new = _run(fresh_engine, monkeypatch, old_protocol=False)
    assert {"claim_commands_v1", "finish_and_claim_v1", "register_worker_v1"} <= new
    assert not {"claim_commands", "finish_and_claim", "register_worker"} & new
