"""NoETL tool forms end to end: postgres concurrency, errors with their cause, credential,
script, transfer and artifact tools, policy writes and playbook tasks in a pipeline."""

from __future__ import annotations

import textwrap
import threading
import time
import uuid
from typing import Any

import psycopg
from engine_harness import Engine


def _events(engine: Engine, execution_id: int, event_type: str,
            step: str | None = None) -> list[dict[str, Any]]:
    return [e for e in engine.events(execution_id)
            if e["event_type"] == event_type and (step is None or e["node_name"] == step)]


def _issued(engine: Engine, execution_id: int) -> dict[str, int]:
    rows = engine.sql(
        "select step_name, count(*) as n from noetl.command where execution_id = %s "
        "and kind not in ('route', 'loop') group by step_name", execution_id)
    return {row["step_name"]: row["n"] for row in rows}


class BackendPeak:
    """Counts, from pg_stat_activity, the most backends running a query that has `tag`."""

    def __init__(self, dsn: str, tag: str) -> None:
        self.peak = 0
        self._dsn, self._tag = dsn, tag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> BackendPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _watch(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    "select count(*) from pg_stat_activity where state = 'active' "
                    "and pid <> pg_backend_pid() and query like %s",
                    (f"%{self._tag}%",)).fetchone()
                assert row is not None
                self.peak = max(self.peak, row[0])
                time.sleep(0.02)


def _sleep_loop(dsn: str, tag: str, width: int) -> str:
    # A fast loop first grows each slot's claim batch (worker.ClaimSizer), the case where
    # one slot used to claim several slow postgres iterations and run them in turn.
    return textwrap.dedent(f"""
        apiVersion: noetl.io/v2
        kind: Playbook
        metadata: {{name: pgwidth, path: test/compat/pgwidth}}
        workload: {{dsn: "{dsn}"}}
        workflow:
          - step: warm
            loop: {{in: "{{{{ range(40) | list }}}}", iterator: i, mode: async, concurrency: 8}}
            tool: {{kind: noop}}
            next: [{{step: sleep}}]
          - step: sleep
            loop:
              in: "{{{{ range({width}) | list }}}}"
              iterator: i
              spec: {{mode: parallel, max_in_flight: {width}}}
            tool:
              kind: postgres
              auth: {{dsn: "{{{{ workload.dsn }}}}"}}
              command: "select pg_sleep(1.5) as slept /* {tag} */"
        """)


def test_postgres_loop_reaches_max_in_flight_up_to_the_slots(fresh_engine: Engine) -> None:
    tag = f"pgwidth_{uuid.uuid4().hex[:8]}"
    with fresh_engine.worker(slots=6), BackendPeak(fresh_engine.dsn, tag) as watch:
        row = fresh_engine.run(_sleep_loop(fresh_engine.dsn, tag, 6))
    assert row["status"] == "COMPLETED", row["error"]
    assert watch.peak == 6
    assert _issued(fresh_engine, row["execution_id"]) == {"warm": 40, "sleep": 6}
    assert row["result"]["stats"] == {"total": 6, "success": 6, "failed": 0}


def test_postgres_loop_wider_than_the_slots_runs_slots_at_a_time(fresh_engine: Engine) -> None:
    tag = f"pgwidth_{uuid.uuid4().hex[:8]}"
    with fresh_engine.worker(slots=3), BackendPeak(fresh_engine.dsn, tag) as watch:
        row = fresh_engine.run(_sleep_loop(fresh_engine.dsn, tag, 5))
    assert row["status"] == "COMPLETED", row["error"]
    assert watch.peak == 3
    assert len(_events(fresh_engine, row["execution_id"], "call.done", "sleep")) == 5
