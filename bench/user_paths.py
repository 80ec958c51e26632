"""What users run, beside a bare-SQL floor of the same design, as ratios measured in one run.

Configurations (each on the bench's own database, run in rounds so every configuration
sees the same machine load; the median of the rounds is reported):
  floor_loop      bench/floor.sql driven from this process: claim with its event, batched
                  completion with its event, the loop counter once per batch, next items
                  issued claimed in the same transaction. No templates, no tools.
  floor_step      the floor's fused step: a linear chain whose each completion issues and
                  claims the next step in one transaction.
  run_previous    `noetl run` with defaults (no flags, default python isolation) of a loop
                  over a previous step's output (`loop.in: "{{ start.xs }}"`).
  run_workload    the same through `noetl run`, the loop over the workload (`range(items)`).
  worker_default  `noetl worker` without flags serving the loop over previous output.
  tuned_previous  `noetl worker --concurrency 2 --batch-size 25`, python `isolation: inline`
                  (NOETL_PYTHON_ISOLATION), serving the loop over previous output.
  chain_default   `noetl run` of a linear chain of `--steps` noop steps, each reading the
                  previous one's result in its input: the per-step transition. 100 steps
                  by default: a fresh `noetl run` plans the engine's functions on its first
                  transitions (17, 5, 5 ms, then 2-3 ms), which a 20-step chain reports as
                  the transition's cost.
With `--big-items N` (default 100,000; 0 skips) the loop over previous output also runs
once at N items through `noetl run` and through the floor (linearity: items/s at N vs at
`--items`).

Times are the server's: execution.finished_at - started_at (the floor: its first to last
event), so process start-up and the driver's polling do not count. Before each engine run
the projection backlog of earlier runs is folded (drain_projection). Prints a table and writes
bench/results/user_paths.json. The machine is shared: compare the ratios, which are taken
within one round, rather than absolute figures across runs.

Usage: .venv/bin/python bench/user_paths.py [--items 10000] [--width 50] [--rounds 3]
       [--steps 100] [--big-items 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from benchlib import figure, write_result
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from noetl_pg import db
from noetl_pg.migrate import migrate
from noetl_pg.projection import Projector
from noetl_pg.testdb import create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent
NOETL = [sys.executable, "-m", "noetl_pg.cli"]

LOOP_PREVIOUS = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: loop_previous, path: bench/loop_previous}}
workload: {{items: {items}}}
workflow:
  - step: start
    tool:
      kind: python
      input: {{items: "{{{{ items }}}}"}}
      code: "result = {{'xs': list(range(items))}}"
    next: work
  - step: work
    loop:
      in: "{{{{ start.xs }}}}"
      iterator: n
      spec: {{mode: parallel, max_in_flight: {width}}}
    tool:
      kind: python
      input: {{n: "{{{{ n }}}}"}}
      code: "result = n * 2"
"""

LOOP_WORKLOAD = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: loop_workload, path: bench/loop_workload}}
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
      code: "result = n * 2"
"""


def chain_playbook(steps: int) -> str:
    lines = ["metadata: {name: chain, path: bench/chain}", "workload: {n: 0}", "workflow:"]
    for index in range(steps):
        source = "{{ n }}" if index == 0 else f"{{{{ s{index - 1} }}}}"
        lines += [f"  - step: s{index}", f"    tool: {{kind: noop, input: {{n: '{source}'}}}}"]
        if index + 1 < steps:
            lines.append(f"    next: s{index + 1}")
    return "\n".join(lines) + "\n"


# --- the floor -----------------------------------------------------------------------


def floor_loop(dsn: str, run_id: int, items: int, width: int, slots: int,
               batch: int) -> float:
    """Seconds from the floor loop's start to its last completion."""
    def slot(worker: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows: list[tuple[Any, ...]] = []
            while True:
                if not rows:
                    rows = conn.execute("select * from floor.claim(%s, %s)",
                                        (worker, batch)).fetchall()
                if not rows:
                    done = conn.execute("select done from floor.loop where run_id = %s",
                                        (run_id,)).fetchone()
                    if done is not None and done[0] >= items:
                        return
                    time.sleep(0.001)
                    continue
                results = [{"command_id": row[0], "result": row[2] * 2} for row in rows]
                rows = conn.execute("select * from floor.finish_loop_batch(%s, %s, %s)",
                                    (worker, run_id, Jsonb(results))).fetchall()

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select floor.start_loop(%s, %s, %s)", (run_id, items, width))
    threads = [threading.Thread(target=slot, args=(f"floor-{n}",)) for n in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _floor_span(dsn, run_id)


def floor_chain(dsn: str, run_id: int, steps: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        command_id = conn.execute(
            "with c as (insert into floor.command (run_id, pos, status, claimed_by) "
            "values (%s, 0, 'claimed', 'floor') returning command_id) "
            "insert into floor.event (run_id, command_id, event_type) "
            "select %s, command_id, 'issued' from c returning command_id",
            (run_id, run_id)).fetchone()[0]
        while command_id is not None:
            command_id = conn.execute("select floor.finish_step('floor', %s, %s, %s)",
                                      (command_id, Jsonb({"n": 1}), steps)).fetchone()[0]
    return _floor_span(dsn, run_id)


def _floor_span(dsn: str, run_id: int) -> float:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select extract(epoch from max(created_at) - min(created_at)) "
                           "from floor.event where run_id = %s", (run_id,)).fetchone()
    return float(row[0])


# --- the engine ----------------------------------------------------------------------


def drain_projection(dsn: str) -> None:
    """Fold every event so far, then release the shards: each timed run starts with no
    projection backlog (a run's own projector folds only its own events, as in a steady
    system, instead of the backlog of the bench's earlier runs)."""
    projector = Projector(dsn)
    with db.connect(dsn) as conn:
        projector.catch_up(conn, timeout=1800)
        db.fetch_one(conn, "release_projection_shards", owner=projector.owner)


def _execution_seconds(dsn: str, execution_id: int, items: int | None) -> float:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        row = conn.execute(
            "select status, extract(epoch from finished_at - started_at) as seconds, "
            "jsonb_array_length(case when jsonb_typeof(result -> 'results') = 'array' "
            "then result -> 'results' end) as results "
            "from noetl.execution where execution_id = %s", (execution_id,)).fetchone()
    assert row is not None and row["status"] == "COMPLETED", row
    if items is not None:
        assert row["results"] == items, row
    return float(row["seconds"])


def noetl_run(dsn: str, playbook: str, items: int | None,
              env: dict[str, str] | None = None) -> float:
    """`noetl run FILE --json` with no tuning flags; the server's run time."""
    drain_projection(dsn)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(playbook)
    try:
        done = subprocess.run(
            [*NOETL, "run", handle.name, "--json"], capture_output=True,
            text=True, env={**os.environ, **(env or {}), "NOETL_DSN": dsn}, timeout=1800,
        )
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(f"noetl run failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    output = done.stdout
    return _execution_seconds(dsn, int(json.loads(output)["execution_id"]), items)


def external_worker(dsn: str, path: str, items: int, flags: list[str],
                    env: dict[str, str]) -> float:
    """Start `path` served by one `noetl worker <flags>` process; the server's run time."""
    drain_projection(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update noetl.worker set stopped_at = now() where stopped_at is null")
        worker = subprocess.Popen(
            [*NOETL, "worker", *flags], env={**os.environ, **env, "NOETL_DSN": dsn},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while conn.execute("select count(*) from noetl.worker "
                               "where stopped_at is null").fetchone()[0] < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("worker did not register")
                time.sleep(0.05)
            time.sleep(0.5)  # every slot connected and idle
            execution_id = conn.execute("select noetl.start_execution(%s)",
                                        (path,)).fetchone()[0]
            while conn.execute("select status from noetl.execution where execution_id = %s",
                               (execution_id,)).fetchone()[0] == "RUNNING":
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    return _execution_seconds(dsn, execution_id, items)


def register(dsn: str, playbook: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(playbook)
    try:
        subprocess.run([*NOETL, "catalog", "register", handle.name], check=True,
                       capture_output=True, env={**os.environ, "NOETL_DSN": dsn}, timeout=120)
    finally:
        os.unlink(handle.name)
    return playbook.split("path: ")[1].split("}")[0]


# --- the report ----------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--big-items", type=int, default=100_000)
    args = parser.parse_args(argv)

    previous = LOOP_PREVIOUS.format(items=args.items, width=args.width)
    workload = LOOP_WORKLOAD.format(items=args.items, width=args.width)
    inline = {"NOETL_PYTHON_ISOLATION": "inline"}
    dsn = create_database("noetl_bench")
    rounds: list[dict[str, float]] = []
    big: dict[str, float] = {}
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((ROOT / "bench" / "floor.sql").read_text())
        path = register(dsn, previous)
        noetl_run(dsn, previous, args.items)  # warm-up: caches, statistics
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("analyze")
        run_id = 0
        for _ in range(args.rounds):
            run_id += 2
            figures = {
                "floor_loop": floor_loop(dsn, run_id, args.items, args.width, 2, 25),
                "floor_step": floor_chain(dsn, run_id + 1, args.steps) / args.steps,
                "run_previous": noetl_run(dsn, previous, args.items),
                "run_workload": noetl_run(dsn, workload, args.items),
                "worker_default": external_worker(dsn, path, args.items, [], {}),
                "tuned_previous": external_worker(
                    dsn, path, args.items, ["--concurrency", "2", "--batch-size", "25"], inline
                ),
                "chain_default": noetl_run(dsn, chain_playbook(args.steps), None) / args.steps,
            }
            print("round:", {key: round(value, 4) for key, value in figures.items()},
                  "load:", os.getloadavg()[0], flush=True)
            rounds.append(figures)
        if args.big_items:
            big = {
                "floor_loop": floor_loop(dsn, 10_000_001, args.big_items, args.width, 2, 25),
                "run_previous": noetl_run(
                    dsn, LOOP_PREVIOUS.format(items=args.big_items, width=args.width),
                    args.big_items),
            }
    finally:
        drop_database(dsn)

    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    ratio = {  # each taken within a round, then the median over rounds
        "chain_step_over_floor_step": statistics.median(
            r["chain_default"] / r["floor_step"] for r in rounds),
        "loop_throughput_over_floor": statistics.median(
            r["floor_loop"] / r["run_previous"] for r in rounds),
        "defaults_over_tuned": statistics.median(
            r["run_previous"] / r["tuned_previous"] for r in rounds),
        "worker_defaults_over_tuned": statistics.median(
            r["worker_default"] / r["tuned_previous"] for r in rounds),
        "previous_over_workload": statistics.median(
            r["run_previous"] / r["run_workload"] for r in rounds),
    }
    targets = {
        "chain_step_over_floor_step": ("<=", 1.5),
        "loop_throughput_over_floor": (">=", 0.8),
        "defaults_over_tuned": ("<=", 1.4),
        "worker_defaults_over_tuned": ("<=", 1.4),
        "previous_over_workload": ("<=", 1.25),
    }
    report: dict[str, Any] = {
        "items": args.items, "width": args.width, "rounds": args.rounds,
        "steps": args.steps, "seconds_median": median, "ratios": ratio,
        "targets": {key: {"op": op, "value": value,
                          "met": ratio[key] <= value if op == "<=" else ratio[key] >= value}
                    for key, (op, value) in targets.items()},
        "rounds_raw": rounds, "load_average_end": os.getloadavg()[0],
    }
    if big:
        report["big"] = {
            "items": args.big_items, "seconds": big,
            "items_per_s": {key: args.big_items / value for key, value in big.items()},
            "run_previous_rate_big_over_small": (args.big_items / big["run_previous"])
            / (args.items / median["run_previous"]),
        }

    print(f"{args.items} items, max_in_flight {args.width}, {args.steps}-step chain, "
          f"median of {args.rounds} rounds")
    for key, value in median.items():
        rate = "" if key in ("floor_step", "chain_default") else \
            f"  {args.items / value:8.0f} items/s"
        print(f"  {key:<15} {value * (1000 if rate == '' else 1):9.3f} "
              f"{'ms/step' if rate == '' else 's'}{rate}")
    for key, value in ratio.items():
        op, target = targets[key]
        met = value <= target if op == "<=" else value >= target
        print(f"  {key:<27} {value:6.2f}  target {op} {target}  {'met' if met else 'NOT met'}")
    if big:
        print(f"  {args.big_items} items: " + ", ".join(
            f"{key} {value:.1f} s" for key, value in big.items()))
    loops = {"floor_loop": "bench/floor.sql", "run_previous": "noetl run, loop over a step",
             "run_workload": "noetl run, loop over the workload",
             "worker_default": "noetl worker, no flags",
             "tuned_previous": "noetl worker --concurrency 2 --batch-size 25, inline python"}
    figures = [figure(f"{args.items}-item loop: {key}", args.items / median[key], "items/s",
                      median[key] / args.items, note) for key, note in loops.items()]
    figures += [figure(f"{args.steps}-step chain: {key}", median[key] * 1000, "ms/step",
                       median[key], note) for key, note in (
                           ("floor_step", "bench/floor.sql fused step"),
                           ("chain_default", "noetl run, noop steps"))]
    if big:
        figures += [figure(f"{args.big_items}-item loop: {key}", rate, "items/s",
                           1 / rate) for key, rate in report["big"]["items_per_s"].items()]
    report["targets"] = [{"name": key.replace("_", " "), "measured": round(ratio[key], 2),
                          "op": op, "limit": value, "met": report["targets"][key]["met"]}
                         for key, (op, value) in targets.items()]
    write_result("user_paths", figures, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
