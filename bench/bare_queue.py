"""The baselines every figure is a ratio to: a bare pgqueuer no-op consumer and the floor.

- pgqueuer: the queue a user would pick instead, from PyPI (`pgqueuer[asyncpg]`, pinned
  below) in a venv of its own, bench/.venv-pgqueuer, which this script creates on first
  use. bench/pgqueuer_consumer.py, run in that venv, drains `--jobs` pre-enqueued jobs of
  an entrypoint that does nothing with one QueueManager at batch_size 10 and at 100.
- floor: bench/floor.sql, the bare-SQL model of this engine's hot path
  (bench/user_paths.py has the driver): a `--jobs`-item loop (width 50, 2 slots, batch 25)
  and a `--steps`-step fused chain.
In rounds (each round runs all four on the same database, so they share the machine's
load); the median of the rounds is reported, as seconds per job / item / step.

    .venv/bin/python bench/bare_queue.py [--jobs 10000] [--steps 200] [--rounds 3]

Writes bench/results/bare_queue.json (`baselines`: seconds per unit of each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg
from benchlib import ROOT, figure, write_result
from psycopg.conninfo import conninfo_to_dict
from user_paths import floor_chain, floor_loop

from noetl_pg.testdb import create_database, drop_database

PGQUEUER = "pgqueuer[asyncpg]==1.6.0"
VENV = ROOT / "bench" / ".venv-pgqueuer"
CONSUMER = ROOT / "bench" / "pgqueuer_consumer.py"


def pgqueuer_python() -> Path:
    """The venv's interpreter, after creating the venv and installing pgqueuer if needed."""
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import pgqueuer, asyncpg"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV.relative_to(ROOT)} with {PGQUEUER}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", PGQUEUER],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {PGQUEUER} failed: {done.stderr[-2000:]}")
    return python


def url(dsn: str) -> str:
    """A postgresql:// URL for asyncpg (which does not read key=value DSNs)."""
    parts = conninfo_to_dict(dsn)
    user = parts.get("user") or "postgres"
    return (f"postgresql://{user}@{parts.get('host') or '127.0.0.1'}:"
            f"{parts.get('port') or 5432}/{parts['dbname']}")


def pgqueuer_drain(python: Path, dsn: str, jobs: int, batch: int) -> float:
    """Seconds per job of one pgqueuer drain of `jobs` no-op jobs at `batch`."""
    done = subprocess.run([str(python), str(CONSUMER), url(dsn), str(jobs), str(batch)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"pgqueuer consumer failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return float(report["seconds"]) / jobs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    python = pgqueuer_python()
    version = subprocess.run([str(python), "-c", "import pgqueuer; print(pgqueuer.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dsn = create_database("noetl_bench_bare")
    rounds: list[dict[str, float]] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((ROOT / "bench" / "floor.sql").read_text())
        pgqueuer_drain(python, dsn, 1000, 10)  # warm-up: schema, caches
        floor_loop(dsn, 1, 1000, 50, 2, 25)
        for index in range(args.rounds):
            run_id = 10 * (index + 1)
            figures = {
                "pgqueuer_b10": pgqueuer_drain(python, dsn, args.jobs, 10),
                "pgqueuer_b100": pgqueuer_drain(python, dsn, args.jobs, 100),
                "floor_loop": floor_loop(dsn, run_id, args.jobs, 50, 2, 25) / args.jobs,
                "floor_step": floor_chain(dsn, run_id + 1, args.steps) / args.steps,
            }
            print("round:", {key: f"{1 / value:.0f}/s" for key, value in figures.items()},
                  flush=True)
            rounds.append(figures)
    finally:
        drop_database(dsn)

    baselines = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    write_result("bare_queue", [
        figure("pgqueuer no-op consumer, batch 10", 1 / baselines["pgqueuer_b10"], "jobs/s",
               baselines["pgqueuer_b10"], f"pgqueuer {version}, {args.jobs} jobs"),
        figure("pgqueuer no-op consumer, batch 100", 1 / baselines["pgqueuer_b100"], "jobs/s",
               baselines["pgqueuer_b100"], f"pgqueuer {version}, {args.jobs} jobs"),
        figure("floor loop (width 50, 2 slots, batch 25)", 1 / baselines["floor_loop"],
               "items/s", baselines["floor_loop"], f"{args.jobs} items, bench/floor.sql"),
        figure("floor fused step", baselines["floor_step"] * 1000, "ms/step",
               baselines["floor_step"], f"{args.steps}-step chain, bench/floor.sql"),
    ], {"baselines": baselines, "rounds_raw": rounds, "pgqueuer_version": version,
        "jobs": args.jobs, "steps": args.steps})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
