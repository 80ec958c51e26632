"""`kind: duckdb`: run SQL statements in DuckDB (in memory or a database file).

Config keys: `database` (`:memory:`, the default, or a file path), `command` (alias
`query`; several statements allowed), `params`, `timeout` (seconds; default the step's).

Statements are split by DuckDB's own parser and run one by one in one transaction. `params`
(a mapping for `$name`, or a list for `?` / `$1`) are bound, never spliced, and passed only
to statements that have parameters (a mapping is narrowed to the names each one uses).
Parquet and CSV files written by earlier steps are read with `read_parquet('...')` /
`read_csv('...')`, which are built in; extensions that must be downloaded are not available
offline.

Result: the same shape as the postgres tool (`{columns, rows, row_count, status}` of the
last statement plus `command_<i>`), with the same JSON-safe values. For INSERT, UPDATE,
DELETE and COPY, `row_count` is the number of rows affected and `rows` is empty. Each call
opens its own connection: `:memory:` starts empty every time.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.stream import chunk_rows_of, pump
from noetl_pg.tools.base import ToolContext, localize_refs
from noetl_pg.tools.postgres import (
    DuckdbKind,
    json_safe_row,
    script_params,
    script_result,
    script_text,
    statement_result,
)

if TYPE_CHECKING:  # imported where a step runs: every CLI command loads the registry
    import duckdb

# Statements whose result is a row count (duckdb.StatementType names).
COUNT_STATEMENT_TYPES = frozenset({"INSERT", "UPDATE", "DELETE", "COPY"})


def _statement_params(statement: Any, params: Mapping[str, Any] | list[Any] | None) -> Any:
    names = statement.named_parameters
    if not names or params is None:
        return None
    if isinstance(params, Mapping):
        missing = sorted(n for n in names if n not in params)
        if missing:
            raise ToolError(f"duckdb params are missing {', '.join(missing)}")
        return {name: params[name] for name in names}
    return params


class DuckdbTool(DuckdbKind):
    """Run a SQL script in DuckDB; see the module docstring."""

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        import duckdb

        sql = localize_refs(script_text(config, self.kind), context, self.kind)
        params = script_params(config, self.kind)
        database = str(config.get("database") or ":memory:")
        timeout = config.get("timeout") or context.timeout_seconds
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise ToolError(
                f"duckdb script does not parse: {exc}", output={"statement_index": None}
            ) from None
        try:
            conn = duckdb.connect(database)
        except duckdb.Error as exc:
            raise ToolError(f"duckdb cannot open database {database!r}: {exc}") from None
        timer = threading.Timer(float(timeout), conn.interrupt) if timeout else None
        chunk_rows = chunk_rows_of(config)
        per_statement: list[dict[str, Any]] = []
        try:
            if timer:
                timer.start()
            conn.begin()
            for index, statement in enumerate(statements):
                try:
                    conn.execute(statement.query, _statement_params(statement, params))
                except duckdb.Error as exc:
                    with contextlib.suppress(duckdb.Error):
                        conn.rollback()
                    raise _statement_error(exc, index, timeout) from None
                if chunk_rows is not None and index == len(statements) - 1:
                    per_statement.append(_stream(conn, chunk_rows, context, index, timeout))
                else:
                    per_statement.append(_result(conn, statement.type))
            conn.commit()
        except duckdb.Error as exc:
            raise _statement_error(exc, None, timeout) from None
        finally:
            if timer:
                timer.cancel()
            conn.close()
        return script_result(per_statement)


def _statement_error(exc: duckdb.Error, index: int | None, timeout: Any) -> ToolError:
    import duckdb

    where = "duckdb" if index is None else f"duckdb statement {index}"
    output = {"statement_index": index, "error": str(exc), "error_type": type(exc).__name__}
    if isinstance(exc, duckdb.InterruptException) and timeout:
        return ToolTimeout(f"{where} timed out after {float(timeout):g}s", output=output)
    return ToolError(f"{where} failed ({type(exc).__name__}): {exc}", output=output)


def _stream(conn: duckdb.DuckDBPyConnection, chunk_rows: int, context: ToolContext,
            index: int, timeout: Any) -> dict[str, Any]:
    """The last statement's rows handed to `context.stream` chunk by chunk (fetchmany
    reads DuckDB's streaming result; noetl_pg.stream.pump)."""
    import duckdb

    if context.stream is None:
        raise ToolError("duckdb: output.stream needs a worker that records chunks")
    sink = context.stream
    columns = [column[0] for column in conn.description or []]

    def fetch(n: int) -> list[dict[str, Any]]:
        if not columns:
            return []
        return [json_safe_row(dict(zip(columns, row, strict=True)))
                for row in conn.fetchmany(n)]

    try:
        return pump(columns, fetch, chunk_rows, sink, context.cancelled)
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            conn.rollback()
        raise _statement_error(exc, index, timeout) from None


def _result(conn: duckdb.DuckDBPyConnection, statement_type: Any) -> dict[str, Any]:
    description = conn.description
    if description is None:
        return statement_result([], [], 0, statement_type.name)
    columns = [column[0] for column in description]
    rows = conn.fetchall()
    if statement_type.name in COUNT_STATEMENT_TYPES and columns == ["Count"] and rows:
        return statement_result([], [], int(rows[0][0]), statement_type.name)
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    return statement_result(columns, records, len(records), statement_type.name)
