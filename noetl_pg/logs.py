"""Captured step output: a tool's stdout/stderr stored per command attempt.

The python tool hands what it captured (already bounded, see tools/python.py) to
`ToolContext.log_sink`; the worker's sink is `store_command_logs`, which redacts secrets
and writes one `noetl.command_log` row per non-empty stream. A failure to store output
never fails the step: it is logged and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from noetl_pg import db
from noetl_pg.errors import DatabaseError

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")


def store_command_logs(dsn: str, command: Mapping[str, Any], redact: Callable[[str], str],
                       logs: Mapping[str, str]) -> None:
    """Write the non-empty streams of `logs` for `command` (its id, attempt, step, iter)."""
    try:
        with db.connection(dsn) as conn:
            for stream in STREAMS:
                body = logs.get(stream)
                if not body:
                    continue
                db.execute(conn, "command_log_put", execution_id=command["execution_id"],
                           command_id=command["command_id"], attempt=command["attempt"],
                           step_name=command["step_name"],
                           iter_index=command.get("iter_index"), stream=stream,
                           body=redact(body))
    except DatabaseError as exc:
        log.warning("output of command %s not stored: %s", command["command_id"], exc.message)
