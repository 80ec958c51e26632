"""`noetl logs ID [--step S] [--follow]`: what the steps of an execution printed."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from noetl_pg import db
from noetl_pg.cli_common import dumps, get_dsn, json_option, require_execution, wants_json
from noetl_pg.runtime import TERMINAL_STATUSES


def _label(row: dict[str, Any]) -> str:
    iteration = "" if row["iter_index"] is None else f"[{row['iter_index']}]"
    return f"{row['step_name']}{iteration} #{row['attempt']} {row['stream']}"


def register_logs_command(main: click.Group) -> None:
    """Add `logs` to the `noetl` group."""

    @main.command("logs")
    @click.argument("execution_id", type=int)
    @click.option("--step", help="Only this step's output.")
    @click.option("--follow", is_flag=True, help="Keep printing until the execution ends.")
    @json_option
    def logs_command(execution_id: int, step: str | None, follow: bool, as_json: bool) -> None:
        """Print the captured stdout/stderr of an execution's steps, oldest first."""
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
