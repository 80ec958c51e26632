"""The claim of a cursor loop (`loop.cursor`, NoETL's CursorSpec), run by a worker.

A cursor loop's slots are claim commands (kind 'cursor', sql/functions/cursor_loop.sql).
Running one: open a transaction on the playbook's database (`cursor.auth`, through the
postgres tool's pools), run the claim statement (rendered when the loop started), read the
rows it returns, then hand them to the engine (`noetl.finish_cursor_claim`, one
transaction on the engine's database) and only then commit the claim. So:

- the worker dies before the engine has the rows: the claim was never committed, the rows
  were never taken, and the reaper gives the claim command to another worker;
- it dies after: the engine holds the rows as loop items of the slot, whose commands run
  them (and are taken back and run again, same attempt, like any command of a dead
  worker); the uncommitted claim leaves the rows free to be claimed again, and the engine
  skips a row it already holds (by its key, `options.key` columns or the whole row);
- the engine refuses the rows (the claim was taken back meanwhile, or the loop is over):
  the claim is rolled back.

A claim that raises (bad SQL, a credential that does not connect) is reported as the
claim's error: a failed item of the loop, the slot drained (loop.spec.on_error decides).
`options.timeout` (seconds) bounds the claim statement. If the engine cannot be reached,
the claim is rolled back and the error propagates (the worker's slot reconnects; the claim
command, still claimed by this worker, is taken back by its orphan sweep).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from noetl_pg import db
from noetl_pg.credentials import redact, secret_values
from noetl_pg.errors import NoetlError
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.postgres import _credential_fields, conninfo_for, json_safe, worker_pools

log = logging.getLogger(__name__)

KIND = "cursor"


class _Refused(Exception):
    """The engine did not take the claimed rows: roll the claim back."""


class CursorClaims:
    """Runs claim commands for one worker; `tool_context` gives a command its ToolContext
    (credentials, pools) and `redact` scrubs secrets from error text."""

    def __init__(
        self,
        worker_id: str,
        kinds: list[str] | None,
        tool_context: Callable[[Mapping[str, Any]], ToolContext],
        redact_text: Callable[[str], str],
    ) -> None:
        self._worker_id = worker_id
        self._kinds = kinds
        self._tool_context = tool_context
        self._redact = redact_text

    def run(self, conn: psycopg.Connection[Any], command: Mapping[str, Any]) -> list[int]:
        """Run one claim command to its end; returns the ids of the commands the engine
        created already claimed by this worker (the slot's first item, the loop's route),
        which the caller runs next. Raises psycopg.OperationalError when the engine's
        connection is lost (the claim is then rolled back)."""
        spec: Mapping[str, Any] = (command.get("input") or {}).get("cursor") or {}
        context = self._tool_context(command)
        secrets: list[str] = []
        try:
            fields = _credential_fields(spec.get("auth"), context)
            secrets = secret_values(fields)
            pool = worker_pools(context.worker_resources).pool(conninfo_for(fields), secrets)
            with pool.connection() as target:
                return self._claim(conn, command, spec, target)
        except (NoetlError, psycopg.Error, PoolTimeout) as exc:
            if isinstance(exc, psycopg.OperationalError) and conn.broken:
                raise
            text = f"step '{command['step_name']}': {self._error_text(exc, secrets)}"
            return self._report(conn, command, None, text)[1]

    def _claim(
        self, conn: psycopg.Connection[Any], command: Mapping[str, Any],
        spec: Mapping[str, Any], target: psycopg.Connection[Any],
    ) -> list[int]:
        claimed: list[int] = []
        options = spec.get("options") or {}
        try:
            with target.transaction(), target.cursor(row_factory=dict_row) as cursor:
                # The claim was rendered with values escaped for standard strings.
                cursor.execute(db.query("tool_standard_strings"))
                if options.get("timeout"):
                    cursor.execute(db.query("tool_statement_timeout"),
                                   {"timeout": f"{int(float(options['timeout']) * 1000)}ms"})
                cursor.execute(str(spec.get("claim") or ""))
                rows = [json_safe(dict(row)) for row in cursor.fetchall()] \
                    if cursor.description is not None else []
                # The engine's commit comes first: see the module docstring.
                outcome, claimed = self._report(conn, command, rows, None)
                if outcome not in ("ok", "drained"):
                    raise _Refused(outcome)
        except _Refused as refused:
            log.warning("cursor claim of command %s rolled back: the engine said %s",
                        command["command_id"], refused)
        return claimed

    def _report(
        self, conn: psycopg.Connection[Any], command: Mapping[str, Any],
        rows: list[Any] | None, error: str | None,
    ) -> tuple[str, list[int]]:
        """finish_cursor_claim: its outcome and the commands it created claimed by us."""
        row = db.fetch_one(
            conn, "finish_cursor_claim", worker_id=self._worker_id,
            command_id=command["command_id"], attempt=command["attempt"],
            claim=command["claim_gen"], rows=Jsonb(rows if rows is not None else []),
            error=error, kinds=self._kinds,
        )
        if row is None:
            raise LookupError("finish_cursor_claim returned no row")
        ids = [int(command_id) for command_id in row["claimed"] or []]
        if row["route_command_id"] is not None:
            ids.append(int(row["route_command_id"]))
        return str(row["outcome"]), ids

    def _error_text(self, exc: BaseException, secrets: list[str]) -> str:
        if isinstance(exc, psycopg.Error):
            detail = exc.diag.message_primary or str(exc).strip()
            text = f"cursor claim failed [SQLSTATE {exc.sqlstate}]: {detail}"
        else:
            text = f"cursor claim failed: {exc}"
        return self._redact(redact(text, secrets))
