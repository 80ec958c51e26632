"""The DBA surface: every function, table and view is described (from its header comment),
the views tell queue depth, stuck claims and live workers (a SIGKILLed worker turns 'gone'),
noetl.schema_version() names the schema, and noetl.purge_executions removes old executions
with their events, commands and results together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from engine_harness import Engine

from noetl_pg.sqlfiles import sql_files, stem

NOETL = str(Path(sys.executable).parent / "noetl")
REPO_ROOT = Path(__file__).resolve().parents[2]

SLEEPER = """metadata: {path: dba/sleeper}
workflow:
  - step: nap
    tool: {kind: python, code: "import time\\ntime.sleep(120)\\nresult = 1"}
"""


def test_every_function_table_and_view_is_described(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        missing = conn.execute("""
            select 'function ' || p.oid::regprocedure::text
            from pg_proc as p
            where p.pronamespace = 'noetl'::regnamespace
                and obj_description(p.oid, 'pg_proc') is null
            union all
            select case c.relkind when 'v' then 'view ' else 'table ' end || c.relname
            from pg_class as c
            where c.relnamespace = 'noetl'::regnamespace
                and c.relkind in ('r', 'p', 'v') and not c.relispartition
                and obj_description(c.oid, 'pg_class') is null
            order by 1""").fetchall()
        start = conn.execute(
            "select obj_description('noetl.start_execution(text, jsonb, integer)'::regprocedure,"
            " 'pg_proc')").fetchone()
        counted = conn.execute(
            "select count(*) from pg_proc where pronamespace = 'noetl'::regnamespace"
        ).fetchone()
    assert [row[0] for row in missing] == []
    assert counted is not None and counted[0] > 50
    assert start is not None
    assert start[0].startswith("noetl.start_execution(path, payload, version) -> execution_id")
    assert "Failure modes" in start[0]


def test_schema_version_names_the_latest_migration(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select * from noetl.schema_version()").fetchone()
    files = [stem(path) for path in sql_files("migrations")]
    assert row is not None
    assert (row[0], row[1]) == (max(files), len(files))
    assert len(row[2]) == 64


def _state(engine: Engine, worker_id: str) -> list[dict[str, object]]:
    with psycopg.connect(engine.dsn, autocommit=True) as conn:
        conn.execute("set noetl.worker_gone_seconds = '3'")
        cursor = conn.execute("select state, claimed from noetl.worker_status "
                              "where worker_id = %s", (worker_id,))
        return [{"state": state, "claimed": claimed} for state, claimed in cursor]


def test_a_killed_worker_shows_gone_and_its_claim_stuck(fresh_engine: Engine) -> None:
    path = fresh_engine.register(SLEEPER)
    execution_id = fresh_engine.start(path)
    fresh_engine.sql("select noetl.issue_command(%s, 'later', 'python', 'nap') ", execution_id)
    fresh_engine.sql("update noetl.command set available_at = now() + interval '1 hour' "
                     "where command_key = 'later'")
    worker = subprocess.Popen(
        [NOETL, "worker", "--concurrency", "1", "--worker-id", "dba-victim", "--no-projector"],
        env={**os.environ, "NOETL_DSN": fresh_engine.dsn}, cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while _state(fresh_engine, "dba-victim") != [{"state": "alive", "claimed": 1}]:
            assert time.monotonic() < deadline, _state(fresh_engine, "dba-victim")
            time.sleep(0.2)
        depth = fresh_engine.sql("select due, delayed, claimed from noetl.queue_depth "
                                 "where kind = 'python'")
        assert depth == [{"due": 0, "delayed": 1, "claimed": 1}]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        time.sleep(3.5)
        assert _state(fresh_engine, "dba-victim") == [{"state": "gone", "claimed": 1}]
        with psycopg.connect(fresh_engine.dsn, autocommit=True) as conn:
            conn.execute("set noetl.worker_gone_seconds = '3'")
            stuck = conn.execute("select execution_id, step_name, claimed_by "
                                 "from noetl.stuck_commands").fetchall()
        assert stuck == [(execution_id, "nap", "dba-victim")]
    finally:
        if worker.poll() is None:
            worker.kill()


def test_purge_removes_old_executions_with_everything_of_theirs(fresh_engine: Engine) -> None:
    good = fresh_engine.register(
        "metadata: {path: dba/good}\nworkflow:\n  - step: a\n"
        "    tool: {kind: python, code: 'result = 1'}\n")
    bad = fresh_engine.register(
        "metadata: {path: dba/bad}\nworkflow:\n  - step: a\n"
        "    tool: {kind: python, code: 'raise ValueError(1)'}\n")
    with fresh_engine.worker(slots=2):
        old_good = fresh_engine.wait(fresh_engine.start(good))["execution_id"]
        old_bad = fresh_engine.wait(fresh_engine.start(bad))["execution_id"]
        recent = fresh_engine.wait(fresh_engine.start(good))["execution_id"]
    running = fresh_engine.start(good)
    fresh_engine.sql("update noetl.execution set finished_at = now() - interval '40 days' "
                     "where execution_id in (%s, %s)", old_good, old_bad)

    def rows(execution_id: int) -> dict[str, int]:
        counts = fresh_engine.sql(
            "select (select count(*) from noetl.event where execution_id = %(id)s) as events,"
            " (select count(*) from noetl.command where execution_id = %(id)s) as commands,"
            " (select count(*) from noetl.step_result where execution_id = %(id)s) as results,"
            " (select count(*) from noetl.execution_state where execution_id = %(id)s) as states,"
            " (select count(*) from noetl.execution where execution_id = %(id)s) as execution"
            .replace("%(id)s", "%s"), *([execution_id] * 5))
        return dict(counts[0])

    fresh_engine.sql("select noetl.rebuild_execution_state(%s, true)", old_good)
    assert rows(old_good)["events"] > 0 and rows(old_good)["results"] == 1
    assert rows(old_good)["states"] == 1
    purged = fresh_engine.sql("select * from noetl.purge_executions('30 days')")
    assert purged[0]["executions"] == 1 and purged[0]["events"] > 0
    assert purged[0]["stored_objects"] == []
    assert rows(old_good) == {"events": 0, "commands": 0, "results": 0, "states": 0,
                              "execution": 0}
    for kept in (old_bad, recent, running):
        assert rows(kept)["execution"] == 1 and rows(kept)["events"] > 0
    again = fresh_engine.sql("select * from noetl.purge_executions('30 days', false)")
    assert again[0]["executions"] == 1
    assert rows(old_bad)["execution"] == 0
    assert rows(recent)["execution"] == 1
