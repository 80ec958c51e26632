"""Loop throughput: a 10,000-item parallel loop of trivial python steps, max_in_flight 50.

Runs on a database of its own (noetl_pg.testdb). The database is first warmed the way a
long-running system is: one untimed run of the same loop, then ANALYZE (without table
statistics, plans cached while the queue tables were empty keep scanning them
sequentially as they grow). Then 1 and 2 `noetl worker` processes, 3 runs each; reported
per configuration is the median of:
  - iterations/s: items / (execution finished_at - started_at), measured by the server;
  - events per iteration: rows of noetl.event of the execution / items;
  - transactions per iteration: the database's pg_stat_database.xact_commit delta over
    the run (workers are stopped first, which flushes their statistics) / items, minus
    this script's own polling transactions.
Each worker process runs `--slots` slots claiming `--batch-size` commands per round trip
(default 2 x 25: two slots cover the loop's width, so one slot runs its Python while the
other is in the database; more slots only queue up on the loop's counter row).
The python step runs `isolation: inline` (bench/python_isolation.py measures the
subprocess mode). Prints a table and writes bench/results/loop_throughput.json.

Usage: .venv/bin/python bench/loop_throughput.py [--items N] [--width W] [--runs R]
       [--processes 1,2] [--slots S] [--batch-size B] [--cold]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from benchlib import figure, write_result

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
NOETL = Path(sys.executable).with_name("noetl")

PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: loop_throughput, path: bench/loop_throughput}}
workload: {{items: {items}}}
workflow:
  - step: work
    loop:
      in: "{{{{ range(items) | list }}}}"
      iterator: n
      spec: {{mode: parallel, max_in_flight: {width}}}
    tool:
      kind: python
      input: {{n: "{{{{ n }}}}"}}
      isolation: inline
      code: "result = n * 2"
"""


def _scalar(conn: psycopg.Connection[Any], statement: str) -> Any:
    row = conn.execute(statement).fetchone()
    assert row is not None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


def _xact_commits(conn: psycopg.Connection[Any]) -> int:
    conn.execute("select pg_stat_clear_snapshot()")
    return int(_scalar(conn, "select xact_commit from pg_stat_database "
                             "where datname = current_database()"))


def _start_workers(dsn: str, processes: int, slots: int, batch_size: int) -> list[Any]:
    env = {**os.environ, "NOETL_DSN": dsn}
    return [
        subprocess.Popen(
            [str(NOETL), "worker", "--concurrency", str(slots), "--batch-size", str(batch_size),
             "--worker-id", f"bench-{index}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for index in range(processes)
    ]


def _stop_workers(workers: list[Any]) -> None:
    for process in workers:
        process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_once(dsn: str, path: str, processes: int, items: int, slots: int,
             batch_size: int) -> dict[str, float]:
    with db.connect(dsn) as conn:
        conn.execute("update noetl.worker set stopped_at = now() where stopped_at is null")
        workers = _start_workers(dsn, processes, slots, batch_size)
        try:
            deadline = time.monotonic() + 30
            while _scalar(conn, "select count(*) from noetl.worker "
                                "where stopped_at is null") < processes:
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not register")
                time.sleep(0.05)
            time.sleep(0.5)  # let every slot connect and go idle
            before = _xact_commits(conn)
            polls = 0
            row = db.fetch_one(conn, "start_execution", path=path, payload={}, version=None)
            assert row is not None
            execution_id = row["execution_id"]
            deadline = time.monotonic() + 600
            while True:
                polls += 1
                status = db.fetch_one(conn, "execution_status", execution_id=execution_id)
                assert status is not None
                if status["status"] != "RUNNING":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"execution {execution_id} did not finish")
                time.sleep(0.05)
        finally:
            _stop_workers(workers)
        if status["status"] != "COMPLETED":
            raise RuntimeError(f"execution {execution_id}: {status['status']} {status['error']}")
        timing = conn.execute(
            "select extract(epoch from finished_at - started_at) as seconds, "
            "jsonb_array_length(result -> 'results') as results "
            "from noetl.execution where execution_id = %s", (execution_id,)
        ).fetchone()
        assert timing is not None and timing["results"] == items, timing
        events = _scalar(conn, f"select count(*) from noetl.event "
                               f"where execution_id = {int(execution_id)}")
        time.sleep(1.0)  # backends flush their statistics at exit; give the collector a beat
        after = _xact_commits(conn)
    seconds = float(timing["seconds"])
    # Our own statements: start + polls + the reads after the run, one transaction each.
    own = 1 + polls + 4
    return {
        "seconds": seconds,
        "iterations_per_s": items / seconds,
        "events_per_iteration": events / items,
        "transactions_per_iteration": max(after - before - own, 0) / items,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--cold", action="store_true",
                        help="skip the warm-up run and ANALYZE (a brand-new database)")
    args = parser.parse_args(argv)

    dsn = create_database("noetl_bench")
    summary: dict[str, Any] = {
        "items": args.items, "max_in_flight": args.width, "runs": args.runs,
        "slots": args.slots, "batch_size": args.batch_size, "warmed": not args.cold,
        "configurations": [],
    }
    try:
        migrate(dsn)
        with db.connect(dsn) as conn:
            path = "bench/loop_throughput"
            register_text(conn, PLAYBOOK.format(items=args.items, width=args.width),
                          source=path)
        if not args.cold:
            run_once(dsn, path, 1, args.items, args.slots, args.batch_size)
            with db.connect(dsn) as conn:
                conn.execute("analyze")
        for processes in (int(value) for value in args.processes.split(",")):
            runs = [run_once(dsn, path, processes, args.items, args.slots, args.batch_size)
                    for _ in range(args.runs)]
            summary["configurations"].append({
                "worker_processes": processes,
                **{key: statistics.median(run[key] for run in runs) for key in runs[0]},
                "runs": runs,
            })
    finally:
        drop_database(dsn)

    print(f"loop of {args.items} items, max_in_flight {args.width}, "
          f"median of {args.runs} runs")
    print(f"{'processes':>9} {'it/s':>9} {'events/it':>10} {'xacts/it':>9} {'seconds':>8}")
    for config in summary["configurations"]:
        print(f"{config['worker_processes']:>9} {config['iterations_per_s']:>9.0f} "
              f"{config['events_per_iteration']:>10.2f} "
              f"{config['transactions_per_iteration']:>9.3f} {config['seconds']:>8.2f}")
    figures = []
    for config in summary["configurations"]:
        processes = config["worker_processes"]
        figures.append(figure(
            f"{args.items}-item loop, {processes} worker process(es)",
            config["iterations_per_s"], "items/s", 1 / config["iterations_per_s"],
            f"tuned: {args.slots} slots x batch {args.batch_size}, inline python; "
            f"{config['events_per_iteration']:.2f} events and "
            f"{config['transactions_per_iteration']:.3f} transactions per item"))
    write_result("loop_throughput", figures, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
