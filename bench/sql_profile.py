"""Where a playbook's database time goes, statement by statement, nested ones included.

Starts a private embedded PostgreSQL with pg_stat_statements preloaded (`track = all`, so
the statements inside the engine's PL/pgSQL functions are counted, each with its own time)
and `track_functions = all`, migrates it, runs the playbook once through `noetl run` (no
flags: what a user gets) to warm the plans, resets the counters, runs it again and prints:

- the statements by total execution time: microseconds and calls per unit of work
  (`--units`: the playbook's items or steps), microseconds per call, and whether the
  statement was sent by a client (`top`) or ran inside a function (a nested statement's
  time is also inside its caller's);
- the functions by self time (their statements excluded) per unit.

Execution time excludes the round trip, parsing, the commit and its WAL flush: on the
2-core machine a bare round trip (`select 1`) costs 80-100 us and a transaction's commit
about 0.2 ms, which the sum here does not show. Times include waiting for locks and for
the CPU, so run it on an otherwise idle machine. Not part of `make bench`: a diagnosis,
not a figure.

Usage: .venv/bin/python bench/sql_profile.py PLAYBOOK.yaml [--payload JSON] [--units N]
       [--top 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from noetl_pg.testdb import private_server, restart

NOETL = [sys.executable, "-m", "noetl_pg.cli"]
SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.max": "10000",
    "track_functions": "all",
}
STATEMENTS = """
select calls, total_exec_time, toplevel, regexp_replace(query, '\\s+', ' ', 'g') as query
from pg_stat_statements
where query not like '%%pg_stat_statements%%'
order by total_exec_time desc
limit %(top)s
"""
FUNCTIONS = """
select f.schemaname || '.' || f.funcname as name, f.calls, f.self_time, f.total_time
from pg_stat_user_functions as f
order by f.self_time desc
limit %(top)s
"""


@contextlib.contextmanager
def profiling_server() -> Iterator[str]:
    """A private embedded server with the profiling settings; yields its DSN."""
    with private_server("sql-profile") as server:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            for name, value in SETTINGS.items():
                conn.execute(f"alter system set {name} = '{value}'")
        restart(server, "fast")
        dsn: str = server.get_uri()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension if not exists pg_stat_statements")
        yield dsn


def noetl(dsn: str, *args: str) -> str:
    done = subprocess.run([*NOETL, *args], capture_output=True, text=True,
                          env={**os.environ, "NOETL_DSN": dsn}, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"noetl {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def run_playbook(dsn: str, playbook: Path, payload: str | None) -> dict[str, Any]:
    args = ["run", str(playbook), "--json"]
    if payload is not None:
        args += ["--payload", payload]
    execution_id = int(json.loads(noetl(dsn, *args))["execution_id"])
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select status, extract(epoch from finished_at - started_at)::float8 "
            "from noetl.execution where execution_id = %s", (execution_id,)).fetchone()
    assert row is not None
    return {"execution_id": execution_id, "status": row[0], "seconds": row[1]}


def report(dsn: str, units: int, top: int) -> None:
    with psycopg.connect(dsn) as conn:
        statements = conn.execute(STATEMENTS, {"top": top}).fetchall()
        functions = conn.execute(FUNCTIONS, {"top": top}).fetchall()
    print(f"\nstatements by execution time, per unit of work ({units} units)")
    print(f"{'us/unit':>9} {'calls/unit':>10} {'us/call':>9}  top  statement")
    for calls, total_ms, toplevel, query in statements:
        print(f"{total_ms * 1000 / units:9.1f} {calls / units:10.2f} "
              f"{total_ms * 1000 / calls:9.1f}  {'yes' if toplevel else '   '}  {query[:110]}")
    print("\nfunctions by self time (their statements excluded), per unit of work")
    print(f"{'self us/unit':>12} {'total us/unit':>13} {'calls/unit':>10}  function")
    for name, calls, self_ms, total_ms in functions:
        print(f"{self_ms * 1000 / units:12.1f} {total_ms * 1000 / units:13.1f} "
              f"{calls / units:10.2f}  {name}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("playbook", type=Path)
    parser.add_argument("--payload", help="JSON payload for `noetl run --payload`")
    parser.add_argument("--units", type=int, default=1,
                        help="units of work in one run (items, steps): figures are per unit")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    with profiling_server() as dsn:
        noetl(dsn, "db", "migrate")
        warm = run_playbook(dsn, args.playbook, args.payload)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select pg_stat_statements_reset(), pg_stat_reset()")
        measured = run_playbook(dsn, args.playbook, args.payload)
        print(f"warm-up run: {warm['status']} in {warm['seconds']:.3f} s; measured run: "
              f"{measured['status']} in {measured['seconds']:.3f} s "
              f"({measured['seconds'] * 1e6 / args.units:.1f} us per unit)")
        report(dsn, args.units, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
