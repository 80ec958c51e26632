"""Where the engine's database is, and waiting for executions to finish.

With `NOETL_DSN` set, that server is used. Without it, the embedded PostgreSQL (see
noetl_pg/embedded.py) is started or joined and its `noetl` database is used.

The schema is checked, not re-created, on every command (noetl_pg.migrate.schema_status);
only `db migrate`, `run` on the embedded server and `worker` start migrate a schema
that is behind.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from psycopg.conninfo import make_conninfo

from noetl_pg import db
from noetl_pg.embedded import start_embedded
from noetl_pg.migrate import ensure_schema

# "check": fail with SchemaBehind when behind; "migrate": apply pending migrations (not a
# mere difference of function files: that may be a newer version's);
# "migrate-embedded": bring the embedded server fully up to date, check otherwise;
# "none": do not look (db migrate, db start).
SchemaPolicy = Literal["check", "migrate", "migrate-embedded", "none"]

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


def resolve_dsn(*, schema: SchemaPolicy = "check") -> str:
    """The engine DSN (NOETL_DSN, else the embedded server), its schema handled by `schema`.

    Raises noetl_pg.migrate.SchemaBehind when the schema is behind and may not be migrated."""
    dsn = db.dsn_from_env()
    embedded = dsn is None
    if dsn is None:
        server = start_embedded("default")
        dsn = make_conninfo(server, dbname="noetl")
        with db.connect(make_conninfo(server, dbname="postgres")) as conn:
            row = db.fetch_one(conn, "database_exists", name="noetl")
            if not (row and row["present"]):
                db.execute_built(conn, "database_create_statements", name="noetl")
    if schema != "none":
        own = schema == "migrate-embedded" and embedded
        ensure_schema(dsn, migrate_if_behind=schema == "migrate" or own,
                      reload_other_functions=own)
    return dsn


def wait_for_execution(
    dsn: str, execution_id: int, *, timeout: float | None = None, poll: float = 0.25,
    on_poll: Any = None,
) -> dict[str, Any]:
    """Block until the execution reaches a terminal status; returns its row.

    Wakes on NOTIFY noetl_execution (sent when any execution finishes) and re-reads the row
    at least every `poll` seconds, so a lost notification only delays the answer. Raises
    TimeoutError after `timeout` seconds. `on_poll(row)` is called on every read (progress).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with db.connect(dsn) as conn:
        db.execute(conn, "listen_executions")
        while True:
            row = db.fetch_one(conn, "execution_status", execution_id=execution_id)
            if row is None:
                raise LookupError(f"execution {execution_id} does not exist")
            if on_poll is not None:
                on_poll(row)
            if row["status"] in TERMINAL_STATUSES:
                return row
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_id} still {row['status']}")
            db.notifies(conn, poll)
