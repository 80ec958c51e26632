"""Where a loop's CPU goes: CPU seconds per item by process, the engine's beside the floor's.

The loop of user_paths.py (`noetl run`, defaults, a loop over the previous step's output)
and the floor's loop (floor.sql, driven from this process) run in turns on one database
while a sampler reads /proc every 20 ms: the `noetl run` process (its slots, projector
and follower; counted from the moment its execution exists, so start-up imports are
left out), its descendants (the python executors) and the database's backends (found in
pg_stat_activity, the sampler's own excluded); for the floor, this process's CPU less
the sampler's and the backends. Each process's CPU is taken from its first sample to its
last, so a process that ends between two samples loses at most 20 ms.

The figures say what the two cores are spent on: a target of "X items/s" needs the CPU
per item of every process together under about 2 / X seconds on this machine. Not part
of `make bench`: a diagnosis (medians of `--runs`).

Usage: .venv/bin/python bench/cpu_budget.py [--items 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from benchlib import descendants, figure, write_result
from user_paths import LOOP_PREVIOUS, NOETL, drain_projection, floor_loop

from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.02


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU of a live process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


class Sampler(threading.Thread):
    """CPU per process class while running: `classes()` maps a class to its pids."""

    def __init__(self, dsn: str, watched: int | None) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.watched = watched  # the `noetl run` process, or None (the floor)
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, float] = {}
        self.own_cpu = 0.0
        self.counting = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            own = conn.info.backend_pid
            while not self.stopping.is_set():
                started = time.thread_time()
                if self.counting.is_set():
                    self._sample(conn, own)
                self.own_cpu += time.thread_time() - started
                self.stopping.wait(SAMPLE_SECONDS)
            self._sample(conn, own)

    def _sample(self, conn: psycopg.Connection[Any], own: int) -> None:
        backends = [row[0] for row in conn.execute(
            "select pid from pg_stat_activity where datname = current_database()"
            " and pid <> %s", (own,))]
        pids = [("database", pid) for pid in backends]
        if self.watched is not None:
            pids += [("worker process", self.watched)]
            pids += [("executors", pid) for pid in descendants(self.watched)]
        for name, pid in pids:
            value = cpu_seconds(pid)
            if value is None:
                continue
            self.first.setdefault(pid, (name, value))
            self.last[pid] = value

    def by_class(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, (name, start) in self.first.items():
            totals[name] = totals.get(name, 0.0) + self.last[pid] - start
        return totals


def engine_run(dsn: str, playbook: Path, items: int) -> tuple[float, dict[str, float]]:
    """`noetl run` of the loop with defaults: execution seconds and CPU seconds by class."""
    drain_projection(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("select coalesce(max(execution_id), 0) from noetl.execution"
                              ).fetchone()[0]
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen([*NOETL, "run", str(playbook), "--json"],
                                       stdout=output, stderr=subprocess.DEVNULL,
                                       env={**os.environ, "NOETL_DSN": dsn})
            sampler = Sampler(dsn, process.pid)
            sampler.start()
            while conn.execute("select count(*) from noetl.execution where execution_id > %s",
                               (before,)).fetchone()[0] == 0:
                if process.poll() is not None:
                    raise RuntimeError("noetl run ended before its execution started")
                time.sleep(0.005)
            sampler.counting.set()
            process.wait(timeout=1800)
            sampler.stopping.set()
            sampler.join()
        row = conn.execute(
            "select status, extract(epoch from finished_at - started_at)"
            " from noetl.execution where execution_id > %s", (before,)).fetchone()
    assert row is not None and row[0] == "COMPLETED", row
    return float(row[1]), {name: cpu / items for name, cpu in sampler.by_class().items()}


def floor_run(dsn: str, run_id: int, items: int) -> tuple[float, dict[str, float]]:
    """The floor's loop driven from this process: seconds and CPU seconds by class."""
    sampler = Sampler(dsn, None)
    sampler.start()
    sampler.counting.set()
    started = resource.getrusage(resource.RUSAGE_SELF)
    seconds = floor_loop(dsn, run_id, items, 50, 2, 25)
    ended = resource.getrusage(resource.RUSAGE_SELF)
    sampler.stopping.set()
    sampler.join()
    driver = (ended.ru_utime + ended.ru_stime - started.ru_utime - started.ru_stime
              - sampler.own_cpu)
    return seconds, {"driver": driver / items,
                     **{name: cpu / items for name, cpu in sampler.by_class().items()}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    dsn = create_database("noetl_cpu_budget")
    engine: list[tuple[float, dict[str, float]]] = []
    floor: list[tuple[float, dict[str, float]]] = []
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((ROOT / "bench" / "floor.sql").read_text().encode())
        with tempfile.TemporaryDirectory() as directory:
            playbook = Path(directory) / "loop_previous.yaml"
            playbook.write_text(LOOP_PREVIOUS.format(items=args.items, width=50))
            for run in range(args.runs):
                engine.append(engine_run(dsn, playbook, args.items))
                floor.append(floor_run(dsn, run + 1, args.items))
    finally:
        drop_database(dsn)
    report: dict[str, Any] = {"items": args.items, "runs": args.runs}
    figures = []
    print(f"{args.items} items, median of {args.runs} runs; CPU microseconds per item")
    for side, runs in (("engine", engine), ("floor", floor)):
        seconds = statistics.median(run[0] for run in runs)
        names = sorted({name for _, cpu in runs for name in cpu})
        per_item = {name: statistics.median(cpu.get(name, 0.0) for _, cpu in runs) * 1e6
                    for name in names}
        total = sum(per_item.values())
        busy = total * args.items / 1e6 / seconds
        print(f"  {side}: {seconds:.2f} s, {args.items / seconds:,.0f} items/s,"
              f" {total:.0f} us of CPU per item ({busy:.2f} cores busy)")
        for name, value in per_item.items():
            print(f"    {name:16} {value:7.1f}")
        report[side] = {"seconds": seconds, "cpu_us_per_item": per_item,
                        "cores_busy": busy, "runs": runs}
        figures.append(figure(f"{side} loop: CPU per item, all processes", total, "us"))
    write_result("cpu_budget", figures, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
