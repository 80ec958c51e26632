"""Status latency and projection lag while a 10,000-item loop runs.

Creates a scratch database, starts an in-process worker (NOETL_BENCH_SLOTS slots, default
8) and an in-process projector, runs a parallel loop of NOETL_BENCH_ITEMS items (default
10,000), and samples every 0.1 s: the time `noetl status` takes (the `execution_progress`
query: one row, no event scan) and the projection lag (seconds behind, and loop iterations
done in the engine but not yet in the projection). Prints percentiles and writes
bench/results/status_latency.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "py"))

from benchlib import figure, write_result
from engine_harness import Engine

from noetl_pg import db
from noetl_pg.migrate import migrate
from noetl_pg.projection import Projector
from noetl_pg.testdb import create_database, drop_database

ITEMS = int(os.environ.get("NOETL_BENCH_ITEMS", "10000"))
SLOTS = int(os.environ.get("NOETL_BENCH_SLOTS", "8"))

PLAYBOOK = f"""
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: status_latency, path: bench/status_latency}}
workload: {{n: {ITEMS}}}
workflow:
  - step: items
    tool: {{kind: python, input: {{n: "{{{{ workload.n }}}}"}}, code: "result = list(range(n))"}}
    next: {{arcs: [{{step: work}}]}}
  - step: work
    loop:
      in: "{{{{ items }}}}"
      iterator: item
      spec: {{mode: parallel, max_in_flight: 200}}
    tool: {{kind: noop}}
"""


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"p50 {statistics.median(ordered):.2f}  p95 {p95:.2f}  max {ordered[-1]:.2f}"
            f"  (n={len(ordered)})")


def sample(dsn: str, execution_id: int, stop: threading.Event) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"status_ms": [], "lag_s": [], "iterations_behind": []}
    with db.connect(dsn) as conn:
        while not stop.is_set():
            began = time.perf_counter()
            row = db.fetch_one(conn, "execution_progress", execution_id=execution_id)
            samples["status_ms"].append((time.perf_counter() - began) * 1000)
            assert row is not None
            samples["lag_s"].append(row["projection_seconds_behind"])
            engine_loop: Any = conn.execute(
                "select done + failed as finished from noetl.loop where execution_id = %s",
                (execution_id,),
            ).fetchone()
            projected = ((row["state"] or {}).get("loop") or {}).get("work")
            if engine_loop is not None and projected is not None:
                samples["iterations_behind"].append(
                    engine_loop["finished"] - projected["done"] - projected["failed"]
                )
            stop.wait(0.1)
    return samples


def main() -> int:
    dsn = create_database("noetl_bench")
    try:
        migrate(dsn)
        engine = Engine(dsn)
        path = engine.register(PLAYBOOK)
        projector = Projector(dsn, poll_interval=0.05)
        projector.start()
        with engine.worker(slots=SLOTS, batch_size=32):
            started = time.monotonic()
            execution_id = engine.start(path)
            stop = threading.Event()
            result: dict[str, dict[str, list[float]]] = {}
            sampler = threading.Thread(
                target=lambda: result.update(samples=sample(dsn, execution_id, stop))
            )
            sampler.start()
            row = engine.wait(execution_id, timeout=1800)
            run_seconds = time.monotonic() - started
            with db.connect(dsn) as conn:
                while True:
                    progress = db.fetch_one(conn, "execution_progress",
                                            execution_id=execution_id)
                    assert progress is not None
                    if (progress["state"] or {}).get("status") == row["status"]:
                        break
                    time.sleep(0.02)
            catch_up_seconds = time.monotonic() - started - run_seconds
            stop.set()
            sampler.join()
        projector.stop()
        projector.join(timeout=30)
        samples = result["samples"]
        events = progress["state"]["events"]
        print(f"loop of {ITEMS} items, {SLOTS} worker slots: {row['status']} in "
              f"{run_seconds:.1f}s, {events} events ({events / run_seconds:.0f}/s)")
        print(f"projection caught up {catch_up_seconds:.2f}s after the run ended")
        print(f"status latency ms (client round trip): {percentiles(samples['status_ms'])}")
        print(f"projection lag s (oldest unfolded event): {percentiles(samples['lag_s'])}")
        print("projection lag in loop iterations: "
              f"{percentiles([float(v) for v in samples['iterations_behind']])}")
        def median(values: list[float]) -> float:
            return statistics.median(values) if values else 0.0

        write_result("status_latency", [
            figure(f"{ITEMS}-item loop with status sampling", ITEMS / run_seconds, "items/s",
                   run_seconds / ITEMS, f"in-process worker, {SLOTS} slots, noop steps"),
            figure("noetl status latency while the loop runs", median(samples["status_ms"]),
                   "ms p50", note=percentiles(samples["status_ms"])),
            figure("projection lag while the loop runs", median(samples["lag_s"]), "s p50",
                   note=f"caught up {catch_up_seconds:.2f} s after the run"),
        ], {"items": ITEMS, "slots": SLOTS, "status": row["status"],
            "run_seconds": run_seconds, "events": events,
            "catch_up_seconds": catch_up_seconds})
        return 0 if row["status"] == "COMPLETED" else 1
    finally:
        drop_database(dsn)


if __name__ == "__main__":
    sys.exit(main())
