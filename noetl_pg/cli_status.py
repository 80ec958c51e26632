"""`noetl status`, `noetl executions`, `noetl projector`, and the progress `noetl run` shows.

Status reads one row: the execution with its projected `state` (sql/functions/
projection.sql) and its shard's projection lag; it never scans events. Progress bars
(one per loop) follow that row until the execution ends and the projection has caught up.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from noetl_pg import db
from noetl_pg.projection import Projector
from noetl_pg.runtime import TERMINAL_STATUSES

console = Console()
err_console = Console(stderr=True)

STATUS_COLORS = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "red",
                 "RUNNING": "yellow", "done": "green", "failed": "red", "running": "yellow",
                 "retrying": "magenta"}


def fetch_progress(dsn: str, execution_id: int) -> dict[str, Any] | None:
    """The execution row with its projected state and projection lag (None: no such run)."""
    with db.connect(dsn) as conn:
        return db.fetch_one(conn, "execution_progress", execution_id=execution_id)


def caught_up(row: dict[str, Any]) -> bool:
    """True when the projection has folded the execution's final event."""
    return (row["status"] in TERMINAL_STATUSES
            and (row["state"] or {}).get("status") == row["status"])


def _paint(status: str) -> str:
    color = STATUS_COLORS.get(status, "")
    return f"[{color}]{status}[/]" if color else status


def _loop_text(state: dict[str, Any], step: str) -> str:
    loop = (state.get("loop") or {}).get(step)
    if not loop:
        return ""
    text = f"{loop['done']}/{loop['total']}"
    if loop["failed"]:
        text += f" ({loop['failed']} failed)"
    fanout = (state.get("fanout") or {}).get(step)
    if fanout:
        text += f" fan-out {fanout['status']}"
        if fanout.get("retries"):
            text += f", {fanout['retries']} shard retries"
    return text


def _clock(stamp: str | None) -> str:
    """'2026-01-02T10:11:12.345+00:00' -> '10:11:12.34' (the date is in the header)."""
    return stamp[11:22] if stamp else ""


def status_table(state: dict[str, Any]) -> Table:
    table = Table("step", "status", "attempts", "loop", "started", "finished")
    steps = sorted((state.get("steps") or {}).items(),
                   key=lambda item: (item[1].get("started") or "", item[0]))
    for name, step in steps:
        table.add_row(name, _paint(step["status"]), str(step.get("attempts") or ""),
                      _loop_text(state, name), _clock(step.get("started")),
                      _clock(step.get("finished")))
    return table


def print_status(row: dict[str, Any]) -> None:
    """Render one `execution_progress` row: header, step table, lag, error or result."""
    state = row["state"] or {}
    console.print(
        f"execution {row['execution_id']} [bold]{_paint(row['status'])}[/] "
        f"({row['path']} v{row['version']}) started {row['started_at']:%Y-%m-%d %H:%M:%S}"
    )
    console.print(status_table(state))
    last = state.get("last_event") or {}
    if not state:
        console.print("[yellow]no projected state yet[/]: is a projector running? "
                      "(`noetl projector`, or `noetl worker` with its default --projector)")
    console.print(
        f"projection: {state.get('events', 0)} events folded, last #{last.get('id', '-')} "
        f"{last.get('type', '')}; shard {row['shard']} "
        f"{row['projection_seconds_behind']:.2f}s behind",
        highlight=False,
    )
    if row["error"]:
        console.print(f"[red]error[/red] in step {row['failed_step']}: {row['error']}",
                      highlight=False)
    if row["result"] is not None:
        console.print("result:", json.dumps(row["result"], indent=2, default=str),
                      highlight=False)


def follow(dsn: str, execution_id: int, *, show: bool, timeout: float | None = None,
           poll: float = 0.2) -> dict[str, Any]:
    """Poll the execution's row until it ends and its projection caught up (at most 5s
    after it ended); with `show`, draw a progress bar per loop. Returns the last row.
    Raises LookupError for an unknown execution, TimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ended_at: float | None = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]}"), TextColumn("{task.fields[lag]}"),
                        console=console, disable=not show, transient=False)
    bars: dict[str, TaskID] = {}
    with progress:
        while True:
            row = fetch_progress(dsn, execution_id)
            if row is None:
                raise LookupError(f"execution {execution_id} does not exist")
            state = row["state"] or {}
            lag = f"lag {row['projection_seconds_behind']:.1f}s"
            for step, loop in (state.get("loop") or {}).items():
                failed = f"[red]{loop['failed']} failed[/]" if loop["failed"] else ""
                if step not in bars:
                    bars[step] = progress.add_task(step, total=loop["total"], failed=failed,
                                                   lag=lag)
                progress.update(bars[step], total=loop["total"],
                                completed=loop["done"] + loop["failed"], failed=failed, lag=lag)
            if row["status"] in TERMINAL_STATUSES:
                ended_at = ended_at or time.monotonic()
                if caught_up(row) or time.monotonic() - ended_at > 5:
                    return row
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_id} still {row['status']}")
            time.sleep(poll)


def register_status_commands(main: click.Group, dsn: Callable[[], str]) -> None:
    """Add `status`, `executions` and `projector` to the `noetl` group."""

    @main.command("status")
    @click.argument("execution_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print the row and state as JSON.")
    @click.option("--watch", is_flag=True, help="Show loop progress until the run ends.")
    def status_command(execution_id: int, as_json: bool, watch: bool) -> None:
        """Show one execution from its projected state (one row, no event scan)."""
        target = dsn()
        try:
            row = (follow(target, execution_id, show=not as_json) if watch
                   else fetch_progress(target, execution_id))
        except LookupError:
            row = None
        if row is None:
            err_console.print(f"[red]error:[/red] execution {execution_id} does not exist")
            sys.exit(2)
        if as_json:
            click.echo(json.dumps(row, indent=2, default=str))
        else:
            print_status(row)

    @main.command("executions")
    @click.option("--status", help="RUNNING, COMPLETED, FAILED or CANCELLED")
    @click.option("--path")
    @click.option("--limit", default=50, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def executions_command(status: str | None, path: str | None, limit: int,
                           as_json: bool) -> None:
        """List recent executions."""
        with db.connect(dsn()) as conn:
            rows = db.fetch_all(conn, "executions_list", status=status, path=path,
                                row_limit=limit)
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
            return
        table = Table("id", "path", "version", "status", "started", "finished")
        for row in rows:
            table.add_row(str(row["execution_id"]), row["path"], str(row["version"]),
                          _paint(row["status"]), str(row["started_at"]),
                          str(row["finished_at"] or ""))
        console.print(table)

    @main.command("projector")
    @click.option("--lease-seconds", default=10.0, show_default=True)
    @click.option("--batch-limit", default=5000, show_default=True)
    @click.option("--owner", help="Stable id for this projector (default: host-pid-random).")
    def projector_command(lease_seconds: float, batch_limit: int, owner: str | None) -> None:
        """Fold events into execution.state (shards by NOETL_SHARD_COUNT, default 16)
        until SIGTERM/SIGINT; leases are released on exit."""
        projector = Projector(dsn(), owner=owner, lease_seconds=lease_seconds,
                              batch_limit=batch_limit)

        def _stop(signum: int, frame: object) -> None:
            projector.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        err_console.print(f"projector {projector.owner} running")
        projector.run_forever()
        err_console.print(f"projector stopped after folding {projector.folded_events} events")
