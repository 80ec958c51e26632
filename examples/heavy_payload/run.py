"""Run the heavy-payload pipeline in both modes and print the seed README's validation.

    .venv/bin/python examples/heavy_payload/run.py [--rows 40] [--kb 64] [--batch-size 10]
        [--modes direct_stress,chunked_optimal]

Starts the echo server (examples/heavy_payload/echo_server.py) on a free 127.0.0.1 port,
stores the `heavy_pg` postgres credential (the engine's own database: host, port, user
and database name, no password), registers the chunk worker and the parent, and runs each
mode with an in-process worker built as `noetl run` builds it (default slots, default
python isolation). The database is NOETL_DSN when set, else a database of its own on the
test server (noetl_pg.testdb), dropped at the end. Exits 1 when a run does not complete or
does not store every seeded row.

The functions below are what tests/py/test_heavy_payload.py and bench/heavy_payload.py
use: `prepare` (credential and registration), `start_run`, `validation` (stored rows,
missing rows, byte profile: the seed README's queries) and `largest_event_bytes`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import echo_server  # noqa: E402  (the example's own module, beside this file)

from noetl_pg import db  # noqa: E402
from noetl_pg.catalog import register_file  # noqa: E402
from noetl_pg.credentials import put_credential  # noqa: E402
from noetl_pg.migrate import migrate  # noqa: E402
from noetl_pg.runtime import wait_for_execution  # noqa: E402
from noetl_pg.testdb import create_database, drop_database  # noqa: E402
from noetl_pg.worker import build_worker  # noqa: E402

PARENT = "examples/heavy_payload/heavy_payload_pipeline"
CHUNK_WORKER = "examples/heavy_payload/heavy_payload_chunk_worker"
CREDENTIAL = "heavy_pg"
MODES = ("direct_stress", "chunked_optimal")

VALIDATION = """
select count(t.item_id)::int as stored_rows,
       (count(*) filter (where t.http_status = 200))::int as ok_rows,
       (count(*) filter (where t.item_id is null))::int as missing_rows,
       min(t.item_id) as min_item_id, max(t.item_id) as max_item_id,
       min(t.payload_bytes) as min_payload_bytes, max(t.payload_bytes) as max_payload_bytes,
       avg(t.request_bytes)::bigint as avg_request_bytes,
       avg(t.response_bytes)::bigint as avg_response_bytes
from public.heavy_payload_source as s
left join public.heavy_payload_results as t
    on s.execution_id = t.execution_id and s.item_id = t.item_id
where s.execution_id = %s
"""

# The run's own events and those of its chunk-worker children.
LARGEST_EVENT = """
select coalesce(max(pg_column_size(e.*)), 0) as largest_event_bytes, count(*) as events
from noetl.event as e
where e.execution_id = %s
   or e.execution_id in (select x.execution_id from noetl.execution as x
                         where x.parent_execution_id = %s)
"""


def prepare(dsn: str) -> None:
    """Store the `heavy_pg` credential (the engine's database) and register both playbooks."""
    parts = conninfo_to_dict(dsn)
    put_credential(dsn, CREDENTIAL, "postgres", {
        "db_host": parts.get("host") or "127.0.0.1", "db_port": int(parts.get("port") or 5432),
        "db_user": parts.get("user") or "postgres", "db_name": parts["dbname"],
    })
    with db.connect(dsn) as conn:
        for name in ("heavy_payload_chunk_worker.yaml", "heavy_payload_pipeline.yaml"):
            register_file(conn, HERE / name)


def start_run(dsn: str, mode: str, url: str, *, rows: int, kb: int,
              batch_size: int = 30) -> int:
    """Start the parent in `mode` against the echo server at `url`; its execution id."""
    payload = {"execution_mode": mode, "seed_rows": rows, "payload_kb_per_item": kb,
               "batch_size": batch_size, "details_api_url": url}
    with db.connect(dsn) as conn:
        row = db.fetch_one(conn, "start_execution", path=PARENT, payload=payload, version=None)
    assert row is not None
    return int(row["execution_id"])


def validation(dsn: str, execution_id: int) -> dict[str, Any]:
    """The seed README's checks for one run: stored and ok rows, missing rows (seeded
    without a result row), item range and byte profile."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        row = conn.execute(VALIDATION, (execution_id,)).fetchone()
    assert row is not None
    return dict(row)


def largest_event_bytes(dsn: str, execution_id: int) -> dict[str, int]:
    """The largest event row (pg_column_size) of the run and its children, and their count."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        row = conn.execute(LARGEST_EVENT, (execution_id, execution_id)).fetchone()
    assert row is not None
    return {"largest_event_bytes": int(row["largest_event_bytes"]), "events": int(row["events"])}


def run_modes(dsn: str, modes: list[str], *, rows: int, kb: int, batch_size: int,
              timeout: float = 600) -> list[dict[str, Any]]:
    migrate(dsn)
    prepare(dsn)
    server, url = echo_server.start()
    worker = build_worker(dsn, poll_interval=0.5)
    worker.start()
    try:
        reports = []
        for mode in modes:
            execution_id = start_run(dsn, mode, url, rows=rows, kb=kb, batch_size=batch_size)
            final = wait_for_execution(dsn, execution_id, timeout=timeout, poll=0.1)
            reports.append({"mode": mode, "execution_id": execution_id,
                            "status": final["status"], "error": final.get("error"),
                            **validation(dsn, execution_id),
                            **largest_event_bytes(dsn, execution_id)})
        return reports
    finally:
        worker.stop()
        worker.join(timeout=60)
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--kb", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    dsn = os.environ.get("NOETL_DSN")
    database = dsn or create_database("noetl_heavy")
    try:
        reports = run_modes(database, args.modes.split(","), rows=args.rows, kb=args.kb,
                            batch_size=args.batch_size)
    finally:
        if dsn is None:
            drop_database(database)
    ok = True
    for report in reports:
        print(" ".join(f"{key}={value}" for key, value in report.items()))
        ok = ok and report["status"] == "COMPLETED" and report["missing_rows"] == 0 \
            and report["stored_rows"] == args.rows
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
