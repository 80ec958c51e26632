"""Cancellation (`noetl cancel`, noetl.cancel_execution) and heartbeat settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_harness import Engine

from noetl_pg.worker import Worker

NOETL = str(Path(sys.executable).parent / "noetl")

SLOW_LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: slow_loop, path: test/slow_loop}
workflow:
  - step: each
    loop: {in: "{{ items }}", iterator: item, spec: {mode: parallel, max_in_flight: 4}}
    tool:
      kind: python
      input: {item: "{{ item }}", log: "{{ log }}"}
      code: |
        import time
        time.sleep(0.1)
        with open(log, "a") as out:
            out.write(f"{item}\\n")
        result = item
    next: after
  - step: after
    tool: {kind: noop}
"""


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NOETL, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NOETL_DSN": dsn})


def _runs(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def test_cancel_running_loop_and_child(engine: Engine, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    path = engine.register(SLOW_LOOP)
    # Enough items (about 40 s of work on 4 slots) that the loop is still running when the
    # `noetl cancel` process has started, however slowly the machine starts it.
    execution_id = engine.start(path, {"items": list(range(1600)), "log": str(log)})
    child_id = engine.sql("select noetl.start_execution_from(%s, %s::jsonb, null, %s, null) "
                          "as id", path, json.dumps({"items": list(range(200)),
                                                     "log": os.devnull}),
                          execution_id)[0]["id"]
    deadline = time.monotonic() + 20
    while _runs(log) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)

    result = _cli(engine.dsn, "cancel", str(execution_id))
    assert result.returncode == 0, result.stderr
    assert "cancelled 2 execution(s)" in result.stdout

    rows = engine.sql("select execution_id, status from noetl.execution "
                      "where execution_id in (%s, %s) order by execution_id",
                      execution_id, child_id)
    assert [r["status"] for r in rows] == ["CANCELLED", "CANCELLED"]
    active = engine.sql("select count(*) as n from noetl.command where execution_id in (%s, %s)"
                        " and status in ('queued', 'claimed', 'waiting')", execution_id, child_id)
    assert active[0]["n"] == 0
    done_before = len([e for e in engine.events(execution_id) if e["event_type"] == "call.done"])
    runs_at_cancel = _runs(log)
    time.sleep(0.6)  # what was running finishes; its outcome must be refused
    events = engine.events(execution_id)
    assert len([e for e in events if e["event_type"] == "call.done"]) == done_before
    assert [e["event_type"] for e in events].count("playbook.cancelled") == 1
    assert "after" not in {e["node_name"] for e in events}, "nothing routed after cancel"
    assert _runs(log) <= runs_at_cancel + 4, "at most the in-flight items finished running"
    assert _runs(log) < 1600

    again = _cli(engine.dsn, "cancel", str(execution_id))
    assert again.returncode == 0 and "nothing to cancel" in again.stdout
    missing = _cli(engine.dsn, "cancel", "987654321")
    assert missing.returncode == 2 and "execution 987654321 does not exist" in missing.stderr
    status = _cli(engine.dsn, "status", str(execution_id))
    assert "CANCELLED" in status.stdout


def test_heartbeat_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_WORKER_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("NOETL_COMMAND_HEARTBEAT_TIMEOUT_SECONDS", "7")
    worker = Worker("dbname=unused")
    assert (worker.heartbeat_interval, worker.claim_timeout) == (0.5, 7.0)
    monkeypatch.delenv("NOETL_WORKER_HEARTBEAT_SECONDS")
    monkeypatch.delenv("NOETL_COMMAND_HEARTBEAT_TIMEOUT_SECONDS")
    worker = Worker("dbname=unused")
    assert (worker.heartbeat_interval, worker.claim_timeout) == (5.0, 300.0)
    monkeypatch.setenv("NOETL_WORKER_HEARTBEAT_SECONDS", "soon")
    with pytest.raises(ValueError, match="NOETL_WORKER_HEARTBEAT_SECONDS='soon'"):
        Worker("dbname=unused")


def test_heartbeat_touches_the_worker_row_only(fresh_engine: Engine, tmp_path: Path) -> None:
    """Holding many claims, a worker's heartbeat moves its one worker row, no command row."""
    engine = fresh_engine
    path = engine.register(SLOW_LOOP.replace("max_in_flight: 4", "max_in_flight: 16"))
    execution_id = engine.start(path, {"items": list(range(32)), "log": str(tmp_path / "l")})
    with engine.worker(slots=4, batch_size=4, heartbeat_interval=0.05) as worker:
        time.sleep(0.3)
        first = engine.sql("select heartbeat_at from noetl.worker where worker_id = %s",
                           worker.worker_id)[0]["heartbeat_at"]
        claims = engine.sql("select command_id, claimed_at from noetl.command "
                            "where claimed_by = %s and status = 'claimed'", worker.worker_id)
        time.sleep(0.2)
        later = engine.sql("select heartbeat_at from noetl.worker where worker_id = %s",
                           worker.worker_id)[0]["heartbeat_at"]
        still = engine.sql("select command_id, claimed_at from noetl.command "
                           "where command_id = any(%s) and status = 'claimed'",
                           [c["command_id"] for c in claims])
        assert engine.wait(execution_id)["status"] == "COMPLETED"
    assert claims and later > first
    assert all(c in claims for c in still), "a heartbeat does not rewrite claims"
    events = engine.sql("select count(*) as n from noetl.event where execution_id = %s"
                        " and event_type = 'command.heartbeat'", execution_id)
    assert events[0]["n"] == 0, "no event per command per interval"
