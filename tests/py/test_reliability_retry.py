"""Retries and policy rules: a retry is a new attempt of the same command, due later.

Flaky steps count their runs in a file, so the test knows how many times the tool really
ran, independently of the engine's events.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Engine

from noetl_pg.dsl import load_playbook
from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.executor import CommandRunner
from noetl_pg.policy import decide, retry_delay
from noetl_pg.tools.base import ToolContext

NOETL = str(Path(sys.executable).parent / "noetl")

# Fails until it has run `succeed_on` times (never, with 0), counting runs in `log`.
FLAKY_CODE = """
with open(log, "a") as out:
    out.write("run\\n")
runs = len(open(log).read().split())
if succeed_on == 0 or runs < succeed_on:
    raise RuntimeError(f"flaky failure {runs}")
result = {"runs": runs}
"""


def flaky_playbook(retry: str, *, succeed_on: int, extra: str = "") -> str:
    code = "\n".join("        " + line for line in FLAKY_CODE.strip().splitlines())
    return f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: flaky, path: test/flaky}}
workflow:
  - step: flaky
    tool:
      kind: python
      input: {{log: "{{{{ log }}}}", succeed_on: {succeed_on}}}
{retry}
      code: |
{code}
{extra}
"""


RULE_RETRY = """      spec:
        policy:
          rules:
            - when: "{{ output.status == 'error' }}"
              then: {do: retry, attempts: 3, delay: 0.05}"""
LEGACY_RETRY = "      retry: {max_attempts: 3, retry_on: [error], delay: 0.05}"


def _events(engine: Engine, execution_id: int, event_type: str) -> list[dict[str, Any]]:
    return [e for e in engine.events(execution_id) if e["event_type"] == event_type]


@pytest.mark.parametrize("retry", [RULE_RETRY, LEGACY_RETRY], ids=["policy-rule", "legacy"])
def test_flaky_step_succeeds_on_third_attempt(engine: Engine, tmp_path: Path,
                                              retry: str) -> None:
    log = tmp_path / "runs.log"
    execution_id = engine.start(engine.register(flaky_playbook(retry, succeed_on=3)),
                                {"log": str(log)})
    row = engine.wait(execution_id)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"runs": 3}
    command = engine.sql("select attempt, max_attempts, status from noetl.command "
                         "where execution_id = %s and step_name = 'flaky'", execution_id)
    assert command == [{"attempt": 3, "max_attempts": 3, "status": "done"}]
    assert [e["attempt"] for e in _events(engine, execution_id, "command.retried")] == [2, 3]
    assert [e["attempt"] for e in _events(engine, execution_id, "call.error")] == [1, 2]
    assert [e["attempt"] for e in _events(engine, execution_id, "call.done")] == [3]
    assert len(log.read_text().split()) == 3


def test_always_failing_step_fails_execution_with_error_in_status(
    engine: Engine, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    execution_id = engine.start(engine.register(flaky_playbook(RULE_RETRY, succeed_on=0)),
                                {"log": str(log)})
    row = engine.wait(execution_id)
    assert row["status"] == "FAILED"
    assert row["failed_step"] == "flaky"
    assert "flaky failure 3" in row["error"]
    assert len(log.read_text().split()) == 3, "three attempts, then no more"
    failed = _events(engine, execution_id, "command.failed")
    assert [e["attempt"] for e in failed] == [3]
    status = subprocess.run([NOETL, "status", str(execution_id)], capture_output=True,
                            text=True, env={**os.environ, "NOETL_DSN": engine.dsn}, timeout=60)
    assert "FAILED" in status.stdout
    assert "flaky" in status.stdout and "flaky failure 3" in status.stdout


def test_exhausted_retries_route_through_error_arcs(engine: Engine, tmp_path: Path) -> None:
    extra = """    next:
      - {step: handled, when: "{{ event.name == 'call.error' }}"}
  - step: handled
    tool: {kind: python, code: "result = {'handled': True}"}"""
    playbook = flaky_playbook(LEGACY_RETRY, succeed_on=0, extra=extra)
    row = engine.run(playbook, {"log": str(tmp_path / "runs.log")})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"handled": True}


def test_backoff_delays_are_recorded_and_respected(engine: Engine, tmp_path: Path) -> None:
    retry = """      spec:
        policy:
          rules:
            - when: "{{ output.status == 'error' }}"
              then: {do: retry, attempts: 3, delay: 0.2, backoff: exponential}"""
    execution_id = engine.start(engine.register(flaky_playbook(retry, succeed_on=3)),
                                {"log": str(tmp_path / "runs.log")})
    assert engine.wait(execution_id)["status"] == "COMPLETED"
    retried = _events(engine, execution_id, "command.retried")
    assert [e["meta"]["delay_seconds"] for e in retried] == [0.2, 0.4]
    claimed = _events(engine, execution_id, "command.claimed")
    for retry_event, next_claim in zip(retried, claimed[1:], strict=True):
        waited = (next_claim["created_at"] - retry_event["created_at"]).total_seconds()
        assert waited >= retry_event["meta"]["delay_seconds"] - 0.01


def test_rule_attempts_bound_each_rule(engine: Engine, tmp_path: Path) -> None:
    """A rule with attempts: 2 stops at 2 even when another rule allows 5."""
    retry = """      spec:
        policy:
          rules:
            - when: "{{ 'never' in (output.error or '') }}"
              then: {do: retry, attempts: 5}
            - when: "{{ output.status == 'error' }}"
              then: {do: retry, attempts: 2}"""
    log = tmp_path / "runs.log"
    row = engine.run(flaky_playbook(retry, succeed_on=0), {"log": str(log)})
    assert row["status"] == "FAILED"
    assert len(log.read_text().split()) == 2


def test_rules_continue_and_fail(engine: Engine) -> None:
    """`do: continue` turns an error into success with `set`; `do: fail` fails a success."""
    playbook = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: rules, path: test/rules}
workflow:
  - step: tolerant
    tool:
      kind: python
      code: "raise ValueError('ignored')"
      spec:
        policy:
          rules:
            - when: "{{ output.status == 'error' }}"
              then: {do: continue, set: {iter.note: "{{ output.error }}"}}
    next: strict
  - step: strict
    tool:
      kind: python
      code: "result = {'value': 7}"
      spec:
        policy:
          rules:
            - when: "{{ output.data.value == 7 }}"
              then: {do: fail}
"""
    row = engine.run(playbook)
    assert row["status"] == "FAILED"
    assert row["failed_step"] == "strict"
    assert engine.sql("select count(*) as n from noetl.command where execution_id = %s "
                      "and step_name = 'tolerant' and status = 'done'",
                      row["execution_id"])[0]["n"] == 1


def test_loop_iterations_retry_independently(engine: Engine, tmp_path: Path) -> None:
    playbook = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_retry, path: test/loop_retry}
workflow:
  - step: each
    loop: {in: "{{ items }}", iterator: item, spec: {mode: parallel, max_in_flight: 5}}
    tool:
      kind: python
      retry: {max_attempts: 2}
      input: {item: "{{ item }}", dir: "{{ dir }}"}
      code: |
        import os
        marker = os.path.join(dir, str(item))
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        result = item * 10
"""
    row = engine.run(playbook, {"items": list(range(10)), "dir": str(tmp_path)})
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [i * 10 for i in range(10)]
    attempts = engine.sql("select attempt from noetl.command where execution_id = %s "
                          "and loop_id is not null", row["execution_id"])
    assert [a["attempt"] for a in attempts] == [2] * 10


# --- timeouts: a ToolTimeout is an error of kind 'timeout' -----------------------------


def test_decide_timeout_kind() -> None:
    output = {"status": "error", "error": "took too long"}
    on_timeout = {"retry": {"max_attempts": 2, "retry_on": ["timeout"]}}
    assert decide(on_timeout, output, {}, 1, "timeout").action == "retry"
    assert decide(on_timeout, output, {}, 2, "timeout").action == "fail", "budget used up"
    assert decide(on_timeout, output, {}, 1, "error").action == "fail"
    assert decide({"retry": {"max_attempts": 2}}, output, {}, 1, "timeout").action == "retry"
    assert retry_delay(0.5, "exponential", 3) == 2.0
    assert retry_delay(0.5, "linear", 3) == 1.5
    assert retry_delay(0.5, "none", 3) == 0.5


class _SlowTool:
    kind = "python"

    def run(self, config: Any, context: ToolContext) -> Any:
        raise ToolTimeout("python step exceeded its timeout of 1s")


class _BrokenTool:
    kind = "python"

    def run(self, config: Any, context: ToolContext) -> Any:
        raise ToolError("plain failure")


@pytest.mark.parametrize(("tool", "retried"), [(_SlowTool(), True), (_BrokenTool(), False)])
def test_step_timeout_applies_retry_policy(tool: Any, retried: bool) -> None:
    """The executor turns a ToolTimeout into a retry when `retry_on` lists timeout."""
    playbook = load_playbook("""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: t, path: test/timeout}
workflow:
  - step: slow
    tool: {kind: python, code: "pass", retry: {max_attempts: 3, retry_on: [timeout]}}
""")
    runner = CommandRunner(
        {"python": tool}, lambda catalog_id: playbook,
        lambda command, results, stream: ToolContext(execution_id=1, step="slow",
                                                     command_id=1, attempt=1, dsn=""),
    )
    command = {"command_id": 1, "attempt": 1, "catalog_id": 1, "step_name": "slow",
               "kind": "python", "loop_id": None, "iter_index": None, "input": None,
               "item": None, "execution_id": 1}
    context = {"execution_id": 1, "path": "test/timeout", "workload": {}, "ctx": {},
               "results": {}}
    outcome = runner.run(command, context)
    assert outcome["op"] == "fail"
    assert (outcome["retry_delay"] is not None) is retried
