"""The one database layer (noetl_pg/db.py): statements by name, a pool, mapped errors, one
reconnect policy; and the worker protocol's types (noetl_pg/protocol.py) against the SQL.

The source checks read noetl_pg/ (and workers/) as text: SQL statements live in sql/ only,
and only the database layer opens connections. The rest runs against the test database.
"""

from __future__ import annotations

import ast
import random
import re
import socket
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from noetl_pg import db
from noetl_pg.cli.status import fetch_progress
from noetl_pg.errors import DatabaseError, DatabaseRefused, DatabaseUnavailable
from noetl_pg.protocol import CLAIMED_COMMAND_COLUMNS, OUTCOME_OPS, as_outcome
from noetl_pg.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "noetl_pg"

# What an SQL statement looks like (the project writes SQL in lower case).
SQL_TEXT = re.compile(
    r"\b(select\s+.*\bfrom\b|select\s+[\w.]+\s*\(|insert\s+into|update\s+\S+\s+set\b"
    r"|delete\s+from|create\s+(database|table|schema|index|or\s+replace|function|role)\b"
    r"|drop\s+(database|table|schema|function)\b|listen\s+\w+|notify\s+\w+|set\s+local\b"
    r"|comment\s+on\b|pg_advisory|set_config\s*\()",
    re.S,
)
# Files that build SQL for a user's database, with the reason.
SQL_ALLOWED = {
    # INSERT/DELETE for the transfer tool's target table (identifiers quoted, values bound).
    "noetl_pg/tools/transfer.py",
}
# Where connections may be opened, with the reason.
CONNECT_ALLOWED = {
    "noetl_pg/db.py",  # the database layer
    "noetl_pg/server/database.py",  # its async side: the server's AsyncConnectionPool
    "noetl_pg/tools/postgres.py",  # the postgres tool's pools for users' databases
}
CONNECT_CALL = re.compile(
    r"psycopg\.connect\(|Connection\.connect\(|AsyncConnection\.connect\(|ConnectionPool\(")


def _sources() -> list[Path]:
    workers = ROOT / "workers"
    found = sorted(PACKAGE.rglob("*.py"))
    return found + (sorted(workers.rglob("*.py")) if workers.is_dir() else [])


def _docstring_nodes(tree: ast.AST) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                nodes.add(id(first.value))
    return nodes


def sql_outside_sql_folder() -> list[str]:
    """file:line of every string constant (docstrings aside) that reads like SQL."""
    found: list[str] = []
    for path in _sources():
        relative = path.relative_to(ROOT).as_posix()
        if relative in SQL_ALLOWED:
            continue
        tree = ast.parse(path.read_text(), filename=relative)
        docstrings = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docstrings and SQL_TEXT.search(node.value)):
                found.append(f"{relative}:{node.lineno}: {node.value[:60]!r}")
    return found


def test_no_sql_statement_outside_sql_folder() -> None:
    assert sql_outside_sql_folder() == []


def test_the_sql_check_finds_a_statement(tmp_path: Path) -> None:
    # The pattern catches what the files held before they moved to sql/queries/.
    for statement in ("select * from noetl.result_ref_get(%s)", "listen noetl_command",
                      "select noetl.result_blob_delete(%s, %s)",
                      "insert into noetl.schema_migrations (version) values (%s)",
                      "set local check_function_bodies = off",
                      "select pg_advisory_lock(%s)"):
        assert SQL_TEXT.search(statement), statement
    assert not SQL_TEXT.search("roles missing (this user may not create roles)")


def test_connections_are_opened_only_by_the_database_layer() -> None:
    opened = [f"{path.relative_to(ROOT)}:{number}"
              for path in _sources() if path.relative_to(ROOT).as_posix() not in CONNECT_ALLOWED
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if CONNECT_CALL.search(line)]
    assert opened == []


def test_every_named_query_of_the_layer_parses(dsn: str) -> None:
    # Each statement of the files this layer added is prepared by the server (nothing runs).
    names = [name for name, text in db._queries().items()
             if not text.lstrip().startswith(("create", "listen", "set local"))
             and ";" not in text]
    assert {"result_ref_put", "schema_migrations_applied", "database_drop_statements",
            "comment_on_relation_statements", "tool_statement_timeout"} <= set(names)
    with db.connect(dsn) as conn:
        for name in names:
            conn.pgconn.prepare(f"check_{name}".encode(),
                                _positional(db.query(name)).encode())
            result = conn.pgconn.describe_prepared(f"check_{name}".encode())
            assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, name


def _positional(text: str) -> str:
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text)


# --- the pool ---------------------------------------------------------------------------

def _engine_backends(dsn: str, monitor: psycopg.Connection[tuple[object, ...]]) -> set[int]:
    """pids of this database's backends opened by noetl_pg.db (application_name noetl)."""
    database = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    rows = monitor.execute(
        "select pid from pg_stat_activity where datname = %s and application_name = 'noetl' "
        "and pid <> pg_backend_pid()", (database,)).fetchall()
    return {int(row[0]) for row in rows}


def test_status_watch_polls_reuse_one_connection(fresh_dsn: str) -> None:
    with db.connection(fresh_dsn) as conn:
        execution = db.fetch_one(conn, "execution_exists", execution_id=1)
    assert execution is not None
    seen: set[int] = set()
    with psycopg.connect(fresh_dsn, autocommit=True) as monitor:
        for _poll in range(40):  # what `status --watch` does at 4 polls a second
            assert fetch_progress(fresh_dsn, 1) is None
            seen |= _engine_backends(fresh_dsn, monitor)
    # One pooled backend, seen idle between polls, answered all 40: none opened per poll.
    assert len(seen) == 1
    assert db.pool_stats(fresh_dsn)["connections_num"] == 1
    db.close_pools(fresh_dsn)


def test_a_large_result_uses_one_pooled_connection(fresh_dsn: str) -> None:
    store = ResultStore(fresh_dsn, inline_max_bytes=16)
    db.close_pools(fresh_dsn)
    stored = store.put(7, "step", "result", {"rows": list(range(5000))})
    assert stored.ref.store_tier == "db"
    assert store.resolve(stored.ref)["rows"][-1] == 4999
    # Written, registered, read back and resolved: three connections before the pool.
    assert db.pool_stats(fresh_dsn)["connections_num"] == 1
    db.close_pools(fresh_dsn)


# --- errors -----------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_server_is_database_unavailable_at_once() -> None:
    dsn = f"host=127.0.0.1 port={_closed_port()} user=postgres dbname=postgres"
    with pytest.raises(DatabaseUnavailable, match="refused") as raised, db.connection(dsn):
        pass
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    assert db.pool_stats(dsn) == {}


def test_a_refused_statement_is_mapped_with_its_sqlstate_and_query(dsn: str) -> None:
    with db.connection(dsn) as conn, pytest.raises(DatabaseRefused) as raised:
        db.fetch_one(conn, "result_ref_put", execution_id=1, step_name="s", result_name="r",
                     store_tier="nowhere", physical_uri="x", content_type="x",
                     bytes_size=1, sha256="x", expires_at=None)
    assert raised.value.sqlstate is not None
    assert raised.value.query == "result_ref_put"
    assert isinstance(raised.value.__cause__, psycopg.Error)


def test_a_terminated_backend_is_database_unavailable(dsn: str) -> None:
    with db.connect(dsn) as victim, psycopg.connect(dsn, autocommit=True) as admin:
        pid = victim.info.backend_pid
        admin.execute("select pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable):
            db.fetch_one(victim, "server_probe")


def test_a_client_side_error_is_not_unavailable() -> None:
    mapped = db.database_error(psycopg.ProgrammingError("bad placeholder"))
    assert type(mapped) is DatabaseError


# --- the reconnect policy ---------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reconnect_backs_off_exponentially_with_jitter() -> None:
    clock = FakeClock()
    policy = db.Reconnect("slot", first_delay=0.1, max_delay=5.0, rng=random.Random(7),
                          clock=clock)
    delays = [policy.failed(OSError("down")) for _ in range(10)]
    ceilings = [min(5.0, 0.1 * 2 ** n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    # Jittered: not the bare ceilings, and another worker's policy draws other delays.
    assert delays != ceilings
    other = db.Reconnect("slot", rng=random.Random(8), clock=clock)
    assert [other.failed(OSError("down")) for _ in range(10)] != delays
    policy.succeeded()
    assert policy.failed(OSError("down")) <= 0.1


def test_reconnect_gives_up_with_a_clear_error() -> None:
    clock = FakeClock()
    policy = db.Reconnect("following execution 5", give_up_after=30.0, clock=clock,
                          rng=random.Random(1))
    cause = DatabaseUnavailable("connection refused")
    attempts = 0
    with pytest.raises(DatabaseUnavailable) as raised:
        while True:
            clock.now += policy.failed(cause) + 1.0
            attempts += 1
    assert attempts > 3
    message = str(raised.value)
    assert message.startswith("following execution 5: gave up after ")
    assert "connection refused" in message
    assert raised.value.__cause__ is cause


def test_a_daemon_policy_never_gives_up() -> None:
    clock = FakeClock()
    policy = db.Reconnect("listener", clock=clock)
    for _ in range(100):
        clock.now += 3600.0
        assert policy.failed(OSError("down")) <= 5.0


# --- the worker protocol's types ------------------------------------------------------

RESULT_COLUMNS = """
select
    p.oid::regprocedure::text as signature,
    coalesce(
        (select array_agg(a.attname::text order by a.attnum)
         from pg_attribute as a join pg_type as t on t.typrelid = a.attrelid
         where t.oid = p.prorettype and a.attnum > 0 and not a.attisdropped),
        (select array_agg(u.name order by u.position)
         from unnest(p.proargnames, p.proargmodes) with ordinality as u (name, mode, position)
         where u.mode = 't')
    ) as columns
from pg_proc as p
where p.pronamespace = 'noetl'::regnamespace and p.proname = %s
"""


def _called_function(query_name: str) -> str:
    """The noetl function a named query calls (whatever version it is at)."""
    match = re.search(r"noetl\.(\w+)\(", db.query(query_name))
    assert match, query_name
    return match[1]


@pytest.mark.parametrize("query_name", ["claim_commands", "finish_and_claim"])
def test_claimed_command_matches_the_claim_functions(dsn: str, query_name: str) -> None:
    with db.connect(dsn) as conn:
        rows = conn.execute(RESULT_COLUMNS, (_called_function(query_name),)).fetchall()
        assert rows
        for row in rows:
            assert tuple(row["columns"]) == CLAIMED_COMMAND_COLUMNS, row["signature"]
        claimed_rows = db.fetch_all(conn, query_name, worker_id="nobody", kinds=["none"], n=1,
                                    **({"outcomes": Jsonb([])} if query_name != "claim_commands"
                                       else {}))
    assert claimed_rows == []


def test_outcome_types_are_the_ops_finish_and_claim_applies(dsn: str) -> None:
    function = _called_function("finish_and_claim")
    with db.connect(dsn) as conn:
        sources = [row["prosrc"] for row in conn.execute(
            "select prosrc from pg_proc where pronamespace = 'noetl'::regnamespace "
            "and proname = %s", (function,))]
    assert sources
    for source in sources:
        cases = set(re.findall(r"when '(\w+)' then", source))
        assert cases == OUTCOME_OPS


def test_an_outcome_finish_and_claim_would_refuse_is_named() -> None:
    assert as_outcome({"op": "done", "command_id": 3, "attempt": 1, "result": 1,
                       "ctx_set": None})["op"] == "done"
    with pytest.raises(ValueError, match=r"command 3: fail outcome without error, retry_delay"):
        as_outcome({"op": "fail", "command_id": 3, "attempt": 1})
    with pytest.raises(ValueError, match="command 3: unknown outcome op 'finish'"):
        as_outcome({"op": "finish", "command_id": 3, "attempt": 1})
