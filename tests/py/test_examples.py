"""Every playbook in examples/ runs end to end on a real worker and a real database."""

from __future__ import annotations

from typing import Any

import pytest
from engine_harness import REPO_ROOT, Engine

EXAMPLES = REPO_ROOT / "examples"

# What each example must produce; examples needing servers have their own tests.
EXPECTED_RESULTS: dict[str, Any] = {
    "hello_world.yaml": {"greeting": "Hello, World!", "length": 13},
    "branching.yaml": {"handled": "big", "route": "big", "fee": 2.5},
    "fanout_join.yaml": {"total": 110, "parts": [20, 100, -10]},
    "legacy_case.yaml": {},
    "loop_fanout.yaml": {"status": "partial", "done": 5, "failed": 1,
                         "covered": ["eu-west", "eu-north", "us-east", "us-west", "ap-south"]},
    "loop_pipeline.yaml": {"total": 23.5, "big": [1, 2, 3], "consistent": True},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_RESULTS))
def test_example_completes_with_expected_result(engine: Engine, name: str) -> None:
    row = engine.run(EXAMPLES / name)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == EXPECTED_RESULTS[name]


def test_every_top_level_example_is_covered() -> None:
    listed = set(EXPECTED_RESULTS) | {"loop_parallel.yaml"}
    assert {path.name for path in EXAMPLES.glob("*.yaml")} <= listed


def test_loop_parallel_example_keeps_index_order(engine: Engine) -> None:
    row = engine.run(EXAMPLES / "loop_parallel.yaml")
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["order"] == ["Paris", "Oslo", "Lima", "Cairo", "Quito", "Hanoi"]
    assert row["result"]["stats"] == {"total": 6, "success": 6, "failed": 0}


def test_join_runs_once_after_all_branches(engine: Engine) -> None:
    execution_id = engine.start(engine.register(EXAMPLES / "fanout_join.yaml"))
    assert engine.wait(execution_id)["status"] == "COMPLETED"
    combine_starts = [
        event for event in engine.events(execution_id)
        if event["event_type"] == "command.issued" and event["node_name"] == "combine"
    ]
    assert len(combine_starts) == 1
    branch_done = {
        event["node_name"]: event["event_id"] for event in engine.events(execution_id)
        if event["event_type"] == "call.done"
    }
    assert all(branch_done[b] < combine_starts[0]["event_id"]
               for b in ("double", "square", "negate"))


def test_legacy_case_takes_the_high_branch(engine: Engine) -> None:
    execution_id = engine.start(engine.register(EXAMPLES / "legacy_case.yaml"))
    assert engine.wait(execution_id)["status"] == "COMPLETED"
    ran = {e["node_name"] for e in engine.events(execution_id) if e["event_type"] == "call.done"}
    assert ran == {"count", "report_high", "finish"}


def test_payload_overrides_workload(engine: Engine) -> None:
    path = engine.register(EXAMPLES / "hello_world.yaml")
    row = engine.wait(engine.start(path, {"name": "noetl"}))
    assert row["result"] == {"greeting": "Hello, noetl!", "length": 13}


