"""`noetl logs ID [--step S] [--follow]`: what the steps of an execution printed."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from noetl_pg import db
from noetl_pg.cli.common import (
    EXIT_FAILED,
    dumps,
    fail,
    get_dsn,
    json_option,
    require_execution,
    wants_json,
)
from noetl_pg.logs import read_whole
from noetl_pg.runtime import TERMINAL_STATUSES
from noetl_pg.store import StoreError


def _label(row: dict[str, Any]) -> str:
    iteration = "" if row["iter_index"] is None else f"[{row['iter_index']}]"
    return f"{row['step_name']}{iteration} #{row['attempt']} {row['stream']}"


def _whole(dsn: str, row: dict[str, Any]) -> str:
    try:
        return read_whole(dsn, row["full_ref"])
    except StoreError as exc:
        fail(f"the whole {_label(row)} output is not readable: {exc}", EXIT_FAILED)


def register_logs_command(main: click.Group) -> None:
    """Add `logs` to the `noetl` group."""

    @main.command("logs")
    @click.argument("execution_id", type=int)
    @click.option("--step", help="Only this step's output.")
    @click.option("--follow", is_flag=True, help="Keep printing until the execution ends.")
    @click.option("--full", is_flag=True,
                  help="A stream cut to its head and tail: print the whole (kept by reference).")
    @json_option
    def logs_command(execution_id: int, step: str | None, follow: bool, full: bool,
                     as_json: bool) -> None:
        """Print the captured stdout/stderr of an execution's steps, oldest first.

        A stream longer than NOETL_PYTHON_LOG_BYTES shows its head and tail and a marker;
        the whole stream is in the result store, and --full prints it."""
        as_json = wants_json(as_json)
        dsn = get_dsn()
        require_execution(dsn, execution_id, as_json)
        collected: list[dict[str, Any]] = []
        after = 0
        with db.connection(dsn) as conn:
            while True:
                status = db.fetch_one(conn, "execution_status", execution_id=execution_id)
                rows = db.fetch_all(conn, "command_log_list", execution_id=execution_id,
                                    after_id=after, step_name=step)
                for row in rows:
                    after = row["log_id"]
                    if full and row["full_ref"] is not None:
                        row["body"] = _whole(dsn, row)
                    if as_json:
                        collected.append(row)
                        continue
                    for line in row["body"].splitlines():
                        click.echo(f"{_label(row)} | {line}",
                                   file=sys.stderr if row["stream"] == "stderr" else None)
                ended = status is None or status["status"] in TERMINAL_STATUSES
                if not follow or (ended and not rows):
                    break
                time.sleep(0.5)
        if as_json:
            click.echo(dumps(collected))
