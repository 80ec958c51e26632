"""Captured step output: a tool's stdout/stderr stored per command attempt.

The python tool hands what it captured to `ToolContext.log_sink`: each stream bounded
(head and tail, see tools/python.py) and, for a stream that was cut, the whole of it under
`<stream>_full`. The worker's sink is `CommandLogWriter.write`: it redacts secrets, puts a
whole stream in the result store (any tier, as a result of the execution, so it is deleted
with it) and writes every stream of the command in one statement (`command_log_put`), one
`noetl.command_log` row per non-empty stream with `full_ref` naming the stored whole.
Connections are reused: a small pool per worker, opened on the first output, so a loop
of printing steps does not open one connection per command. A failure to store output
never fails the step: it is logged and dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from noetl_pg import db
from noetl_pg.store import ResultStore, StoreError

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
# Enough for the slots that print at the same moment; more wait their turn (a short insert).
POOL_MAX_SIZE = 2


class CommandLogWriter:
    """Stores the output of a worker's commands over reused connections to `dsn`."""

    def __init__(self, dsn: str, store: ResultStore, redact: Callable[[str], str], *,
                 application_name: str = "noetl worker logs") -> None:
        self._store = store
        self._redact = redact
        self._pool = ConnectionPool(
            dsn, min_size=0, max_size=POOL_MAX_SIZE, open=False, max_idle=60, num_workers=1,
            kwargs={"autocommit": True, "application_name": application_name[:63]})
        self._opened = False
        self._open_lock = threading.Lock()

    def write(self, command: Mapping[str, Any], logs: Mapping[str, str]) -> None:
        """Store the non-empty streams of `logs` for `command` (id, attempt, step, iter)."""
        try:
            streams = list(self._streams(command, logs))
            if not streams:
                return
            with self._open_lock:
                if not self._opened:
                    self._pool.open(wait=False)
                    self._opened = True
            with self._pool.connection() as conn:
                conn.execute(db.query("command_log_put"), {
                    "execution_id": command["execution_id"],
                    "command_id": command["command_id"], "attempt": command["attempt"],
                    "step_name": command["step_name"],
                    "iter_index": command.get("iter_index"), "streams": Jsonb(streams)})
        except (psycopg.Error, StoreError) as exc:
            message = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
            log.warning("output of command %s not stored: %s", command["command_id"],
                        message or exc)

    def _streams(self, command: Mapping[str, Any],
                 logs: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        for stream in STREAMS:
            body = logs.get(stream)
            if not body:
                continue
            row: dict[str, Any] = {"stream": stream, "body": self._redact(body),
                                   "full_ref": None, "full_bytes": None}
            whole = logs.get(f"{stream}_full")
            if whole:
                data = self._redact(whole).encode()
                iteration = command.get("iter_index")
                name = (f"log-{command['command_id']}-{command['attempt']}"
                        f"{'' if iteration is None else f'-{iteration}'}-{stream}")
                stored = self._store.put(command["execution_id"], command["step_name"], name,
                                         data)
                row.update(full_ref=stored.ref.ref, full_bytes=len(data))
            yield row

    @property
    def connections_opened(self) -> int:
        """Connections opened so far (they are reused: at most a few per worker)."""
        return int(self._pool.get_stats().get("connections_num", 0)) if self._opened else 0

    def close(self) -> None:
        with self._open_lock:
            if self._opened:
                self._pool.close()
                self._opened = False


def read_whole(dsn: str, full_ref: str) -> str:
    """The whole stream stored under `full_ref` (StoreError when it is gone)."""
    with ResultStore.from_env(dsn).open(full_ref) as stream:
        return stream.read().decode("utf-8", "replace")
