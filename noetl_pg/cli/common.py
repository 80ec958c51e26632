"""What every `noetl` command shares: JSON or human output, errors, exit codes, the DSN.

Exit codes: 0 success (an execution COMPLETED); 1 an execution FAILED or was CANCELLED, or
a command failed at run time; 2 bad input (unknown id, bad filter, invalid playbook, schema
behind); 124 `--timeout` expired; 130 interrupted (Ctrl-C). With `--json` (on the group or
on the command) a command prints exactly one JSON document on stdout, errors included
(`{"error": "..."}`); the human text goes to stderr then.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from noetl_pg import db
from noetl_pg.errors import DatabaseError
from noetl_pg.runtime import SchemaPolicy, resolve_dsn

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def json_option(command: F) -> F:
    """`--json` on a command (the group's `noetl --json` sets it for every command)."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout.")(command)


def wants_json(as_json: bool = False) -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return as_json or bool(root is not None and (root.obj or {}).get("json"))


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def emit(value: Any, as_json: bool, render: Callable[[], None]) -> None:
    """Print `value` as JSON, or call `render` for the human form."""
    if wants_json(as_json):
        click.echo(dumps(value))
    else:
        render()


def fail(message: str, code: int = EXIT_USAGE, *, as_json: bool = False) -> NoReturn:
    """One line on stderr (and `{"error": ...}` on stdout with --json), then exit `code`."""
    if wants_json(as_json):
        click.echo(dumps({"error": message}))
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def get_dsn(schema: SchemaPolicy = "check") -> str:
    return resolve_dsn(schema=schema)


def call_or_fail(dsn: str, name: str, /, *, as_json: bool = False,
                 **params: Any) -> dict[str, Any]:
    """The row of one engine call (a query of sql/queries by name) that returns one; a
    refusal by the database is the command's one-line error."""
    with db.connection(dsn) as conn:
        try:
            row = db.fetch_one(conn, name, **params)
        except DatabaseError as exc:
            fail(db.error_message(exc), as_json=as_json)
    assert row is not None
    return row


def require_execution(dsn: str, execution_id: int, as_json: bool = False) -> None:
    """Exit 2 naming the id when no such execution exists."""
    with db.connection(dsn) as conn:
        row = db.fetch_one(conn, "execution_exists", execution_id=execution_id)
    if not (row and row["known"]):
        fail(f"execution {execution_id} does not exist", as_json=as_json)
