"""`noetl schedule add|list|pause|resume|delete`: cron schedules (noetl_pg/schedules.py).

`noetl worker` processes fire due ticks from their heartbeat; these commands only store and
change schedules.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.table import Table

from noetl_pg import db
from noetl_pg.cli.common import console, emit, fail, json_option
from noetl_pg.cli.run import parse_payload
from noetl_pg.errors import DatabaseRefused
from noetl_pg.schedules import MISSED_POLICIES, ScheduleError, add_schedule, set_paused


def schedule_group(get_dsn: Callable[[], str]) -> click.Group:
    """The `schedule` command group; `get_dsn` resolves the database when a command runs."""

    @click.group("schedule")
    def schedule() -> None:
        """Cron schedules that start executions (fired by `noetl worker`)."""

    @schedule.command("add")
    @click.argument("path")
    @click.argument("cron")
    @click.option("--payload", help="JSON object each run starts with.")
    @click.option("--timezone", "timezone_name", default="UTC", show_default=True,
                  help="IANA time zone the cron expression is read in.")
    @click.option("--missed", "missed_policy", type=click.Choice(MISSED_POLICIES),
                  default="skip", show_default=True,
                  help="Ticks missed while no worker ran: skip (run the latest once) or "
                       "catch_up (run each).")
    @json_option
    def add(path: str, cron: str, payload: str | None, timezone_name: str,
            missed_policy: str, as_json: bool) -> None:
        """Start PATH on every tick of CRON (5 fields: minute hour day month weekday)."""
        try:
            with db.connection(get_dsn()) as conn:
                schedule_id = add_schedule(conn, path, cron, timezone_name=timezone_name,
                                           payload=parse_payload(payload, ()),
                                           missed_policy=missed_policy)
                row = next(r for r in db.fetch_all(conn, "schedule_list")
                           if r["schedule_id"] == schedule_id)
        except ScheduleError as exc:
            fail(str(exc), as_json=as_json)
        except DatabaseRefused as exc:
            fail(db.error_message(exc), as_json=as_json)
        emit(row, as_json, lambda: console.print(
            f"schedule {schedule_id}: {path} at '{cron}' ({timezone_name}), next run "
            f"{row['next_run_at']:%Y-%m-%d %H:%M %Z}", highlight=False))

    @schedule.command("list")
    @json_option
    def list_(as_json: bool) -> None:
        """Every schedule with its next tick, run count and last execution."""
        with db.connection(get_dsn()) as conn:
            rows = db.fetch_all(conn, "schedule_list")

        def render() -> None:
            table = Table("id", "path", "cron", "timezone", "missed", "state", "next run",
                          "runs", "last execution")
            for row in rows:
                last = (f"{row['last_execution_id']} {row['last_status']}"
                        if row["last_execution_id"] else "-")
                table.add_row(str(row["schedule_id"]), row["path"], row["cron"],
                              row["timezone"], row["missed_policy"],
                              "paused" if row["paused"] else "active",
                              f"{row['next_run_at']:%Y-%m-%d %H:%M:%S %Z}", str(row["runs"]),
                              last)
            console.print(table)

        emit(rows, as_json, render)

    def _toggle(schedule_id: int, paused: bool, as_json: bool) -> None:
        with db.connection(get_dsn()) as conn:
            found = set_paused(conn, schedule_id, paused)
        if not found:
            fail(f"schedule {schedule_id} does not exist", as_json=as_json)
        state = "paused" if paused else "active"
        emit({"schedule_id": schedule_id, "state": state}, as_json,
             lambda: console.print(f"schedule {schedule_id} {state}"))

    @schedule.command("pause")
    @click.argument("schedule_id", type=int)
    @json_option
    def pause(schedule_id: int, as_json: bool) -> None:
        """Stop firing SCHEDULE_ID until it is resumed."""
        _toggle(schedule_id, True, as_json)

    @schedule.command("resume")
    @click.argument("schedule_id", type=int)
    @json_option
    def resume(schedule_id: int, as_json: bool) -> None:
        """Fire SCHEDULE_ID again from its next tick after now."""
        _toggle(schedule_id, False, as_json)

    @schedule.command("delete")
    @click.argument("schedule_id", type=int)
    @json_option
    def delete(schedule_id: int, as_json: bool) -> None:
        """Remove SCHEDULE_ID and its tick history (executions it started stay)."""
        with db.connection(get_dsn()) as conn:
            row = db.fetch_one(conn, "schedule_delete", schedule_id=schedule_id)
        if not (row and row["found"]):
            fail(f"schedule {schedule_id} does not exist", as_json=as_json)
        emit({"schedule_id": schedule_id, "deleted": True}, as_json,
             lambda: console.print(f"schedule {schedule_id} deleted"))

    return schedule
