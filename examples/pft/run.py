"""Run the pft example end to end: `python examples/pft/run.py [--facilities 3 --patients 200]`.

Registers pft/patients and pft/flow, runs an in-process worker whose `pft_pg` credential
points at the database itself (the queue and result tables live beside the engine's
schema), starts pft/flow with the sizes given and prints its verdict: every facility and
data type patients/patients, the tool runs (patients x 5 x facilities when no worker died)
and the time taken.

The database is NOETL_DSN when set, else a database of its own on the test server
(noetl_pg.testdb), dropped at the end. Exits 1 unless the run completes with every
facility and data type complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noetl_pg import db
from noetl_pg.catalog import register_file
from noetl_pg.credentials import MappingCredentialResolver
from noetl_pg.migrate import migrate
from noetl_pg.runtime import wait_for_execution
from noetl_pg.testdb import create_database, drop_database
from noetl_pg.worker import Worker

HERE = Path(__file__).resolve().parent
PLAYBOOKS = ("pft_patients.yaml", "pft_flow.yaml")


@dataclass(frozen=True)
class PftRun:
    execution_id: int
    status: str
    seconds: float
    result: dict[str, Any] | None
    error: str | None


def register(dsn: str) -> None:
    """Register the child (pft/patients) and the flow (pft/flow)."""
    with db.connect(dsn) as conn:
        for name in PLAYBOOKS:
            register_file(conn, HERE / name, reuse_unchanged=True)


def start(dsn: str, workload: dict[str, Any]) -> int:
    with db.connect(dsn) as conn:
        row = db.fetch_one(conn, "start_execution", path="pft/flow", payload=workload,
                           version=None)
    assert row is not None
    return int(row["execution_id"])


def run_flow(dsn: str, workload: dict[str, Any], timeout: float = 3600) -> PftRun:
    """Start pft/flow and wait for it (a worker must serve `dsn`)."""
    started = time.monotonic()
    execution_id = start(dsn, workload)
    final = wait_for_execution(dsn, execution_id, timeout=timeout, poll=0.1)
    return PftRun(execution_id, final["status"], time.monotonic() - started,
                  final.get("result"), final.get("error"))


def credentials(dsn: str) -> MappingCredentialResolver:
    """`pft_pg`: the engine's own database, where the example keeps its tables."""
    return MappingCredentialResolver({"pft_pg": {"dsn": dsn}})


def run_example(dsn: str, workload: dict[str, Any], slots: int = 4) -> PftRun:
    """Migrate `dsn`, register, and run pft/flow with an in-process worker."""
    migrate(dsn)
    register(dsn)
    worker = Worker(dsn, slots=slots, poll_interval=0.2, credentials=credentials(dsn))
    worker.start()
    try:
        return run_flow(dsn, workload)
    finally:
        worker.stop()
        worker.join(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facilities", type=int, default=10)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--claim-batch", type=int, default=25)
    parser.add_argument("--slots", type=int, default=4, help="cursor slots per loop")
    parser.add_argument("--units-in-flight", type=int, default=5)
    parser.add_argument("--worker-slots", type=int, default=4)
    args = parser.parse_args(argv)
    workload = {"num_facilities": args.facilities, "patients_per_facility": args.patients,
                "claim_batch": args.claim_batch, "slots": args.slots,
                "units_in_flight": args.units_in_flight}
    dsn = os.environ.get("NOETL_DSN")
    database = dsn or create_database("noetl_pft")
    try:
        run = run_example(database, workload, slots=args.worker_slots)
    finally:
        if dsn is None:
            drop_database(database)
    print(f"pft/flow: {run.status} in {run.seconds:.1f}s (execution {run.execution_id}): "
          f"{run.result if run.error is None else run.error}")
    return 0 if run.status == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
