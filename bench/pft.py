"""The pft example (examples/pft) at full size, timed: 10 facilities x 1,000 patients x 5
data types, one cursor loop per facility and data type.

Runs examples/pft/run.py's flow on a database of its own with an in-process worker and
reports the wall time, the server's time (the flow's finished_at - started_at), rows per
second, and per claimed row the engine's events and committed transactions (all
executions of the run; transactions from pg_stat_database, so they include the bench's
own polling). The verdict must be complete (1000/1000 everywhere), else it exits 1.

    .venv/bin/python bench/pft.py [--facilities 10] [--patients 1000] [--worker-slots 4]
Writes bench/results/pft.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import figure, load_example, write_result

from noetl_pg import db
from noetl_pg.migrate import migrate
from noetl_pg.testdb import create_database, drop_database
from noetl_pg.worker import Worker


def _one(dsn: str, statement: str, *params: Any) -> Any:
    with db.connect(dsn) as conn:
        row = conn.execute(statement, params or None).fetchone()
    assert row is not None
    return next(iter(row.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facilities", type=int, default=10)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--claim-batch", type=int, default=25)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--units-in-flight", type=int, default=5)
    parser.add_argument("--worker-slots", type=int, default=4)
    args = parser.parse_args()
    workload = {"num_facilities": args.facilities, "patients_per_facility": args.patients,
                "claim_batch": args.claim_batch, "slots": args.slots,
                "units_in_flight": args.units_in_flight}
    rows = args.facilities * args.patients * 5
    pft = load_example("examples/pft/run.py")
    dsn = create_database("noetl_bench_pft")
    try:
        migrate(dsn)
        pft.register(dsn)
        commits = "select xact_commit from pg_stat_database where datname = current_database()"
        before = int(_one(dsn, commits))
        worker = Worker(dsn, slots=args.worker_slots, poll_interval=0.2,
                        credentials=pft.credentials(dsn))
        worker.start()
        try:
            started = time.monotonic()
            run = pft.run_flow(dsn, workload)
            wall = time.monotonic() - started
        finally:
            worker.stop()
            worker.join(timeout=60)
        transactions = int(_one(dsn, commits)) - before
        server = float(_one(dsn, "select extract(epoch from finished_at - started_at) "
                                 "from noetl.execution where execution_id = %s",
                            run.execution_id))
        events = int(_one(dsn, "select count(*) from noetl.event"))
        load = Path("/proc/loadavg").read_text().split()[0]
        report = {
            "workload": workload, "worker_slots": args.worker_slots, "rows": rows,
            "status": run.status, "result": run.result, "error": run.error,
            "wall_seconds": round(wall, 1), "server_seconds": round(server, 1),
            "rows_per_second": round(rows / server, 1) if server else None,
            "events_per_row": round(events / rows, 2),
            "transactions_per_row": round(transactions / rows, 2),
            "load_average_at_end": load,
        }
        write_result("pft", [
            figure(f"pft {args.facilities} x {args.patients} x 5 rows on cursor loops",
                   report["rows_per_second"] or 0.0, "rows/s",
                   server / rows if server else None,
                   f"{rows} rows, in-process worker with {args.worker_slots} slots; "
                   f"{report['events_per_row']} events and "
                   f"{report['transactions_per_row']} transactions per row"),
        ], report)
        print(f"pft {args.facilities} x {args.patients} x 5 = {rows} rows, "
              f"{args.worker_slots} worker slots: {run.status} in {server:.1f} s "
              f"({report['rows_per_second']} rows/s; wall {wall:.1f} s), "
              f"{report['events_per_row']} events and {report['transactions_per_row']} "
              f"transactions per row; load average {load}")
        print(f"  result: {run.result if run.error is None else run.error}")
        return 0 if run.status == "COMPLETED" else 1
    finally:
        drop_database(dsn)


if __name__ == "__main__":
    sys.exit(main())
