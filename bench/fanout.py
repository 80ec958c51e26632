"""A 100,000-item fan-out under `noetl worker` with no flags.

One loop of `--items` python iterations (`result = n * 2`, default process isolation) with
`spec.policy.exec: distributed` (a fan-out: every item a shard any worker may take,
`loop.shard.done` per item, fan-in at the end), max_in_flight `--width`, then one step
reading the loop's stats. On a database of its own: a warm-up run of `--warmup-items`,
then the measured run. Reported: seconds (the server's, started_at to finished_at),
items/s, events per item (the events of the loop's iterations / items; every event of the
execution / items beside it), and the worker
process's RSS at the measured run's start, its peak and end (and the process tree's, with
the python executors). Targets: at most 4 events per item, RSS peak < 1.5x start.

    .venv/bin/python bench/fanout.py [--items 100000] [--width 100] [--warmup-items 1000]

Writes bench/results/fanout.json.
"""

from __future__ import annotations

import argparse
import sys

import psycopg
from benchlib import (
    NoetlWorker,
    RssSampler,
    figure,
    rss_kib,
    start_execution,
    wait_finished,
    write_result,
)

from noetl_pg import db
from noetl_pg.catalog import register_text
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database

PATH = "bench/fanout"
PLAYBOOK = """
apiVersion: noetl.io/v2
kind: Playbook
metadata: {{name: fanout, path: bench/fanout}}
workload: {{items: 1000}}
workflow:
  - step: scan
    loop:
      in: "{{{{ range(items) | list }}}}"
      iterator: n
      spec: {{mode: parallel, max_in_flight: {width}, policy: {{exec: distributed}}}}
    tool:
      kind: python
      input: {{n: "{{{{ n }}}}"}}
      code: "result = n * 2"
    next: {{arcs: [{{step: report}}]}}
  - step: report
    tool:
      kind: python
      input: {{stats: "{{{{ scan.stats }}}}"}}
      code: "result = {{'stats': stats}}"
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--warmup-items", type=int, default=1000)
    args = parser.parse_args(argv)

    dsn = create_database("noetl_bench_fanout")
    try:
        migrate(dsn)
        with db.connect(dsn) as conn:
            register_text(conn, PLAYBOOK.format(width=args.width), source=PATH)
        with NoetlWorker(dsn) as worker:
            idle_kib = rss_kib(worker.pid)
            warmup = start_execution(dsn, PATH, {"items": args.warmup_items})
            if wait_finished(dsn, warmup)["status"] != "COMPLETED":
                raise RuntimeError("fan-out warm-up did not complete")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("analyze")
            with RssSampler(worker.pid, interval=0.5) as rss:
                execution_id = start_execution(dsn, PATH, {"items": args.items})
                final = wait_finished(dsn, execution_id, timeout=3600)
        with psycopg.connect(dsn) as conn:
            events, item_events, result = conn.execute(
                "select count(*), count(*) filter (where iter_index is not null), "
                "(select result from noetl.execution where execution_id = %s) "
                "from noetl.event where execution_id = %s",
                (execution_id, execution_id)).fetchone() or (0, 0, None)
    finally:
        drop_database(dsn)

    if final["status"] != "COMPLETED" or result != {
            "stats": {"total": args.items, "success": args.items, "failed": 0}}:
        print(f"fan-out did not complete: {final} {result}", file=sys.stderr)
        return 1
    seconds = final["seconds"]
    memory = rss.figures()
    run = {"items": args.items, "width": args.width, "seconds": seconds,
           "items_per_s": args.items / seconds, "events": events,
           "events_per_item": item_events / args.items,
           "all_events_per_item": events / args.items, "rss_idle_mib": idle_kib / 1024, **memory}
    print(f"fan-out of {args.items}: {seconds:.1f}s, {run['items_per_s']:.0f} items/s, "
          f"{run['events_per_item']:.3f} events/item; worker RSS start "
          f"{memory['rss_start_mib']:.0f} MiB, peak {memory['rss_peak_mib']:.0f}, end "
          f"{memory['rss_end_mib']:.0f} (tree peak {memory['tree_rss_peak_mib']:.0f})",
          flush=True)
    figures = [
        figure(f"fan-out of {args.items:,} items", args.items / seconds, "items/s",
               seconds / args.items, f"{seconds:.1f} s, python steps, noetl worker"),
        figure(f"fan-out of {args.items:,} items, time", seconds, "s"),
        figure("fan-out events per item", run["events_per_item"], "events",
               note=f"events of its iterations; every event of the execution / items: "
                    f"{run['all_events_per_item']:.4f}"),
        figure("fan-out worker RSS start / peak / end", memory["rss_peak_mib"], "MiB peak",
               note=f"start {memory['rss_start_mib']:.0f}, end {memory['rss_end_mib']:.0f}; "
                    f"with executors {memory['tree_rss_start_mib']:.0f}/"
                    f"{memory['tree_rss_peak_mib']:.0f}/{memory['tree_rss_end_mib']:.0f}"),
    ]
    targets = [
        {"name": f"fan-out {args.items:,}: events per item", "op": "<=", "limit": 4,
         "measured": round(run["events_per_item"], 3), "met": run["events_per_item"] <= 4},
        {"name": f"fan-out {args.items:,}: worker RSS peak / start", "op": "<", "limit": 1.5,
         "measured": round(memory["peak_over_start"], 2),
         "met": memory["peak_over_start"] < 1.5},
    ]
    write_result("fanout", figures, {"targets": targets, "run": run})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
