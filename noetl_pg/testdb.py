"""Pick a PostgreSQL server for tests and give each test run its own database.

Order: `NOETL_TEST_DSN`, else the local server on 127.0.0.1:5432 when it answers, else an
embedded server. `NOETL_TEST_SERVER=embedded` skips the first two and forces the embedded
server, so that path can be exercised on a machine that has a local server.
`python -m noetl_pg.testdb create` prints the DSN of a new, empty database;
`python -m noetl_pg.testdb drop DSN` removes it. Shell scripts (pgTAP) use the same choice
as pytest.
"""

from __future__ import annotations

import os
import sys
import uuid

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from noetl_pg import settings

LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"


def server_dsn() -> str:
    """DSN of a server where test databases can be created."""
    configured = settings.current()
    if configured.test_server != "embedded":
        explicit = configured.test_dsn
        if explicit:
            return explicit
        try:
            with psycopg.connect(LOCAL_DSN):
                return LOCAL_DSN
        except psycopg.OperationalError:
            pass
    from noetl_pg.embedded import start_embedded

    return start_embedded("test", keep_running=True)


def create_database(prefix: str = "noetl_test") -> str:
    """Create a fresh database on the chosen server and return its DSN."""
    base = server_dsn()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return make_conninfo(base, dbname=name)


def drop_database(dsn: str) -> None:
    """Drop a database made by `create_database`, closing its other sessions first."""
    params = conninfo_to_dict(dsn)
    name = str(params["dbname"])
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["create"]:
        print(create_database(argv[1] if len(argv) > 1 else "noetl_test"))
        return 0
    if argv[:1] == ["drop"] and len(argv) == 2:
        drop_database(argv[1])
        return 0
    print("usage: python -m noetl_pg.testdb create [PREFIX] | drop DSN", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
