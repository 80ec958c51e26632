"""`kind: transfer`: copy the rows of a query from one database into a table of another.

NoETL's generic transfer, for the systems that need no outside service here: postgres
and duckdb, in any direction (postgres -> postgres, postgres -> duckdb, duckdb ->
postgres, duckdb -> duckdb). NoETL's snowflake and http directions are refused with a
message naming the direction.

Config keys (NoETL's names): `source: {tool (alias kind, type), auth | credential
(postgres), database (duckdb), query}`, `target: {tool, auth | credential, database,
table | query}`, `chunk_size` (rows per fetch and insert batch, default 1000), `mode`:
`append` (default), `replace` (the target table is emptied first) or `upsert` (on conflict
of the first column, the others are updated; postgres targets only). A `target.query` is
an INSERT with one placeholder per source column (`%s` for postgres, `?` for duckdb),
run once per row. `target.table` must be a plain (optionally schema-qualified)
identifier; it is quoted, never spliced.

All target writes happen in one transaction: the table holds every row or none (NoETL
commits per chunk; an engine that retries a step needs all-or-nothing).

Result: `{direction, source_type, target_type, mode, rows_transferred, chunks_processed,
target_table, columns}` (NoETL's `data` of a successful transfer).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from noetl_pg.credentials import secret_values
from noetl_pg.errors import ToolError
from noetl_pg.tools.base import ToolContext
from noetl_pg.tools.postgres import _credential_fields, conninfo_for, worker_pools

DEFAULT_CHUNK_SIZE = 1000
MODES = frozenset({"append", "replace", "upsert"})
SYSTEMS = frozenset({"postgres", "duckdb"})
# NoETL directions that need a service this engine does not have.
SERVICE_SYSTEMS = frozenset({"snowflake", "http"})
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
# The keys of `source` and `target` (the tool's own keys are `config_keys`).
ENDPOINT_KEYS = frozenset({"tool", "kind", "type", "auth", "credential", "database", "query",
                           "table"})


def _endpoint(config: Mapping[str, Any], role: str) -> tuple[str, Mapping[str, Any]]:
    endpoint = config.get(role)
    if not isinstance(endpoint, Mapping):
        raise ToolError(f"transfer needs `{role}`: a mapping with `tool` and its connection")
    unknown = sorted(set(endpoint) - ENDPOINT_KEYS)
    if unknown:
        raise ToolError(f"transfer {role}: unknown keys {', '.join(unknown)}")
    system = str(endpoint.get("tool") or endpoint.get("kind") or endpoint.get("type") or "")
    system = system.lower()
    if system in SERVICE_SYSTEMS:
        raise ToolError(f"transfer {role} '{system}' needs a service noetl-pg does not have "
                        f"(supported: {', '.join(sorted(SYSTEMS))})")
    if system not in SYSTEMS:
        raise ToolError(f"transfer {role}.tool must be one of {', '.join(sorted(SYSTEMS))}, "
                        f"got {system or 'nothing'!r}")
    return system, endpoint


class TransferTool:
    """Copy query rows between postgres and duckdb; see the module docstring."""

    kind: ClassVar[str] = "transfer"
    config_keys: ClassVar[frozenset[str]] = frozenset({"source", "target", "chunk_size", "mode"})

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        source_type, source = _endpoint(config, "source")
        target_type, target = _endpoint(config, "target")
        query = source.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ToolError("transfer source needs `query` (the rows to copy)")
        table, insert = target.get("table"), target.get("query")
        if not table and not insert:
            raise ToolError("transfer target needs `table` or `query`")
        if table and not (isinstance(table, str) and TABLE_NAME.match(table)):
            raise ToolError(f"transfer target.table must be a table name, got {table!r}")
        mode = str(config.get("mode") or "append")
        if mode not in MODES:
            raise ToolError(f"transfer mode must be one of {', '.join(sorted(MODES))}")
        if mode == "upsert" and target_type != "postgres":
            raise ToolError("transfer mode 'upsert' needs a postgres target")
        chunk_size = _chunk_size(config.get("chunk_size"))
        rows_transferred = chunks = 0
        columns: list[str] = []
        with _reader(source_type, source, context) as read, \
                _writer(target_type, target, context) as write:
            columns, chunks_iter = read(query, chunk_size)
            statement = insert or _insert_statement(target_type, str(table), columns, mode)
            if mode == "replace" and table:
                write(_truncate_statement(target_type, str(table)), None)
            for chunk in chunks_iter:
                write(statement, chunk)
                rows_transferred += len(chunk)
                chunks += 1
        return {
            "direction": f"{source_type}_to_{target_type}", "source_type": source_type,
            "target_type": target_type, "mode": "custom" if insert else mode,
            "rows_transferred": rows_transferred, "chunks_processed": chunks,
            "target_table": table or "custom_query", "columns": columns,
        }


def _chunk_size(value: Any) -> int:
    if value is None:
        return DEFAULT_CHUNK_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 1 or isinstance(value, bool):
        raise ToolError(f"transfer chunk_size must be an integer >= 1, got {value!r}")
    return size


def _quoted(target_type: str, table: str) -> Any:
    parts = table.split(".")
    if target_type == "postgres":
        return sql.Identifier(*parts)
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _insert_statement(target_type: str, table: str, columns: list[str], mode: str) -> Any:
    if not columns:
        raise ToolError("transfer source query returns no columns")
    if target_type == "duckdb":
        names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        return f"insert into {_quoted(target_type, table)} ({names}) values ({marks})"
    statement = sql.SQL("insert into {} ({}) values ({})").format(
        _quoted(target_type, table), sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns))
    if mode == "upsert":
        updates = [sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
                   for c in columns[1:]]
        statement += sql.SQL(" on conflict ({}) do ").format(sql.Identifier(columns[0]))
        statement += (sql.SQL("update set ") + sql.SQL(", ").join(updates)) if updates \
            else sql.SQL("nothing")
    return statement


def _truncate_statement(target_type: str, table: str) -> Any:
    if target_type == "postgres":
        return sql.SQL("delete from {}").format(_quoted(target_type, table))
    return f"delete from {_quoted(target_type, table)}"


def _postgres_conninfo(endpoint: Mapping[str, Any], context: ToolContext) -> tuple[str, list[str]]:
    auth = endpoint.get("auth", endpoint.get("credential"))
    fields = _credential_fields(auth, context)
    return conninfo_for(fields), secret_values(fields)


@contextmanager
def _reader(system: str, endpoint: Mapping[str, Any], context: ToolContext) -> Iterator[Any]:
    """A function (query, chunk_size) -> (columns, iterator of row-tuple chunks)."""
    if system == "postgres":
        conninfo, secrets = _postgres_conninfo(endpoint, context)
        pool = worker_pools(context.worker_resources).pool(conninfo, secrets)
        with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:

            def read_pg(query: str, size: int) -> tuple[list[str], Iterator[list[Any]]]:
                try:
                    cursor.execute(query)
                except psycopg.Error as exc:
                    raise ToolError(f"transfer source query failed [SQLSTATE "
                                    f"{exc.sqlstate}]: {exc.diag.message_primary}") from None
                names = [column.name for column in cursor.description or []]
                return names, iter(lambda: cursor.fetchmany(size), [])

            yield read_pg
        return
    duck = _duckdb_connect(endpoint)
    try:

        def read_duck(query: str, size: int) -> tuple[list[str], Iterator[list[Any]]]:
            import duckdb

            try:
                duck.execute(query)
            except duckdb.Error as exc:
                raise ToolError(f"transfer source query failed: {exc}") from None
            names = [column[0] for column in duck.description or []]
            return names, iter(lambda: duck.fetchmany(size), [])

        yield read_duck
    finally:
        duck.close()


@contextmanager
def _writer(system: str, endpoint: Mapping[str, Any], context: ToolContext) -> Iterator[Any]:
    """A function (statement, rows or None) run in one transaction committed at the end."""
    if system == "postgres":
        conninfo, secrets = _postgres_conninfo(endpoint, context)
        with worker_pools(context.worker_resources).pool(conninfo, secrets).connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cursor:

                    def write_pg(statement: Any, rows: list[Any] | None) -> None:
                        if rows is None:
                            cursor.execute(statement)
                        else:
                            cursor.executemany(statement, rows)

                    yield write_pg
            except psycopg.Error as exc:
                raise ToolError(f"transfer target failed [SQLSTATE {exc.sqlstate}]: "
                                f"{exc.diag.message_primary}") from None
        return
    import duckdb

    duck = _duckdb_connect(endpoint)
    try:
        duck.begin()

        def write_duck(statement: Any, rows: list[Any] | None) -> None:
            if rows is None:
                duck.execute(statement)
            else:
                duck.executemany(statement, [list(row) for row in rows])

        try:
            yield write_duck
            duck.commit()
        except duckdb.Error as exc:
            raise ToolError(f"transfer target failed: {exc}") from None
    finally:
        duck.close()


def _duckdb_connect(endpoint: Mapping[str, Any]) -> Any:
    try:
        import duckdb
    except ModuleNotFoundError:
        raise ToolError("transfer with duckdb needs the `duckdb` extra installed") from None
    database = str(endpoint.get("database") or ":memory:")
    try:
        return duckdb.connect(database)
    except duckdb.Error as exc:
        raise ToolError(f"transfer cannot open duckdb database {database!r}: {exc}") from None
