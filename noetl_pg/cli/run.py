"""`noetl run` / `noetl exec` (register if a file, start, follow to the end) and `noetl start`.

NoETL's `exec` runs a playbook to the end, so here `exec` is `run`; `start` only starts an
execution and prints its id (workers elsewhere do the rest). A FILE is registered first,
reusing the latest version when its text is unchanged. Ctrl-C cancels the execution and
exits 130; `--timeout` prints one line and exits 124 (cancelling the execution when this
process was running its workers, since nothing else would). On the embedded server `run`
migrates a schema that is behind; with NOETL_DSN it only checks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psycopg

from noetl_pg import db
from noetl_pg.catalog import register_file
from noetl_pg.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    dumps,
    err_console,
    fail,
    get_dsn,
    json_option,
    wants_json,
)
from noetl_pg.cli.status import failed_step_trace, follow, print_status
from noetl_pg.errors import DatabaseError, NoetlError
from noetl_pg.jsoncheck import storage_problem


def parse_payload(payload: str | None, sets: tuple[str, ...]) -> dict[str, Any]:
    """--payload JSON object, then each --set/--var key=value (value parsed as JSON if it is)."""
    value: Any = {}
    if payload:
        try:
            value = json.loads(payload)
        except json.JSONDecodeError as exc:
            fail(f"--payload is not valid JSON: {exc}")
        if not isinstance(value, dict):
            fail("--payload must be a JSON object")
    for assignment in sets:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            fail(f"--set expects key=value, got {assignment!r}")
        try:
            value[key] = json.loads(raw)
        except json.JSONDecodeError:
            value[key] = raw
    payload_object: dict[str, Any] = value
    return payload_object


def start_target(conn: psycopg.Connection[Any], target: str, payload: dict[str, Any],
                 version: int | None) -> tuple[str, int]:
    """Register TARGET when it is a YAML file, start it; returns (path, execution_id)."""
    path = target
    candidate = Path(target)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        try:
            path = register_file(conn, candidate, reuse_unchanged=True).path
        except NoetlError as exc:
            fail(str(exc))
    problem = storage_problem(payload, "payload")
    if problem:
        fail(problem)
    try:
        row = db.fetch_one(conn, "start_execution", path=path, payload=payload, version=version)
    except DatabaseError as exc:
        fail(db.error_message(exc))
    assert row is not None
    return path, int(row["execution_id"])


def cancel_quietly(dsn: str, execution_id: int, reason: str) -> None:
    with db.connection(dsn) as conn:
        db.fetch_one(conn, "cancel_execution", execution_id=execution_id, reason=reason)


def follow_to_end(dsn: str, execution_id: int, *, as_json: bool, timeout: float | None,
                  cancel_on_timeout: bool, cancel_on_interrupt: bool = True) -> None:
    """Follow the execution until it ends and exit like `run` (0, 1, 124 or 130)."""
    try:
        row = follow(dsn, execution_id, show=not as_json and sys.stdout.isatty(),
                     timeout=timeout)
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            cancel_quietly(dsn, execution_id, "interrupted (Ctrl-C on noetl run)")
        what = "cancelled" if cancel_on_interrupt else "still running"
        fail(f"interrupted: execution {execution_id} {what}", EXIT_INTERRUPTED,
             as_json=as_json)
    except TimeoutError:
        if cancel_on_timeout:
            cancel_quietly(dsn, execution_id, f"timed out after {timeout:g}s (noetl run)")
        what = "cancelled" if cancel_on_timeout else "still running"
        fail(f"execution {execution_id} did not finish within {timeout:g}s; {what}",
             EXIT_TIMEOUT, as_json=as_json)
    if as_json:
        click.echo(dumps(row))
    else:
        print_status(row, failed_step_trace(dsn, row))
    sys.exit(0 if row["status"] == "COMPLETED" else EXIT_FAILED)


def _start_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("target"),
        click.option("--payload", help="JSON object merged over the playbook's workload."),
        click.option("--set", "--var", "sets", multiple=True,
                     help="key=value merged into the payload (repeatable)."),
        click.option("--version", "version", type=click.IntRange(min=1),
                     help="Run this catalog version instead of the latest."),
        json_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextmanager
def local_runtime(dsn: str, slots: int, local: bool) -> Iterator[None]:
    """With `local`, an in-process worker and its projector serve `dsn` for the block
    (`--runtime local`); they finish what they hold and stop at its end."""
    if not local:
        yield
        return
    # Imported here: the worker pulls in every tool (httpx, duckdb...), which commands that
    # only read the database should not pay for at start.
    from noetl_pg.projection import Projector
    from noetl_pg.worker import build_worker

    worker = build_worker(dsn, slots=slots, poll_interval=0.5)
    projector = Projector(dsn)
    worker.start()
    projector.start()
    try:
        yield
    finally:
        worker.stop()
        projector.stop()
        worker.join(timeout=30)
        projector.join(timeout=30)


def _run(target: str, payload: str | None, sets: tuple[str, ...], version: int | None,
         as_json: bool, runtime: str, concurrency: int | None, timeout: float | None) -> None:
    from noetl_pg.worker import default_slots

    as_json = wants_json(as_json)
    local = runtime == "local"
    dsn = get_dsn("migrate-embedded")
    body = parse_payload(payload, sets)
    with local_runtime(dsn, concurrency or default_slots(), local):
        with db.connection(dsn) as conn:
            path, execution_id = start_target(conn, target, body, version)
        if not as_json:
            err_console.print(f"execution {execution_id} of {path} started", highlight=False)
        follow_to_end(dsn, execution_id, as_json=as_json, timeout=timeout,
                      cancel_on_timeout=local)


def register_run_commands(main: click.Group) -> None:
    """Add `run`, `exec` (the same, NoETL's name) and `start` to the `noetl` group."""
    runtime_option = click.option(
        "-r", "--runtime", type=click.Choice(["local", "distributed"]), default="local",
        show_default=True,
        help="local: run workers in this process; distributed: wait for external ones.")
    concurrency_option = click.option("--concurrency", default=None,
                                      show_default="one per CPU, 2..8",
                                      type=click.IntRange(min=1), help="In-process slots.")
    timeout_option = click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                                  help="Give up after this many seconds (exit 124).")

    @main.command("run")
    @_start_options
    @runtime_option
    @concurrency_option
    @timeout_option
    def run_command(target: str, payload: str | None, sets: tuple[str, ...],
                    version: int | None, as_json: bool, runtime: str, concurrency: int,
                    timeout: float | None) -> None:
        """Register FILE (or take a catalog PATH), run it to the end, print the result.

        Exit status 0 when the execution COMPLETED, 1 when it FAILED or was CANCELLED,
        124 on --timeout, 130 on Ctrl-C (the execution is cancelled)."""
        _run(target, payload, sets, version, as_json, runtime, concurrency, timeout)

    # NoETL's `exec` runs to the end like `run`, with the same arguments (the --server
    # remote verbs pass them by name).
    @main.command("exec")
    @_start_options
    @runtime_option
    @concurrency_option
    @timeout_option
    def exec_command(target: str, payload: str | None, sets: tuple[str, ...],
                     version: int | None, as_json: bool, runtime: str, concurrency: int,
                     timeout: float | None) -> None:
        """Run FILE or PATH to the end, like `noetl run` (NoETL's name)."""
        _run(target, payload, sets, version, as_json, runtime, concurrency, timeout)

    @main.command("start")
    @_start_options
    def start_command(target: str, payload: str | None, sets: tuple[str, ...],
                      version: int | None, as_json: bool) -> None:
        """Start an execution of FILE or PATH and print its id (workers do the rest)."""
        dsn = get_dsn()
        with db.connection(dsn) as conn:
            path, execution_id = start_target(conn, target, parse_payload(payload, sets),
                                              version)
        if wants_json(as_json):
            click.echo(dumps({"execution_id": execution_id, "path": path}))
        else:
            click.echo(execution_id)
