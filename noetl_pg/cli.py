"""The `noetl` command line. Every command calls the same SQL functions as psql would."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import psycopg
from rich.console import Console
from rich.table import Table

from noetl_pg import db
from noetl_pg.catalog import register_file
from noetl_pg.cli_credential import credential_group
from noetl_pg.cli_results import results_group
from noetl_pg.cli_status import follow, print_status, register_status_commands
from noetl_pg.errors import NoetlError
from noetl_pg.migrate import MigrationError, migrate
from noetl_pg.projection import Projector
from noetl_pg.runtime import resolve_dsn
from noetl_pg.server import remote
from noetl_pg.server.cli import server_group
from noetl_pg.worker import build_worker

console = Console()
err_console = Console(stderr=True)


def _dsn() -> str:
    return resolve_dsn()


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    sys.exit(2)


def _json_dump(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log engine activity to stderr.")
def main(verbose: bool) -> None:
    """noetl-pg: run NoETL playbooks with PostgreSQL holding the correctness."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# --- db ----------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations and (re)create the SQL functions."""
    dsn = resolve_dsn(migrate_schema=False)
    try:
        applied = migrate(dsn)
    except MigrationError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    names = f": {', '.join(applied)}" if applied else ""
    console.print(f"applied {len(applied)} migration(s){names}")


# --- catalog -----------------------------------------------------------------------


@main.group("catalog")
def catalog_group() -> None:
    """Register and list playbooks."""


@catalog_group.command("register")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def catalog_register(files: tuple[Path, ...]) -> None:
    """Register playbook FILES (each registration adds a version)."""
    dsn = _dsn()
    with db.connect(dsn) as conn:
        for file in files:
            try:
                registered = register_file(conn, file)
            except NoetlError as exc:
                _fail(str(exc))
            console.print(f"registered {registered.path} version {registered.version}")


@catalog_group.command("list")
def catalog_list() -> None:
    """List registered playbooks."""
    with db.connect(_dsn()) as conn:
        rows = db.fetch_all(conn, "catalog_list")
    table = Table("path", "version", "catalog_id", "registered")
    for row in rows:
        table.add_row(row["path"], str(row["version"]), str(row["catalog_id"]),
                      str(row["created_at"]))
    console.print(table)


# --- run / exec --------------------------------------------------------------------


def _payload(payload: str | None, sets: tuple[str, ...]) -> dict[str, Any]:
    value: Any = {}
    if payload:
        try:
            value = json.loads(payload)
        except json.JSONDecodeError as exc:
            _fail(f"--payload is not valid JSON: {exc}")
        if not isinstance(value, dict):
            _fail("--payload must be a JSON object")
    for assignment in sets:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            _fail(f"--set expects key=value, got {assignment!r}")
        try:
            value[key] = json.loads(raw)
        except json.JSONDecodeError:
            value[key] = raw
    return value


def _start(conn: psycopg.Connection[Any], target: str, payload: dict[str, Any],
           version: int | None) -> tuple[str, int]:
    path = target
    candidate = Path(target)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        try:
            path = register_file(conn, candidate).path
        except NoetlError as exc:
            _fail(str(exc))
    try:
        row = db.fetch_one(conn, "start_execution", path=path, payload=payload, version=version)
    except psycopg.errors.RaiseException as exc:
        _fail(exc.diag.message_primary or str(exc))
    except psycopg.Error as exc:
        _fail(exc.diag.message_primary or str(exc))
    assert row is not None
    return path, int(row["execution_id"])


@main.command("run")
@click.argument("target")
@click.option("--payload", help="JSON object merged over the playbook's workload.")
@click.option("--set", "sets", multiple=True, help="key=value merged into the payload.")
@click.option("--version", type=int, help="Run this catalog version instead of the latest.")
@click.option("--json", "as_json", is_flag=True, help="Print the final execution as JSON.")
@click.option("-r", "--runtime", type=click.Choice(["local", "distributed"]), default="local",
              show_default=True,
              help="local: run workers in this process; distributed: wait for external ones.")
@click.option("--concurrency", default=4, show_default=True, help="In-process worker slots.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
def run_command(target: str, payload: str | None, sets: tuple[str, ...], version: int | None,
                as_json: bool, runtime: str, concurrency: int, timeout: float | None) -> None:
    """Register FILE (or take a catalog PATH), run it to the end and print the result.

    Exit status 0 when the execution COMPLETED, 1 when it FAILED or was CANCELLED.
    """
    dsn = _dsn()
    worker = build_worker(dsn, slots=concurrency, poll_interval=0.5) if runtime == "local" \
        else None
    projector = Projector(dsn) if runtime == "local" else None
    if worker is not None and projector is not None:
        worker.start()
        projector.start()
    try:
        with db.connect(dsn) as conn:
            path, execution_id = _start(conn, target, _payload(payload, sets), version)
        if not as_json:
            console.print(f"execution {execution_id} of {path} started")
        row = follow(dsn, execution_id, show=not as_json and sys.stdout.isatty(),
                     timeout=timeout)
    finally:
        if worker is not None and projector is not None:
            worker.stop()
            projector.stop()
            worker.join(timeout=30)
            projector.join(timeout=30)
    if as_json:
        click.echo(_json_dump(row))
    else:
        print_status(row)
    sys.exit(0 if row["status"] == "COMPLETED" else 1)


@main.command("exec")
@click.argument("path")
@click.option("--payload", help="JSON object merged over the playbook's workload.")
@click.option("--set", "sets", multiple=True, help="key=value merged into the payload.")
@click.option("--version", type=int)
def exec_command(path: str, payload: str | None, sets: tuple[str, ...],
                 version: int | None) -> None:
    """Start an execution of PATH and print its id (workers do the rest)."""
    with db.connect(_dsn()) as conn:
        _, execution_id = _start(conn, path, _payload(payload, sets), version)
    click.echo(execution_id)


# --- cancel / events --------------------------------------------------------------


@main.command("cancel")
@click.argument("execution_id", type=int)
@click.option("--reason", default="cancelled by request", show_default=True)
def cancel_command(execution_id: int, reason: str) -> None:
    """Cancel a running execution and its child executions."""
    with db.connect(_dsn()) as conn:
        try:
            row = db.fetch_one(conn, "cancel_execution", execution_id=execution_id,
                               reason=reason)
        except psycopg.Error as exc:
            _fail(exc.diag.message_primary or str(exc))
    assert row is not None
    if row["cancelled"]:
        console.print(f"cancelled {row['cancelled']} execution(s)")
    else:
        console.print(f"execution {execution_id} had already finished; nothing to cancel")


@main.command("events")
@click.argument("execution_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def events_command(execution_id: int, as_json: bool) -> None:
    """List the event history of an execution."""
    with db.connect(_dsn()) as conn:
        rows = db.fetch_all(conn, "execution_events", execution_id=execution_id)
    if as_json:
        click.echo(_json_dump(rows))
        return
    table = Table("id", "type", "step", "command", "attempt", "iter", "error")
    for row in rows:
        table.add_row(str(row["event_id"]), row["event_type"], row["node_name"] or "",
                      str(row["command_id"] or ""), str(row["attempt"] or ""),
                      "" if row["iter_index"] is None else str(row["iter_index"]),
                      (row["error"] or "")[:80])
    console.print(table)


# --- worker ------------------------------------------------------------------------


@main.command("worker")
@click.option("--concurrency", default=4, show_default=True, help="Slots (commands at once).")
@click.option("--kinds", help="Comma-separated command kinds to serve (default: all).")
@click.option("--worker-id", help="Stable id for this worker (default: host-pid-random).")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--projector/--no-projector", "with_projector", default=True, show_default=True,
              help="Also fold events into execution.state (projection shards are shared).")
def worker_command(concurrency: int, kinds: str | None, worker_id: str | None,
                   batch_size: int, with_projector: bool) -> None:
    """Serve the command queue until SIGTERM/SIGINT (finishes what it holds first)."""
    worker = build_worker(_dsn(), slots=concurrency, worker_id=worker_id, batch_size=batch_size,
                    kinds=kinds.split(",") if kinds else None)

    def _stop(signum: int, frame: object) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    err_console.print(f"worker {worker.worker_id} serving with {concurrency} slots")
    started = time.monotonic()
    projector = Projector(worker.dsn) if with_projector else None
    if projector is not None:
        projector.start()
    try:
        worker.run_forever()
    finally:
        if projector is not None:
            projector.stop()
            projector.join(timeout=30)
    err_console.print(f"worker stopped after {time.monotonic() - started:.1f}s")


main.add_command(credential_group(_dsn))
main.add_command(results_group(_dsn))
register_status_commands(main, _dsn)
main.add_command(server_group(_dsn))
remote.install(main)  # --server URL: run/exec/status/cancel/catalog over HTTP


if __name__ == "__main__":
    main()
