"""Loop counting under real concurrency: many connections completing one loop's
iterations at the same moment, duplicate completions, and a 10,000-item loop served by
two `noetl worker` processes while a sampler watches the in-flight bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from engine_harness import Engine

from noetl_pg import db

NOETL = Path(sys.executable).with_name("noetl")

TWO_STEPS = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: loop_race, path: test/loop_race}
workflow:
  - step: work
    loop: {in: "{{ items }}", iterator: x, spec: {mode: parallel, max_in_flight: 20}}
    tool: {kind: python, code: "result = x"}
    next: {arcs: [{step: after}]}
  - step: after
    tool: {kind: noop}
"""


def _start_loop_by_hand(engine: Engine, items: list[Any]) -> tuple[int, int]:
    """Start an execution and its loop in SQL (no worker); returns (execution, loop)."""
    execution_id = engine.start(engine.register(TWO_STEPS), {"items": items})
    with db.connect(engine.dsn) as conn:
        command = conn.execute(
            "select command_id, attempt from noetl.claim_commands('test', array['loop'], 1)"
        ).fetchone()
        assert command is not None
        conn.execute(
            "select noetl.start_loop(%s, %s, %s, %s, null)",
            (command["command_id"], command["attempt"], psycopg.types.json.Jsonb(items),
             psycopg.types.json.Jsonb({"iterator": "x", "mode": "parallel",
                                       "max_in_flight": len(items)})),
        )
        loop = conn.execute("select loop_id from noetl.loop where command_id = %s",
                            (command["command_id"],)).fetchone()
    assert loop is not None
    return execution_id, int(loop["loop_id"])


def _complete_all_at_once(dsn: str, calls: list[tuple[int, int]]) -> list[str]:
    """One thread and one connection per call, released together by a barrier."""
    connections = [db.connect(dsn) for _ in calls]
    barrier = threading.Barrier(len(calls))
    outcomes: list[str] = [""] * len(calls)
    errors: list[BaseException] = []

    def complete(position: int) -> None:
        command_id, attempt = calls[position]
        try:
            barrier.wait(timeout=30)
            row = connections[position].execute(
                "select outcome from noetl.complete_command(%s, %s, %s)",
                (command_id, attempt, psycopg.types.json.Jsonb({"done": command_id})),
            ).fetchone()
            assert row is not None
            outcomes[position] = row["outcome"]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for conn in connections:
        conn.close()
    assert not errors, errors
    return outcomes


def _wait_for_workers(engine: Engine, count: int) -> None:
    """Until `count` worker processes are registered and listening (a fixed delay after
    registration covers the listener connecting; it only affects who gets work)."""
    deadline = time.monotonic() + 30
    while engine.sql("select count(*) as n from noetl.worker where stopped_at is null")[0][
            "n"] < count:
        assert time.monotonic() < deadline, "worker processes did not start"
        time.sleep(0.05)
    time.sleep(0.5)


def _loop_state(engine: Engine, execution_id: int, loop_id: int) -> dict[str, Any]:
    return engine.sql(
        """select l.issued, l.done, l.failed, l.status,
               (select count(*) from noetl.event as e
                where e.execution_id = %s and e.event_type = 'loop.done') as loop_done,
               (select count(*) from noetl.command as c
                where c.execution_id = %s and c.step_name = 'after') as after_commands,
               (select count(*) from noetl.event as e where e.execution_id = %s
                and e.event_type <> 'command.outcome_refused') as events
           from noetl.loop as l where l.loop_id = %s""",
        execution_id, execution_id, execution_id, loop_id,
    )[0]


def test_twenty_simultaneous_completions_close_the_loop_once(fresh_engine: Engine) -> None:
    execution_id, loop_id = _start_loop_by_hand(fresh_engine, list(range(20)))
    claimed = fresh_engine.sql(
        "select command_id, attempt from noetl.claim_commands('test', array['python'], 100)"
    )
    assert len(claimed) == 20
    calls = [(row["command_id"], row["attempt"]) for row in claimed]

    outcomes = _complete_all_at_once(fresh_engine.dsn, calls)

    assert outcomes == ["ok"] * 20
    state = _loop_state(fresh_engine, execution_id, loop_id)
    assert (state["done"], state["failed"], state["status"]) == (20, 0, "done")
    assert state["loop_done"] == 1
    assert state["after_commands"] == 1
    result = fresh_engine.sql(
        "select result from noetl.step_result where execution_id = %s and step_name = 'work'",
        execution_id,
    )[0]["result"]
    assert result["results"] == [{"done": command_id} for command_id, _ in sorted(calls)]

    # 1,000 duplicate completions (50 rounds of the 20, all at once each round) are stale.
    for _ in range(50):
        assert set(_complete_all_at_once(fresh_engine.dsn, calls)) == {"stale"}
    assert _loop_state(fresh_engine, execution_id, loop_id) == state
    assert fresh_engine.sql(
        "select count(*) as n from noetl.event where execution_id = %s "
        "and event_type = 'command.outcome_refused'", execution_id) == [{"n": 1000}], \
        "each refused duplicate left its trace"


def test_ten_thousand_items_two_worker_processes_keep_the_bound(fresh_engine: Engine) -> None:
    items, width = 10_000, 50
    path = fresh_engine.register(f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: loop_10k, path: test/loop_10k}}
workflow:
  - step: work
    loop:
      in: "{{{{ range({items}) | list }}}}"
      iterator: n
      spec: {{mode: parallel, max_in_flight: {width}}}
    tool: {{kind: python, input: {{n: "{{{{ n }}}}"}}, code: "result = n * 3"}}
""")
    env = {**os.environ, "NOETL_DSN": fresh_engine.dsn}
    workers = [
        # 4 slots x batch 4: one process can hold at most 16 of the 50, so both serve.
        subprocess.Popen([str(NOETL), "worker", "--concurrency", "4", "--batch-size", "4"],
                         env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    peaks: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with db.connect(fresh_engine.dsn) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "select count(*) as active from noetl.command "
                    "where loop_id is not null and status in ('queued', 'claimed')"
                ).fetchone()
                assert row is not None
                peaks.append(int(row["active"]))

    sampler = threading.Thread(target=sample)
    try:
        _wait_for_workers(fresh_engine, 2)
        execution_id = fresh_engine.start(path)
        sampler.start()
        row = fresh_engine.wait(execution_id, timeout=240)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(10)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)

    assert row["status"] == "COMPLETED", row["error"]
    result = row["result"]
    assert result["results"] == [n * 3 for n in range(items)]
    assert result["stats"] == {"total": items, "success": items, "failed": 0}
    assert len(peaks) > 20, "the sampler must have watched the run"
    assert max(peaks) <= width
    assert max(peaks) > 1, "the loop ran in parallel"
    claimed_by = fresh_engine.sql(
        "select count(distinct claimed_by) as workers from noetl.command "
        "where execution_id = %s and loop_id is not null", execution_id,
    )[0]
    assert claimed_by["workers"] == 2, "both worker processes served the loop"
    constraint = fresh_engine.sql(
        "select pg_get_constraintdef(oid) as definition from pg_constraint "
        "where conname = 'loop_in_flight_bound'"
    )
    assert "max_in_flight" in constraint[0]["definition"]
