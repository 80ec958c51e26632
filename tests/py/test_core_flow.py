"""The control plane from outside: psql and the `noetl` CLI, with real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from engine_harness import REPO_ROOT, Engine

NOETL = [sys.executable, "-m", "noetl_pg.cli"]


def _env(dsn: str) -> dict[str, str]:
    return {**os.environ, "NOETL_DSN": dsn}


def _noetl(dsn: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOETL, *args], env=_env(dsn), cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=120, check=check)


def test_psql_start_is_completed_by_a_worker_process(fresh_engine: Engine) -> None:
    dsn = fresh_engine.dsn
    _noetl(dsn, "catalog", "register", "examples/hello_world.yaml")
    started = subprocess.run(
        ["psql", "-X", "-A", "-t", "-d", dsn, "-c",
         "select noetl.start_execution('examples/hello_world', '{\"name\": \"psql\"}')"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    execution_id = int(started.stdout.strip())
    worker = subprocess.Popen([*NOETL, "worker", "--concurrency", "2"], env=_env(dsn),
                              cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        row = fresh_engine.wait(execution_id, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert row["status"] == "COMPLETED"
    assert row["result"] == {"greeting": "Hello, psql!", "length": 12}
    assert worker.returncode == 0
    status = _noetl(dsn, "status", str(execution_id))
    assert "COMPLETED" in status.stdout
    assert "greet" in status.stdout and "measure" in status.stdout


def test_noetl_run_exit_codes_and_json(fresh_engine: Engine, tmp_path: Path) -> None:
    completed = _noetl(fresh_engine.dsn, "run", "examples/branching.yaml", "--json",
                       "--set", "amount=5")
    assert json.loads(completed.stdout)["result"] == {"handled": "small"}
    failing = tmp_path / "fails.yaml"
    failing.write_text(
        "metadata: {path: t/fails}\n"
        "workflow:\n"
        "  - step: explode\n"
        "    tool: {kind: python, code: \"raise ValueError('no luck')\"}\n"
    )
    failed = _noetl(fresh_engine.dsn, "run", str(failing), check=False)
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout
    assert "ValueError: no luck" in failed.stdout


def test_noetl_exec_prints_id_and_bad_file_names_the_problem(
    fresh_engine: Engine, tmp_path: Path
) -> None:
    _noetl(fresh_engine.dsn, "catalog", "register", "examples/hello_world.yaml")
    printed = _noetl(fresh_engine.dsn, "start", "examples/hello_world")
    assert int(printed.stdout.strip()) > 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("workflow:\n  - step: a\n    tool: {kind: python\n")
    result = _noetl(fresh_engine.dsn, "catalog", "register", str(broken), check=False)
    assert result.returncode == 2
    assert "malformed YAML" in result.stderr and "line" in result.stderr
    unknown = _noetl(fresh_engine.dsn, "start", "no/such/playbook", check=False)
    assert unknown.returncode == 2
    assert 'playbook "no/such/playbook" is not registered' in unknown.stderr


def test_concurrent_claims_take_each_command_exactly_once(fresh_engine: Engine) -> None:
    """16 connections race to claim 600 commands; each is claimed by exactly one."""
    path = fresh_engine.register(REPO_ROOT / "examples" / "hello_world.yaml")
    execution_id = fresh_engine.start(path)
    fresh_engine.sql(
        "select noetl.issue_command(%s, 'race:' || i, 'python', 'greet') "
        "from generate_series(1, 599) as i",
        execution_id,
    )
    claimed: list[list[int]] = []
    barrier = threading.Barrier(16)

    def claimer() -> None:
        mine: list[int] = []
        with psycopg.connect(fresh_engine.dsn, autocommit=True) as conn:
            barrier.wait()
            while True:
                rows = conn.execute(
                    "select command_id from noetl.claim_commands(%s, null, 7)",
                    (threading.current_thread().name,),
                ).fetchall()
                if not rows:
                    break
                mine += [row[0] for row in rows]
        claimed.append(mine)

    threads = [threading.Thread(target=claimer, name=f"w{i}") for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every_claim = [command_id for mine in claimed for command_id in mine]
    assert len(every_claim) == 600
    assert len(set(every_claim)) == 600
    assert sum(1 for mine in claimed if mine) > 1, "the race needs more than one winner"
    events = fresh_engine.sql(
        "select count(*) as n from noetl.event where execution_id = %s "
        "and event_type = 'command.claimed'", execution_id)
    assert events[0]["n"] == 600


def test_sigterm_releases_claims_it_never_ran(fresh_engine: Engine) -> None:
    """A worker told to stop hands back what it claimed but did not start."""
    fresh_engine.sql("select noetl.register_worker('gone', 'h', 1, 1, null)")
    path = fresh_engine.register(REPO_ROOT / "examples" / "hello_world.yaml")
    execution_id = fresh_engine.start(path)
    fresh_engine.sql("select * from noetl.claim_commands('gone', null, 5)")
    released = fresh_engine.sql("select noetl.stop_worker('gone') as n")[0]["n"]
    assert released == 1
    with fresh_engine.worker(slots=1):
        assert fresh_engine.wait(execution_id)["status"] == "COMPLETED"


@pytest.mark.parametrize("slots", [1, 4])
def test_worker_wakes_on_notify_not_poll(fresh_engine: Engine, slots: int) -> None:
    """With a 30 s poll interval, a start is still picked up at once (LISTEN/NOTIFY)."""
    path = fresh_engine.register(REPO_ROOT / "examples" / "hello_world.yaml")
    with fresh_engine.worker(slots=slots, poll_interval=30):
        time.sleep(0.3)  # let the slots go idle on the wait
        started = time.monotonic()
        row = fresh_engine.wait(fresh_engine.start(path), timeout=10)
        elapsed = time.monotonic() - started
    assert row["status"] == "COMPLETED"
    assert elapsed < 5, f"took {elapsed:.1f}s: the NOTIFY wake-up did not work"
