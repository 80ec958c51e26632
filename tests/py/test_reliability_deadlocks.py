"""One lock order: busy executions cancelled and a big drain end with zero deadlocks.

Every function that locks more than one row takes execution rows (with their ancestors),
then loop rows, then command rows by id (sql/functions/locking.sql). Before that order,
`cancel_execution` locked the execution then its commands while a finishing worker locked
its command then the execution, and batches holding commands of several executions locked
those executions in the order their commands came. These tests run four `noetl worker`
processes with default settings and read the database's own deadlock counter
(pg_stat_database.deadlocks) before and after; PostgreSQL counts every deadlock it breaks,
whichever side it aborts and whether or not a retry hid it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from engine_harness import Engine
from worker_procs import Workers, wait_until

from noetl_pg import db


@pytest.fixture
def workers(fresh_dsn: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(fresh_dsn, tmp_path)
    try:
        yield pool
    finally:
        pool.close()


def fanout_playbook(name: str, width: int, depth: int) -> str:
    """start -> `width` parallel branches of `depth` noop steps each -> join `end`."""
    lines = ["apiVersion: noetl.io/v2", "kind: Playbook",
             f"metadata: {{name: {name}, path: test/{name}}}", "workflow:",
             "  - step: start", "    tool: {kind: noop}",
             "    next:", "      spec: {mode: inclusive}", "      arcs:"]
    lines += [f"        - step: b{branch}_0" for branch in range(width)]
    for branch in range(width):
        for level in range(depth):
            following = f"b{branch}_{level + 1}" if level + 1 < depth else "end"
            lines += [f"  - step: b{branch}_{level}", "    tool: {kind: noop}",
                      f"    next: {{arcs: [{{step: {following}}}]}}"]
    lines += ["  - step: end", "    tool: {kind: noop}"]
    return "\n".join(lines) + "\n"


def deadlocks(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        return int(conn.execute("select deadlocks from pg_stat_database "
                                "where datname = current_database()").fetchone()[0])


def deadlocks_after_backends_exit(dsn: str) -> int:
    """The counter once every other backend of the database has exited (a backend
    reports its statistics at the latest when it exits)."""
    def others() -> int:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return int(conn.execute(
                "select count(*) from pg_stat_activity where datname = current_database() "
                "and pid <> pg_backend_pid()").fetchone()[0])
    wait_until(lambda: others() == 0, timeout=30, what="the workers' backends to exit")
    time.sleep(0.5)
    return deadlocks(dsn)


def _start_many(engine: Engine, path: str, count: int, threads: int) -> list[int]:
    started: list[int] = []
    lock = threading.Lock()

    def start(share: int) -> None:
        with db.connect(engine.dsn) as conn:
            for _ in range(share):
                row = db.fetch_one(conn, "start_execution", path=path, payload={},
                                   version=None)
                assert row is not None
                with lock:
                    started.append(int(row["execution_id"]))

    pool = [threading.Thread(target=start, args=(count // threads,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sorted(started)


def _statuses(engine: Engine, execution_ids: list[int]) -> dict[str, int]:
    rows = engine.sql("select status, count(*) as n from noetl.execution "
                      "where execution_id = any(%s) group by status", execution_ids)
    return {row["status"]: row["n"] for row in rows}


def test_ten_thousand_command_drain_with_four_workers_has_no_deadlock(
        fresh_engine: Engine, workers: Workers) -> None:
    """480 executions x (start, 20 parallel branches, a join): 10,560 commands drained by
    four worker processes while the executions are being started."""
    engine, executions, width = fresh_engine, 480, 20
    path = engine.register(fanout_playbook("drain", width, 1))
    before = deadlocks(engine.dsn)
    for index in range(4):
        workers.start(f"w{index}", concurrency=4, batch_size=16)
    execution_ids = _start_many(engine, path, executions, threads=2)
    wait_until(lambda: _statuses(engine, execution_ids).get("RUNNING", 0) == 0,
               timeout=300, what="the drain")
    workers.stop_all()
    after = deadlocks_after_backends_exit(engine.dsn)

    assert _statuses(engine, execution_ids) == {"COMPLETED": executions}
    per_execution = engine.sql(
        "select count(*) filter (where event_type = 'call.done') as done, "
        "count(*) filter (where event_type = 'call.done' and node_name = 'end') as joins, "
        "count(*) filter (where event_type = 'command.failed') as failed "
        "from noetl.event where execution_id = any(%s) group by execution_id", execution_ids)
    assert len(per_execution) == executions
    assert {(r["done"], r["joins"], r["failed"]) for r in per_execution} == {(width + 2, 1, 0)}
    logs = "".join(workers.log(f"w{index}") for index in range(4))
    assert "deadlock detected" not in logs
    print(f"\ndrain: {executions * (width + 2)} commands, deadlocks {before} -> {after}")
    assert after == before, f"{after - before} deadlocks during the drain"


def test_hundred_cancels_against_busy_executions_have_no_deadlock(
        fresh_engine: Engine, workers: Workers) -> None:
    """100 executions of 20 parallel chains of 20 steps, all cancelled at once (4 threads)
    while four worker processes finish their commands."""
    engine, executions = fresh_engine, 100
    path = engine.register(fanout_playbook("busy", 20, 20))
    before = deadlocks(engine.dsn)
    for index in range(4):
        workers.start(f"w{index}", concurrency=4, batch_size=16)
    execution_ids = _start_many(engine, path, executions, threads=2)

    def busy() -> bool:
        rows = engine.sql("select count(distinct execution_id) as n from noetl.event "
                          "where execution_id = any(%s) and event_type = 'call.done' "
                          "and node_name like 'b%%'", execution_ids)
        return rows[0]["n"] == executions
    wait_until(busy, timeout=120, what="every execution running its branches")

    errors: list[BaseException] = []
    cancelled: list[int] = []

    def cancel(share: list[int]) -> None:
        with db.connect(engine.dsn) as conn:
            for execution_id in share:
                try:
                    row = db.fetch_one(conn, "cancel_execution", execution_id=execution_id,
                                       reason="test cancels")
                    assert row is not None
                    cancelled.append(int(row["cancelled"]))
                except psycopg.Error as exc:
                    errors.append(exc)
                    conn.rollback()

    pool = [threading.Thread(target=cancel, args=(execution_ids[index::4],))
            for index in range(4)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert errors == []
    time.sleep(1.0)  # outcomes in flight arrive and are refused
    workers.stop_all()
    after = deadlocks_after_backends_exit(engine.dsn)

    statuses = _statuses(engine, execution_ids)
    assert statuses == {"CANCELLED": executions}, statuses
    assert cancelled == [1] * executions
    active = engine.sql("select count(*) as n from noetl.command where execution_id = any(%s) "
                        "and status in ('queued', 'claimed', 'waiting')", execution_ids)
    assert active == [{"n": 0}], "nothing left to run"
    routed_after: list[Any] = engine.sql(
        "select e.execution_id from noetl.event as e "
        "join noetl.event as c on c.execution_id = e.execution_id "
        "and c.event_type = 'playbook.cancelled' "
        "where e.execution_id = any(%s) and e.event_type = 'command.issued' "
        "and e.event_id > c.event_id", execution_ids)
    assert routed_after == [], "nothing was issued after the cancel"
    logs = "".join(workers.log(f"w{index}") for index in range(4))
    assert "deadlock detected" not in logs
    print(f"\ncancel: {executions} busy executions, deadlocks {before} -> {after}")
    assert after == before, f"{after - before} deadlocks while cancelling"
