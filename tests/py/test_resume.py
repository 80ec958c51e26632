"""Resume and rerun end to end: a 100-item loop where 3 items fail is resumed after the cause
is fixed and runs exactly those 3; a rerun from the last step reuses the loop's result.
Real workers (in-process) run real python iterations; the CLI runs in-process."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from engine_harness import Engine
from worker_procs import wait_until

from noetl_pg.cli import main

BAD_ITEMS = [7, 42, 93]

LOOP_PLAYBOOK = """apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: resumable, path: resume/loop}
workload: {cause_file: CAUSE}
workflow:
  - step: work
    loop:
      in: "{{ range(100) | list }}"
      iterator: n
      spec: {mode: parallel, max_in_flight: 8}
    tool:
      kind: python
      input: {n: "{{ n }}", cause_file: "{{ workload.cause_file }}"}
      code: |
        import json
        bad = json.load(open(cause_file))
        if n in bad:
            raise ValueError(f"item {n} is bad")
        result = n * 2
    next: [{step: total}]
  - step: total
    tool:
      kind: python
      input: {stats: "{{ work.stats }}"}
      code: |
        result = {"success": stats["success"], "failed": stats["failed"]}
"""


@pytest.fixture
def cause_file() -> Iterator[Path]:
    """A world-readable file the iterations read (python steps may run as another user)."""
    folder = Path(tempfile.mkdtemp(prefix="noetl-resume-"))
    folder.chmod(0o755)
    file = folder / "bad.json"
    file.write_text(json.dumps(BAD_ITEMS))
    file.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    yield file
    file.unlink()
    folder.rmdir()


def _cli(dsn: str, *args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"], env={**os.environ, "NOETL_DSN": dsn})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return {"exit": result.exit_code, **json.loads(result.stdout)}


def test_resume_runs_only_the_failed_iterations_then_rerun_reuses_results(
    fresh_engine: Engine, cause_file: Path
) -> None:
    path = fresh_engine.register(LOOP_PLAYBOOK.replace("CAUSE", str(cause_file)))
    with fresh_engine.worker(slots=4):
        failed = fresh_engine.wait(fresh_engine.start(path), timeout=180)
    execution_id = int(failed["execution_id"])
    assert (failed["status"], failed["failed_step"]) == ("FAILED", "work")
    assert "3/100" in failed["error"]

    cause_file.write_text("[]")  # the cause is fixed
    resumed = _cli(fresh_engine.dsn, "resume", str(execution_id), "--concurrency", "4")
    assert resumed["exit"] == 0, resumed
    assert resumed["status"] == "COMPLETED"
    assert resumed["result"] == {"success": 100, "failed": 0}

    marker = fresh_engine.sql(
        "select event_id from noetl.event where execution_id = %s "
        "and event_type = 'playbook.resumed'", execution_id)
    assert len(marker) == 1
    after = fresh_engine.sql(
        "select node_name, iter_index, attempt from noetl.event where execution_id = %s "
        "and event_type = 'call.done' and event_id > %s order by iter_index nulls last",
        execution_id, marker[0]["event_id"])
    assert [(row["node_name"], row["iter_index"], row["attempt"]) for row in after] == [
        *[("work", index, 2) for index in BAD_ITEMS], ("total", None, 1)]
    runs = fresh_engine.sql(
        "select count(*) as n from noetl.event where execution_id = %s "
        "and event_type = 'call.done' and node_name = 'work'", execution_id)
    assert runs == [{"n": 100}]
    # The projection shows the resumed step done, without the error its first run had.
    wait_until(lambda: fresh_engine.sql(
        "select state ->> 'status' as s from noetl.execution_state where execution_id = %s",
        execution_id) == [{"s": "COMPLETED"}], timeout=30, what="the projection to catch up")
    steps = fresh_engine.sql("select state -> 'steps' as steps from noetl.execution_state "
                             "where execution_id = %s", execution_id)[0]["steps"]
    assert {name: (step["status"], "error" in step) for name, step in steps.items()} == {
        "work": ("done", False), "total": ("done", False)}

    rerun = _cli(fresh_engine.dsn, "rerun", str(execution_id), "--from", "total")
    assert (rerun["exit"], rerun["status"]) == (0, "COMPLETED")
    assert rerun["result"] == {"success": 100, "failed": 0}
    new_id = int(rerun["execution_id"])
    assert fresh_engine.sql("select rerun_of from noetl.execution where execution_id = %s",
                            new_id) == [{"rerun_of": execution_id}]
    assert fresh_engine.sql(
        "select distinct step_name from noetl.command where execution_id = %s",
        new_id) == [{"step_name": "total"}]


def test_resume_and_rerun_refuse_what_they_cannot_do(fresh_engine: Engine) -> None:
    path = fresh_engine.register(
        "metadata: {path: resume/ok}\nworkflow:\n  - step: a\n    tool: {kind: noop}\n")
    with fresh_engine.worker(slots=1):
        done = fresh_engine.wait(fresh_engine.start(path))
    execution_id = str(done["execution_id"])
    completed = _cli(fresh_engine.dsn, "resume", execution_id)
    assert completed["exit"] == 2
    assert completed["error"] == (f"execution {execution_id} is COMPLETED: only a FAILED or "
                                  "CANCELLED execution can be resumed")
    unknown = _cli(fresh_engine.dsn, "resume", "987654")
    assert (unknown["exit"], unknown["error"]) == (2, "execution 987654 does not exist")
    bad_step = _cli(fresh_engine.dsn, "rerun", execution_id, "--from", "zz")
    assert bad_step["exit"] == 2 and 'step "zz" does not exist' in bad_step["error"]
