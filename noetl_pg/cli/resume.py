"""`noetl resume ID` and `noetl rerun ID --from STEP` (sql/functions/resume.sql).

Both follow the execution to its end like `noetl run` (in-process workers unless
`--runtime distributed`), or only start it with `--no-wait`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from noetl_pg.cli.common import (
    call_or_fail,
    dumps,
    err_console,
    get_dsn,
    json_option,
    require_execution,
    wants_json,
)
from noetl_pg.cli.run import follow_to_end, local_runtime


def _follow(dsn: str, execution_id: int, *, runtime: str, concurrency: int, as_json: bool,
            timeout: float | None) -> None:
    local = runtime == "local"
    with local_runtime(dsn, concurrency, local):
        follow_to_end(dsn, execution_id, as_json=as_json, timeout=timeout,
                      cancel_on_timeout=local)


CommandFunction = TypeVar("CommandFunction", bound=Callable[..., Any])


def _options(command: CommandFunction) -> CommandFunction:
    for option in reversed([
        click.option("--wait/--no-wait", default=True, show_default=True,
                     help="Follow the execution to its end (exit like `noetl run`)."),
        click.option("--runtime", type=click.Choice(["local", "distributed"]),
                     default="local", show_default=True),
        click.option("--concurrency", default=4, show_default=True,
                     type=click.IntRange(min=1)),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True)),
        json_option,
    ]):
        command = option(command)
    return command


def register_resume_commands(main: click.Group) -> None:
    """Add `resume` and `rerun` to the `noetl` group."""

    @main.command("resume")
    @click.argument("execution_id", type=int)
    @_options
    def resume_command(execution_id: int, wait: bool, runtime: str, concurrency: int,
                       timeout: float | None, as_json: bool) -> None:
        """Continue a FAILED or CANCELLED execution where it stopped: its failed commands
        (for a loop, only the failed iterations) run again; finished steps do not."""
        as_json = wants_json(as_json)
        dsn = get_dsn("migrate-embedded")
        require_execution(dsn, execution_id, as_json)
        row = call_or_fail(dsn, "resume_execution", as_json=as_json,
                           execution_id=execution_id)
        if not as_json:
            err_console.print(f"execution {execution_id} resumed: {row['requeued']} "
                              "command(s) issued again", highlight=False)
        if not wait:
            if as_json:
                click.echo(dumps({"execution_id": execution_id, "requeued": row["requeued"]}))
            return
        _follow(dsn, execution_id, runtime=runtime, concurrency=concurrency,
                as_json=as_json, timeout=timeout)

    @main.command("rerun")
    @click.argument("execution_id", type=int)
    @click.option("--from", "from_step", required=True, help="The step to start from.")
    @_options
    def rerun_command(execution_id: int, from_step: str, wait: bool, runtime: str,
                      concurrency: int, timeout: float | None, as_json: bool) -> None:
        """Start a new execution linked to EXECUTION_ID that reuses its results of the steps
        before STEP and runs from STEP on."""
        as_json = wants_json(as_json)
        dsn = get_dsn("migrate-embedded")
        require_execution(dsn, execution_id, as_json)
        row = call_or_fail(dsn, "rerun_execution", as_json=as_json,
                           execution_id=execution_id, from_step=from_step)
        new_id = int(row["execution_id"])
        if not as_json:
            err_console.print(f"execution {new_id} reruns {execution_id} from {from_step}",
                              highlight=False)
        if not wait:
            if as_json:
                click.echo(dumps({"execution_id": new_id, "rerun_of": execution_id}))
            else:
                click.echo(new_id)
            return
        _follow(dsn, new_id, runtime=runtime, concurrency=concurrency, as_json=as_json,
                timeout=timeout)
