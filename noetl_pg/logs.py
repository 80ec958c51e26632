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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from noetl_pg import db
from noetl_pg.errors import DatabaseError
from noetl_pg.store import ResultStore, StoreError

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")


class CommandLogWriter:
    """Stores the output of a worker's commands over the engine's pooled connections to
    `dsn` (noetl_pg.db.connection), each command's streams in one statement."""

    def __init__(self, dsn: str, store: ResultStore, redact: Callable[[str], str]) -> None:
        self._dsn = dsn
        self._store = store
        self._redact = redact

    def write(self, command: Mapping[str, Any], logs: Mapping[str, str]) -> None:
        """Store the non-empty streams of `logs` for `command` (id, attempt, step, iter)."""
        try:
            streams = list(self._streams(command, logs))
            if not streams:
                return
            with db.connection(self._dsn) as conn:
                db.execute(conn, "command_log_put", execution_id=command["execution_id"],
                           command_id=command["command_id"], attempt=command["attempt"],
                           step_name=command["step_name"],
                           iter_index=command.get("iter_index"), streams=Jsonb(streams))
        except (DatabaseError, psycopg.Error, StoreError) as exc:
            log.warning("output of command %s not stored: %s", command["command_id"],
                        db.error_message(exc))

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


def read_whole(dsn: str, full_ref: str) -> str:
    """The whole stream stored under `full_ref` (StoreError when it is gone)."""
    with ResultStore.from_env(dsn).open(full_ref) as stream:
        return stream.read().decode("utf-8", "replace")
