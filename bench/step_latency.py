"""Step latency: time from start_execution to playbook.completed for a 10-step linear chain.

A warm `noetl worker` process serves a fresh database; the bench runs the chain RUNS times
one after another and reads every timing from event timestamps (clock_timestamp() in the
database), so the driver's own polling does not count. Reports the median and p95 of the
end-to-end time and the per-step transition time (end-to-end / steps, and the median gap
between one step's call.done and the next one's call.done).

    .venv/bin/python bench/step_latency.py [--runs 60] [--steps 10]
Writes bench/results/step_latency.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time

import psycopg
import yaml
from benchlib import figure, write_result

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database


def chain_playbook(steps: int) -> str:
    workflow = []
    for index in range(steps):
        step = {
            "step": f"s{index}",
            "tool": {"kind": "python", "input": {"n": "{{ ctx.n }}" if index == 0 else
                                                  f"{{{{ s{index - 1}.n }}}}"},
                     "code": "result = {'n': n + 1}"},
        }
        if index + 1 < steps:
            step["next"] = {"arcs": [{"step": f"s{index + 1}"}]}
        workflow.append(step)
    return yaml.safe_dump({"metadata": {"path": "bench/chain"}, "workload": {"n": 0},
                           "workflow": workflow}, sort_keys=False)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--projector", action="store_true",
                        help="let the worker process also run the projector (off the "
                             "critical path, but it shares the two cores)")
    args = parser.parse_args()

    dsn = create_database("noetl_bench")
    worker = None
    try:
        migrate(dsn)
        with db.connect(dsn) as conn:
            register_text(conn, chain_playbook(args.steps), source="bench/chain")
        worker = subprocess.Popen(
            [sys.executable, "-m", "noetl_pg.cli", "worker", "--concurrency", "2",
             *([] if args.projector else ["--no-projector"])],
            env={**os.environ, "NOETL_DSN": dsn}, stderr=subprocess.DEVNULL,
        )
        end_to_end: list[float] = []
        gaps: list[float] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for run in range(args.runs + 3):
                execution_id = conn.execute(
                    "select noetl.start_execution('bench/chain')").fetchone()[0]
                while conn.execute("select status from noetl.execution where execution_id = %s",
                                   (execution_id,)).fetchone()[0] == "RUNNING":
                    time.sleep(0.002)
                if run < 3:  # warm-up: worker caches, prepared statements
                    continue
                started, finished = conn.execute(
                    "select min(created_at) filter (where event_type = 'playbook.started'), "
                    "max(created_at) filter (where event_type = 'playbook.completed') "
                    "from noetl.event where execution_id = %s", (execution_id,)).fetchone()
                end_to_end.append((finished - started).total_seconds() * 1000)
                done_times = [row[0] for row in conn.execute(
                    "select created_at from noetl.event where execution_id = %s "
                    "and event_type = 'call.done' order by event_id", (execution_id,))]
                gaps += [(b - a).total_seconds() * 1000 for a, b in
                         itertools.pairwise(done_times)]
        report = {
            "runs": args.runs,
            "projector_in_worker": args.projector,
            "steps": args.steps,
            "end_to_end_ms": {"median": statistics.median(end_to_end),
                              "p95": percentile(end_to_end, 0.95)},
            "per_step_ms": {
                "median_end_to_end_over_steps": statistics.median(end_to_end) / args.steps,
                "median_step_to_step_gap": statistics.median(gaps),
                "p95_step_to_step_gap": percentile(gaps, 0.95),
            },
        }
        per_step = report["per_step_ms"]
        write_result("step_latency", [
            figure(f"{args.steps}-step python chain, start to completed",
                   report["end_to_end_ms"]["median"], "ms",
                   note=f"p95 {report['end_to_end_ms']['p95']:.1f} ms, warm noetl worker "
                        "(2 slots, default isolation)"),
            figure("per-step transition (end-to-end / steps)",
                   per_step["median_end_to_end_over_steps"], "ms/step",
                   per_step["median_end_to_end_over_steps"] / 1000,
                   f"step-to-step gap median {per_step['median_step_to_step_gap']:.2f} ms"),
        ], report)
        print(f"{args.steps}-step linear python chain, {args.runs} runs, warm worker")
        print(f"  start -> playbook.completed: median {report['end_to_end_ms']['median']:.2f} ms, "
              f"p95 {report['end_to_end_ms']['p95']:.2f} ms")
        per_step = report["per_step_ms"]
        print(f"  per-step transition: {per_step['median_end_to_end_over_steps']:.2f} ms "
              f"(end-to-end / steps); step-to-step gap median "
              f"{per_step['median_step_to_step_gap']:.2f} ms, "
              f"p95 {per_step['p95_step_to_step_gap']:.2f} ms")
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        drop_database(dsn)


if __name__ == "__main__":
    main()
