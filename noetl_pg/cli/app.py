"""The `noetl` command line. Every command calls the same SQL functions as psql would.

Commands are grouped by concern in the modules beside this one (noetl_pg/cli/); this one
builds the group, the catalog and database commands, and turns expected errors into one
line and an exit code (noetl_pg/cli/common.py lists them).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg
from rich.table import Table

from noetl_pg import db, settings
from noetl_pg.catalog import register_file
from noetl_pg.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    call_or_fail,
    console,
    dumps,
    emit,
    err_console,
    fail,
    get_dsn,
    json_option,
    require_execution,
    wants_json,
)
from noetl_pg.cli.config import config_group
from noetl_pg.cli.credential import credential_group
from noetl_pg.cli.embedded import register_embedded_commands
from noetl_pg.cli.logs import register_logs_command
from noetl_pg.cli.results import results_group
from noetl_pg.cli.resume import register_resume_commands
from noetl_pg.cli.run import register_run_commands
from noetl_pg.cli.schedule import schedule_group
from noetl_pg.cli.status import register_status_commands
from noetl_pg.cli.workers import workers_command
from noetl_pg.errors import DatabaseError, DatabaseUnavailable, NoetlError
from noetl_pg.migrate import MigrationError, migrate, schema_status
from noetl_pg.roles import ROLES, apply_roles
from noetl_pg.runtime import resolve_dsn
from noetl_pg.server import remote
from noetl_pg.server.cli import server_group
from noetl_pg.validate import validate_text

T = TypeVar("T")


def _version() -> str:
    try:
        return metadata.version("noetl-pg")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class NoetlGroup(click.Group):
    """Turns the errors a user can cause into one line and an exit code, never a traceback."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:  # option defaults read settings (--server): a bad value is one line here too
            return super().make_context(info_name, args, parent, **extra)
        except NoetlError as exc:
            fail(str(exc), EXIT_USAGE)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MigrationError as exc:  # includes SchemaBehind
            fail(str(exc), EXIT_USAGE)
        except DatabaseUnavailable as exc:
            fail(f"cannot reach the database: {db.error_message(exc)}", EXIT_FAILED)
        except NoetlError as exc:
            fail(str(exc), EXIT_USAGE)
        except psycopg.OperationalError as exc:
            fail(f"cannot reach the database: {db.error_message(exc)}", EXIT_FAILED)


@click.group(cls=NoetlGroup)
@click.version_option(_version(), "--version", prog_name="noetl-pg",
                      message="%(prog)s %(version)s")
@click.option("--json", "as_json", is_flag=True,
              help="Every command prints one JSON document on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Log engine activity to stderr.")
@click.pass_context
def main(ctx: click.Context, as_json: bool, verbose: bool) -> None:
    """noetl-pg: run NoETL playbooks with PostgreSQL holding the correctness."""
    ctx.obj = {"json": as_json}
    settings.current()  # a bad NOETL_* value stops here: one line, exit 2
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- db ----------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database schema commands (and the embedded server: start, stop, status)."""


@db_group.command("migrate")
@json_option
def db_migrate(as_json: bool) -> None:
    """Apply pending migrations and re-create the SQL functions."""
    dsn = resolve_dsn(schema="none")
    try:
        applied = migrate(dsn, reload_functions=True)
    except MigrationError as exc:
        fail(str(exc), EXIT_FAILED, as_json=as_json)
    names = f": {', '.join(applied)}" if applied else ""
    emit({"applied": applied}, as_json,
         lambda: console.print(f"applied {len(applied)} migration(s){names}; "
                               "functions reloaded", highlight=False))


db_group.add_command(db_migrate, "init")  # NoETL's name for creating the schema
register_embedded_commands(db_group)


@db_group.command("schema")
@json_option
def db_schema(as_json: bool) -> None:
    """Say whether the schema is up to date (exit 1 when it is behind)."""
    status = schema_status(resolve_dsn(schema="none"))
    value = {"up_to_date": status.up_to_date, "missing": status.missing,
             "pending": status.pending, "functions_current": status.functions_current}
    emit(value, as_json, lambda: console.print(
        "schema up to date" if status.up_to_date else f"schema behind: {value}",
        highlight=False))
    sys.exit(0 if status.up_to_date else EXIT_FAILED)


@db_group.command("roles")
@json_option
def db_roles(as_json: bool) -> None:
    """Create noetl_admin/worker/operator/reader and apply ownership and grants."""
    try:
        present = apply_roles(resolve_dsn(schema="none"))
    except DatabaseError as exc:
        fail(f"cannot apply roles: {db.error_message(exc)}", EXIT_FAILED, as_json=as_json)
    missing = sorted(set(ROLES) - set(present))
    if missing:
        fail(f"roles missing (this user may not create roles): {', '.join(missing)}",
             EXIT_FAILED, as_json=as_json)
    emit({"roles": present}, as_json,
         lambda: console.print(f"roles in place: {', '.join(present)}", highlight=False))


@main.command("query")
@click.argument("statement")
@json_option
def query_command(statement: str, as_json: bool) -> None:
    """Run one SQL STATEMENT against the engine database and print its rows."""
    with db.connection(get_dsn()) as conn:
        try:
            cursor = conn.execute(statement)
        except psycopg.Error as exc:
            fail(db.error_message(exc), EXIT_FAILED, as_json=as_json)
        rows = cursor.fetchall() if cursor.description else []
        columns = [column.name for column in cursor.description or []]
        status = cursor.statusmessage

    def render() -> None:
        if not columns:
            console.print(status or "done", highlight=False)
            return
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
        console.print(table)
        console.print(f"({len(rows)} row(s))")

    emit(rows if columns else {"status": status}, as_json, render)


# --- catalog -----------------------------------------------------------------------


@main.group("catalog")
def catalog_group() -> None:
    """Register, list and show playbooks."""


@catalog_group.command("register")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def catalog_register(files: tuple[Path, ...], as_json: bool) -> None:
    """Register playbook FILES (a new version only when the text changed)."""
    registered = []
    with db.connection(get_dsn()) as conn:
        for file in files:
            try:
                entry = register_file(conn, file)
            except NoetlError as exc:
                fail(str(exc), as_json=as_json)
            for warning in entry.warnings:
                err_console.print(f"[yellow]{warning}[/yellow]", highlight=False)
            registered.append({"file": str(file), "path": entry.path, "version": entry.version,
                               "catalog_id": entry.catalog_id, "created": entry.created,
                               "warnings": list(entry.warnings)})

    def render() -> None:
        for entry in registered:
            verb = "registered" if entry["created"] else "unchanged,"
            console.print(f"{verb} {entry['path']} version {entry['version']}",
                          highlight=False)

    emit(registered, as_json, render)


@catalog_group.command("list")
@click.option("--all", "every_version", is_flag=True, help="Every version, not the latest.")
@json_option
def catalog_list(every_version: bool, as_json: bool) -> None:
    """List registered playbooks: the latest version of each path (--all: every version)."""
    with db.connection(get_dsn()) as conn:
        rows = db.fetch_all(conn, "catalog_list" if every_version else "catalog_latest_list")

    def render() -> None:
        columns = ["path", "version", "catalog_id", "registered"]
        table = Table(*columns, *([] if every_version else ["versions"]))
        for row in rows:
            cells = [row["path"], str(row["version"]), str(row["catalog_id"]),
                     f"{row['created_at']:%Y-%m-%d %H:%M:%S}"]
            table.add_row(*cells, *([] if every_version else [str(row["versions"])]))
        console.print(table)

    emit(rows, as_json, render)


@catalog_group.command("get")
@click.argument("path")
@click.option("--version", type=click.IntRange(min=1), help="This version (default: latest).")
@json_option
def catalog_get(path: str, version: int | None, as_json: bool) -> None:
    """Print the YAML of playbook PATH as registered (--json: with its spec)."""
    with db.connection(get_dsn()) as conn:
        row = db.fetch_one(conn, "catalog_get", path=path, version=version)
    if row is None:
        which = f" version {version}" if version else ""
        fail(f'playbook "{path}"{which} is not registered', as_json=as_json)
    emit(row, as_json, lambda: click.echo(row["content"], nl=not row["content"].endswith("\n")))


@main.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
def validate_command(file: Path, as_json: bool) -> None:
    """Parse, plan and check the templates of playbook FILE without registering or running it.

    Exit 0 when it is valid, 2 with the problems (each naming step and field) otherwise."""
    try:
        text = file.read_text()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", as_json=as_json)
    try:
        playbook, spec, problems = validate_text(text, str(file))
    except NoetlError as exc:
        fail(str(exc), as_json=as_json)
    value = {"valid": not problems, "path": playbook.path,
             "steps": [step["step"] for step in spec["workflow"]],
             "problems": [str(problem) for problem in problems]}
    if wants_json(as_json):
        click.echo(dumps(value))
    elif problems:
        for problem in problems:
            err_console.print(f"[red]error:[/red] playbook '{file}', {problem}",
                              highlight=False, soft_wrap=True)
    else:
        console.print(f"{file}: valid ({len(spec['workflow'])} steps, entry "
                      f"{spec['entry_step']})", highlight=False)
    sys.exit(EXIT_USAGE if problems else 0)


# --- cancel / events --------------------------------------------------------------


@main.command("cancel")
@click.argument("execution_id", type=int)
@click.option("--reason", default="cancelled by request", show_default=True)
@json_option
def cancel_command(execution_id: int, reason: str, as_json: bool) -> None:
    """Cancel a running execution and its child executions."""
    dsn = get_dsn()
    require_execution(dsn, execution_id, as_json)
    row = call_or_fail(dsn, "cancel_execution", as_json=as_json,
                       execution_id=execution_id, reason=reason)
    emit({"execution_id": execution_id, "cancelled": row["cancelled"]}, as_json,
         lambda: console.print(
             f"cancelled {row['cancelled']} execution(s)" if row["cancelled"] else
             f"execution {execution_id} had already finished; nothing to cancel"))


@main.command("events")
@click.argument("execution_id", type=int)
@json_option
def events_command(execution_id: int, as_json: bool) -> None:
    """List the event history of an execution."""
    dsn = get_dsn()
    require_execution(dsn, execution_id, as_json)
    with db.connection(dsn) as conn:
        rows = db.fetch_all(conn, "execution_events", execution_id=execution_id)

    def render() -> None:
        table = Table("id", "type", "step", "command", "attempt", "iter", "error")
        for row in rows:
            table.add_row(str(row["event_id"]), row["event_type"], row["node_name"] or "",
                          str(row["command_id"] or ""), str(row["attempt"] or ""),
                          "" if row["iter_index"] is None else str(row["iter_index"]),
                          (row["error"] or "")[:80])
        console.print(table)

    emit(rows, as_json, render)


# --- worker ------------------------------------------------------------------------


class _DefaultStartGroup(click.Group):
    """`noetl worker [OPTIONS]` is `noetl worker start [OPTIONS]` (NoETL says `worker start`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args[:1] != ["--help"] and (not args or args[0] not in self.commands):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@main.group("worker", cls=_DefaultStartGroup)
def worker_group() -> None:
    """Serve the command queue (`noetl worker` = `noetl worker start`)."""


def _while_unreachable(what: str, action: Callable[[], T]) -> T:
    """`action()`, tried again while the database cannot be reached, with the one reconnect
    policy, for up to NOETL_WORKER_START_WAIT_SECONDS; then the policy's one-line error."""
    policy = db.Reconnect(what, give_up_after=settings.current().worker_start_wait_seconds)
    while True:
        try:
            return action()
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            delay = policy.failed(exc)
            err_console.print(f"{what}: the database cannot be reached ({db.error_message(exc)}); "
                              f"trying again in {delay:.1f}s", highlight=False)
            time.sleep(delay)


@worker_group.command("start")
@click.option("--concurrency", "--max-workers", default=None,
              show_default="one per CPU, 2..8", type=click.IntRange(min=1),
              help="Slots (commands at once).")
@click.option("--kinds", help="Comma-separated command kinds to serve (default: all).")
@click.option("--worker-id", help="Stable id for this worker (default: NOETL_WORKER_ID, "
                                   "else host-pid-random).")
@click.option("--batch-size", default=None, show_default="32, fewer while commands are slow",
              type=click.IntRange(min=1), help="Commands claimed at once, at most.")
@click.option("--projector/--no-projector", "with_projector", default=True, show_default=True,
              help="Also fold events into noetl.execution_state (projection shards are shared).")
@json_option
def worker_start(concurrency: int | None, kinds: str | None, worker_id: str | None,
                 batch_size: int | None, with_projector: bool, as_json: bool) -> None:
    """Serve the command queue until SIGTERM/SIGINT (finishes what it holds first).

    Migrates the schema first when it is behind. With --json, one JSON document is printed
    when the worker stops."""
    from noetl_pg.projection import Projector  # the worker's imports are heavy: only here
    from noetl_pg.schedules import fire_due
    from noetl_pg.worker import DEFAULT_BATCH_SIZE, build_worker, default_slots

    # A worker started while PostgreSQL restarts (a supervisor replacing a dead one) waits.
    dsn = _while_unreachable("worker start", lambda: get_dsn("migrate"))
    concurrency = concurrency or default_slots()
    # A `noetl worker` fires due cron schedules from its heartbeat (`noetl run` does not).
    worker_id = worker_id or settings.current().worker_id
    worker = build_worker(dsn, slots=concurrency, worker_id=worker_id,
                          batch_size=batch_size or DEFAULT_BATCH_SIZE,
                          kinds=kinds.split(",") if kinds else None, housekeeping=fire_due)

    def _stop(signum: int, frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    err_console.print(f"worker {worker.worker_id} serving with {concurrency} slots",
                      highlight=False)
    started = time.monotonic()
    _while_unreachable("worker start", worker.start)
    projector = Projector(worker.dsn) if with_projector else None
    if projector is not None:
        projector.start()
    try:
        worker.serve()
    finally:
        if projector is not None:
            projector.stop()
            projector.join(timeout=30)
    seconds = time.monotonic() - started
    if wants_json(as_json):
        click.echo(dumps({"worker_id": worker.worker_id, "seconds": round(seconds, 3)}))
    err_console.print(f"worker stopped after {seconds:.1f}s")


@worker_group.command("probe")
@click.option("--worker-id", help="The worker to check (default: NOETL_WORKER_ID).")
@click.option("--max-age", type=click.FloatRange(min=0, min_open=True),
              help="Oldest heartbeat that counts as alive, in seconds "
                   "[default: 3 heartbeat intervals (NOETL_WORKER_HEARTBEAT_SECONDS)].")
@json_option
def worker_probe(worker_id: str | None, max_age: float | None, as_json: bool) -> None:
    """Health probe: exit 0 while worker WORKER_ID is running and heartbeating, 1 when it
    stopped, is silent for longer than --max-age or is unknown (or the database is down).

    Kubernetes' liveness and readiness probes and operators run it (workers/)."""
    configured = settings.current()
    worker_id = worker_id or configured.worker_id
    if not worker_id:
        fail("worker probe: give --worker-id or set NOETL_WORKER_ID", as_json=as_json)
    limit = max_age or 3 * configured.worker_heartbeat_seconds
    with db.connection(get_dsn("none")) as conn:
        row = db.fetch_one(conn, "worker_probe", worker_id=worker_id)
    if row is None:
        fail(f"worker {worker_id} is not registered", EXIT_FAILED, as_json=as_json)
    age = float(row["heartbeat_age_seconds"])
    report = {"worker_id": worker_id, "running": row["running"], "slots": row["slots"],
              "heartbeat_age_seconds": round(age, 3), "max_age_seconds": limit}
    if not row["running"]:
        fail(f"worker {worker_id} has stopped", EXIT_FAILED, as_json=as_json)
    if age > limit:
        fail(f"worker {worker_id}: last heartbeat {age:.1f}s ago (limit {limit:g}s)",
             EXIT_FAILED, as_json=as_json)
    emit(report, as_json, lambda: console.print(
        f"worker {worker_id} alive: {row['slots']} slots, heartbeat {age:.1f}s ago",
        highlight=False))


main.add_command(credential_group(get_dsn))
main.add_command(results_group(get_dsn))
register_run_commands(main)
register_resume_commands(main)
register_logs_command(main)
register_status_commands(main, get_dsn)
main.add_command(server_group(get_dsn))
main.add_command(schedule_group(get_dsn))
main.add_command(config_group)
main.add_command(workers_command(get_dsn))
remote.install(main)  # --server URL: run/exec/status/cancel/catalog over HTTP

