"""`noetl server [--host] [--port]` and `noetl server token add|list|revoke`."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
from rich.console import Console
from rich.table import Table

from noetl_pg import db, settings
from noetl_pg.errors import NoetlError
from noetl_pg.server.tokens import ROLES, add_token

console = Console()
err_console = Console(stderr=True)


def server_group(get_dsn: Callable[[], str]) -> click.Group:
    """The `server` command group; `get_dsn` is called when a command needs the database."""

    @click.group("server", invoke_without_command=True)
    @click.option("--host", default=lambda: settings.current().host,
                  show_default="$NOETL_HOST or 127.0.0.1")
    @click.option("--port", default=lambda: settings.current().port, type=int,
                  show_default="$NOETL_PORT or 8082")
    @click.option("--worker-slots", default=0, show_default=True, type=int,
                  help="Also run a worker with this many slots in this process.")
    @click.option("--projector/--no-projector", "with_projector", default=True,
                  show_default=True, help="Also fold events into noetl.execution_state here.")
    @click.pass_context
    def server(ctx: click.Context, host: str, port: int, worker_slots: int,
               with_projector: bool) -> None:
        """Serve NoETL's HTTP API, /metrics and the web console (/console/).

        Bound to a loopback address with no token created, the API needs no token; once
        a token exists (or to bind elsewhere) every request needs a bearer token.
        """
        if ctx.invoked_subcommand is not None:
            return
        from noetl_pg.server.serve import serve  # uvicorn only when serving

        try:
            err_console.print(f"noetl server on http://{host}:{port}/ "
                              f"(console /console/, API /api/openapi.json)")
            serve(get_dsn(), host=host, port=port, worker_slots=worker_slots,
                  with_projector=with_projector)
        except NoetlError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(2)

    @server.group("token")
    def token() -> None:
        """API bearer tokens (stored hashed; shown once)."""

    @token.command("add")
    @click.argument("name")
    @click.option("--role", type=click.Choice(ROLES), required=True)
    def token_add(name: str, role: str) -> None:
        """Create (or replace) token NAME with ROLE and print it once."""
        with db.connection(get_dsn()) as conn:
            try:
                secret = add_token(conn, name, role)
            except ValueError as exc:
                raise click.BadParameter(str(exc)) from None
        err_console.print(f"token {name} ({role}) created; it is shown only now:")
        click.echo(secret)

    @token.command("list")
    def token_list() -> None:
        """Token names, roles and dates (never the tokens)."""
        with db.connection(get_dsn()) as conn:
            rows = db.fetch_all(conn, "server_token_list")
        table = Table("name", "role", "created", "revoked")
        for row in rows:
            table.add_row(row["name"], row["role"], str(row["created_at"]),
                          str(row["revoked_at"] or ""))
        console.print(table)

    @token.command("revoke")
    @click.argument("name")
    def token_revoke(name: str) -> None:
        """Revoke token NAME (refused by servers within 5 seconds)."""
        with db.connection(get_dsn()) as conn:
            row = db.fetch_one(conn, "server_token_revoke", token_name=name)
        if row is None:
            err_console.print(f"[red]error:[/red] no live token named {name}")
            sys.exit(2)
        console.print(f"revoked {name}")

    return server
