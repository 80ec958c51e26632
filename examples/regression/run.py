"""Run the regression suite both ways and compare: `make regression`.

Starts a local HTTP server (the http children GET `/square?n=N` from it), registers the
setup playbooks, the 48 children and both masters, runs an in-process worker with the
`regression_pg` credential pointing at the database, then runs the sequential master
(case/then chain) and the parallel master (loop, mode async, concurrency 10) one after the
other and prints both times, their ratio and each master's summary row (child executions
by status, counted by its summary step from noetl.execution).

The database is NOETL_DSN when set, else a database of its own on the test server
(noetl_pg.testdb), dropped at the end. Exits 1 when a master does not complete or its
summary does not count 48 completed children.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from noetl_pg import db
from noetl_pg.catalog import register_file
from noetl_pg.credentials import MappingCredentialResolver
from noetl_pg.migrate import migrate
from noetl_pg.runtime import wait_for_execution
from noetl_pg.testdb import create_database, drop_database
from noetl_pg.worker import Worker

HERE = Path(__file__).resolve().parent
MASTERS = ("master_regression_test", "master_regression_test_parallel")
CHILDREN = 48


class _Square(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        n = int(query.get("n", ["0"])[0])
        body = json.dumps({"n": n, "square": n * n}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@dataclass(frozen=True)
class MasterRun:
    master: str
    execution_id: int
    status: str
    seconds: float
    summary: dict[str, Any] | None
    error: str | None


def register_suite(dsn: str) -> None:
    """Register setup playbooks, children and masters (each file a new version)."""
    files = sorted((HERE / "setup").glob("*.yaml")) + sorted((HERE / "children").glob("*.yaml"))
    files += [HERE / f"{master}.yaml" for master in MASTERS]
    with db.connect(dsn) as conn:
        for file in files:
            register_file(conn, file)


def run_master(dsn: str, master: str, base_url: str, timeout: float = 600) -> MasterRun:
    started = time.monotonic()
    with db.connect(dsn) as conn:
        row = db.fetch_one(conn, "start_execution", path=f"regression/{master}",
                           payload={"base_url": base_url}, version=None)
    assert row is not None
    execution_id = int(row["execution_id"])
    final = wait_for_execution(dsn, execution_id, timeout=timeout, poll=0.05)
    seconds = time.monotonic() - started
    result = final.get("result") or {}
    rows = result.get("rows") if isinstance(result, dict) else None
    return MasterRun(master, execution_id, final["status"], seconds,
                     rows[0] if rows else None, final.get("error"))


def run_suite(dsn: str, slots: int = 4) -> list[MasterRun]:
    """Both masters on `dsn` (migrated here), with a local HTTP server and a worker."""
    migrate(dsn)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Square)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    credentials = MappingCredentialResolver({"regression_pg": {"dsn": dsn}})
    worker = Worker(dsn, slots=slots, poll_interval=0.2, credentials=credentials)
    try:
        register_suite(dsn)
        worker.start()
        return [run_master(dsn, master, base_url) for master in MASTERS]
    finally:
        worker.stop()
        worker.join(timeout=60)
        server.shutdown()
        server.server_close()


def report(runs: list[MasterRun]) -> bool:
    ok = True
    for run in runs:
        print(f"{run.master}: {run.status} in {run.seconds:.1f}s (execution {run.execution_id}); "
              f"children: {run.summary}")
        if run.error:
            print(f"  error: {run.error}")
        summary = run.summary or {}
        if run.status != "COMPLETED" or summary.get("completed") != CHILDREN \
                or summary.get("failed") != 0:
            ok = False
    sequential, parallel = runs
    if parallel.seconds > 0:
        print(f"sequential {sequential.seconds:.1f}s / parallel {parallel.seconds:.1f}s = "
              f"{sequential.seconds / parallel.seconds:.2f}x")
    return ok


def main() -> int:
    dsn = os.environ.get("NOETL_DSN")
    own = dsn is None
    database = create_database("noetl_regression") if own else dsn
    try:
        runs = run_suite(database, slots=int(os.environ.get("NOETL_REGRESSION_SLOTS", "4")))
    finally:
        if own:
            drop_database(database)
    return 0 if report(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
