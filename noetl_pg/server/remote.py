"""The CLI's verbs over HTTP: with `--server URL` (or NOETL_SERVER_URL, or NoETL's
`--host H --port P`), `run`/`exec`, `start`, `status`, `cancel` and `catalog register|list` call a
noetl server instead of the database, as NoETL's CLI does.

`install(main)` adds the options to the `noetl` group and wraps those commands: each runs
as before without a server URL, and through `ServerClient` with one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from noetl_pg import settings
from noetl_pg.cli.common import fail
from noetl_pg.cli.run import parse_payload
from noetl_pg.server.client import RemoteError, ServerClient

SERVER_ENV = "NOETL_SERVER_URL"
META_KEY = "noetl.server_url"
console = Console()


def _server_url(ctx: click.Context) -> str | None:
    url: str | None = ctx.find_root().meta.get(META_KEY)
    return url


def _catalog_path(client: ServerClient, target: str) -> str:
    """A YAML file is registered first (its path is returned); else a catalog path."""
    candidate = Path(target)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return str(client.register(candidate.read_text())["path"])
    return target.removeprefix("catalog://")


def _print_status(status: dict[str, Any]) -> None:
    state = status.get("status") or ("FAILED" if status.get("failed") else
                                     "COMPLETED" if status.get("completed") else "RUNNING")
    console.print(f"execution {status['execution_id']}: {state}"
                  + (f" ({status.get('duration_human')})" if status.get("duration_human")
                     else ""))
    for loop in status.get("loops") or []:
        console.print(f"  loop {loop['step']}: {loop['done']}/{loop['total']} done, "
                      f"{loop['failed']} failed")
    if status.get("error"):
        console.print(f"  error: {status['error']}", highlight=False)


def _exit_code(status: dict[str, Any]) -> int:
    return 0 if status.get("status", "COMPLETED") == "COMPLETED" and status.get("completed") \
        and not status.get("failed") else 1


def remote_run(ctx: click.Context, client: ServerClient, target: str, payload: str | None,
               sets: tuple[str, ...], version: int | None, as_json: bool,
               timeout: float | None, **_local_only: Any) -> None:
    if ctx.get_parameter_source("runtime") is not ParameterSource.DEFAULT \
            and ctx.params.get("runtime") != "distributed":
        fail("with --server, run executes on the server's workers: use -r distributed")
    execution_id = client.execute(_catalog_path(client, target), parse_payload(payload, sets),
                                  version)
    if not as_json:
        console.print(f"execution {execution_id} started on {client.base_url}")
    status = client.wait(execution_id, timeout=timeout)
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)
    sys.exit(_exit_code(status))


def remote_start(ctx: click.Context, client: ServerClient, target: str, payload: str | None,
                 sets: tuple[str, ...], version: int | None, as_json: bool = False,
                 **_: Any) -> None:
    path = _catalog_path(client, target)
    execution_id = client.execute(path, parse_payload(payload, sets), version)
    if as_json:
        click.echo(json.dumps({"execution_id": execution_id, "path": path}))
    else:
        click.echo(execution_id)


def remote_status(ctx: click.Context, client: ServerClient, execution_id: int,
                  as_json: bool = False, watch: bool = False, **_: Any) -> None:
    status = client.wait(execution_id) if watch else client.status(execution_id)
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)


def remote_cancel(ctx: click.Context, client: ServerClient, execution_id: int, reason: str,
                  **_: Any) -> None:
    result = client.cancel(execution_id, reason)
    console.print(result.get("message") or result.get("status"))


def remote_register(ctx: click.Context, client: ServerClient, files: tuple[Path, ...],
                    **_: Any) -> None:
    for file in files:
        try:
            content = file.read_text()
        except OSError as exc:
            fail(f"cannot read playbook file {file}: {exc.strerror}")
        registered = client.register(content)
        console.print(f"registered {registered['path']} version {registered['version']}")


def remote_catalog_list(ctx: click.Context, client: ServerClient, **_: Any) -> None:
    table = Table("path", "version", "catalog_id", "registered")
    for entry in client.catalog_list():
        table.add_row(entry["path"], str(entry["version"]), str(entry["catalog_id"]),
                      str(entry.get("created_at") or ""))
    console.print(table)


REMOTE_VERBS: dict[tuple[str, ...], Callable[..., None]] = {
    ("run",): remote_run,
    ("exec",): remote_run,  # NoETL's name for run
    ("start",): remote_start,
    ("status",): remote_status,
    ("cancel",): remote_cancel,
    ("catalog", "register"): remote_register,
    ("catalog", "list"): remote_catalog_list,
}


def _wrap(command: click.Command, remote: Callable[..., None]) -> None:
    local = command.callback
    assert local is not None

    def callback(**kwargs: Any) -> Any:
        ctx = click.get_current_context()
        url = _server_url(ctx)
        if url is None:
            return local(**kwargs)
        try:
            with ServerClient(url) as client:
                remote(ctx, client, **kwargs)
        except (RemoteError, TimeoutError) as exc:
            fail(str(exc))
        return None

    command.callback = callback


def install(main: click.Group) -> None:
    """Add --server/--host/--port to `main` and route the verbs above through them."""
    main.params.extend([
        click.Option(["--server", "server_url"], default=lambda: settings.current().server_url,
                     metavar="URL",
                     help=f"Send run/exec/start/status/cancel/catalog to this noetl server "
                          f"(or ${SERVER_ENV})."),
        click.Option(["--host", "server_host"], help="NoETL style: server host (with --port)."),
        click.Option(["--port", "server_port"], type=int, default=8082, show_default=True,
                     help="NoETL style: server port (with --host)."),
    ])
    group_callback = main.callback
    assert group_callback is not None

    def callback(server_url: str | None, server_host: str | None, server_port: int,
                 **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        if server_url is None and server_host is not None:
            server_url = f"http://{server_host}:{server_port}"
        ctx.meta[META_KEY] = server_url
        return group_callback(**kwargs)

    main.callback = callback
    for names, remote in REMOTE_VERBS.items():
        command: click.Command | None = main
        for name in names:
            assert isinstance(command, click.Group)
            command = command.commands.get(name)
        if command is None:
            raise LookupError(f"noetl has no command {' '.join(names)} to route to a server")
        _wrap(command, remote)
