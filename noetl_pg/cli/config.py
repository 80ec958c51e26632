"""`noetl config show [--json]` and `noetl config docs`: the settings in force, and
docs/configuration.md generated from noetl_pg/settings.py."""

from __future__ import annotations

import click
from rich.table import Table

from noetl_pg import config_view, settings
from noetl_pg.cli.common import console, emit, json_option


@click.group("config")
def config_group() -> None:
    """The NOETL_* settings: what is in force, and their reference page."""


@config_group.command("show")
@json_option
def config_show(as_json: bool) -> None:
    """Print every setting in force (secrets redacted) and whether it was set or defaulted."""
    configured = settings.current()
    shown = config_view.effective(configured)
    given = config_view.explicitly_set(configured)

    def render() -> None:
        table = Table()
        table.add_column("variable", no_wrap=True)
        table.add_column("value")
        table.add_column("from")
        for variable, value in shown.items():
            table.add_row(variable, "" if value is None else str(value),
                          "environment" if variable in given else "default")
        console.print(table)

    emit(shown, as_json, render)


@config_group.command("docs")
def config_docs() -> None:
    """Print docs/configuration.md as generated from the declared settings."""
    click.echo(config_view.page(), nl=False)
