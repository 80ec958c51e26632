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

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from noetl_pg import db, settings
from noetl_pg.errors import DatabaseUnavailable

LOCAL_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"


def server_dsn() -> str:
    """DSN of a server where test databases can be created."""
    configured = settings.current()
    if configured.test_server != "embedded":
        explicit = configured.test_dsn
        if explicit:
            return explicit
        try:
            db.connect(LOCAL_DSN).close()
        except DatabaseUnavailable:
            pass
        else:
            return LOCAL_DSN
    from noetl_pg.embedded import start_embedded

    return start_embedded("test", keep_running=True)


def create_database(prefix: str = "noetl_test") -> str:
    """Create a fresh database on the chosen server and return its DSN."""
    base = server_dsn()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with db.connect(base) as conn:
        db.execute_built(conn, "database_create_statements", name=name)
    return make_conninfo(base, dbname=name)


def drop_database(dsn: str) -> None:
    """Drop a database made by `create_database`, closing its other sessions first."""
    params = conninfo_to_dict(dsn)
    name = str(params["dbname"])
    admin = make_conninfo(dsn, dbname="postgres")
    db.close_pools(dsn)
    with db.connect(admin) as conn:
        db.execute_built(conn, "database_drop_statements", name=name)


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
