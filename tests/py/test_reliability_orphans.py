"""Claims a live worker does not hold: a lost reply, or an earlier process with its id.

Neither is the step's failure: with the default max_attempts (1) the command goes back to
the queue at the same attempt and runs once.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from engine_harness import Engine
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from noetl_pg.worker import Worker

ONE_STEP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: orphan, path: test/orphan}
workflow:
  - step: only
    tool: {kind: python, code: "result = 42"}
"""

LOOP = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {name: orphan_loop, path: test/orphan_loop}
workflow:
  - step: work
    loop: {in: "{{ items }}", iterator: item, spec: {mode: parallel, max_in_flight: 4}}
    tool: {kind: python, input: {item: "{{ item }}"}, code: "result = item * 10"}
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
    reaped = engine.sql("select attempt, meta ->> 'reason' as reason, meta -> 'reclaims' as n "
                        "from noetl.event "
                        "where execution_id = %s and event_type = 'command.reaped'",
                        execution_id)
    assert reaped == [{"attempt": 1, "n": 1,
                       "reason": "claimed by an earlier process with this worker id"}]


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
    assert engine.sql("select attempt, reclaims from noetl.command where execution_id = %s",
                      execution_id) == [{"attempt": 1, "reclaims": 0}]


def _finish_and_claim(conn: psycopg.Connection[Any], worker_id: str, outcomes: list[Any],
                      kinds: list[str] | None, n: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("select * from noetl.finish_and_claim(%s, %s, %s, %s)",
                       (worker_id, Jsonb(outcomes), kinds, n))
        return cursor.fetchall()


def test_lost_reply_of_finish_and_claim_never_fails_what_it_created_claimed(
        fresh_engine: Engine) -> None:
    """Loop iterations created already claimed inside a committed finish_and_claim whose
    reply never reached the worker: they never ran, so they go back to the queue (not
    "failed: claim not held by its worker"), run once, and the loop completes."""
    engine = fresh_engine
    # A live worker that serves no python: its sweep is what must rescue the lost claims.
    lost = Worker(engine.dsn, slots=1, kinds=["noop"], poll_interval=0.2,
                  heartbeat_interval=0.1, orphan_claim_age=0.5)
    lost.start()
    try:
        execution_id = engine.start(engine.register(LOOP), {"items": list(range(10))})
        with psycopg.connect(engine.dsn, autocommit=True) as conn:
            # The lost slot: renders the loop, runs the first four items, and finishes them
            # with room for four more, which the loop creates claimed by this worker.
            [loop_cmd] = conn.execute(
                "select command_id, attempt, claim_gen from noetl.claim_commands(%s, "
                "array['loop'], 1)", (lost.worker_id,)).fetchall()
            _finish_and_claim(conn, lost.worker_id, [{
                "op": "loop", "command_id": loop_cmd[0], "attempt": loop_cmd[1],
                "claim": loop_cmd[2], "items": list(range(10)),
                "loop": {"iterator": "item", "mode": "parallel", "max_in_flight": 4}}],
                None, 0)
            first = conn.execute(
                "select command_id, attempt, claim_gen, iter_index, loop_id from "
                "noetl.claim_commands(%s, array['python'], 4)", (lost.worker_id,)).fetchall()
            assert [r[3] for r in first] == [0, 1, 2, 3]
            reply = _finish_and_claim(conn, lost.worker_id, [
                {"op": "done", "command_id": r[0], "attempt": r[1], "claim": r[2],
                 "loop_id": r[4], "result": r[3] * 10} for r in first], ["python"], 4)
            assert [r["iter_index"] for r in reply] == [4, 5, 6, 7]
            # ... and the reply is lost: nobody runs 4-7 under this claim.
        with engine.worker(slots=2):
            row = engine.wait(execution_id, timeout=30)
    finally:
        lost.stop()
        lost.join(timeout=30)
    assert row["status"] == "COMPLETED", row["error"]
    assert row["result"]["results"] == [i * 10 for i in range(10)]
    assert engine.sql("select count(*) as n from noetl.event where execution_id = %s "
                      "and event_type = 'command.failed'", execution_id) == [{"n": 0}]
    reaped = engine.sql("select iter_index, attempt, meta ->> 'reason' as reason "
                        "from noetl.event where execution_id = %s "
                        "and event_type = 'command.reaped' order by iter_index", execution_id)
    assert reaped == [{"iter_index": i, "attempt": 1,
                       "reason": "claim not held by its worker (lost reply)"}
                      for i in (4, 5, 6, 7)]
    done = engine.sql("select iter_index, count(*) as n from noetl.event "
                      "where execution_id = %s and event_type = 'call.done' "
                      "group by iter_index order by iter_index", execution_id)
    assert done == [{"iter_index": i, "n": 1} for i in range(10)]
