"""`noetl db start|stop|status`: keep one embedded server up for several commands."""

from __future__ import annotations

import sys

import click

from noetl_pg import embedded
from noetl_pg.cli.common import EXIT_FAILED, console, emit, fail, json_option
from noetl_pg.migrate import schema_status
from noetl_pg.runtime import resolve_dsn


def register_embedded_commands(db_group: click.Group) -> None:
    """Add `start`, `stop` and `status` to the `noetl db` group."""

    @db_group.command("start")
    @json_option
    def db_start(as_json: bool) -> None:
        """Start the embedded server (if needed) and keep it running after this command,
        with its `noetl` database migrated. Ignored with NOETL_DSN."""
        if _has_dsn():
            fail("NOETL_DSN is set: there is no embedded server to start", as_json=as_json)
        already = embedded.running_pid() is not None
        embedded.start_embedded("default", keep_running=True)
        dsn = resolve_dsn(schema="migrate")
        value = {"data_dir": str(embedded.data_dir()), "dsn": dsn,
                 "already_running": already, "pid": embedded.running_pid()}
        emit(value, as_json, lambda: console.print(
            f"embedded server {'already ' if already else ''}running at "
            f"{value['data_dir']} (pid {value['pid']})\nNOETL_DSN='{dsn}'", highlight=False))

    @db_group.command("stop")
    @json_option
    def db_stop(as_json: bool) -> None:
        """Stop the embedded server."""
        stopped = embedded.stop_embedded("default")
        emit({"stopped": stopped, "data_dir": str(embedded.data_dir())}, as_json,
             lambda: console.print("embedded server stopped" if stopped else
                                   "embedded server was not running", highlight=False))

    @db_group.command("status")
    @json_option
    def db_status(as_json: bool) -> None:
        """Say whether the embedded server runs and whether its schema is up to date
        (exit 1 when it is not running)."""
        pid = embedded.running_pid()
        value: dict[str, object] = {"running": pid is not None, "pid": pid,
                                    "data_dir": str(embedded.data_dir())}
        if pid is not None and not _has_dsn():
            status = schema_status(resolve_dsn(schema="none"))
            value["schema_up_to_date"] = status.up_to_date
        emit(value, as_json, lambda: console.print(
            f"embedded server {'running, pid ' + str(pid) if pid else 'not running'} "
            f"({value['data_dir']})" + (
                f"; schema {'up to date' if value.get('schema_up_to_date') else 'behind'}"
                if "schema_up_to_date" in value else ""), highlight=False))
        sys.exit(0 if pid is not None else EXIT_FAILED)


def _has_dsn() -> bool:
    from noetl_pg.db import dsn_from_env

    return dsn_from_env() is not None
