"""The database layer: named queries, connections, error mapping, the reconnect policy.

Every statement the engine runs lives in a file of `sql/queries/` (one file per concern,
`engine.sql` for the worker's hot path) under a `-- name: <name>` header and is run by name
(`fetch_all`, `fetch_one`, `execute`); a name defined in two files is an error. Statements
that need an identifier (a database name) are built by the database itself
(quote_ident) and run with `execute_built`. Outside this module only user SQL runs as text
(`noetl query`, the postgres/duckdb/transfer tools on the user's databases) and the files of
`sql/migrations/` and `sql/functions/` (noetl_pg.migrate); tests/py/test_db_layer.py checks.

Connections:
- `connection(dsn)`: borrowed from the process's pool for `dsn` (psycopg_pool, one per DSN,
  grown on demand up to `POOL_MAX_SIZE`, idle ones closed after `POOL_MAX_IDLE_SECONDS`,
  each checked on borrow so one broken by a server restart is replaced, not handed out).
  For short work: a CLI command, a store read, a credential lookup, a status poll.
- `connect(dsn)`: a connection of its own, for what holds one for long or keeps session
  state: a worker slot, LISTEN, the projector, migrations (advisory lock).

Errors: every driver error leaving this module is mapped by `database_error` to
noetl_pg.errors (DatabaseUnavailable: cannot reach the server or the connection broke;
DatabaseTransient: worth trying again; DatabaseRefused: the database said no), the driver's
exception as `__cause__`. A caller that must survive a lost database (worker, projector,
`status --watch`) sleeps `Reconnect.failed()` between attempts: one policy, jittered
exponential backoff, and a clear DatabaseUnavailable when it gives up.
"""

from __future__ import annotations

import atexit
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from noetl_pg import settings
from noetl_pg.errors import (
    DatabaseError,
    DatabaseRefused,
    DatabaseTransient,
    DatabaseUnavailable,
)
from noetl_pg.sqlfiles import sql_files, sql_root

__all__ = [
    "Connection",
    "Reconnect",
    "close_pools",
    "connect",
    "connection",
    "database_error",
    "dsn_from_env",
    "error_message",
    "execute",
    "execute_built",
    "fetch_all",
    "fetch_one",
    "notifies",
    "pool_stats",
    "query",
    "transaction",
]

Connection = psycopg.Connection[dict[str, Any]]

_HEADER = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)

POOL_MAX_SIZE = 8
POOL_MAX_IDLE_SECONDS = 60.0
# How long a borrower waits for a pooled connection before DatabaseUnavailable.
POOL_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10

# SQLSTATEs (or their two-character classes) after which trying again may succeed.
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300")
_TRANSIENT_STATES = ("40", "53", "55P03", "57014")


# --- named queries ---------------------------------------------------------------------

@cache
def _queries() -> dict[str, str]:
    named: dict[str, str] = {}
    origin: dict[str, str] = {}
    for path in sql_files("queries"):
        parts = _HEADER.split(path.read_text())
        # parts = [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise KeyError(f"query {name!r} is defined in {origin[name]} and {path.name}")
            statement = "\n".join(
                line for line in body.strip().splitlines() if not line.startswith("--")
            ).strip()
            named[name] = statement.rstrip(";")
            origin[name] = path.name
    return named


def query(name: str) -> str:
    """The SQL text of the named query; KeyError names the missing query."""
    try:
        return _queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in {sql_root() / 'queries'}") from None


def fetch_all(conn: psycopg.Connection[Any], name: str, /, **params: Any) -> list[dict[str, Any]]:
    """Run the named query; its rows. Driver errors as `database_error`."""
    try:
        return list(conn.execute(query(name), _adapt(params)).fetchall())
    except psycopg.Error as exc:
        raise database_error(exc, name) from exc


def fetch_one(conn: psycopg.Connection[Any], name: str, /, **params: Any) -> dict[str, Any] | None:
    """Run the named query; its first row or None. Driver errors as `database_error`."""
    try:
        row: dict[str, Any] | None = conn.execute(query(name), _adapt(params)).fetchone()
    except psycopg.Error as exc:
        raise database_error(exc, name) from exc
    return row


def execute(conn: psycopg.Connection[Any], name: str, /, **params: Any) -> None:
    """Run the named statement for its effect (LISTEN, an update). Errors as `fetch_all`."""
    try:
        conn.execute(query(name), _adapt(params))
    except psycopg.Error as exc:
        raise database_error(exc, name) from exc


def execute_built(conn: psycopg.Connection[Any], name: str, /, **params: Any) -> int:
    """Run the statements the named query builds (rows with a `statement` column, quoted by
    quote_ident/quote_literal in SQL, for what takes an identifier: CREATE DATABASE, COMMENT ON);
    returns how many ran. Errors as `fetch_all`."""
    statements = [row["statement"] for row in _rows_as_dicts(conn, name, params)]
    for statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            raise database_error(exc, name) from exc
    return len(statements)


def _rows_as_dicts(conn: psycopg.Connection[Any], name: str,
                   params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        with conn.cursor(row_factory=dict_row) as cursor:
            return list(cursor.execute(query(name), _adapt(params)).fetchall())
    except psycopg.Error as exc:
        raise database_error(exc, name) from exc


def fetch_pipelined(
    conn: psycopg.Connection[Any], *calls: tuple[str, dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Run named queries in one round trip (pipeline mode), in order; the rows of each.
    Under autocommit each still commits on its own, before the results are returned. An
    error raises as `database_error` (named after the first query) and the statements
    after it are not run."""
    try:
        with conn.pipeline():
            cursors = [conn.execute(query(name), _adapt(params)) for name, params in calls]
        return [list(cursor.fetchall()) for cursor in cursors]
    except psycopg.Error as exc:
        raise database_error(exc, calls[0][0]) from exc


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    # dicts are JSON parameters; lists stay arrays (kinds text[]).
    return {key: Jsonb(value) if isinstance(value, dict) else value
            for key, value in params.items()}


# --- errors ----------------------------------------------------------------------------

def database_error(exc: psycopg.Error, query_name: str | None = None) -> DatabaseError:
    """The project's exception for a driver error: the one mapping (raise it `from exc`).

    DatabaseUnavailable: a lost connection on the client side (refused, reset, closed, a
    pool timeout), class 08, an administrator or crash shutdown, too many connections.
    DatabaseError itself: another client-side error (a statement the driver cannot send).
    DatabaseTransient: serialization failure, deadlock, lock or statement timeout, resources.
    DatabaseRefused: everything else (a function's raise, a constraint, bad input)."""
    if isinstance(exc, DatabaseError):  # pragma: no cover - defensive, never a driver error
        return exc
    state = exc.sqlstate
    message = _driver_message(exc)
    kind: type[DatabaseError]
    if state is None:
        # Client side: a lost connection, or a statement the driver could not send.
        lost = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
        kind = DatabaseUnavailable if lost else DatabaseError
    elif state.startswith(_UNAVAILABLE_STATES):
        kind = DatabaseUnavailable
    elif state.startswith(_TRANSIENT_STATES):
        kind = DatabaseTransient
    else:
        kind = DatabaseRefused
    return kind(message, sqlstate=state, query=query_name)


def error_message(exc: BaseException) -> str:
    """The text that names an error in a log line or a CLI message: a DatabaseError's
    message, a driver error's primary message (what `database_error` maps it to), else the
    exception's text or, when it has none, its class name."""
    if isinstance(exc, DatabaseError):
        return exc.message
    if isinstance(exc, psycopg.Error):
        return _driver_message(exc)
    return str(exc).strip() or type(exc).__name__


def _driver_message(exc: psycopg.Error) -> str:
    # The server's primary message, without the statement excerpt and hints of str(exc);
    # a client-side error has only its text.
    diag = getattr(exc, "diag", None)
    return ((diag.message_primary if diag is not None else None) or str(exc)).strip()


@contextmanager
def mapped_errors(query_name: str | None = None) -> Iterator[None]:
    """Driver errors raised inside the block leave it mapped by `database_error`."""
    try:
        yield
    except psycopg.Error as exc:
        raise database_error(exc, query_name) from exc


@contextmanager
def transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """`conn.transaction()` whose failures (the commit included) are mapped errors."""
    with mapped_errors(), conn.transaction():
        yield


def notifies(conn: psycopg.Connection[Any], timeout: float) -> list[psycopg.Notify]:
    """Notifications that arrive within `timeout` seconds (at most one wait); a broken
    connection raises DatabaseUnavailable."""
    with mapped_errors():
        return list(conn.notifies(timeout=timeout, stop_after=1))


# --- connections -----------------------------------------------------------------------

def connect(dsn: str, *, application_name: str | None = None,
            autocommit: bool = True) -> Connection:
    """A connection of its own (dict rows; prepared statements after 2 uses, the default),
    closed by the caller or its `with` block. DatabaseUnavailable when it cannot be opened."""
    options = _defaults(dsn)
    if application_name:
        options["application_name"] = application_name[:63]
    try:
        return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row, **options)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(_connect_message(exc), sqlstate=exc.sqlstate) from exc


def _defaults(dsn: str) -> dict[str, Any]:
    """Connection options the DSN does not set itself: a connect timeout (a server cut off
    by the network fails in seconds, not at the TCP timeout) and a name for
    pg_stat_activity."""
    given = conninfo_to_dict(dsn)
    defaults: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS,
                                "application_name": "noetl"}
    return {key: value for key, value in defaults.items() if key not in given}


def _connect_message(exc: psycopg.Error) -> str:
    # The first line names the server and the reason; the rest is libpq's hint.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_pools: dict[str, ConnectionPool[Connection]] = {}
_pools_lock = threading.Lock()


def _pool(dsn: str) -> ConnectionPool[Connection]:
    pool = _pools.get(dsn)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(dsn)
        if pool is None:
            # One plain connection first: a database that cannot be reached fails here at
            # once, with the server's reason, instead of after the pool's wait.
            connect(dsn).close()
            pool = ConnectionPool(
                dsn, min_size=0, max_size=POOL_MAX_SIZE, max_idle=POOL_MAX_IDLE_SECONDS,
                timeout=POOL_TIMEOUT_SECONDS, check=ConnectionPool.check_connection,
                kwargs={"autocommit": True, "row_factory": dict_row, **_defaults(dsn)},
                name="noetl", open=True)
            _pools[dsn] = pool
    return pool


@contextmanager
def connection(dsn: str) -> Iterator[Connection]:
    """A pooled autocommit connection to `dsn` for the block (given back at its end, rolled
    back if a transaction was left open). Driver errors inside the block are mapped;
    DatabaseUnavailable when the server cannot be reached or no connection came free
    within POOL_TIMEOUT_SECONDS."""
    pool = _pool(dsn)
    try:
        with pool.connection() as conn:
            yield conn
    except PoolTimeout as exc:
        raise DatabaseUnavailable(
            f"no database connection within {POOL_TIMEOUT_SECONDS:g}s "
            f"(pool of {POOL_MAX_SIZE}): {_unreachable_reason(dsn)}") from exc
    except psycopg.Error as exc:
        raise database_error(exc) from exc


def _unreachable_reason(dsn: str) -> str:
    try:
        connect(dsn).close()
    except DatabaseUnavailable as exc:
        return exc.message
    return "every pooled connection is in use"


def pool_stats(dsn: str) -> dict[str, int]:
    """psycopg_pool's counters for the pool of `dsn` (empty when none was opened)."""
    pool = _pools.get(dsn)
    return dict(pool.get_stats()) if pool is not None else {}


def close_pools(dsn: str | None = None) -> None:
    """Close the pool of `dsn` (every pool when None): before dropping a database, at exit."""
    with _pools_lock:
        names = list(_pools) if dsn is None else [dsn]
        closing = [_pools.pop(name) for name in names if name in _pools]
    for pool in closing:
        pool.close(timeout=1.0)


atexit.register(close_pools)


def dsn_from_env() -> str | None:
    return settings.current().dsn


# --- reconnect policy ------------------------------------------------------------------

class Reconnect:
    """How long to wait before the next attempt after the database failed: jittered
    exponential backoff (each delay drawn between half and all of min(max_delay,
    first_delay * 2**failures)), so workers cut off together do not come back in step.

    `failed(exc)` returns the delay, or raises DatabaseUnavailable naming `what`, the time
    spent and the last error once `give_up_after` seconds of failures have passed (None:
    never, for daemons that outlive an outage). `succeeded()` starts over.
    """

    def __init__(self, what: str, *, first_delay: float = 0.1, max_delay: float = 5.0,
                 give_up_after: float | None = None, rng: random.Random | None = None,
                 clock: Any = time.monotonic) -> None:
        self.what = what
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.give_up_after = give_up_after
        self._rng = rng or random.Random()
        self._clock = clock
        self.failures = 0
        self._failing_since: float | None = None

    def succeeded(self) -> None:
        self.failures = 0
        self._failing_since = None

    def failed(self, exc: BaseException) -> float:
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        elapsed = now - self._failing_since
        if self.give_up_after is not None and elapsed >= self.give_up_after:
            raise DatabaseUnavailable(
                f"{self.what}: gave up after {elapsed:.1f}s and {self.failures + 1} "
                f"failed attempts; last error: {error_message(exc)}") from exc
        ceiling = min(self.max_delay, self.first_delay * 2 ** self.failures)
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

