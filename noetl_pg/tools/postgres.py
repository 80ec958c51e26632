"""`kind: postgres`: run SQL statements against a database named by a credential.

Config keys: `auth` (alias `credential`), `command` (alias `query`; several statements
allowed; or `script: {uri, source: {type: file|inline}}`, read at registration by
noetl_pg.scripts), `params`, `timeout` (seconds; default the step's timeout; enforced as
`statement_timeout`).

`auth` is a credential name, `{credential: NAME}` (NoETL's `{type: postgres, credential:
NAME}`), or an inline mapping of the same fields: `dsn`, or NoETL's `db_host`, `db_port`,
`db_user`, `db_password`, `db_name` (plain `host`, `port`, `user`, `password`, `dbname` /
`database` also work; `sslmode` passes through). Each distinct connection gets one
`psycopg_pool.ConnectionPool` per worker, growing on demand up to `NOETL_PG_POOL_MAX_SIZE`,
default the worker's slot count: a slot runs one command at a time, so every slot can hold
a connection and a parallel loop of postgres steps is never throttled by the pool.

Statements are split on `;` outside quotes, dollar quotes and comments (`split_sql`) and run
one by one in ONE transaction: all commit or none does. `params` (a mapping for
`%(name)s`, or a list for `%s`) are bound by the driver, never spliced, and are passed only
to statements that contain a placeholder; in such a statement a literal `%` is written `%%`
(psycopg's rule). SQL-standard function bodies (`begin atomic ... end`) and transaction
control statements inside `command` are not supported.

Result: the last statement's `{columns, rows, row_count, status}` (rows as dicts) plus
`command_<i>` (0-based) with the same shape for every statement. Values are made JSON-safe
by `json_safe`: dates and times in ISO 8601, intervals in seconds, Decimal as a number when
the float is exact (integers always) and as a string otherwise, UUID as a string, bytes as
base64, NaN/Infinity as strings. A failing statement raises `ToolError` naming its index and
SQLSTATE, and the line and column in that statement where the server places the error
(output `{sqlstate, statement_index, error, message, position, line, column, detail}`:
`error` the whole text, `message` the server's; the last four
when the server gives them); a statement timeout raises
`ToolTimeout`. Credential secrets are redacted from every message.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from noetl_pg import db, settings
from noetl_pg.credentials import redact, secret_values
from noetl_pg.errors import ToolError, ToolTimeout
from noetl_pg.stream import chunk_rows_of, pump
from noetl_pg.tools.base import ToolContext, localize_refs

CONNECT_TIMEOUT_SECONDS = 10
# psycopg's placeholders (%s, %b, %t, %(name)s); noetl_pg.sqlrender escapes for the same.
PLACEHOLDER_CHARS = frozenset("sbt")
# Pool size for a tool run outside a worker (no slot count known).
DEFAULT_POOL_MAX_SIZE = 4
# Credential fields -> libpq keywords (NoETL names first).
CONNINFO_FIELDS = {
    "host": ("db_host", "host"),
    "port": ("db_port", "port"),
    "user": ("db_user", "user", "username"),
    "password": ("db_password", "password"),
    "dbname": ("db_name", "dbname", "database"),
    "sslmode": ("sslmode", "db_sslmode"),
}

_pools_lock = threading.Lock()


# --- statement splitting ------------------------------------------------------------------


@dataclass(frozen=True)
class SqlStatement:
    """One statement of a script; `has_placeholder` says whether it needs params."""

    text: str
    has_placeholder: bool


def _dollar_tag(sql: str, start: int) -> str | None:
    """The dollar-quote tag (`$$`, `$body$`) opening at `start`, or None (e.g. `$1`)."""
    end = start + 1
    while end < len(sql) and (sql[end].isalnum() or sql[end] == "_"):
        end += 1
    if end < len(sql) and sql[end] == "$":
        tag = sql[start : end + 1]
        if len(tag) == 2 or not tag[1].isdigit():
            return tag
    return None


def split_sql(sql: str) -> list[SqlStatement]:
    """Split a PostgreSQL script into statements on `;` outside literals and comments.

    Understands '...' (with '' and E'\\'' escapes), "...", $tag$...$tag$, -- comments
    and nested /* */ comments. Statements that are empty or only comments are dropped.
    A placeholder (`%s`, `%b`, `%t`, `%(name)s`) counts only outside literals and comments.
    """
    statements: list[SqlStatement] = []
    start = 0
    has_code = False
    has_placeholder = False
    i = 0
    n = len(sql)

    def flush(end: int) -> None:
        nonlocal start, has_code, has_placeholder
        text = sql[start:end].strip()
        if has_code and text:
            statements.append(SqlStatement(text, has_placeholder))
        start, has_code, has_placeholder = end + 1, False, False

    while i < n:
        char = sql[i]
        if char == "-" and sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if char == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if char == ";":
            flush(i)
            i += 1
            continue
        if not char.isspace():
            has_code = True
        if char == "'":
            escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _is_word(sql[i - 2]))
            i += 1
            while i < n:
                if escaped and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == "'":
                    if sql.startswith("''", i):
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if char == '"':
            close = sql.find('"', i + 1)
            while close >= 0 and sql.startswith('""', close):
                close = sql.find('"', close + 2)
            i = n if close < 0 else close + 1
            continue
        if char == "$" and (i == 0 or not _is_word(sql[i - 1])):
            tag = _dollar_tag(sql, i)
            if tag:
                close = sql.find(tag, i + len(tag))
                i = n if close < 0 else close + len(tag)
                continue
        if char == "%" and i + 1 < n:
            following = sql[i + 1]
            if following == "%":
                i += 2
                continue
            if following in PLACEHOLDER_CHARS or following == "(":
                has_placeholder = True
        i += 1
    flush(n)
    return statements


def _is_word(char: str) -> bool:
    return char.isalnum() or char in "_$"


# --- JSON-safe values ---------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """A value the engine can store as JSON (see the module docstring for the mapping)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if decimal.Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


_PLAIN_TYPES = frozenset({int, str, bool, type(None)})


def json_safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """json_safe of one row keyed by column names, its plain values (most) passed through
    without the type dispatch: a stream converts millions of rows."""
    return {key: value if type(value) in _PLAIN_TYPES else json_safe(value)
            for key, value in row.items()}


def statement_result(
    columns: list[str], rows: Sequence[Mapping[str, Any]], row_count: int, status: str | None
) -> dict[str, Any]:
    """The per-statement result shape shared by the postgres and duckdb tools."""
    return {
        "columns": columns,
        "rows": [json_safe(dict(row)) for row in rows],
        "row_count": row_count,
        "status": status,
    }


def script_result(per_statement: list[dict[str, Any]]) -> dict[str, Any]:
    """Last statement's result plus `command_<i>` for each statement."""
    result: dict[str, Any] = (
        dict(per_statement[-1])
        if per_statement
        else {"columns": [], "rows": [], "row_count": 0, "status": None}
    )
    for index, item in enumerate(per_statement):
        result[f"command_{index}"] = item
    return result


# The keys of every SQL script tool (script_text, script_params, a timeout).
# `script` is read into `command` at registration (noetl_pg.scripts).
SCRIPT_CONFIG_KEYS = frozenset({"command", "query", "params", "timeout", "script"})


class SqlScriptKind:
    """What the engine knows of a SQL script kind besides how to run it (see
    noetl_pg.tools.base.Tool)."""

    # `command`/`query` are SQL: rendered with values escaped (noetl_pg.sqlrender).
    sql_text: ClassVar[bool] = True
    # `output.stream` hands the rows on in chunks (noetl_pg.stream).
    streams: ClassVar[bool] = True
    # A `script:` is read into `command` at registration (noetl_pg.scripts).
    script_field: ClassVar[str] = "command"


class DuckdbKind(SqlScriptKind):
    """`duckdb` as registration and rendering know it: here, not in tools/duckdb.py, so
    that a machine without the duckdb extra knows it too (its stand-in inherits this)."""

    kind: ClassVar[str] = "duckdb"
    config_keys: ClassVar[frozenset[str]] = SCRIPT_CONFIG_KEYS | {"database"}


def script_text(config: Mapping[str, Any], kind: str) -> str:
    """The `command` (or `query`) of a SQL tool, which must be a non-empty string."""
    sql = config.get("command") or config.get("query")
    if not isinstance(sql, str) or not sql.strip():
        raise ToolError(f"{kind} tool needs `command` (or `query`) with SQL text")
    return sql


def script_params(config: Mapping[str, Any], kind: str) -> Mapping[str, Any] | list[Any] | None:
    """The `params` of a SQL tool: a mapping, a list, or None."""
    params = config.get("params")
    if params is None or isinstance(params, Mapping):
        return params
    if isinstance(params, list | tuple):
        return list(params)
    raise ToolError(f"{kind} tool `params` must be a mapping or a list")


# --- connections --------------------------------------------------------------------------


def _credential_fields(auth: Any, context: ToolContext) -> Mapping[str, Any]:
    if isinstance(auth, Mapping):
        name = auth.get("credential") or auth.get("key")
        if isinstance(name, str) and not ({"dsn"} | set(CONNINFO_FIELDS["host"])) & auth.keys():
            return _credential_fields(name, context)
        return auth
    if isinstance(auth, str) and auth:
        if context.credentials is None:
            raise ToolError(f"postgres auth '{auth}': no credential resolver is configured")
        return context.credentials.get(auth)
    raise ToolError("postgres tool needs `auth`: a credential name or a mapping")


def conninfo_for(fields: Mapping[str, Any]) -> str:
    """A libpq conninfo from credential fields (`dsn`, else db_host/db_port/...)."""
    keywords: dict[str, Any] = {}
    for keyword, names in CONNINFO_FIELDS.items():
        for name in names:
            if fields.get(name) not in (None, ""):
                keywords[keyword] = str(fields[name])
                break
    keywords.setdefault("connect_timeout", str(CONNECT_TIMEOUT_SECONDS))
    dsn = fields.get("dsn") or fields.get("connection_string") or ""
    if not dsn and "host" not in keywords and "dbname" not in keywords:
        raise ToolError("postgres credential needs `dsn` or db_host/db_name fields")
    try:
        return make_conninfo(str(dsn), **keywords)
    except psycopg.ProgrammingError:
        raise ToolError("postgres credential has an invalid `dsn`") from None


class PostgresPools:
    """The worker's connection pools, one per distinct conninfo; `close()` on shutdown."""

    def __init__(self, max_size: int = DEFAULT_POOL_MAX_SIZE) -> None:
        self._pools: dict[str, ConnectionPool] = {}
        self._lock = threading.Lock()
        self._max_size = max_size

    def describe(self) -> dict[str, int]:
        """Sizes for the worker's capacity report (noetl.worker.tool_pools)."""
        with self._lock:
            return {"connection_pools": len(self._pools), "connections_max": self._max_size}

    def pool(self, conninfo: str, secrets: list[str]) -> ConnectionPool:
        """The open pool for `conninfo`, opening it (and checking it connects) on first use."""
        with self._lock:
            existing = self._pools.get(conninfo)
            if existing is not None:
                return existing
            # One direct connection first: a refused or rejected connection then fails at
            # once with the server's reason, instead of as a pool timeout.
            try:
                psycopg.connect(conninfo).close()
            except psycopg.Error as exc:
                reason = redact(str(exc).strip(), secrets)
                raise ToolError(f"postgres: cannot connect: {reason}") from None
            pool = ConnectionPool(conninfo, min_size=1, max_size=self._max_size, open=False)
            try:
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
            except PoolTimeout:
                pool.close()
                raise ToolError("postgres: cannot connect: the pool timed out") from None
            self._pools[conninfo] = pool
            return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def worker_pools(resources: dict[str, Any]) -> PostgresPools:
    """The worker's pools (created on first use), sized by NOETL_PG_POOL_MAX_SIZE or the
    worker's `worker_slots`."""
    pools = resources.get(PostgresTool.kind)
    if pools is None:
        slots = resources.get("worker_slots")
        max_size = settings.current().pg_pool_max_size or int(slots or DEFAULT_POOL_MAX_SIZE)
        with _pools_lock:
            pools = resources.setdefault(PostgresTool.kind, PostgresPools(max(max_size, 1)))
    assert isinstance(pools, PostgresPools)
    return pools


# --- the tool -----------------------------------------------------------------------------


class PostgresTool(SqlScriptKind):
    """Run a SQL script in one transaction; see the module docstring."""

    kind: ClassVar[str] = "postgres"
    # `credential` is NoETL's other name for `auth`.
    config_keys: ClassVar[frozenset[str]] = SCRIPT_CONFIG_KEYS | {"auth", "credential"}
    # psycopg reads `%` placeholders when `params` are bound (a value's `%` is doubled).
    percent_params: ClassVar[bool] = True

    def run(self, config: Mapping[str, Any], context: ToolContext) -> Any:
        statements = split_sql(localize_refs(script_text(config, self.kind), context, self.kind))
        params = script_params(config, self.kind)
        # `credential:` is NoETL's other name for `auth:`.
        fields = _credential_fields(config.get("auth", config.get("credential")), context)
        secrets = secret_values(fields)
        conninfo = conninfo_for(fields)
        pool = worker_pools(context.worker_resources).pool(conninfo, secrets)
        timeout = config.get("timeout") or context.timeout_seconds
        chunk_rows = chunk_rows_of(config)
        per_statement: list[dict[str, Any]] = []
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor(
                row_factory=dict_row
            ) as cursor:
                # Template values were escaped for standard strings (noetl_pg.sqlrender).
                cursor.execute(db.query("tool_standard_strings"))
                if timeout:
                    cursor.execute(db.query("tool_statement_timeout"),
                                   {"timeout": f"{int(float(timeout) * 1000)}ms"})
                for index, statement in enumerate(statements):
                    if chunk_rows is not None and index == len(statements) - 1:
                        per_statement.append(_stream(conn, statement, params, chunk_rows,
                                                     context, (index, secrets, timeout)))
                        continue
                    try:
                        cursor.execute(
                            statement.text, params if statement.has_placeholder else None
                        )
                    except psycopg.Error as exc:
                        raise _statement_error(
                            exc, index, secrets, timeout, statement.text
                        ) from None
                    per_statement.append(_cursor_result(cursor))
        except psycopg.Error as exc:
            # Raised outside a statement: the timeout setting or the commit (deferred checks).
            raise _statement_error(exc, None, secrets, timeout) from None
        except PoolTimeout:
            raise ToolTimeout("postgres: no pooled connection became free in time") from None
        return script_result(per_statement)


def _stream(
    conn: psycopg.Connection[Any], statement: SqlStatement,
    params: Mapping[str, Any] | list[Any] | None, chunk_rows: int, context: ToolContext,
    where: tuple[int, list[str], Any],
) -> dict[str, Any]:
    """The last statement of a streamed step through a server-side (named) cursor, its
    rows handed to `context.stream` chunk by chunk (noetl_pg.stream.pump)."""
    if context.stream is None:
        raise ToolError("postgres: output.stream needs a worker that records chunks")
    sink = context.stream
    index, secrets, timeout = where
    try:
        with conn.cursor(name=f"noetl_stream_{context.command_id}",
                         row_factory=dict_row) as server:
            server.execute(statement.text, params if statement.has_placeholder else None)
            columns = [column.name for column in server.description or []]
            return pump(columns, lambda n: [json_safe_row(row) for row in server.fetchmany(n)],
                        chunk_rows, sink, context.cancelled)
    except psycopg.Error as exc:
        raise _statement_error(exc, index, secrets, timeout, statement.text) from None


def _cursor_result(cursor: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
    if cursor.description is None:
        return statement_result([], [], max(cursor.rowcount, 0), cursor.statusmessage)
    rows = cursor.fetchall()
    columns = [column.name for column in cursor.description]
    return statement_result(columns, rows, len(rows), cursor.statusmessage)


def _statement_error(
    exc: psycopg.Error, index: int | None, secrets: list[str], timeout: Any,
    statement: str | None = None,
) -> ToolError:
    sqlstate = exc.sqlstate
    message = redact(exc.diag.message_primary or str(exc).strip(), secrets)
    where = "postgres" if index is None else f"postgres statement {index}"
    output: dict[str, Any] = {"sqlstate": sqlstate, "statement_index": index,
                              "message": message}
    located = _position(exc.diag.statement_position, statement)
    if located is not None:
        output.update(located)
        where += f" (line {located['line']}, column {located['column']})"
    detail = redact(exc.diag.message_detail or "", secrets)
    if detail:
        output["detail"] = detail
    if isinstance(exc, psycopg.errors.QueryCanceled) and timeout:
        text = f"{where} timed out after {float(timeout):g}s [SQLSTATE {sqlstate}]"
        return ToolTimeout(text, output={**output, "error": text})
    text = f"{where} failed [SQLSTATE {sqlstate}]: {message}" + (
        f" ({detail})" if detail else "")
    # `error` (what a policy sees as output.error and the step reports) is the whole
    # text, so the SQLSTATE and the position reach the execution's error.
    return ToolError(text, output={**output, "error": text})


def _position(raw: str | None, statement: str | None) -> dict[str, int] | None:
    """The server's 1-based character position in the statement, with its line and
    column in that statement's text (None when the server gave none)."""
    if not raw or not raw.isdigit() or statement is None:
        return None
    position = int(raw)
    before = statement[: position - 1]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1)
    return {"position": position, "line": line, "column": column}
