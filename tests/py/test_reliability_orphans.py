"""Claims a live worker does not hold: a lost reply, or an earlier process with its id."""

from __future__ import annotations

import time

import psycopg
from engine_harness import Engine

from noetl_pg.worker import Worker

ONE_STEP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: orphan, path: test/orphan}
workflow:
  - step: only
    tool: {kind: python, code: "result = 42", retry: {max_attempts: 2}}
"""


def _claim_as(engine: Engine, worker_id: str) -> None:
    """What a claim whose reply never reached the worker leaves behind."""
    claimed = engine.sql("select noetl.claim_command_ids(%s, null, 10) as ids", worker_id)
    assert claimed[0]["ids"], "nothing to claim"


def test_claims_of_an_earlier_process_are_taken_back_at_start(fresh_engine: Engine) -> None:
    engine = fresh_engine
    execution_id = engine.start(engine.register(ONE_STEP))
    engine.sql("select noetl.register_worker('stable-id', 'h', 1, 1, null)")
    _claim_as(engine, "stable-id")
    with engine.worker(worker_id="stable-id"):
        row = engine.wait(execution_id, timeout=20)
    assert row["status"] == "COMPLETED" and row["result"] == 42
    reaped = engine.sql("select attempt, meta ->> 'reason' as reason from noetl.event "
                        "where execution_id = %s and event_type = 'command.reaped'",
                        execution_id)
    assert reaped == [{"attempt": 2, "reason": "claim not held by its worker (lost reply or "
                       "restart)"}]


def test_live_worker_sweeps_claims_it_does_not_hold(fresh_engine: Engine) -> None:
    engine = fresh_engine
    worker = Worker(engine.dsn, slots=1, poll_interval=0.2, heartbeat_interval=0.1,
                    orphan_claim_age=0.5)
    worker.start()
    try:
        path = engine.register(ONE_STEP)
        # Started and claimed under the worker's id in one transaction, behind its back:
        # what a claim whose reply was lost leaves behind.
        with psycopg.connect(engine.dsn) as conn:
            execution_id = conn.execute("select noetl.start_execution(%s)", (path,)).fetchone()[0]
            conn.execute("select noetl.claim_command_ids(%s, null, 10)", (worker.worker_id,))
        started = time.monotonic()
        row = engine.wait(execution_id, timeout=20)
    finally:
        worker.stop()
        worker.join(timeout=30)
    assert row["status"] == "COMPLETED" and row["result"] == 42
    assert time.monotonic() - started < 5
