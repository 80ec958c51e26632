"""`noetl results ID` (list an execution's stored results) and `noetl results cleanup ID`.

Both go through the ResultStore configured from the environment (NOETL_PVC_MOUNT_PATH,
NOETL_S3_*), like a worker's: cleanup deletes the ref rows and db-tier bytes first, then the
fs/s3 objects, and names what it could not delete (a tier that is not reachable from here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from noetl_pg.cli.common import dumps, emit, json_option, require_execution, wants_json
from noetl_pg.store import ResultStore

console = Console()


class _ResultsGroup(click.Group):
    """`noetl results ID` is `noetl results list ID`; `cleanup` is the other subcommand."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands:
            args = ["list", *args]
        return super().resolve_command(ctx, args)


def results_group(dsn: Callable[[], str]) -> click.Group:
    """The `results` command group; `dsn` resolves the database when a command runs."""

    @click.group("results", cls=_ResultsGroup)
    def group() -> None:
        """Results stored by reference: `noetl results ID`, `noetl results cleanup ID`."""

    @group.command("list")
    @click.argument("execution_id", type=int)
    @json_option
    def list_command(execution_id: int, as_json: bool) -> None:
        """List the stored results (refs) of EXECUTION_ID, oldest first."""
        target = dsn()
        require_execution(target, execution_id, as_json)
        refs = ResultStore.from_env(target).list_refs(execution_id)
        if wants_json(as_json):
            click.echo(dumps([asdict(ref) for ref in refs]))
            return
        table = Table("ref", "tier", "bytes", "content type", "created")
        for ref in refs:
            table.add_row(ref.ref, ref.store_tier, str(ref.bytes_size), ref.content_type,
                          str(ref.created_at))
        console.print(table)

    @group.command("cleanup")
    @click.argument("execution_id", type=int)
    @json_option
    def cleanup_command(execution_id: int, as_json: bool) -> None:
        """Delete every stored result of EXECUTION_ID: ref rows and their data together."""
        target = dsn()
        require_execution(target, execution_id, as_json)
        report = ResultStore.from_env(target).cleanup_execution(execution_id)

        def render() -> None:
            console.print(f"deleted {report.refs_deleted} result(s) of execution "
                          f"{execution_id}")
            for leftover in report.leftovers:
                console.print(f"[yellow]left behind[/yellow] {leftover}", highlight=False)

        emit({"deleted": report.refs_deleted, "left_behind": list(report.leftovers)},
             as_json, render)

    return group
