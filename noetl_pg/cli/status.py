"""`noetl status`, `noetl executions`, `noetl projector`, and the progress `noetl run` shows.

Status reads one row: the execution with its projected `state` (sql/functions/
projection.sql) and its shard's projection lag; it never scans events. Progress bars
(one per loop) follow that row until the execution ends and the projection has caught up.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from noetl_pg import db
from noetl_pg.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    dumps,
    fail,
    json_option,
    wants_json,
)
from noetl_pg.errors import DatabaseTransient
from noetl_pg.projection import Projector
from noetl_pg.runtime import TERMINAL_STATUSES

EXECUTION_STATUSES = TERMINAL_STATUSES | {"RUNNING"}
# How long `status --watch` and `noetl run` wait out a database they cannot reach.
FOLLOW_GIVE_UP_SECONDS = 60.0
# The first poll of `follow`, soon after the start (each next one waits half again more).
FIRST_POLL_SECONDS = 0.01

console = Console()
err_console = Console(stderr=True)

STATUS_COLORS = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "red",
                 "RUNNING": "yellow", "done": "green", "failed": "red", "running": "yellow",
                 "retrying": "magenta"}


def fetch_progress(dsn: str, execution_id: int) -> dict[str, Any] | None:
    """The execution row with its projected state and projection lag (None: no such run)."""
    with db.connection(dsn) as conn:
        return db.fetch_one(conn, "execution_progress", execution_id=execution_id)


def failed_step_trace(dsn: str, row: dict[str, Any]) -> str | None:
    """The last stderr the failed step of a failed execution printed (its traceback)."""
    if row["status"] != "FAILED" or not row["failed_step"]:
        return None
    with db.connection(dsn) as conn:
        found = db.fetch_one(conn, "command_log_last_stderr", execution_id=row["execution_id"],
                             step_name=row["failed_step"])
    return found["body"] if found else None


def started_by_schedule(dsn: str, execution_id: int) -> dict[str, Any] | None:
    """The schedule tick that started the execution (None: it was started otherwise)."""
    with db.connect(dsn) as conn:
        return db.fetch_one(conn, "schedule_of_execution", execution_id=execution_id)


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
    # A cursor loop's total is unknown until its cursor drains.
    text = f"{loop['done']}/{'?' if loop['total'] is None else loop['total']}"
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


def status_table(state: dict[str, Any], loop_extra: dict[str, str] | None = None) -> Table:
    table = Table("step", "status", "attempts", "loop", "started", "finished")
    loop_extra = loop_extra or {}
    steps = sorted((state.get("steps") or {}).items(),
                   key=lambda item: (item[1].get("started") or "", item[0]))
    for name, step in steps:
        table.add_row(name, _paint(step["status"]), str(step.get("attempts") or ""),
                      _loop_text(state, name) + loop_extra.get(name, ""),
                      _clock(step.get("started")),
                      _clock(step.get("finished")))
    return table


def print_status(row: dict[str, Any], trace: str | None = None) -> None:
    """Render one `execution_progress` row: header, step table, lag, error (with `trace`,
    the failed step's captured stderr: its traceback) or result."""
    state = row["state"] or {}
    console.print(
        f"execution {row['execution_id']} [bold]{_paint(row['status'])}[/] "
        f"({row['path']} v{row['version']}) started {row['started_at']:%Y-%m-%d %H:%M:%S}"
    )
    schedule = row.get("schedule")
    if schedule:
        console.print(f"started by schedule {schedule['schedule_id']} ('{schedule['cron']}' "
                      f"{schedule['timezone']}) for the tick of "
                      f"{schedule['scheduled_for']:%Y-%m-%d %H:%M:%S %Z}", highlight=False)
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
        if trace:
            console.print(trace.rstrip(), highlight=False, markup=False)
    if row["result"] is not None:
        console.print("result:", json.dumps(row["result"], indent=2, default=str),
                      highlight=False)


class LoopRates:
    """Items per second and ETA of each loop, from the first and latest sightings."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[float, int]] = {}

    def text(self, step: str, loop: dict[str, Any]) -> str:
        finished = int(loop["done"]) + int(loop["failed"])
        now = time.monotonic()
        first_at, first_count = self._first.setdefault(step, (now, finished))
        elapsed = now - first_at
        if elapsed < 0.5 or finished <= first_count:
            return ""
        rate = (finished - first_count) / elapsed
        remaining = 0 if loop["total"] is None else max(int(loop["total"]) - finished, 0)
        eta = f", ETA {remaining / rate:.0f}s" if remaining else ""
        return f" {rate:.1f}/s{eta}"


def progress_view(row: dict[str, Any], rates: LoopRates) -> Group:
    """Header and step table of a running execution, loops with rate and ETA."""
    state = row["state"] or {}
    header = Text.from_markup(
        f"execution {row['execution_id']} {_paint(row['status'])} ({row['path']} "
        f"v{row['version']}), {state.get('events', 0)} events, projection "
        f"{row['projection_seconds_behind']:.1f}s behind"
    )
    extra = {step: rates.text(step, loop) for step, loop in (state.get("loop") or {}).items()}
    return Group(header, status_table(state, extra))


def follow(dsn: str, execution_id: int, *, show: bool, timeout: float | None = None,
           poll: float = 0.2) -> dict[str, Any]:
    """Poll the execution's row until it ends and its projection caught up (at most 5s
    after it ended); with `show`, keep a live step table (loops with rate and ETA) on the
    terminal. Returns the last row. Raises LookupError for an unknown execution,
    TimeoutError after `timeout` seconds; Ctrl-C (KeyboardInterrupt) propagates.
    Polls every `poll` seconds, sooner at first (from FIRST_POLL_SECONDS, growing half
    again each time): a run of a few milliseconds is not reported a poll later."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ended_at: float | None = None
    rates = LoopRates()
    # A database restart while following is waited out; a longer outage ends the follow.
    reconnect = db.Reconnect(f"following execution {execution_id}",
                             give_up_after=FOLLOW_GIVE_UP_SECONDS)
    live = Live(console=console, auto_refresh=False, transient=True) if show else None
    wait = min(FIRST_POLL_SECONDS, poll)
    with live if live is not None else contextlib.nullcontext():
        while True:
            try:
                row = fetch_progress(dsn, execution_id)
            except DatabaseTransient as exc:
                time.sleep(reconnect.failed(exc))
                continue
            reconnect.succeeded()
            if row is None:
                raise LookupError(f"execution {execution_id} does not exist")
            if live is not None:
                live.update(progress_view(row, rates), refresh=True)
            if row["status"] in TERMINAL_STATUSES:
                ended_at = ended_at or time.monotonic()
                if caught_up(row) or time.monotonic() - ended_at > 5:
                    return row
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_id} still {row['status']}")
            time.sleep(wait)
            wait = min(wait * 1.5, poll)


def register_status_commands(main: click.Group, dsn: Callable[[], str]) -> None:
    """Add `status`, `executions` and `projector` to the `noetl` group."""

    @main.command("status")
    @click.argument("execution_id", type=int)
    @json_option
    @click.option("--watch", is_flag=True,
                  help="Follow the execution to its end and exit like `noetl run`.")
    def status_command(execution_id: int, as_json: bool, watch: bool) -> None:
        """Show one execution from its projected state (one row, no event scan).

        Exit 2 for an unknown id; with --watch, 0 when it COMPLETED, 1 when it FAILED or
        was CANCELLED, 130 on Ctrl-C (the execution keeps running)."""
        target = dsn()
        as_json = wants_json(as_json)
        row = fetch_progress(target, execution_id)
        if row is None:
            fail(f"execution {execution_id} does not exist", as_json=as_json)
        if watch:
            try:
                row = follow(target, execution_id, show=not as_json and sys.stdout.isatty())
            except KeyboardInterrupt:
                fail(f"interrupted: execution {execution_id} still running",
                     EXIT_INTERRUPTED, as_json=as_json)
        row["schedule"] = started_by_schedule(target, execution_id)
        if as_json:
            click.echo(dumps(row))
        else:
            print_status(row, failed_step_trace(target, row))
        if watch:
            sys.exit(0 if row["status"] == "COMPLETED" else EXIT_FAILED)

    @main.command("executions")
    @click.option("--status", type=click.Choice(sorted(EXECUTION_STATUSES),
                                                case_sensitive=False))
    @click.option("--path", help="Only executions of this catalog path.")
    @click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
    @json_option
    def executions_command(status: str | None, path: str | None, limit: int,
                           as_json: bool) -> None:
        """List recent executions."""
        with db.connection(dsn()) as conn:
            rows = db.fetch_all(conn, "executions_list",
                                status=status.upper() if status else None, path=path,
                                row_limit=limit)
        if wants_json(as_json):
            click.echo(dumps(rows))
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
        """Fold events into noetl.execution_state (shards by NOETL_SHARD_COUNT, default 16)
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
